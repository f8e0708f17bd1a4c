"""The watcher (ops.agent.autostop) as it lies on a host: its code, settings and systemd unit, and
the command that (re)starts it. One layout for both that write it: the user data, which arms it
at first boot (infra/cloud_init.py), and `fab deploy`, which upgrades it (ops/services/watcher.py).

The watcher runs on the OS's own python3 (standard library only), as root (it shuts the host
down), from a copy of its code: it needs neither kindling's venv nor anything `fab deploy`
installs. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

HOME = "/opt/kindling/agent"
"""The watcher's code and settings, root's."""
SETTINGS = f"{HOME}/autostop.json"
UNIT = "kindling-autostop"
UNIT_FILE = f"/etc/systemd/system/{UNIT}.service"
PYTHON = "/usr/bin/python3"
SRV = "/srv/kindling"
RUNS = f"{SRV}/runs"
STATE = f"{SRV}/autostop"
"""The watcher's status.json, log and pid; the spot notice."""
SPOT_NOTICE = f"{STATE}/spot-notice.json"
SPARK_WORKER_PID = f"{SRV}/spark/pids/spark-kindling-org.apache.spark.deploy.worker.Worker-1.pid"
"""Where spark-daemon.sh keeps the host's Spark worker's pid (ops.services.spark)."""
CODE = ("ops/agent/__init__.py", "ops/agent/autostop.py", "ops/agent/spot.py")
"""The watcher's modules, relative to the project root."""
PROJECT = Path(__file__).resolve().parents[2]


def settings(host: str, master_hostname: str, peers: list[str], idle_minutes: float,
             max_hours: float, spot: bool, imds_endpoint: str = "") -> dict:
    """The settings of host's watcher (ops.agent.autostop.Settings), with the version of them and
    of the code. peers: the other hosts' names (given to the master, which they report to)."""
    is_master = host == "master"
    idle_seconds = idle_minutes * 60 or max_hours * 3600
    values = {
        "host": host, "master": master_hostname, "runs": RUNS, "state": STATE,
        "idle_minutes": float(idle_minutes), "max_hours": float(max_hours),
        "interval": max(1.0, min(30.0, idle_seconds / 10)),
        "peers": sorted(peers) if is_master else [], "spark_master": is_master,
        "spot_notice": SPOT_NOTICE if spot else "", "spark_worker_pid": SPARK_WORKER_PID,
        "imds_endpoint": imds_endpoint,
    }
    return values | {"version": version(values)}


def code() -> dict[str, str]:
    """Host path -> text of each of the watcher's modules."""
    return {f"{HOME}/{module}": (PROJECT / module).read_text() for module in CODE}


def version(values: dict) -> str:
    """What a watcher runs: its settings and code (a host whose version differs is upgraded)."""
    text = json.dumps({k: v for k, v in values.items() if k != "version"}, sort_keys=True)
    return hashlib.sha256((text + "".join(code().values())).encode()).hexdigest()[:16]


def unit() -> str:
    """The systemd service: started at every boot; not restarted after it shut the host down."""
    return (f"[Unit]\nDescription=kindling watcher (idle auto-stop, spot notices)\n"
            f"After=network-online.target\nWants=network-online.target\n"
            f"[Service]\nWorkingDirectory={HOME}\nExecStart={PYTHON} -m ops.agent.autostop "
            f"{SETTINGS}\nRestart=on-failure\nRestartSec=10\n"
            f"[Install]\nWantedBy=multi-user.target\n")


def restart_command() -> str:
    """Shell command, run as root: (re)start the watcher with the code and settings in place, as
    the systemd service where systemd runs the host, else as a detached process (hosts without
    systemd: the tests' namespace hosts)."""
    pid, log = f"{STATE}/watcher.pid", f"{STATE}/watcher.log"
    detached = (f"old=$(cat {pid} 2>/dev/null); if [ -n \"$old\" ]; then kill $old 2>/dev/null; "
                f"timeout 10 sh -c \"while kill -0 $old 2>/dev/null; do sleep 0.1; done\"; fi; "
                f"cd {HOME} && (setsid nohup {PYTHON} -m ops.agent.autostop {SETTINGS} >> {log} "
                f"2>&1 < /dev/null & echo $! > {pid})")
    return (f"mkdir -p {STATE} && if [ -d /run/systemd/system ]; then systemctl daemon-reload && "
            f"systemctl enable --quiet {UNIT} && systemctl restart --no-block {UNIT}; "
            f"else {detached}; fi")


def files(values: dict) -> dict[str, str]:
    """Host path -> text of everything the watcher needs: code, settings, unit."""
    return code() | {SETTINGS: json.dumps(values) + "\n", UNIT_FILE: unit()}
