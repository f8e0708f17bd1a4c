"""A caching apt proxy (apt-cacher-ng) on the control machine's bridge address: the rehearsal's package mirror.

Why: rehearsal hosts have no route out, as a private subnet without NAT; their apt reaches Debian
only through this proxy, as a VPC's package mirror would serve EC2 hosts. It runs in the foreground
as a child of the test process (it dies with it), with its own configuration: it listens on the
given address only, and its Debian and Debian-Security backends are the mirrors this machine's apt
is configured with (its packaged default, ftp.debian.org, may be unreachable). The cache lives in
CACHE_ROOT/apt-cacher-ng and outlives the run, so later runs download nothing again.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import time
from pathlib import Path

from netns_cluster import _port_open
from os_image import CACHE_ROOT, debian_mirrors
from kindling import UserError

APT_PACKAGES = "apt-cacher-ng"
PORT = 3142
START_SECONDS = 30
SUPPORT_DIR = Path("/usr/lib/apt-cacher-ng")
PR_SET_PDEATHSIG = 1

CONFIG = """\
# written by tests/apt_proxy.py
CacheDir: {cache}
LogDir: {logs}
SupportDir: {support}
BindAddress: {address}
Port: {port}
ForeGround: 1
ExThreshold: 4
Remap-debrep: file:deb_mirror*.gz /debian ; {debian}
Remap-secdeb: security.debian.org deb.debian.org/debian-security /debian-security ; {security}
"""


def missing_prerequisites() -> str | None:
    if not Path("/usr/sbin/apt-cacher-ng").exists():
        return f"apt-cacher-ng (apt-get install {APT_PACKAGES})"
    return None


class AptProxy:
    """apt-cacher-ng bound to `address`:PORT; `workdir` holds its configuration and logs."""

    def __init__(self, address: str, workdir: Path, cache_dir: Path = CACHE_ROOT / "apt-cacher-ng"):
        self.address = address
        self.workdir = Path(workdir)
        self.cache_dir = cache_dir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{PORT}"

    def apt_conf(self) -> str:
        """The apt.conf.d snippet that sends a host's apt through this proxy."""
        return f'Acquire::http::Proxy "{self.url}";\n'

    def start(self) -> "AptProxy":
        reason = missing_prerequisites()
        if reason:
            raise UserError(f"the rehearsal's apt proxy needs {reason}")
        _check_port_free(self.address)
        debian, security = debian_mirrors()
        config_dir, logs = self.workdir / "config", self.workdir / "logs"
        for folder in (config_dir, logs, self.cache_dir):
            folder.mkdir(parents=True, exist_ok=True)
        (config_dir / "acng.conf").write_text(CONFIG.format(
            cache=self.cache_dir, logs=logs, support=SUPPORT_DIR, address=self.address, port=PORT,
            debian=debian, security=security or f"{debian.rstrip('/')}-security"))
        with open(logs / "stdout.log", "w") as output:
            self.process = subprocess.Popen(
                ["/usr/sbin/apt-cacher-ng", "-c", str(config_dir)], stdin=subprocess.DEVNULL,
                stdout=output, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + START_SECONDS
        while not _port_open(self.address, PORT):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise UserError(f"apt-cacher-ng did not start on {self.url}: {_tail(logs)}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


def _check_port_free(address: str) -> None:
    """Fail when something else (an apt-cacher-ng service on every address?) holds the port: the
    proxy would exit while that listener answered in its place."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy does: TIME_WAIT is no owner
        try:
            probe.bind((address, PORT))
        except OSError as exc:
            raise UserError(f"port {PORT} on {address} is taken ({exc.strerror}); stop whatever listens there "
                            f"(`ss -ltnp sport = {PORT}`; an apt-cacher-ng service: `service apt-cacher-ng stop`)") from None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, so a crash leaves no proxy."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _tail(logs: Path) -> str:
    lines = [line for path in sorted(logs.glob("*.log")) if path.exists()
             for line in path.read_text(errors="replace").strip().splitlines()[-3:]]
    return " / ".join(lines) or "no log"
