"""The host services' shell logic, run for real on this machine with fake java/cloud-init/apt-get
first on PATH: which JDK counts, waiting for cloud-init, waiting for the apt locks."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from invoke import Context

from kindling import Host, Inventory
from ops.services import DeployContext
from ops.services.host import BasePackages, CloudInit
from ops.agent import install
from ops.services.watcher import WatcherStep
from kindling import HostError

HOST = Host(name="worker-7", hostname="ip-10-0-1-7", privateIp="10.0.1.7")


class LocalConnection:
    """Stands in for a Fabric Connection: runs commands here, the fake tools first on PATH."""

    where = ("worker-7", "worker")  # what ops.cluster.Cluster gives its connections

    def __init__(self, tools: Path):
        self.env = {"PATH": f"{tools}:{os.environ['PATH']}"}

    def run(self, command: str, **kwargs):
        return Context().run(command, env=self.env, **kwargs)


def tool(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + script)
    path.chmod(0o755)


@pytest.fixture
def tools(tmp_path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    tool(folder, "sudo", '[ "$1" = -n ] && shift; exec "$@"\n')
    return folder


@pytest.mark.parametrize("version, accepted", [('17.0.15" 2025-04-15', True), ('21.0.5"', True),
                                               ('11.0.22"', False), ('1.8.0_392"', False),
                                               (None, False)])
def test_base_packages_accept_the_jdk_the_host_has_from_17(tools, version, accepted):
    if version is not None:
        tool(tools, "java", f'echo \'openjdk version "{version}\' >&2\n')
    else:
        tool(tools, "java", "exit 127\n")
    assert BasePackages().is_current(LocalConnection(tools), HOST, None) is accepted


def fake_apt(tools: Path, locked_updates: int) -> Path:
    """apt-get that reports the lists lock held for the first locked_updates updates; install
    makes java 21 appear. Every call is logged."""
    log = tools / "apt.log"
    tool(tools, "java", f'[ -e {tools}/installed ] && echo \'openjdk version "21.0.5"\' >&2\n')
    tool(tools, "apt-get", f'''echo "$*" >> {log}
if [[ " $* " == *" update "* ]]; then
  n=$(grep -c ' update' {log})
  if [ "$n" -le {locked_updates} ]; then
    echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 42 (apt-get)" >&2
    exit 100
  fi
fi
[[ " $* " == *" install "* ]] && touch {tools}/installed
exit 0
''')
    return log


def quick_packages(lock_timeout: int) -> BasePackages:
    service = BasePackages()
    service.lock_timeout, service.lock_poll = lock_timeout, 0.1
    return service


def test_base_packages_install_default_jre_waiting_for_the_apt_lock(tools):
    log = fake_apt(tools, locked_updates=2)
    service = quick_packages(lock_timeout=30)
    service.install(LocalConnection(tools), HOST, None)
    calls = log.read_text().splitlines()
    assert [c.split()[-1] for c in calls] == ["update"] * 3 + ["python3-venv"]
    assert calls[-1].endswith("install -y default-jre-headless python3-venv")
    assert all("-o DPkg::Lock::Timeout=30" in c for c in calls)
    assert service.is_current(LocalConnection(tools), HOST, None)


def test_base_packages_name_the_host_when_the_apt_lock_stays_held(tools):
    log = fake_apt(tools, locked_updates=1000)
    with pytest.raises(HostError, match=r"^worker-7 \(worker\): apt-get failed: another apt run "
                                        r"held the package lock for over 1s .*retry `fab deploy`"):
        quick_packages(lock_timeout=1).install(LocalConnection(tools), HOST, None)
    assert "install" not in log.read_text()


def test_base_packages_refuse_a_jdk_older_than_17_after_apt(tools):
    fake_apt(tools, locked_updates=0)
    tool(tools, "java", "echo 'openjdk version \"11.0.22\"' >&2\n")
    with pytest.raises(HostError, match="^worker-7 \\(worker\\): base packages failed: Java 17\\+ "
                                        "or python3-venv still missing"):
        quick_packages(lock_timeout=5).install(LocalConnection(tools), HOST, None)


def fake_cloud_init(tools: Path, tmp_path: Path, finishes: bool) -> CloudInit:
    """cloud-init whose status is running until `status --wait` has waited 0.5 s (or forever)."""
    done = tmp_path / "cloud-init-done"
    tool(tools, "cloud-init", f'''[ "$1" = status ] || exit 2
if [ "$2" = --wait ]; then
  {"sleep 0.5" if finishes else "sleep 60"}; touch {done}
fi
[ -e {done} ] && echo "status: done" || echo "status: running"
''')
    service = CloudInit()
    service.run_dir = str(tmp_path / "run-cloud-init")
    return service


def test_cloud_init_is_skipped_where_it_never_ran(tools, tmp_path):
    service = fake_cloud_init(tools, tmp_path, finishes=False)
    assert service.is_current(LocalConnection(tools), HOST, None)  # no run dir: e.g. netns hosts


def test_deploy_waits_for_cloud_init_to_finish(tools, tmp_path):
    service = fake_cloud_init(tools, tmp_path, finishes=True)
    Path(service.run_dir).mkdir()
    cxn = LocalConnection(tools)
    assert not service.is_current(cxn, HOST, None)
    service.install(cxn, HOST, None)
    assert service.is_current(cxn, HOST, None)


def test_cloud_init_that_never_finishes_is_one_error_naming_the_host(tools, tmp_path):
    service = fake_cloud_init(tools, tmp_path, finishes=False)
    service.timeout = 1
    Path(service.run_dir).mkdir()
    with pytest.raises(HostError, match=r"^worker-7 \(worker\): waiting for cloud-init failed: "
                                        r"still running after 1s; see /var/log/cloud-init-output.log"):
        service.install(LocalConnection(tools), HOST, None)


def test_hosts_waiting_for_the_masters_wheelhouse_learn_when_it_failed(tmp_path):
    """A worker thread blocks until the master served the wheelhouse or failed before: then it
    fails at once naming the master, never waits out the timeout."""
    import threading

    from ops.services.wheels import ServedWheelhouse

    master = Host(name="master", hostname="ip-10-0-1-2", privateIp="10.0.1.2")
    served = ServedWheelhouse(master)
    errors = []

    def worker():
        try:
            served.url(LocalConnection(tmp_path))
        except HostError as exc:
            errors.append(str(exc))
    waiting = threading.Thread(target=worker)
    waiting.start()
    served.publish(None)  # the master's thread failed before serving
    waiting.join(timeout=10)
    assert not waiting.is_alive()
    assert errors == ["worker-7 (worker): python deps failed: the master (master) failed before "
                      "serving the wheelhouse; see its line"]

    served = ServedWheelhouse(master)
    served.publish("http://10.0.1.2:7071/")
    served.publish(None)  # the master's thread ends later: the URL it published stands
    assert served.url(LocalConnection(tmp_path)) == "http://10.0.1.2:7071/"


@pytest.mark.parametrize("idle_minutes, instance_ids, stopped", [
    (60, True, True), (0, True, False), (60, False, False)])
def test_fab_gives_the_watchers_the_settings_the_user_data_gives_and_stops_only_ec2_hosts(
        idle_minutes, instance_ids, stopped):
    """Only spot hosts watch for notices; the master hears from every other host; hosts stop
    themselves only when the inventory names EC2 instances and a limit is set. On an EC2
    cluster the settings are those infra's user data armed the watcher with (so a deploy leaves
    an armed watcher alone until something changed)."""
    def host(name, address, spot=False):
        return Host(name=name, hostname=f"ip-{address.replace('.', '-')}", privateIp=address,
                    spot=spot, instanceId=f"i-{name}" if instance_ids else "")

    master, steady, spot = host("master", "10.0.0.2"), host("worker-0", "10.0.0.3"), host(
        "worker-1", "10.0.0.4", spot=True)
    inventory = replace(Inventory("c", "us-east-1", "ubuntu", "key", "", master, (steady, spot)),
                        idleStopMinutes=idle_minutes)
    ctx = DeployContext(inventory, Path("constraints.txt"), None)
    settings = {h.name: WatcherStep().settings(h, ctx) for h in inventory.hosts}
    assert [name for name, s in settings.items() if s["spot_notice"]] == ["worker-1"]
    assert settings["master"]["peers"] == ["worker-0", "worker-1"]
    assert all(s["master"] == "ip-10-0-0-2" and (s["peers"] == []) == (name != "master")
               for name, s in settings.items())
    assert {s["idle_minutes"] for s in settings.values()} == {60.0 if stopped else 0.0}
    if instance_ids:
        for h in inventory.hosts:
            assert settings[h.name] == install.settings(
                h.name, master.hostname, [n for n in settings if n != h.name and h == master],
                idle_minutes, 0.0, h.spot)
