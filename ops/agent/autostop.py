"""The watcher on every host of a cluster: idle auto-stop, and on spot hosts the interruption
notices (ops.agent.spot).

It is armed at first boot by the user data (infra/cloud_init.py writes what ops.agent.install
lays out: this code, the settings, a systemd unit), so no `fab deploy` is needed for a cluster to
stop itself; `fab deploy` only upgrades it. Each host stops itself with an OS shutdown: EC2 then
stops an on-demand host (its disk kept) and terminates a one-time spot host, as infra's
`instance_initiated_shutdown_behavior` says, so no host needs any EC2 permission.

The master decides for the cluster. Every other host reports what keeps it busy (a live job
process of a run, an interactive SSH login) to the master's endpoint every interval and gets the
decision back. The master adds its own, a running Spark application and a notebook kernel running
a cell (not the notebook's own Spark application): when nothing was busy anywhere for
`idleStopMinutes`, or the cluster has been up `maxHours`, the cluster stops, the master last. It
fails closed: a host the master does not hear from blocks the idle stop (it may be running a
job), until it has been silent longer than a host waits for its master, by when it has stopped
itself (or it is gone: an interrupted spot worker). A host that cannot reach its master for
`idleStopMinutes` stops itself. `maxHours` counts from the host's boot, the idle time from the
last activity (at first from the watcher's first start in this boot, which on EC2 is the boot),
both kept across a restart: an upgraded watcher neither forgets the idle time nor pushes
`maxHours` out.

Runs on the hosts as its own user, not root (ops.agent.install): standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ops.agent import spot

PORT = 7091
"""The master's endpoint, on its private address: the other hosts' reports."""
POLL_TIMEOUT = 5
SILENT_INTERVALS = 3
"""A host not heard from for this many intervals does not answer."""
STOP_GRACE_INTERVALS = 2
"""The master shuts down this many intervals after its decision: every host that reports has
been told by then."""
SPARK_MASTER_WEBUI_PORT = 8080
NOTEBOOK_APP = "kindling-notebook"  # `fab notebook`'s kernels' Spark application: not activity
LOGIN = re.compile(rb"^sshd(?:-session)?: \S+@pts/")
"""An interactive SSH login's sshd process title (fab's own commands run without a terminal)."""


@dataclass(frozen=True)
class Settings:
    """The watcher's settings file (ops.agent.install.settings writes it)."""
    host: str
    """This host's inventory name (master, worker-0, ...)."""
    master: str
    """The master's hostname (VPC DNS resolves it; the master listens on its address)."""
    runs: str
    state: str
    idle_minutes: float
    max_hours: float = 0.0
    interval: float = 30.0
    peers: tuple[str, ...] = ()
    """The master only: the names of the hosts that report to it."""
    spark_master: bool = False
    """The master: a running Spark application keeps the cluster busy."""
    notebook_kernels: str = ""
    """The master: where a notebook kernel notes `<pid>.busy` while a cell runs."""
    spot_notice: str = ""
    """A spot host's notice file (ops.agent.spot): set, the watcher polls for notices."""
    spark_worker_pid: str = ""
    imds_endpoint: str = ""
    """"" for the instance's own metadata service (spot interruption notices)."""
    shutdown: tuple[str, ...] = ("/usr/bin/systemctl", "poweroff")
    """How the host stops itself, as root through sudo (by the full path its sudoers rule names;
    tests on hosts that share this machine's kernel record it).
    systemctl runs only where systemd is the host's own init (pid 1): from a namespace host it
    would power off the machine."""
    port: int = PORT
    version: str = ""

    @classmethod
    def load(cls, path: str) -> "Settings":
        data = json.loads(Path(path).read_text())
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @property
    def is_master(self) -> bool:
        return self.host == "master"

    @property
    def stops(self) -> bool:
        return bool(self.idle_minutes or self.max_hours)

    @property
    def patience(self) -> float:
        """Seconds a host waits for its master before it stops itself."""
        return self.idle_minutes * 60


def _init_start_ticks() -> int:
    """When this host's init (pid 1) started, in clock ticks after the kernel booted."""
    return int(Path("/proc/1/stat").read_text().rsplit(")", 1)[1].split()[19])


def uptime() -> float:
    """Seconds since this host booted: since its init (pid 1) started. On EC2 that is the
    instance's boot; on hosts that share a kernel (the tests' namespaces, where /proc/uptime is
    the machine's) it is the host's own start. Immune to wall-clock steps (CLOCK_BOOTTIME)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) - _init_start_ticks() / os.sysconf("SC_CLK_TCK")


def boot_id() -> str:
    """This boot's identity: the kernel's boot id (a new one at each EC2 boot) and init's start
    (a new one at each namespace host's start)."""
    return f"{Path('/proc/sys/kernel/random/boot_id').read_text().strip()}/{_init_start_ticks()}"


def live_processes(runs: str) -> list[str]:
    """`<run>/<process>` of every job process started since this boot whose pid is alive and
    has no exit code yet (a pid file from before a stop may name an unrelated process now)."""
    pid_files = (p for p in Path(runs).glob("*/*.pid") if not p.with_suffix(".rc").exists())
    return sorted(f"{pid_file.parent.name}/{pid_file.stem}" for pid_file in alive(pid_files))


def alive(pid_files) -> list[Path]:
    """The pid files written since this boot that name a live process. One the watcher may not
    signal (another user's) is alive."""
    booted, live = time.time() - uptime(), []
    for pid_file in pid_files:
        try:
            if pid_file.stat().st_mtime >= booted:
                os.kill(int(pid_file.read_text().strip() or 0), 0)
                live.append(pid_file)
        except PermissionError:
            live.append(pid_file)
        except (OSError, ValueError):
            continue
    return live


def logins() -> int:
    """Interactive SSH sessions on this host."""
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            count += bool(LOGIN.match(cmdline.read_bytes()))
        except OSError:
            continue
    return count


def fetch_json(url: str, body: dict | None = None) -> dict | None:
    """GET url (POST body as JSON, if given); None when nothing answers."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with no_proxy.open(request, timeout=POLL_TIMEOUT) as answer:
            return json.load(answer)
    except (OSError, ValueError):
        return None


def local_activity(settings: Settings) -> list[str]:
    """Why this host is busy (empty: idle)."""
    reasons = [f"job process {p}" for p in live_processes(settings.runs)]
    reasons += [f"notebook kernel {note.stem} running a cell" for note in alive(
        Path(settings.notebook_kernels).glob("*.busy") if settings.notebook_kernels else ())]
    sessions = logins()
    if sessions:
        reasons.append(f"{sessions} SSH login(s)")
    if settings.spark_master:
        url = f"http://{settings.master}:{SPARK_MASTER_WEBUI_PORT}/json/"
        apps = (fetch_json(url) or {}).get("activeapps") or []
        reasons += [f"Spark application {app.get('id', '?')}" for app in apps
                    if app.get("name") != NOTEBOOK_APP]
    return [f"{settings.host}: {reason}" for reason in reasons]


@dataclass
class Clock:
    """What the master's decision depends on, in seconds since boot."""
    up: float
    last_active: float
    heard: dict[str, float] = field(default_factory=dict)
    """Peer name -> when it last reported (or when this watcher started listening)."""


def silent_peers(clock: Clock, settings: Settings) -> dict[str, float]:
    """Peer -> seconds since it last reported, for the peers that block the idle stop: silent
    for SILENT_INTERVALS, and not yet long enough to have stopped themselves."""
    silent = {}
    for peer, heard in clock.heard.items():
        quiet = clock.up - heard
        if SILENT_INTERVALS * settings.interval <= quiet <= settings.patience + (
                SILENT_INTERVALS * settings.interval):
            silent[peer] = quiet
    return silent


def decide(clock: Clock, settings: Settings) -> tuple[str, float, dict[str, float]]:
    """(why the cluster stops now, or ""; when it would stop if it stays as it is, in seconds
    since boot, 0 for never; the silent peers that hold the idle stop back)."""
    deadlines = []
    silent = silent_peers(clock, settings)
    if settings.idle_minutes > 0:
        deadlines.append((clock.last_active + settings.idle_minutes * 60,
                          f"idle for {settings.idle_minutes:g} min (idleStopMinutes)", True))
    if settings.max_hours > 0:
        deadlines.append((settings.max_hours * 3600,
                          f"up for {settings.max_hours:g} h (maxHours)", False))
    if not deadlines:
        return "", 0.0, silent
    due = [(at, why) for at, why, idle in deadlines if clock.up >= at and not (idle and silent)]
    stop_at = min(at for at, _, _ in deadlines)
    return (min(due)[1] if due else ""), stop_at, silent


def decide_alone(up: float, master_reached: float, told: str, settings: Settings) -> str:
    """A host other than the master: why it stops now (the master said so, the master has not
    answered for idleStopMinutes, or its own maxHours), or ""."""
    if told:
        return f"the master stopped the cluster: {told}"
    if settings.idle_minutes > 0 and up - master_reached >= settings.patience:
        return (f"the master ({settings.master}) did not answer for "
                f"{settings.idle_minutes:g} min (idleStopMinutes)")
    if settings.max_hours > 0 and up >= settings.max_hours * 3600:
        return f"up for {settings.max_hours:g} h (maxHours)"
    return ""


class Watcher:
    """One host's watcher: its state survives a restart within the same boot (status.json)."""

    def __init__(self, settings: Settings, clock=uptime):
        self.settings, self.clock = settings, clock
        self.state = Path(settings.state)
        self.state.mkdir(parents=True, exist_ok=True)
        self.boot = boot_id()
        self.lock = threading.Lock()
        started = clock()
        before = self._read("status.json")
        listens_to = settings.peers if settings.is_master else ("master",)
        # idle since the last activity this boot noted, else since this boot's first watcher
        # start (on EC2 the boot itself: the user data or the unit starts it)
        self.times = Clock(started, before.get("lastActive", started) if before.get(
            "boot") == self.boot else started, {peer: started for peer in listens_to})
        self.reports: dict[str, list[str]] = {}
        self.decision, self.decided_at = "", 0.0

    def _read(self, name: str) -> dict:
        try:
            return json.loads((self.state / name).read_text())
        except (OSError, ValueError):
            return {}

    def _write(self, status: dict) -> None:
        self._save({"boot": self.boot, "checked": time.time(), "up": self.times.up,
                    "host": self.settings.host, "idleStopMinutes": self.settings.idle_minutes,
                    "maxHours": self.settings.max_hours, **status})

    def _save(self, status: dict) -> None:
        """status.json, replaced whole (a temporary file a stopped root watcher left goes)."""
        temporary = self.state / "status.json.tmp"
        temporary.unlink(missing_ok=True)
        temporary.write_text(json.dumps(status))
        temporary.replace(self.state / "status.json")

    def report(self, host: str, active: list[str]) -> str:
        """A peer's report: noted; the answer is the cluster's decision ("" to keep going)."""
        with self.lock:
            self.times.heard[host] = self.clock()
            self.reports[host] = [str(reason) for reason in active]
            return self.decision

    def master_round(self) -> str:
        """Add up the cluster, decide, write status.json; why this host shuts down now, or ""."""
        now = self.clock()
        local = local_activity(self.settings)
        with self.lock:
            self.times.up = now
            silent_before = {p for p, h in self.times.heard.items()
                             if now - h >= SILENT_INTERVALS * self.settings.interval}
            active = local + [r for peer, reasons in sorted(self.reports.items())
                              if peer not in silent_before for r in reasons]  # a stable order
            if active and not self.decision:
                self.times.last_active = now
            why, stop_at, silent = decide(self.times, self.settings)
            if why and not self.decision:
                self.decision, self.decided_at = why, now
                print(f"{time.strftime('%H:%M:%S')} stopping the cluster: {why}", flush=True)
        self._write({"lastActive": self.times.last_active, "active": active, "stopAt": stop_at,
                     "silent": silent, "decision": self.decision})
        grace = STOP_GRACE_INTERVALS * self.settings.interval if self.settings.peers else 0
        return self.decision if self.decision and now - self.decided_at >= grace else ""

    def peer_round(self) -> str:
        """Report to the master; why this host shuts down now, or ""."""
        now = self.clock()
        active = local_activity(self.settings)
        answer = fetch_json(f"http://{self.settings.master}:{self.settings.port}/report",
                            {"host": self.settings.host, "active": active})
        with self.lock:
            self.times.up = now
            if answer is not None:
                self.times.heard["master"] = now
            reached = self.times.heard["master"]
        why = decide_alone(now, reached, (answer or {}).get("stop", ""), self.settings)
        self._write({"active": active, "masterReached": reached, "answered": answer is not None,
                     "decision": why})
        return why

    def shut_down(self, why: str) -> bool:
        """Run the shutdown command, noting it first in status.json; True once it ran."""
        command = list(self.settings.shutdown)
        systemd_init = Path("/proc/1/comm").read_text().strip() == "systemd"
        if Path(command[0]).name == "systemctl" and not systemd_init:
            print(f"{time.strftime('%H:%M:%S')} not shutting down ({why}): systemd is not this "
                  "host's init", flush=True)
            return False
        status = self._read("status.json")
        status["shutdown"] = {"up": self.clock(), "at": time.time(), "why": why,
                              "command": command}
        self._save(status)
        print(f"{time.strftime('%H:%M:%S')} shutting down ({why}): {' '.join(command)}",
              flush=True)
        try:
            done = subprocess.run(spot.as_user(command), stdin=subprocess.DEVNULL, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"{time.strftime('%H:%M:%S')} shutdown failed: {exc}; trying again", flush=True)
            return False
        return done.returncode == 0


def serve_reports(watcher: Watcher, address: str) -> ThreadingHTTPServer:
    """POST /report on the master's private address: {"host", "active"} in, {"stop"} out."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            try:
                if self.path != "/report":
                    raise ValueError(self.path)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                answer = {"stop": watcher.report(str(body["host"]), list(body["active"]))}
            except (ValueError, KeyError, TypeError):
                self.send_error(400)
                return
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((address, watcher.settings.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def watch(settings: Settings) -> None:
    """On a spot host, watch for interruption notices; when a limit is set, every interval:
    the master decides for the cluster, the others report to it. Returns once this host's
    shutdown command ran."""
    if settings.spot_notice:
        own_address = socket.gethostbyname(socket.gethostname())
        threading.Thread(target=spot.watch, name="spot-notices", daemon=True, args=(
            settings.host, own_address, settings.spot_notice, settings.spark_worker_pid,
            settings.imds_endpoint)).start()
    watcher = Watcher(settings)
    serving = not (settings.is_master and settings.stops)
    while True:
        if not serving:  # the master's address may not resolve yet early in the boot
            try:
                serving = bool(serve_reports(watcher, socket.gethostbyname(settings.master)))
            except OSError as exc:
                print(f"{time.strftime('%H:%M:%S')} cannot serve reports yet: {exc}", flush=True)
        if settings.stops:
            why = watcher.master_round() if settings.is_master else watcher.peer_round()
            if why and watcher.shut_down(why):
                return
        time.sleep(settings.interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", help="the watcher's settings (ops.agent.install)")
    watch(Settings.load(parser.parse_args().settings))


if __name__ == "__main__":
    main()
