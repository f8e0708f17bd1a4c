"""The watcher `fab deploy` starts on every host of a cluster: idle auto-stop, and on spot
hosts the interruption notices (ops.agent.spot).

Every host's watcher notes what keeps it busy (a live job process of a run, an interactive SSH
login, and on the master a running Spark application) and answers the master's poll over HTTP on
its private address. The master's watcher adds up the cluster: when nothing was active anywhere
for `idleStopMinutes`, or the cluster has been up `maxHours`, it stops every instance of the
cluster (master included) with the instance role, so their disks stay and `pulumi up` or the
next `fab deploy` brings them back. It writes what it decided to status.json, which `fab status`
shows.

Runs on the hosts: standard library only, boto3 imported for the stop call.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ops.agent import spot

PORT = 7091
"""The watchers' activity endpoint, on each host's private address."""
POLL_TIMEOUT = 5
LOGIN = re.compile(rb"^sshd(?:-session)?: \S+@pts/")
"""An interactive SSH login's sshd process title (fab's own commands run without a terminal)."""


@dataclass(frozen=True)
class Settings:
    """What fab deploy writes to each host's autostop.json."""
    host: str
    address: str
    runs: str
    state: str
    idle_minutes: float
    max_hours: float = 0.0
    interval: float = 30.0
    spark_master: str = ""
    """The Spark master's /json/ URL (the master only)."""
    peers: tuple[str, ...] = ()
    """The other hosts' private addresses (the master only: it decides for the cluster)."""
    instance_ids: tuple[str, ...] = ()
    """The cluster's on-demand instances: stopped, their disks kept (the master only)."""
    spot_ids: tuple[str, ...] = ()
    """Its one-time spot instances, which EC2 cannot stop: terminated (`pulumi up` replaces them)."""
    region: str = ""
    ec2_endpoint: str = ""
    """"" for AWS; else an EC2-compatible endpoint (the tests' moto server)."""
    imds_endpoint: str = ""
    """"" for the instance's own metadata service (the instance role's credentials, spot
    interruption notices)."""
    spot_notice: str = ""
    """A spot host's notice file (ops.spot): set, the watcher polls for interruption notices."""
    spark_worker_pid: str = ""
    """The pid file of the host's Spark worker, decommissioned on a notice."""

    @classmethod
    def load(cls, path: str) -> "Settings":
        data = json.loads(Path(path).read_text())
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def live_processes(runs: str) -> list[str]:
    """`<run>/<process>` of every job process whose pid is alive and has no exit code yet."""
    live = []
    for pid_file in Path(runs).glob("*/*.pid"):
        if pid_file.with_suffix(".rc").exists():
            continue
        try:
            os.kill(int(pid_file.read_text().strip() or 0), 0)
        except (ValueError, ProcessLookupError, PermissionError):
            continue
        live.append(f"{pid_file.parent.name}/{pid_file.stem}")
    return sorted(live)


def logins() -> int:
    """Interactive SSH sessions on this host."""
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            count += bool(LOGIN.match(cmdline.read_bytes()))
        except OSError:
            continue
    return count


def fetch_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=POLL_TIMEOUT) as answer:
            return json.load(answer)
    except (OSError, ValueError):
        return None


def local_activity(settings: Settings) -> list[str]:
    """Why this host is busy (empty: idle)."""
    reasons = [f"job process {p}" for p in live_processes(settings.runs)]
    sessions = logins()
    if sessions:
        reasons.append(f"{sessions} SSH login(s)")
    if settings.spark_master:
        apps = (fetch_json(settings.spark_master) or {}).get("activeapps") or []
        reasons += [f"Spark application {app.get('id', '?')}" for app in apps]
    return [f"{settings.host}: {reason}" for reason in reasons]


def cluster_activity(settings: Settings) -> list[str]:
    """This host's reasons plus each peer's (a peer that does not answer adds none)."""
    reasons = local_activity(settings)
    for peer in settings.peers:
        reasons += (fetch_json(f"http://{peer}:{PORT}/activity") or {}).get("active", [])
    return reasons


def decide(now: float, started: float, last_active: float, settings: Settings) -> tuple[str, float]:
    """(why the cluster stops now, or "", and when it would stop if it stays as it is)."""
    deadlines = []
    if settings.idle_minutes > 0:
        deadlines.append((last_active + settings.idle_minutes * 60,
                          f"idle for {settings.idle_minutes:g} min (idleStopMinutes)"))
    if settings.max_hours > 0:
        deadlines.append((started + settings.max_hours * 3600,
                          f"up for {settings.max_hours:g} h (maxHours)"))
    if not deadlines:
        return "", 0.0
    stop_at, why = min(deadlines)
    return (why if now >= stop_at else ""), stop_at


def describe(status: dict) -> str:
    """`fab status`'s line for the master's status.json: busy, when the cluster stops, or that
    it was stopped."""
    def clock(seconds: float) -> str:
        return time.strftime("%H:%M:%S", time.localtime(seconds))

    if status["stopped"]:
        return f"auto-stop: stopped the cluster (idle since {clock(status['lastActive'])})"
    if not status["stopAt"]:
        return "auto-stop: off (idleStopMinutes 0, no maxHours)"
    if status["active"]:
        limits = [f"after {status['idleStopMinutes']:g} idle minutes"] if status[
            "idleStopMinutes"] else []
        if status["maxHours"]:
            deadline = status["started"] + status["maxHours"] * 3600
            limits.append(f"at {clock(deadline)} however busy (maxHours {status['maxHours']:g})")
        return (f"auto-stop: busy ({'; '.join(status['active'])}); the cluster stops "
                + ", or ".join(limits))
    left = max(0.0, status["stopAt"] - status["checked"])
    return (f"auto-stop: idle since {clock(status['lastActive'])}; the cluster stops in "
            f"{left / 60:.1f} min (at {clock(status['stopAt'])})")


def stop_cluster(settings: Settings) -> None:
    """Stop the on-demand instances, terminate the spot ones: what the instance role allows."""
    if settings.imds_endpoint:  # boto3 reads the instance role's credentials from there
        os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = settings.imds_endpoint
    import boto3

    ec2 = boto3.client("ec2", region_name=settings.region or "us-east-1",
                       endpoint_url=settings.ec2_endpoint or None)
    if settings.instance_ids:
        ec2.stop_instances(InstanceIds=list(settings.instance_ids))
    if settings.spot_ids:
        ec2.terminate_instances(InstanceIds=list(settings.spot_ids))


def serve_activity(settings: Settings) -> ThreadingHTTPServer:
    """GET /activity on the private address: this host's reasons to stay up."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/activity":
                self.send_error(404)
                return
            body = json.dumps({"host": settings.host, "active": local_activity(settings)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((settings.address, PORT), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def watch(settings: Settings, clock=time.time) -> None:
    """Serve this host's activity; on the master, also decide for the cluster, every interval;
    on a spot host, watch for interruption notices."""
    serve_activity(settings)
    if settings.spot_notice:
        threading.Thread(target=spot.watch, name="spot-notices", daemon=True, args=(
            settings.host, settings.address, settings.spot_notice, settings.spark_worker_pid,
            settings.imds_endpoint)).start()
    state = Path(settings.state)
    state.mkdir(parents=True, exist_ok=True)
    started = clock()
    last_active, stopped = started, False
    while True:
        if settings.instance_ids or settings.spot_ids:
            now = clock()
            active = cluster_activity(settings)
            if active:
                last_active, stopped = now, False
            why, stop_at = decide(now, started, last_active, settings)
            if why and not stopped:
                try:
                    stop_cluster(settings)
                    stopped = True
                    print(f"{time.strftime('%H:%M:%S')} stopped the cluster: {why}", flush=True)
                except Exception as exc:  # noqa: BLE001 - the watcher must outlive a failed call
                    print(f"{time.strftime('%H:%M:%S')} could not stop the cluster ({why}): "
                          f"{exc}; trying again", flush=True)
            status = {"checked": now, "started": started, "lastActive": last_active,
                      "active": active, "stopAt": stop_at, "stopped": stopped,
                      "idleStopMinutes": settings.idle_minutes, "maxHours": settings.max_hours}
            (state / "status.json.tmp").write_text(json.dumps(status))
            (state / "status.json.tmp").replace(state / "status.json")
        time.sleep(settings.interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", help="the autostop.json fab deploy wrote")
    watch(Settings.load(parser.parse_args().settings))


if __name__ == "__main__":
    main()
