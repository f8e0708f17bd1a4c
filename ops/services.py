"""What `fab deploy` installs on cluster hosts, as small plugin classes (as in Flintrock).

Each service answers three questions for one host: is it already in the wanted state
(`is_current`), how to get there (`install`), and is it healthy (`health_check`). The deploy
runner in ops.cluster skips `install` when `is_current` says so: that makes deploy idempotent,
keyed on content hashes and versions stored in stamp files on the host.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fabric import Connection

from ops import hdfs, spark
from ops.ssh import ssh_command
from kindling import Host, Inventory
from ops.remote import (AUTOSTOP_STATE, BIN, COMMAND_TIMEOUT, DATA, HADOOP_CONF, HDFS_STATE, HOME,
                        INSTALL_TIMEOUT, PYTHON, RUNS, SPARK_STATE, SPOT_NOTICE_FILE, SRV, STAMPS,
                        VENV, WHEELHOUSE,
                        WHEELHOUSE_SERVER_PID,
                        jar_folder, read_stamp, sh, where, write_stamp)
from ops.runs import write_files_command
from ops.staging import push_path, staged_check
from ops.wheelhouse import INSTALLER, pins
from kindling import HostError, KindlingError
from workloads.common import SPOT_NOTICE_ENV

def file_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class DeployContext:
    """What every service may need to know about this deploy (built once on the control machine)."""
    inventory: Inventory
    constraints: Path
    project_wheel: Path | None
    wheelhouse: Path | None = None
    staged: dict[str, str] = field(default_factory=dict)
    """Local path -> remote path of data/weights staged on every host."""
    served: "ServedWheelhouse | None" = None
    """The wheelhouse as the master serves it to the other hosts, when they need it."""
    jars: dict[str, Path] = field(default_factory=dict)
    """Feature -> its jars (ops.jvm) on this machine, for the features this deploy needs."""


class Service:
    """One concern installed on a host: a name, a stamp-able version, install, health check."""

    name = "service"

    def is_current(self, cxn: Connection, host: Host, ctx: DeployContext) -> bool:
        raise NotImplementedError

    def install(self, cxn: Connection, host: Host, ctx: DeployContext) -> None:
        raise NotImplementedError

    def health_check(self, cxn: Connection, host: Host, ctx: DeployContext) -> None:
        """Raise a KindlingError when the service is installed but not working."""


class CloudInit(Service):
    """Wait for cloud-init to finish before touching the host: its first-boot apt run holds
    the dpkg lock and installs the packages BasePackages would otherwise race it for.

    A host has cloud-init when the command exists and /run/cloud-init does (made at boot by
    its generator, or by its first stage): a cloud-init package that never runs (a container,
    the netns test hosts) is skipped instead of waited for forever.
    """

    name = "cloud-init"
    timeout = 900
    """Seconds to wait for cloud-init's modules (packages included) to finish."""
    run_dir = "/run/cloud-init"

    def is_current(self, cxn, host, ctx):
        present = f"command -v cloud-init >/dev/null && test -d {self.run_dir}"
        return cxn.run(f"! {{ {present}; }} || cloud-init status 2>/dev/null | "
                       "grep -Eq '^status: (done|error|disabled)'", hide=True, warn=True,
                       timeout=COMMAND_TIMEOUT, in_stream=False).exited == 0

    def install(self, cxn, host, ctx):
        # exit 1/2 (error, degraded) still means finished: later steps check what they need
        waited = cxn.run(f"timeout {self.timeout} cloud-init status --wait >/dev/null 2>&1",
                         hide=True, warn=True, timeout=self.timeout + COMMAND_TIMEOUT,
                         in_stream=False)
        if waited.exited == 124:
            raise HostError(*where(cxn), "waiting for cloud-init",
                            f"still running after {self.timeout}s; see /var/log/cloud-init-output.log "
                            f"on the host (`fab ssh --host {host.name}`), then retry `fab deploy`")


class BasePackages(Service):
    """Java >= 17 for Spark (any the host has: Spark 4 runs on 17 and 21) and python3-venv,
    via sudo apt-get, only when missing. default-jre-headless: 17 on Debian 12, 21 on
    Debian 13 and Ubuntu 24.04."""

    name = "base packages"
    packages = ("default-jre-headless", "python3-venv")
    min_java = 17
    lock_timeout = 600
    """Seconds apt-get waits for another apt run (unattended-upgrades, cloud-init) to finish."""
    lock_poll = 5
    check = ("v=$(java -version 2>&1 | sed -n 's/.*version \"\\([0-9]*\\).*/\\1/p' | head -1); "
             f"[ \"${{v:-0}}\" -ge {min_java} ] && python3 -c 'import ensurepip, venv'")

    def is_current(self, cxn, host, ctx):
        return cxn.run(self.check, hide=True, warn=True, timeout=COMMAND_TIMEOUT,
                       in_stream=False).exited == 0

    def install(self, cxn, host, ctx):
        done = cxn.run(self.apt_script(), hide=True, warn=True, in_stream=False,
                       timeout=2 * self.lock_timeout + INSTALL_TIMEOUT)
        if done.exited and "Could not get lock" in done.stderr:
            raise HostError(*where(cxn), "apt-get", "another apt run held the package lock for "
                            f"over {self.lock_timeout}s (unattended-upgrades?); retry `fab deploy` "
                            "when it finishes")
        if done.exited:
            detail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise HostError(*where(cxn), f"apt-get install of {' '.join(self.packages)}",
                            f"exit {done.exited}: {detail[0]}")
        if not self.is_current(cxn, host, ctx):
            raise HostError(*where(cxn), "base packages", f"Java {self.min_java}+ or "
                            "python3-venv still missing after apt-get (this release's "
                            f"default-jre-headless is older): install openjdk-{self.min_java}-"
                            "jre-headless or use Ubuntu 24.04")

    def apt_script(self) -> str:
        """apt-get update then install, each waiting up to lock_timeout for the apt locks:
        install through DPkg::Lock::Timeout; update, which ignores it for its lists lock,
        retried while the lock is held."""
        apt = ("sudo -n env DEBIAN_FRONTEND=noninteractive apt-get -q "
               f"-o DPkg::Lock::Timeout={self.lock_timeout}")
        return (f"end=$(($(date +%s) + {self.lock_timeout})); "
                f"until out=$({apt} update 2>&1); do "
                "case $out in *'Could not get lock'*) [ $(date +%s) -lt $end ] && "
                f"sleep {self.lock_poll} && "
                "continue;; esac; echo \"$out\" >&2; exit 100; done; "
                f"{apt} install -y {' '.join(self.packages)}")


class Layout(Service):
    """kindling's folders, owned by the SSH user (created with sudo once)."""

    name = "folders"

    def is_current(self, cxn, host, ctx):
        return cxn.run(f"test -w {HOME} -a -w {SRV}", hide=True, warn=True,
                       timeout=COMMAND_TIMEOUT, in_stream=False).exited == 0

    def install(self, cxn, host, ctx):
        user = ctx.inventory.sshUser
        sh(cxn, f"sudo -n mkdir -p {HOME} {SRV} && sudo -n chown {user}: {HOME} {SRV}",
           what="creating /opt/kindling and /srv/kindling")
        sh(cxn, f"mkdir -p {STAMPS} {DATA} {RUNS} {SPARK_STATE}")


class ServedWheelhouse:
    """The master's copy of the wheelhouse, served over HTTP on its private address: the laptop
    uploads the wheels once, and the other hosts fetch them from their neighbour (members talk
    freely inside the cluster's security group) instead of N uploads through the master's SSH.

    The master's thread serves it; the other hosts' threads wait for `url` (or the master's
    failure), so a worker never installs from a half-pushed folder."""

    port = 7071
    lifetime = INSTALL_TIMEOUT
    """Seconds the server may live: it is stopped at the end of the deploy, and dies by itself
    if fab itself is killed."""

    def __init__(self, master: Host):
        self.master = master
        self._ready = threading.Event()
        self._url: str | None = None

    def publish(self, url: str | None) -> None:
        """The URL to install from, or None when the master failed before serving; the
        first call wins."""
        if not self._ready.is_set():
            self._url = url
            self._ready.set()

    def url(self, cxn: Connection) -> str:
        if not self._ready.wait(self.lifetime):
            raise HostError(*where(cxn), "python deps", f"the master served no wheelhouse "
                            f"within {self.lifetime}s")
        if self._url is None:
            raise HostError(*where(cxn), "python deps", f"the master ({self.master.name}) "
                            "failed before serving the wheelhouse; see its line")
        return self._url

    def start_command(self) -> str:
        return (f"cd {WHEELHOUSE} && (setsid timeout {self.lifetime} python3 -m http.server "
                f"{self.port} --bind {self.master.privateIp} >/dev/null 2>&1 & "
                f"echo $! > {WHEELHOUSE_SERVER_PID})")

    def stop_command(self) -> str:
        return (f"test -f {WHEELHOUSE_SERVER_PID} && kill $(cat {WHEELHOUSE_SERVER_PID}) "
                f"2>/dev/null; rm -f {WHEELHOUSE_SERVER_PID}; true")


class WheelhouseServer(Service):
    """On the master, before anything waits for cloud-init: the wheelhouse pushed (only the
    wheels it lacks) and served to the other hosts, overlapping the upload with their boot."""

    name = "wheelhouse"
    answer_timeout = 30

    def is_current(self, cxn, host, ctx):
        return False  # the push itself skips the wheels already there

    def install(self, cxn, host, ctx):
        push_wheelhouse(cxn, host, ctx)
        sh(cxn, ctx.served.stop_command(), what="stopping an old wheelhouse server")
        sh(cxn, ctx.served.start_command(), what="serving the wheelhouse")
        url = f"http://{host.privateIp}:{ctx.served.port}/"
        probe = (f"python3 -c \"import urllib.request, time\nfor _ in range({self.answer_timeout * 10}):\n"
                 f"  try: urllib.request.urlopen('{url}', timeout=2); break\n"
                 "  except OSError: time.sleep(0.1)\nelse: raise SystemExit('no answer')\"")
        sh(cxn, probe, what=f"serving the wheelhouse on {url}")
        ctx.served.publish(url)


class PythonDependencies(Service):
    """The venv with the pinned job dependencies, installed by uv (pinned, from the same
    source as the rest) from PyPI, from the pushed wheelhouse (master), or from the master's
    served copy of it (every other host)."""

    name = "python deps"

    def version(self, ctx: DeployContext) -> str:
        wheels = sorted(ctx.wheelhouse.glob("*.whl")) if ctx.wheelhouse else []
        listing = "\n".join(f"{w.name}:{w.stat().st_size}" for w in wheels)
        return file_digest([ctx.constraints]) + hashlib.sha256(listing.encode()).hexdigest()[:8]

    def is_current(self, cxn, host, ctx):
        return read_stamp(cxn, "python-deps") == self.version(ctx)

    def install(self, cxn, host, ctx):
        sh(cxn, f"test -x {PYTHON} || python3 -m venv {VENV}", what="creating the venv")
        constraints = f"{HOME}/constraints.txt"
        cxn.put(str(ctx.constraints), constraints)
        if ctx.wheelhouse:
            if host.name == ctx.inventory.master.name or not ctx.served:
                if not ctx.served:
                    push_wheelhouse(cxn, host, ctx)
                links = WHEELHOUSE
            else:  # plain HTTP inside the cluster's security group: trust that one address
                links = f"{ctx.served.url(cxn)} --trusted-host {ctx.inventory.master.privateIp}"
            source = f"--no-index --find-links {links}"
            fix = ("the wheelhouse has no wheels for this host's Python; rebuild it with "
                   "`fab wheelhouse --target TARGET` (asks the master) and deploy again")
        else:  # fail in seconds, not minutes of retries, when the host cannot reach PyPI
            source = "--retries 1 --timeout 15"
            fix = ("the host cannot install from PyPI; build a wheelhouse for its Python with "
                   "`fab wheelhouse --target TARGET` and pass `fab deploy --wheelhouse DIR`")
        pin = shlex.quote(f"{INSTALLER}=={pins(ctx.constraints)[INSTALLER]}")
        self._run(cxn, f"{PYTHON} -m pip install -q --no-compile --disable-pip-version-check "
                       f"{source} {pin}", fix)
        uv_source = source.replace("--retries 1 --timeout 15", "").replace(
            "--trusted-host", "--allow-insecure-host")
        requirements = " ".join(shlex.quote(r) for r in workload_requirements(ctx.constraints))
        self._run(cxn, f"UV_HTTP_TIMEOUT=15 {VENV}/bin/uv pip install -q --python {PYTHON} "
                       f"--cache-dir {HOME}/uv-cache {uv_source} -c {constraints} {requirements}",
                  fix)
        write_stamp(cxn, "python-deps", self.version(ctx))

    @staticmethod
    def _run(cxn: Connection, command: str, fix: str) -> None:
        result = cxn.run(command, hide=True, warn=True, timeout=INSTALL_TIMEOUT, in_stream=False)
        if result.exited:
            last = ((result.stderr.strip() or result.stdout.strip()).splitlines() or ["no output"])[-1]
            raise HostError(*where(cxn), "installing the job dependencies", f"{last[:200]}; {fix}")


def workload_requirements(constraints: Path) -> list[str]:
    """The `workloads` extra of pyproject.toml: what every host needs to run the jobs."""
    import tomllib

    pyproject = tomllib.loads((constraints.parent / "pyproject.toml").read_text())
    return pyproject["project"]["optional-dependencies"]["workloads"]


def push_wheelhouse(cxn: Connection, host: Host, ctx: DeployContext) -> None:
    """The wheels the host lacks, in one scp: the slowest step of a first deploy (~1 GB)."""
    push_files(cxn, host, ctx.inventory, sorted(ctx.wheelhouse.glob("*.whl")), WHEELHOUSE,
               "copying the wheelhouse")


def push_files(cxn: Connection, host: Host, inventory: Inventory, files: list[Path],
               remote_dir: str, step: str) -> None:
    """Copy the files the host lacks in remote_dir (same name and size = present) in one
    OpenSSH `scp`, pinned like every connection (the cluster's ssh_config): several times
    faster than paramiko's SFTP for big files."""
    sh(cxn, f"mkdir -p {remote_dir}")
    listing = sh(cxn, f"cd {remote_dir} && for f in *; do [ -f \"$f\" ] && "
                      "printf '%s %s\\n' \"$f\" $(stat -c %s \"$f\"); done; true")
    present = dict(line.rsplit(" ", 1) for line in listing.splitlines() if " " in line)
    missing = [str(file) for file in files if present.get(file.name) != str(file.stat().st_size)]
    if not missing:
        return
    ssh = ssh_command(inventory, host)
    try:
        done = subprocess.run(["scp", "-q", *ssh[1:3], *missing, f"{host.name}:{remote_dir}/"],
                              capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise HostError(*where(cxn), step, f"not done within {INSTALL_TIMEOUT}s") from None
    if done.returncode:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise HostError(*where(cxn), step, f"scp exit {done.returncode}: {detail}")


class JvmJars(Service):
    """One feature's jars (ops.jvm: S3A, HDFS) in /opt/kindling/jars/FEATURE on a host: the
    bytes pinned by ops/jars.lock, checked again with sha256sum on the host."""

    def __init__(self, feature: str):
        self.feature = feature
        self.name = f"{feature} jars"

    def is_current(self, cxn, host, ctx):
        return self.feature not in ctx.jars or read_stamp(cxn, self.name.replace(" ", "-")) == \
            self.version(ctx)

    def version(self, ctx: DeployContext) -> str:
        return file_digest([ctx.jars[self.feature] / ".verified"])

    def install(self, cxn, host, ctx):
        local, remote = ctx.jars[self.feature], jar_folder(self.feature)
        push_files(cxn, host, ctx.inventory, sorted(local.glob("*.jar")), remote,
                   f"copying the {self.name}")
        cxn.put(str(local / ".verified"), f"{remote}/SHA256SUMS")
        sh(cxn, f"cd {remote} && sha256sum --quiet -c SHA256SUMS", timeout=INSTALL_TIMEOUT,
           what=f"checking the {self.name}")
        write_stamp(cxn, self.name.replace(" ", "-"), self.version(ctx))


class ProjectWheel(Service):
    """kindling itself, as a wheel built on the control machine (reinstalled when it changes)."""

    name = "kindling wheel"

    def is_current(self, cxn, host, ctx):
        """The stamp matches and the venv has it (a venv made anew, e.g. after a Python
        upgrade, keeps no package: the stamp alone would lie)."""
        return read_stamp(cxn, "project") == ctx.project_wheel.parent.name and cxn.run(
            f"{PYTHON} -c 'import kindling, workloads'", hide=True, warn=True,
            timeout=COMMAND_TIMEOUT, in_stream=False).exited == 0

    def install(self, cxn, host, ctx):
        remote = f"{HOME}/{ctx.project_wheel.name}"
        cxn.put(str(ctx.project_wheel), remote)
        sh(cxn, f"{PYTHON} -m pip install -q --disable-pip-version-check --no-deps "
                f"--force-reinstall {remote}", timeout=INSTALL_TIMEOUT, what="installing kindling")
        write_stamp(cxn, "project", ctx.project_wheel.parent.name)


class StagedData(Service):
    """Data and weights the job reads, pushed to the same path on every host."""

    name = "data"

    def is_current(self, cxn, host, ctx):
        checks = " && ".join(staged_check(r) for r in ctx.staged.values())
        return not checks or cxn.run(checks, hide=True, warn=True, timeout=COMMAND_TIMEOUT,
                                     in_stream=False).exited == 0

    def install(self, cxn, host, ctx):
        for local, remote in ctx.staged.items():  # only what is missing: the rest is in use
            if cxn.run(staged_check(remote), hide=True, warn=True, timeout=COMMAND_TIMEOUT,
                       in_stream=False).exited:
                push_path(cxn, Path(local), remote)


def remote_spark_home(cxn: Connection) -> str:
    return sh(cxn, f"{PYTHON} -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))'",
              what="locating pyspark in the venv")


def fetch_json(cxn: Connection, url: str) -> dict | None:
    """A JSON document fetched on the host (the UIs listen on private addresses only), or None
    when nothing answers."""
    result = cxn.run(f"python3 -c \"import urllib.request; "
                     f"print(urllib.request.urlopen('{url}', timeout=5).read().decode())\"",
                     hide=True, warn=True, timeout=COMMAND_TIMEOUT, in_stream=False)
    if result.exited != 0:
        return None
    return json.loads(result.stdout)


def master_status(cxn: Connection, master: Host) -> dict | None:
    """The Spark master's /json/ document."""
    return fetch_json(cxn, f"http://{master.privateIp}:{spark.MASTER_WEBUI_PORT}/json/")


def namenode_info(cxn: Connection, master: Host) -> dict | None:
    """The NameNode's JMX bean NameNodeInfo (live DataNodes, capacity), fetched on the master."""
    document = fetch_json(cxn, f"http://{master.privateIp}:{hdfs.NAMENODE_HTTP_PORT}/jmx?"
                               "qry=Hadoop:service=NameNode,name=NameNodeInfo")
    beans = (document or {}).get("beans") or [None]
    return beans[0]  # None while the NameNode is starting: its beans are not registered yet


class HdfsDaemon(Service):
    """A NameNode or DataNode from the HDFS jars, its configuration in HADOOP_CONF, its data in
    HDFS_STATE; restarted when its configuration or jars change."""

    daemon_class = ""
    label = ""

    def version(self, host: Host, ctx: DeployContext) -> str:
        files = self.config(host, ctx)
        text = "".join(f"{name}\n{body}" for name, body in sorted(files.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16] + JvmJars("hdfs").version(ctx)

    def config(self, host: Host, ctx: DeployContext) -> dict[str, str]:
        inventory = ctx.inventory
        return hdfs.config_files(inventory.master.privateIp, host.privateIp, HDFS_STATE,
                                 min(3, len(inventory.workers)))

    def running(self, cxn: Connection, host: Host, ctx: DeployContext) -> bool:
        raise NotImplementedError

    def is_current(self, cxn, host, ctx):
        return (read_stamp(cxn, self.label) == self.version(host, ctx)
                and self.running(cxn, host, ctx))

    def install(self, cxn, host, ctx):
        jars = jar_folder("hdfs")
        pid = f"{HDFS_STATE}/{self.label}.pid"
        sh(cxn, f"mkdir -p {HDFS_STATE} {BIN} && "
                + write_files_command(HADOOP_CONF, self.config(host, ctx)), what="writing the "
                "HDFS configuration")
        sh(cxn, f"printf %s {shlex.quote(hdfs.shell_command(HADOOP_CONF, jars))} > {BIN}/hdfs "
                f"&& chmod +x {BIN}/hdfs", what="installing the hdfs command")
        sh(cxn, hdfs.stop_command(pid), what=f"stopping the old {self.label}")
        self.prepare(cxn, host, ctx)
        sh(cxn, hdfs.start_command(HADOOP_CONF, jars, self.daemon_class,
                                   f"{HDFS_STATE}/{self.label}.log", pid),
           what=f"starting the {self.label}")
        write_stamp(cxn, self.label, self.version(host, ctx))

    def prepare(self, cxn: Connection, host: Host, ctx: DeployContext) -> None:
        """What must be done before the daemon starts."""


class NameNode(HdfsDaemon):
    """HDFS's NameNode on the master, formatted on its first start only."""

    name = "hdfs namenode"
    label = "namenode"
    daemon_class = hdfs.NAMENODE_CLASS
    registration_timeout = 120

    def running(self, cxn, host, ctx):
        return namenode_info(cxn, host) is not None

    def prepare(self, cxn, host, ctx):
        sh(cxn, hdfs.format_command(HADOOP_CONF, jar_folder("hdfs"), HDFS_STATE,
                                    ctx.inventory.clusterName),
           timeout=INSTALL_TIMEOUT, what="formatting the NameNode (first start only)")

    def health_check(self, cxn, host, ctx):
        """Every worker's DataNode live on the NameNode, within a deadline."""
        deadline = time.monotonic() + self.registration_timeout
        while True:
            down = down_datanodes(ctx.inventory, namenode_info(cxn, host))
            if not down:
                return
            if time.monotonic() > deadline:
                raise KindlingError(f"HDFS DataNodes on {', '.join(down)} are not live on the "
                                    f"NameNode after {self.registration_timeout}s; see "
                                    f"{HDFS_STATE}/datanode.log on those hosts")
            time.sleep(1)


class DataNode(HdfsDaemon):
    """HDFS's DataNode on a worker, storing blocks under HDFS_STATE/data."""

    name = "hdfs datanode"
    label = "datanode"
    daemon_class = hdfs.DATANODE_CLASS

    def running(self, cxn, host, ctx):
        return cxn.run(f"kill -0 $(cat {HDFS_STATE}/{self.label}.pid 2>/dev/null) 2>/dev/null",
                       hide=True, warn=True, timeout=COMMAND_TIMEOUT, in_stream=False).exited == 0


def down_datanodes(inventory: Inventory, info: dict | None) -> list[str]:
    """`name (ip)` of each worker whose DataNode the NameNode (its NameNodeInfo) does not see
    live; every worker when the NameNode does not answer (None)."""
    live = hdfs.live_datanodes(info) if info else {}
    return [f"{w.name} ({w.privateIp})" for w in inventory.workers if w.privateIp not in live]


class SparkMaster(Service):
    """The standalone master on the master host, bound to its private address."""

    name = "spark master"
    registration_timeout = 90

    def is_current(self, cxn, host, ctx):
        return master_status(cxn, host) is not None

    def install(self, cxn, host, ctx):
        sh(cxn, spark.master_start_command(remote_spark_home(cxn), host.privateIp, SPARK_STATE,
                                           python=PYTHON), what="starting the Spark master")

    def health_check(self, cxn, host, ctx):
        """Every worker host registered ALIVE, within a deadline."""
        wanted = {w.privateIp for w in ctx.inventory.workers}
        deadline = time.monotonic() + self.registration_timeout
        alive: set[str] = set()
        while time.monotonic() < deadline:
            status = master_status(cxn, host)
            alive = set(spark.alive_workers(status)) if status else set()
            if wanted <= alive:
                return
            time.sleep(1)
        missing = ", ".join(w.name for w in ctx.inventory.workers if w.privateIp not in alive)
        raise KindlingError(f"Spark workers on {missing} did not register with the master within "
                        f"{self.registration_timeout}s; see {SPARK_STATE}/logs on those hosts")


class SparkWorker(Service):
    """One standalone worker per worker host, offering all its cores and 80% of its memory.

    Started ready for Spark's graceful decommissioning (SIGPWR, which the spot watcher sends on
    an interruption notice), with the notice file in its environment, which its executors and
    so a TF node inherit."""

    name = "spark worker"
    options = {"SPARK_WORKER_OPTS": "-Dspark.decommission.enabled=true",
               SPOT_NOTICE_ENV: SPOT_NOTICE_FILE}

    def version(self, ctx: DeployContext) -> str:
        return hashlib.sha256(json.dumps([self.options, ctx.inventory.sparkMasterUrl],
                                         sort_keys=True).encode()).hexdigest()[:16]

    def is_current(self, cxn, host, ctx):
        """Running here (the master lists a killed worker as ALIVE for a minute), ALIVE on the
        master (not DEAD, not DECOMMISSIONED), started with these options."""
        pid = spark.worker_pid_file(SPARK_STATE, 1)
        started_with = cxn.run(f"kill -0 $(cat {pid} 2>/dev/null) 2>/dev/null && "
                               f"cat {STAMPS}/spark-worker", hide=True, warn=True,
                               timeout=COMMAND_TIMEOUT, in_stream=False).stdout.strip()
        if started_with != self.version(ctx):  # not running here, or with other options
            return False
        status = master_status(cxn, ctx.inventory.master)
        return bool(status) and host.privateIp in spark.alive_workers(status)

    def install(self, cxn, host, ctx):
        cores = sh(cxn, "nproc")
        memory = sh(cxn, "awk '/MemTotal/ {printf \"%dm\", $2 / 1024 * 0.8}' /proc/meminfo")
        sh(cxn, f"bash -c {shlex.quote(spark.worker_stop_command(remote_spark_home(cxn), 1, SPARK_STATE))} || true")
        sh(cxn, spark.worker_start_command(remote_spark_home(cxn), host.privateIp,
                                           ctx.inventory.sparkMasterUrl, 1, int(cores), memory,
                                           SPARK_STATE, python=PYTHON, extra_env=self.options),
           what="starting the Spark worker")
        write_stamp(cxn, "spark-worker", self.version(ctx))


def stops(inventory: Inventory) -> bool:
    """The master's watcher stops the cluster: it knows the instances and has a limit."""
    return any(host.instanceId for host in inventory.hosts) and bool(
        inventory.idleStopMinutes or inventory.maxHours)


class Watcher(Service):
    """The watcher (ops.autostop: idle auto-stop, spot notices) on every host, as a systemd
    service where systemd runs the host, else a detached process with the same code; restarted
    when its settings change."""

    name = "watcher"
    unit = "kindling-autostop"

    def settings(self, host: Host, ctx: DeployContext) -> dict:
        inventory = ctx.inventory
        is_master = host == inventory.master
        idle_seconds = inventory.idleStopMinutes * 60 or inventory.maxHours * 3600
        others = [h for h in inventory.hosts if h != inventory.master]
        stoppable = [h for h in inventory.hosts if h.instanceId] if is_master and stops(
            inventory) else []
        return {
            "host": host.name, "address": host.privateIp, "runs": RUNS, "state": AUTOSTOP_STATE,
            "idle_minutes": inventory.idleStopMinutes, "max_hours": inventory.maxHours,
            "interval": max(1.0, min(30.0, idle_seconds / 10)),
            "spark_master": (f"http://{host.privateIp}:{spark.MASTER_WEBUI_PORT}/json/"
                             if is_master else ""),
            "peers": [h.privateIp for h in others] if is_master else [],
            "instance_ids": [h.instanceId for h in stoppable if not h.spot],
            "spot_ids": [h.instanceId for h in stoppable if h.spot],
            "region": inventory.region, "ec2_endpoint": inventory.ec2Endpoint,
            "imds_endpoint": inventory.imdsEndpoint,
            "spot_notice": SPOT_NOTICE_FILE if host.spot else "",
            "spark_worker_pid": spark.worker_pid_file(SPARK_STATE, 1),
        }

    def version(self, host: Host, ctx: DeployContext) -> str:
        text = json.dumps(self.settings(host, ctx), sort_keys=True) + ctx.project_wheel.name
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def running(self, cxn: Connection) -> bool:
        check = (f"systemctl is-active --quiet {self.unit} 2>/dev/null || "
                 f"(p=$(cat {AUTOSTOP_STATE}/watcher.pid 2>/dev/null) && kill -0 \"$p\")")
        return cxn.run(check, hide=True, warn=True, timeout=COMMAND_TIMEOUT,
                       in_stream=False).exited == 0

    def is_current(self, cxn, host, ctx):
        return read_stamp(cxn, "autostop") == self.version(host, ctx) and self.running(cxn)

    def install(self, cxn, host, ctx):
        settings = f"{HOME}/autostop.json"
        # a notice from before (this host was spot then) is not this host's to act on
        sh(cxn, f"mkdir -p {AUTOSTOP_STATE} && rm -f {SPOT_NOTICE_FILE} && " + write_files_command(HOME, {
            "autostop.json": json.dumps(self.settings(host, ctx), indent=1)}),
           what="writing the auto-stop settings")
        command = f"{PYTHON} -m ops.autostop {settings}"
        if cxn.run("test -d /run/systemd/system", hide=True, warn=True,
                   in_stream=False).exited == 0:
            unit = (f"[Unit]\nDescription=kindling idle auto-stop\nAfter=network-online.target\n"
                    f"[Service]\nExecStart={command}\nRestart=always\nRestartSec=10\n"
                    f"[Install]\nWantedBy=multi-user.target\n")
            sh(cxn, f"printf %s {shlex.quote(unit)} | sudo tee /etc/systemd/system/{self.unit}.service"
                    f" > /dev/null && sudo systemctl daemon-reload && sudo systemctl enable "
                    f"--quiet {self.unit} && sudo systemctl restart {self.unit}",
               what="starting the auto-stop service")
        else:
            pid = f"{AUTOSTOP_STATE}/watcher.pid"
            sh(cxn, hdfs.stop_command(pid) + f"; (setsid nohup {command} > "
                    f"{AUTOSTOP_STATE}/watcher.log 2>&1 < /dev/null & echo $! > {pid})",
               what="starting the auto-stop watcher")
        write_stamp(cxn, "autostop", self.version(host, ctx))
