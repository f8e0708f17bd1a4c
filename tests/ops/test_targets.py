"""The job interface seen from ops: ops names no job (a job from a package of its own runs:
test_own_jobs.py), bad input is refused before anything starts, a failed step names its host,
and a bug shows its traceback."""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from invoke import Context
from invoke.exceptions import Exit

from kindling import Host, HostError, UserError
from ops import tasks
from ops.remote import sh
from ops.run import check_downloads, run
from ops.targets import LocalTarget, load_target
from workloads.jobs import FAB_OPTIONS, JOBS, Flag, Job, Launch, Process

REPO = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")


def echo_plan(job: Job, placement, args: list[str], run_dir: str) -> Launch:
    """One process on the master that writes the flag's value and a metrics.json."""
    word = job.values(args).word
    code = (f"import json; print({word!r}); "
            f"json.dump({{'accuracy': 1.0, 'word': {word!r}}}, open('metrics.json', 'w'))")
    return Launch([Process("say 0", placement.master, (sys.executable, "-c", code), main=True)])


def test_job_flags_may_not_take_the_names_of_fab_deploy_and_run_options():
    """workloads.jobs refuses a declaration whose fab flag reuses one of FAB_OPTIONS: they must
    name every option of the launch tasks that is not a job flag."""
    job_flags = set(tasks._fab_flags())
    for launch in (tasks.deploy, tasks.run_job):
        own = set(inspect.signature(launch.body).parameters) - job_flags - {"c"}
        assert own <= set(FAB_OPTIONS), own - set(FAB_OPTIONS)
        assert {"target", "job_args"} <= own  # not blind


def test_ops_names_no_job_and_no_job_flag():
    sources = {path: path.read_text() for path in (REPO / "ops").rglob("*.py")}
    assert len([path for path in sources if path.parent != REPO / "ops"]) >= 10  # not blind
    for job in JOBS.values():
        words = [job.name, *(f'"{s}"' for flag in job.flags for s in flag.spellings),
                 *(f"'{s}'" for flag in job.flags for s in flag.spellings)]
        for path, text in sources.items():
            found = [w for w in words if w in text]
            assert not found, f"{path.name} mentions {found}"


def test_a_failed_step_names_host_role_and_step():
    cxn = Context()
    cxn.where = ("worker-1", "worker")
    with pytest.raises(HostError) as failure:
        sh(cxn, "echo 'disk full' >&2; exit 3", what="unpacking data")
    assert str(failure.value) == "worker-1 (worker): unpacking data failed: exit 3: disk full"


def test_a_bug_shows_its_traceback_and_says_so(monkeypatch, capsys):
    def broken(self):
        raise ZeroDivisionError("division by zero")
    monkeypatch.setattr(LocalTarget, "status", broken)
    with pytest.raises(Exit) as ended:
        tasks.status(Context(), target="local")
    assert ended.value.code == tasks.BUG_EXIT_CODE
    assert "this is a bug in kindling (ZeroDivisionError" in ended.value.message
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def offline_env(**extra: str) -> dict[str, str]:
    """No $KINDLING_ASSETS, and every HTTP(S) request sent to a closed port on this machine."""
    proxy = f"http://127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ("KINDLING_ASSETS", "no_proxy", "NO_PROXY")}
    return env | {"https_proxy": proxy, "http_proxy": proxy, "HTTPS_PROXY": proxy,
                  "HTTP_PROXY": proxy} | extra


def test_an_unreachable_download_is_one_line_with_the_fix(monkeypatch):
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(UserError, match=r"^cannot fetch the MNIST dataset from https://\S+ "
                                        r"\(.*\); pass --data DIR"):
        check_downloads(JOBS["train-mnist"].downloads(JOBS["train-mnist"].values([])))


@pytest.mark.parametrize("argv, message", [
    (["run", "train-mnist", "--target", "local"], "cannot fetch the MNIST dataset from "),
    (["run", "classify", "--target", "local", "--data", "{assets}/datasets/buses-cars",
      "--model", "MobileNet"], "cannot fetch the ImageNet weights of MobileNet from "),
    (["run", "train-mnist", "--target", "local", "--epochs", "-1"], "--epochs must be at least 1"),
    (["run", "train-ps", "--target", "local", "--strategy", "foo"], "invalid choice: 'foo'"),
    (["run", "classify", "--target", "local", "--model", "NoSuchNet"], "unknown model 'NoSuchNet'"),
    (["run", "classify", "--target", "local", "--data", "{empty_class}"], "hold no files"),
    (["run", "classify", "--target", "local", "--strategy", "sync"], "classify has no --strategy"),
])
def test_bad_input_is_refused_before_anything_starts(argv, message, tmp_path, assets):
    empty_class = tmp_path / "photos"
    (empty_class / "buses").mkdir(parents=True)
    (empty_class / "buses" / "1.jpg").write_bytes(b"")
    (empty_class / "cars").mkdir()
    argv = [a.format(assets=assets, empty_class=empty_class) for a in argv]
    assert message in refused_before_anything_starts(argv, tmp_path)


def test_no_java_for_spark_is_one_line_naming_the_fix_before_anything_starts(tmp_path, assets):
    """A newcomer without Java: not a 60 s wait for Spark workers that cannot start."""
    no_java = tmp_path / "bin"  # this Python is found by its path; nothing else is needed
    no_java.mkdir()
    env = {k: v for k, v in offline_env().items() if k != "JAVA_HOME"} | {"PATH": str(no_java)}
    line = refused_before_anything_starts(["run", "classify", "--target", "local", "--data",
                                           f"{assets}/datasets/buses-cars", "--weights",
                                           f"{assets}/models/mobilenet_v1_0.25_224.h5",
                                           "--model", "MobileNet"], tmp_path, env)
    assert "Spark needs Java 17 or 21" in line and "apt-get install default-jre-headless" in line


def test_the_local_target_off_linux_is_one_line_naming_the_platform(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(UserError, match=r"^the local target runs on Linux only .* not on darwin; "
                                        r"use a cluster: --target cluster.json or pulumi:STACK$"):
        load_target("local")


def refused_before_anything_starts(argv: list[str], tmp_path: Path, env: dict | None = None) -> str:
    """`fab ARGV` ends with one `error:` line (exit 2) and starts nothing: no run folder, no
    local Spark daemon. The line."""
    spark_logs = REPO / ".kindling" / "local" / "spark" / "logs"  # a log per daemon start

    def daemon_starts() -> dict:
        return {log.name: log.stat().st_mtime_ns for log in spark_logs.glob("*")}
    before = daemon_starts()
    started = time.monotonic()
    done = subprocess.run([FAB, *argv], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=(env or offline_env()) | {"KINDLING_RUNS_DIR": str(tmp_path / "runs")},
                          stdin=subprocess.DEVNULL)
    took = time.monotonic() - started
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not (tmp_path / "runs").exists()  # no run folder: nothing was started
    assert daemon_starts() == before  # no local Spark daemon started either
    print(f"{' '.join(argv[:2])}: refused in {took:.1f}s")
    return lines[0]


def test_a_driver_failure_names_the_host_that_died_not_the_one_that_noticed(tmp_path):
    from kindling import Inventory
    from ops.services.spark import name_failed_host

    master, survivor, dead = (Host(name=n, hostname=n, privateIp=ip) for n, ip in (
        ("master", "10.0.0.10"), ("worker-0", "10.0.0.32"), ("worker-1", "10.0.0.33")))
    inventory = Inventory("c", "local", "ubuntu", "key", "", master, (survivor, dead))
    log = tmp_path / "logs" / "master" / "driver.log"
    log.parent.mkdir(parents=True)
    log.write_text(
        "WARN TaskSetManager: Lost task 0.0 in stage 3.0 (TID 7) (10.0.0.32 executor 0): "
        "org.apache.spark.api.python.PythonException: tensorflow UnavailableError: peer gone\n"
        "WARN TaskSetManager: Lost task 1.0 in stage 3.0 (TID 8) (10.0.0.33 executor 1): "
        "org.apache.spark.SparkException: Python worker exited unexpectedly (crashed)\n")
    message = name_failed_host(inventory, tmp_path, "driver on master (10.0.0.10) exited with code 1")
    assert message.endswith(": its Python worker or executor died on worker-1 (10.0.0.33), see "
                            "its executor log")
    log.write_text(log.read_text().splitlines()[0] + "\n")
    assert "a task failed on worker-0 (10.0.0.32)" in name_failed_host(
        inventory, tmp_path, "driver on master (10.0.0.10) exited with code 1")


def test_a_host_gone_mid_command_is_its_failure_and_has_no_spot_notice_to_tell():
    """EC2 took worker-1 (a spot host): its SSH session ends mid-command. The runner names the
    host, the notice reader skips it, and the live host's notice is still read."""
    import paramiko
    from invoke.runners import Result
    from kindling import Inventory, KindlingError
    from ops.cluster import Cluster
    from ops.targets import ClusterTarget

    class FakeConnection:
        def __init__(self, gone: bool):
            self.gone = gone

        def run(self, command, **_):
            if self.gone:
                raise paramiko.SSHException("SSH session not active")
            return Result(stdout='{"host": "worker-0", "address": "10.0.0.32"}', exited=0)

    master = Host(name="master", hostname="master", privateIp="10.0.0.10")
    live, gone = (Host(name=n, hostname=n, privateIp=ip, spot=True) for n, ip in (
        ("worker-0", "10.0.0.32"), ("worker-1", "10.0.0.33")))
    inventory = Inventory("c", "local", "ubuntu", "key", "", master, (live, gone))
    cluster = Cluster(inventory, lambda inventory, host: FakeConnection(gone=host.name == "worker-1"))
    with pytest.raises(KindlingError, match=r"^worker-1 \(worker\): ssh failed: lost the "
                                            r"connection \(SSHException: SSH session not active\)$"):
        cluster.parallel(lambda host, cxn: cxn.run("true"))
    target = ClusterTarget.__new__(ClusterTarget)  # no connect_all: the hosts are fakes
    target.inventory, target.cluster = inventory, cluster
    assert target.spot_notices() == {"worker-0": {"host": "worker-0", "address": "10.0.0.32"}}


def test_relative_data_paths_work_on_the_local_target(tmp_path, monkeypatch, assets, capsys):
    """The job's processes run in their run folder: a relative --data must still be found."""
    echo = Job("echo", "workloads.echo", "prints a file's name", plan=echo_plan, uses_spark=False,
               flags=(Flag("--word", "a file to name", path=True),))
    monkeypatch.setitem(JOBS, "echo", echo)
    monkeypatch.setenv("KINDLING_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.chdir(assets)
    with LocalTarget() as local:
        results = run(local, echo, ["--word", "datasets/mnist"], timeout=60)
    assert (results / "say-0.log").read_text().strip() == str(assets / "datasets" / "mnist")
