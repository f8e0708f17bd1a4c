"""The EC2 rehearsal: netns hosts that boot a fresh Debian image with the Pulumi program's own user data.

Why: NetnsCluster hosts share this machine's root filesystem (Java, Python 3.11, no cloud-init),
so what differs on EC2 is exactly what they never exercise. Here the chain is the real one:

    infra (mocked `pulumi up`) -> user data -> cloud-init in the host -> stack outputs -> ops

* `render_stack()` runs the Pulumi program under tests/infra/infra_mocks.py (the code path of
  `pulumi up`) and takes each aws:ec2 Instance's `userData` input and the stack outputs.
* Each host is a NetnsCluster host (own address, hostname, mount/UTS/pid namespaces, no route out)
  whose root is an overlayfs: the cached image (tests/os_image.py) below, a private upper layer
  above, then `pivot_root`. The upper layer starts with what EC2 would hand the instance: the
  NoCloud seed (user data; meta-data with instance-id, local-hostname and the login public key, as
  EC2's metadata gives) and the test network's parts: the apt proxy (tests/apt_proxy.py, on the
  bridge address, like a VPC mirror) and /etc/hosts naming every member (VPC DNS).
* `up()` starts the boot in the background in every host: cloud-init's four stages by hand (no
  systemd), the image's sshd started after the init stage as its unit would be. `wait_ssh()` and
  `wait_booted()` wait for it, so a test can also act while cloud-init still installs packages.
* The inventory is the stack outputs with each host's addresses replaced by its namespace
  address (matched by host name); knownHosts keeps the keys infra generated and cloud-init installed.

`python tests/rehearsal_cluster.py` boots one, waits, prints boot times and disk use, and removes
it; after a crash `python tests/netns_cluster.py down --subnet ...` removes it (the overlay mounts die with the hosts' mount namespaces; the proxy with its parent).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ipaddress
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization

import apt_proxy
import os_image
from netns_cluster import (SSH_PORT, TEST_JVM_OPTIONS, ClusterError, NetnsCluster, _kill_stragglers,
                           _port_open, _wait_until,
                           missing_prerequisites as netns_missing_prerequisites)
from kindling import known_hosts_line, load_inventory, spark_master_url
from ops.agent import install as watcher_install
from workloads.common import run_cli

sys.path.insert(0, str(Path(__file__).resolve().parent / "infra"))
import infra_mocks  # noqa: E402 (tests/infra is not a package)

INSTANCE = "aws:ec2/instance:Instance"
POWEROFF_RECORD = "/run/kindling-rehearsal-poweroff"
SHUTDOWN = ["/bin/sh", "-c", f"date +%s.%N >> {POWEROFF_RECORD}"]
"""The hosts' shutdown command, set by the tests' user data: the hosts share this machine's kernel,
so a real poweroff is only recorded (in the host's own /run, gone at its next boot)."""
BOOT_LOG = "/var/log/kindling-rehearsal-boot.log"
BOOT_DONE = "/run/kindling-rehearsal-boot.done"
BOOT_SECONDS = 900
"""Every host's cloud-init done, packages included (cold apt cache on a busy 2-core machine)."""
STATUS_POLL_SECONDS = 2.0
"""`cloud-init status` starts a Python process: poll it gently on a 2-core machine."""
SSH_SECONDS = 300
"""sshd answers once cloud-init's init stage ran (users, host key)."""

# A host boots as an EC2 instance does, less systemd: the four cloud-init stages in order, whatever
# each returns (cloud-init records it for `cloud-init status`), sshd once users and keys exist.
BOOT_SCRIPT = f"""\
exec > {BOOT_LOG} 2>&1 < /dev/null
run() {{ "$@"; echo "kindling-rehearsal: '$*' exited $?"; }}
run cloud-init init --local
run cloud-init init
run service ssh start
run cloud-init modules --mode=config
run cloud-init modules --mode=final
echo finished > {BOOT_DONE}
"""

# Run in the host's namespaces, on the control machine's root: mount the host's root filesystem
# (overlay of the image and its private layer) with its own /proc, /sys, /run, /dev, then make it /.
ROOT_SCRIPT = """\
set -e
root={dir}/root
mount -t overlay kindling-rehearsal -o lowerdir={image},upperdir={dir}/upper,workdir={dir}/work "$root"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$root/dev"
cp -a /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty "$root/dev/"
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$root/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
cd "$root"
pivot_root . mnt
umount -l /mnt
echo localhost > /proc/sys/kernel/hostname
"""


def missing_prerequisites() -> str | None:
    """Why the rehearsal cannot run here, or None."""
    return netns_missing_prerequisites() or os_image.missing_prerequisites() or apt_proxy.missing_prerequisites()


@dataclass(frozen=True)
class RenderedStack:
    """What a mocked `pulumi up` produced for the rehearsal: outputs, and per host its user data."""
    outputs: dict
    """The stack outputs (`pulumi stack output --json --show-secrets`)."""
    user_data: dict[str, str]
    """host name (master, worker-0, ...) -> the Instance's userData."""
    instance_ids: dict[str, str]


def render_stack(workers: int = 2, ps: int = 0, **config) -> RenderedStack:
    """Run the Pulumi program under mocks (config: SparkClusterArgs fields) and pair each
    Instance's user data, with the tests' shutdown command, with its inventory host."""
    deployment = infra_mocks.deploy(worker_count=workers, ps_count=ps, **config)
    outputs = deployment.inventory
    names = {entry["hostname"]: entry["name"] for entry in _entries(outputs)}
    user_data, instance_ids = {}, {}
    for instance in deployment.of_type(INSTANCE):
        text = instance.inputs.get("userData") or ""
        hostname = (yaml.safe_load(text) or {}).get("hostname") if text.startswith("#cloud-config") else None
        if hostname not in names:
            raise ClusterError(f"Instance {instance.name}: its user data names hostname {hostname!r}, which no "
                               "host of the stack outputs has; user data and outputs must agree on the name")
        user_data[names[hostname]] = with_shutdown(text, SHUTDOWN)
        instance_ids[names[hostname]] = instance.id
    missing = sorted(set(names.values()) - set(user_data))
    if missing:
        raise ClusterError(f"no Instance user data for {', '.join(missing)}")
    return RenderedStack(outputs, user_data, instance_ids)


def with_shutdown(user_data: str, command: list[str]) -> str:
    """The user data with its watcher's shutdown command replaced (the tests' only change to it):
    in its settings, and in the sudoers rules that let the watcher run it."""
    config = yaml.safe_load(user_data)
    files = {f["path"]: f for f in config["write_files"]}
    settings = json.loads(files[watcher_install.SETTINGS]["content"]) | {"shutdown": command}
    files[watcher_install.SETTINGS]["content"] = json.dumps(settings)
    files[watcher_install.SUDOERS_RULES]["content"] = watcher_install.sudoers(settings)
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False)


def map_addresses(outputs: dict, addresses: dict[str, str]) -> dict:
    """The stack outputs with each host's publicIp/privateIp (those it has) replaced by
    addresses[host name], publicDns dropped (no DNS here), knownHosts and sparkMasterUrl to match,
    no bucket."""
    mapped = copy.deepcopy(outputs)
    renames: dict[str, str] = {}
    for entry in _entries(mapped):
        if entry["name"] not in addresses:
            raise ClusterError(f"host {entry['name']} of the stack outputs has no rehearsal host")
        for key, new in (("publicIp", addresses[entry["name"]]), ("privateIp", addresses[entry["name"]]),
                         ("publicDns", "")):
            if entry.get(key):
                renames[entry[key]] = new
                entry[key] = new
    lines = []
    for line in mapped["knownHosts"].splitlines():
        names, key = line.split(" ", 1)
        lines.append(known_hosts_line(list(dict.fromkeys(renames.get(n, n) for n in names.split(","))), key))
    mapped["knownHosts"] = "\n".join(lines) + "\n"
    mapped["sparkMasterUrl"] = spark_master_url(mapped["master"]["privateIp"])
    mapped["bucket"] = ""  # no S3 here (the hosts have no route out): the netns e2e uses moto
    return mapped


def _entries(outputs: dict) -> list[dict]:
    return [outputs["master"], *outputs["workers"], *outputs["ps"]]


class RehearsalCluster(NetnsCluster):
    """`workers` + 1 hosts (+ `ps`) booted from the image by the Pulumi program's user data."""

    def __init__(self, workers: int = 2, ps: int = 0, subnet: str | None = None,
                 workdir: str | Path | None = None, inventory_path: str | Path | None = None):
        self.stack = render_stack(workers, ps)
        super().__init__(hosts=workers + 1, ps=ps, subnet=subnet, workdir=workdir, inventory_path=inventory_path,
                         name=self.stack.outputs["clusterName"], user=self.stack.outputs["sshUser"])
        self.image: Path | None = None
        self.proxy: apt_proxy.AptProxy | None = None
        self.boot_started: dict[str, float] = {}
        self.boot_seconds: dict[str, float] = {}
        """host name -> seconds from boot start to `cloud-init status` done (filled by wait_booted)."""

    # -- lifecycle -----------------------------------------------------------------------------

    def up(self) -> "RehearsalCluster":
        reason = missing_prerequisites()
        if reason:
            raise ClusterError(f"the rehearsal needs {reason}")
        self.image = os_image.rootfs()  # before claiming a subnet: a cold build takes a minute
        return super().up()

    def down(self) -> None:
        if self.proxy:
            self.proxy.stop()
            self.proxy = None
        super().down()

    # -- what tests and fab need ---------------------------------------------------------------

    def wait_ssh(self, timeout: float = SSH_SECONDS) -> None:
        """Until every host's sshd answers (cloud-init's init stage done: user, pinned host key)."""
        for record in self.state["hosts"]:
            with self._with_boot_log(record["name"]):
                _wait_until(lambda: _port_open(record["address"], SSH_PORT) or self._boot_failed(record),
                            f"sshd of {record['name']} on {record['address']}", timeout=timeout, interval=0.5)
            self._boot_failed(record, raise_error=True)
        self._check_bridge()

    def wait_booted(self, timeout: float = BOOT_SECONDS) -> dict[str, dict]:
        """Until `cloud-init status` is final (done or error) on every host: host name -> its status
        JSON (`status`, `extended_status`, `errors`, `recoverable_errors`...)."""
        statuses = {}
        for record in self.state["hosts"]:
            def final() -> dict | None:
                status = self.cloud_init_status(record["name"])
                if status.get("status") in ("done", "error"):
                    return status
                if self._boot_failed(record):
                    return {**status, "status": "error", "boot_log": self.boot_log(record["name"])}
                return None
            with self._with_boot_log(record["name"]):
                statuses[record["name"]] = _wait_until(
                    final, f"cloud-init on {record['name']}", interval=STATUS_POLL_SECONDS,
                    timeout=max(1.0, self.boot_started[record["name"]] + timeout - time.monotonic()))
            self.boot_seconds.setdefault(record["name"], time.monotonic() - self.boot_started[record["name"]])
        return statuses

    def exec(self, host, command, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
        """As NetnsCluster.exec, from the host's own / (nsenter's --wd names the control machine's)."""
        argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
        return super().exec(host, ["env", "--chdir=/", *argv], timeout=timeout, check=check)

    def cloud_init_status(self, host: str) -> dict:
        shown = self.exec(host, ["cloud-init", "status", "--format", "json"], timeout=60)
        try:
            return json.loads(shown.stdout)
        except json.JSONDecodeError:
            return {"status": "unknown", "output": (shown.stdout + shown.stderr).strip()}

    def boot_log(self, host: str, lines: int = 5) -> str:
        """The last lines of the host's boot (cloud-init's stages and their exit codes)."""
        return " / ".join(self.exec(host, ["tail", f"-{lines}", BOOT_LOG]).stdout.strip().splitlines()) or "no log"

    def disk_usage(self, host: str) -> int:
        """Bytes in the host's private layer (what it wrote over the image)."""
        used = subprocess.run(["du", "-sb", str(Path(self._record(host)["dir"], "upper"))],
                              capture_output=True, text=True, timeout=120, check=True)
        return int(used.stdout.split()[0])

    def replace_hosts(self, stack: RenderedStack) -> None:
        """Every host booted again as a new instance of `stack` (its instance ids, user data, host
        and login keys), as `pulumi up` replacing them would, but on the same disks (so the
        packages are already installed); the inventory becomes stack's outputs. The boots run in
        the background, as at `up`."""
        for record in self.state["hosts"]:
            os.kill(record["init_pid"], signal.SIGKILL)  # the kernel kills the rest of the host
        for record in self.state["hosts"]:
            _wait_until(lambda: not _kill_stragglers(record["netns"]),
                        f"the processes of {record['name']} to die")
        self.stack = stack
        for record in self.state["hosts"]:
            self._write_seed(Path(record["dir"], "upper"), record)
            self._start_init(record)
            self._boot(record)
        self._write_stack_inventory()

    def stop_sshd(self, host: str) -> None:
        record = self._record(host)
        self.exec(host, ["service", "ssh", "stop"], check=True)
        _wait_until(lambda: not _port_open(record["address"], SSH_PORT), f"sshd of {record['name']} to stop")

    def start_sshd(self, host: str) -> None:
        record = self._record(host)
        self.exec(host, ["service", "ssh", "start"], check=True)
        _wait_until(lambda: _port_open(record["address"], SSH_PORT), f"sshd of {record['name']} to start")

    # -- building ------------------------------------------------------------------------------

    def _plan(self, subnet: ipaddress.IPv4Network) -> dict:
        state = super()._plan(subnet)
        hostnames = {name: yaml.safe_load(text)["hostname"] for name, text in self.stack.user_data.items()}
        for record in state["hosts"]:
            record["hostname"] = hostnames[record["name"]]
        state["files"] = [str(Path(state["workdir"], "apt-proxy"))]
        return state

    def _build(self) -> None:
        self._add_bridge()
        self.proxy = apt_proxy.AptProxy(self.state["gateway"].split("/")[0],
                                        Path(self.state["workdir"], "apt-proxy")).start()
        for record in self.state["hosts"]:
            self._write_layer(record)
            self._start_host(record)
        self._write_stack_inventory()
        for record in self.state["hosts"]:
            self._boot(record)

    def _boot(self, record: dict) -> None:
        """Start the host's boot (cloud-init's stages, sshd) in the background."""
        self.boot_started[record["name"]] = time.monotonic()
        self.boot_seconds.pop(record["name"], None)
        self.exec(record["name"], f"setsid -f sh -c {shlex.quote(BOOT_SCRIPT)} >/dev/null 2>&1 </dev/null",
                  check=True)

    def _write_layer(self, record: dict) -> None:
        """The host's private upper layer, holding at first boot what EC2 and the VPC would provide."""
        host_dir = Path(record["dir"])
        for sub in ("upper", "work", "root"):
            (host_dir / sub).mkdir(parents=True)
        upper = host_dir / "upper"
        self._write_seed(upper, record)
        (upper / "etc/apt/apt.conf.d").mkdir(parents=True)
        (upper / "etc/apt/apt.conf.d/00kindling-rehearsal-proxy").write_text(self.proxy.apt_conf())
        (upper / "etc/ssh/sshd_config.d").mkdir(parents=True)
        (upper / "etc/ssh/sshd_config.d/00-tests-jvm.conf").write_text(
            f'SetEnv JAVA_TOOL_OPTIONS="{TEST_JVM_OPTIONS}"\n')
        (upper / "etc/hosts").write_text(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            + "".join(f"{h['address']}\t{h['hostname']}\n" for h in self.state["hosts"]))

    def _write_seed(self, upper: Path, record: dict) -> None:
        """The NoCloud seed: the host's user data, and as meta-data what EC2's metadata gives."""
        seed = upper / "var/lib/cloud/seed/nocloud"
        seed.mkdir(parents=True, exist_ok=True)
        (seed / "user-data").write_text(self.stack.user_data[record["name"]])
        (seed / "meta-data").write_text(yaml.safe_dump({
            "instance-id": self.stack.instance_ids[record["name"]],
            "local-hostname": f"{record['hostname']}.ec2.internal",
            "public-keys": [self._login_public_key()]}, sort_keys=False))
        for path in (seed / "user-data", seed / "meta-data"):
            path.chmod(0o600)

    def _prepare_host(self, record: dict) -> None:
        """Make the image (plus the host's layer) the root of the host's mount namespace."""
        self.exec(record["name"], ROOT_SCRIPT.format(dir=shlex.quote(record["dir"]), image=shlex.quote(str(self.image))),
                  check=True)

    def _login_public_key(self) -> str:
        """The login key's public half, as EC2's metadata serves it (public-keys)."""
        key = serialization.load_ssh_private_key(self.stack.outputs["sshPrivateKey"].encode(), password=None)
        return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).decode()

    def _write_stack_inventory(self) -> None:
        outputs = map_addresses(self.stack.outputs, {r["name"]: r["address"] for r in self.state["hosts"]})
        path = self.inventory_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(outputs, indent=2) + "\n")
        load_inventory(path)  # the schema ops reads: fail here, not in the first fab task

    @contextlib.contextmanager
    def _with_boot_log(self, host: str):
        """A wait that times out names what the host's boot was doing then."""
        try:
            yield
        except ClusterError as exc:
            raise ClusterError(f"{exc}; its boot log ends: {self.boot_log(host)}") from None

    def _boot_failed(self, record: dict, raise_error: bool = False) -> bool:
        """True when the boot script ended but sshd never came up (raises then, if asked)."""
        finished = self.exec(record["name"], ["test", "-e", BOOT_DONE]).returncode == 0
        failed = finished and not _port_open(record["address"], SSH_PORT)
        if failed and raise_error:
            raise ClusterError(f"{record['name']} finished booting without sshd: {self.boot_log(record['name'])}")
        return failed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Boot rehearsal hosts from the Debian image with infra's user data.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--subnet", help="private IPv4 subnet (default: first free 10.77.x.0/24)")
    parser.add_argument("--workdir", help="folder for the hosts' layers (default: new temp dir)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    cluster = RehearsalCluster(workers=args.workers, subnet=args.subnet, workdir=args.workdir).up()
    try:
        print(f"hosts started in {time.monotonic() - started:.1f} s; inventory {cluster.inventory_path}")
        cluster.wait_ssh()
        print(f"sshd on every host after {time.monotonic() - started:.1f} s")
        for name, status in cluster.wait_booted().items():
            print(f"  {name:<10} {status.get('extended_status', status['status']):<14} "
                  f"{cluster.boot_seconds[name]:.1f} s  {cluster.disk_usage(name) / 2**20:.0f} MiB")
    finally:
        cluster.down()


if __name__ == "__main__":
    run_cli(main)
