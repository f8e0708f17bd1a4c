"""The job dependencies on every host: the venv, installed by uv from PyPI, or from a wheelhouse
pushed to the master once and served from there to the other hosts."""

from __future__ import annotations

import contextlib
import hashlib
import shlex
import subprocess
import threading
import time
from pathlib import Path

from fabric import Connection

from kindling import Host, HostError, Inventory
from ops.remote import (HOME, INSTALL_TIMEOUT, PYTHON, VENV, WHEELHOUSE, WHEELHOUSE_SERVER_PID,
                        answers_command, read_stamp, sh, where, write_stamp)
from ops.services.base import DeployContext, Step, file_digest
from ops.ssh import jump_host, ssh_command
from ops.wheelhouse import INSTALLER, pins


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


class WheelhouseServer(Step):
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
        sh(cxn, answers_command(url, self.answer_timeout), what=f"serving the wheelhouse on {url}")
        ctx.served.publish(url)


class PythonDependencies(Step):
    """The venv with the pinned job dependencies, installed by uv (pinned, from the same
    source as the rest) from PyPI, from the pushed wheelhouse (master), or from the master's
    served copy of it (every other host)."""

    name = "python deps"
    stamp = "python-deps"
    task = "fab deploy"
    """The task that installs it, in the fixes it names."""

    def requirements(self, constraints: Path) -> list[tuple[list[str], str]]:
        """(requirements, uv options) installed in turn."""
        return [(workload_requirements(constraints), ""),
                (no_deps_requirements(constraints), " --no-deps")]

    def version(self, ctx: DeployContext) -> str:
        wheels = sorted(ctx.wheelhouse.glob("*.whl")) if ctx.wheelhouse else []
        listing = "\n".join(f"{w.name}:{w.stat().st_size}" for w in wheels)
        return file_digest([ctx.constraints]) + hashlib.sha256(listing.encode()).hexdigest()[:8]

    def is_current(self, cxn, host, ctx):
        return read_stamp(cxn, self.stamp) == self.version(ctx)

    def install(self, cxn, host, ctx):
        sh(cxn, f"test -x {PYTHON} || python3 -m venv {VENV}", what="creating the venv")
        source, fix = wheel_source(cxn, host, ctx, self.task)
        pin = shlex.quote(f"{INSTALLER}=={pins(ctx.constraints)[INSTALLER]}")
        run_install(cxn, f"{PYTHON} -m pip install -q --no-compile --disable-pip-version-check "
                         f"{source} {pin}", fix)
        uv = uv_install(cxn, ctx, source)
        for requirements, options in self.requirements(ctx.constraints):
            if requirements:
                run_install(cxn, uv + options + " " + " ".join(map(shlex.quote, requirements)), fix)
        write_stamp(cxn, self.stamp, self.version(ctx))


class YourRequirements(Step):
    """Your requirements' lock (ops.requirements) in the venv, by uv from the same source as
    kindling's dependencies; its stamp, named by what was asked, holds the lock's hash."""

    name = "requirements"

    def is_current(self, cxn, host, ctx):
        lock = ctx.lock
        return lock is None or read_stamp(cxn, lock.requirements.stamp(ctx.constraints)) == lock.key

    def install(self, cxn, host, ctx):
        lock = ctx.lock
        remote = f"{HOME}/requirements-{lock.key}.txt"
        sh(cxn, f"cat > {remote}", stdin=lock.text, what="writing the requirements' lock")
        source, fix = wheel_source(cxn, host, ctx)
        run_install(cxn, f"{uv_install(cxn, ctx, source)} -r {remote}", fix,
                    f"installing {lock.requirements.origin}")
        write_stamp(cxn, lock.requirements.stamp(ctx.constraints), lock.key)


def wheel_source(cxn: Connection, host: Host, ctx: DeployContext,
                 task: str = "fab deploy") -> tuple[str, str]:
    """pip's options to install from where this deploy's wheels are (PyPI, the wheelhouse pushed
    to the master, or the master's served copy of it), and the fix (naming the task that
    installs) when that fails."""
    if not ctx.wheelhouse:  # fail in seconds, not minutes of retries, when the host cannot reach PyPI
        return "--retries 1 --timeout 15", (
            "the host cannot install from PyPI; build a wheelhouse for its Python with "
            f"`fab wheelhouse --target TARGET` and pass `{task} --wheelhouse DIR`")
    if host.name == ctx.inventory.master.name or not ctx.served:
        if not ctx.served:
            push_wheelhouse(cxn, host, ctx)
        links = WHEELHOUSE
    else:  # plain HTTP inside the cluster's security group: trust that one address
        links = f"{ctx.served.url(cxn)} --trusted-host {ctx.inventory.master.privateIp}"
    return f"--no-index --find-links {links}", (
        "the wheelhouse has no wheels for this host's Python; rebuild it with "
        f"`fab wheelhouse --target TARGET` (asks the master) and run `{task}` again")


def uv_install(cxn: Connection, ctx: DeployContext, source: str) -> str:
    """The hosts' uv installing into the venv from source (wheel_source's pip options), within
    kindling's pins (constraints.txt, copied to the host)."""
    constraints = f"{HOME}/constraints.txt"
    cxn.put(str(ctx.constraints), constraints)
    uv_source = source.replace("--retries 1 --timeout 15", "").replace(
        "--trusted-host", "--allow-insecure-host")
    return (f"UV_HTTP_TIMEOUT=15 {VENV}/bin/uv pip install -q --python {PYTHON} "
            f"--cache-dir {HOME}/uv-cache {uv_source} -c {constraints}")


def run_install(cxn: Connection, command: str, fix: str,
                step: str = "installing the job dependencies") -> None:
    result = cxn.run(command, hide=True, warn=True, timeout=INSTALL_TIMEOUT, in_stream=False)
    if result.exited:
        last = ((result.stderr.strip() or result.stdout.strip()).splitlines() or ["no output"])[-1]
        raise HostError(*where(cxn), step, f"{last[:200]}; {fix}")


def workload_requirements(constraints: Path) -> list[str]:
    """The `workloads` extra of pyproject.toml: what every host needs to run the jobs."""
    return pyproject(constraints)["project"]["optional-dependencies"]["workloads"]


def notebook_requirements(constraints: Path) -> list[str]:
    """The `notebook` extra: JupyterLab, which `fab notebook` installs on the master only."""
    return pyproject(constraints)["project"]["optional-dependencies"]["notebook"]


def no_deps_requirements(constraints: Path) -> list[str]:
    """What every host installs beside them without its dependencies (pyproject.toml's
    [tool.kindling] no-deps: tf-keras, whose `tensorflow` is tensorflow-cpu here)."""
    return pyproject(constraints).get("tool", {}).get("kindling", {}).get("no-deps", [])


def pyproject(constraints: Path) -> dict:
    """The pyproject.toml beside constraints.txt."""
    import tomllib

    return tomllib.loads((constraints.parent / "pyproject.toml").read_text())


def push_wheelhouse(cxn: Connection, host: Host, ctx: DeployContext) -> None:
    """The wheels the host lacks, in one scp: the slowest step of a first deploy (~1 GB)."""
    push_files(cxn, host, ctx.inventory, sorted(ctx.wheelhouse.glob("*.whl")), WHEELHOUSE,
               "copying the wheelhouse")


JUMPS_AT_ONCE = threading.BoundedSemaphore(8)
"""OpenSSH copies through the master at once. Each opens a new connection to the master's sshd,
which by default (MaxStartups 10:30:100) drops new connections at random once 10 are still
authenticating: 24 workers copying at once would lose some."""
DROPPED = ("Connection closed", "Connection reset", "kex_exchange_identification")
"""How a connection sshd dropped at MaxStartups shows in scp's stderr: worth another try."""


def push_files(cxn: Connection, host: Host, inventory: Inventory, files: list[Path],
               remote_dir: str, step: str) -> None:
    """Copy the files the host lacks in remote_dir (same name and size = present) in one
    OpenSSH `scp`, pinned like every connection (the cluster's ssh_config): several times
    faster than paramiko's SFTP for big files. Through the master, at most JUMPS_AT_ONCE
    copies at once, and a dropped connection is tried again."""
    sh(cxn, f"mkdir -p {remote_dir}")
    listing = sh(cxn, f"cd {remote_dir} && for f in *; do [ -f \"$f\" ] && "
                      "printf '%s %s\\n' \"$f\" $(stat -c %s \"$f\"); done; true")
    present = dict(line.rsplit(" ", 1) for line in listing.splitlines() if " " in line)
    missing = [str(file) for file in files if present.get(file.name) != str(file.stat().st_size)]
    if not missing:
        return
    argv = ["scp", "-q", *ssh_command(inventory, host)[1:3], *missing, f"{host.name}:{remote_dir}/"]
    slot = JUMPS_AT_ONCE if jump_host(inventory, host) else contextlib.nullcontext()
    for attempt in range(3):
        with slot:
            try:
                done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                      timeout=INSTALL_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise HostError(*where(cxn), step, f"not done within {INSTALL_TIMEOUT}s") from None
        if not (done.returncode == 255 and any(sign in done.stderr for sign in DROPPED)):
            break
        time.sleep(1 + attempt)  # a backoff: sshd frees its slots as other copies authenticate
    if done.returncode:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise HostError(*where(cxn), step, f"scp exit {done.returncode}: {detail}")
