"""The watcher (ops.agent.autostop) as it lies on a host: its code, settings and systemd unit, and
the command that (re)starts it. One layout for both that write it: the user data, which arms it
at first boot (infra/cloud_init.py), and `fab deploy`, which upgrades it (ops/services/watcher.py).

The watcher runs on the OS's own python3 (standard library only), from a copy of its code: it
needs neither kindling's venv nor anything `fab deploy` installs. It serves the master's
endpoint, so it runs as its own system user (no login, no home), not root and not the login user
(whose sudo can do anything); that user's sudoers rules allow exactly the shutdown command (as
root) and a spot host's Spark decommissioning (as the Spark worker's owner, never root). Its
state folder is its own; its pid and log (hosts without systemd) are root's. Standard library
only.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ops.agent import spot
from ops.agent.autostop import Settings

HOME = "/opt/kindling/agent"
"""The watcher's code and settings, root's."""
SETTINGS = f"{HOME}/autostop.json"
USER = "kindling-watcher"
SUDOERS = f"/etc/sudoers.d/{USER}"
SUDOERS_RULES = f"{HOME}/sudoers"
"""The rules as written, installed into SUDOERS once visudo passes them (a broken drop-in would
break every sudo on the host)."""
PID, LOG = f"{HOME}/watcher.pid", f"{HOME}/watcher.log"
"""Hosts without systemd: root's (the pid root kills, the log root's shell appends to), so not
in the state folder the watcher may write."""
UNIT = "kindling-autostop"
UNIT_FILE = f"/etc/systemd/system/{UNIT}.service"
PYTHON = "/usr/bin/python3"
SRV = "/srv/kindling"
RUNS = f"{SRV}/runs"
STATE = f"{SRV}/autostop"
"""The watcher's status.json, log and pid; the spot notice."""
SPOT_NOTICE = f"{STATE}/spot-notice.json"
NOTEBOOK_KERNELS = f"{SRV}/notebook/kernels"
"""The master's notebook kernels note a running cell here (ops.notebook, workloads.notebook)."""
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
        "notebook_kernels": NOTEBOOK_KERNELS if is_master else "",
        "spot_notice": SPOT_NOTICE if spot else "", "spark_worker_pid": SPARK_WORKER_PID,
        "imds_endpoint": imds_endpoint,
    }
    return values | {"version": version(values)}


def code() -> dict[str, str]:
    """Host path -> text of each of the watcher's modules."""
    return {f"{HOME}/{module}": (PROJECT / module).read_text() for module in CODE}


def version(values: dict) -> str:
    """What a watcher runs: its settings, code and layout (unit, sudoers rules, start command);
    a host whose version differs is upgraded."""
    text = json.dumps({k: v for k, v in values.items() if k != "version"}, sort_keys=True)
    layout = "".join(code().values()) + unit() + sudoers(values) + restart_command()
    return hashlib.sha256((text + layout).encode()).hexdigest()[:16]


def unit() -> str:
    """The systemd service: started at every boot; not restarted after it shut the host down."""
    return (f"[Unit]\nDescription=kindling watcher (idle auto-stop, spot notices)\n"
            f"After=network-online.target\nWants=network-online.target\n"
            f"[Service]\nUser={USER}\nWorkingDirectory={HOME}\n"
            f"ExecStart={PYTHON} -m ops.agent.autostop {SETTINGS}\nRestart=on-failure\n"
            f"RestartSec=10\n"
            f"[Install]\nWantedBy=multi-user.target\n")


def sudoers(values: dict) -> str:
    """The watcher's sudoers rules: its shutdown command as root, SIGPWR to the Spark worker as
    the worker's owner; nothing else. values: its settings."""
    shutdown = values.get("shutdown") or Settings.shutdown
    decommission = spot.decommission_command(values.get("spark_worker_pid") or SPARK_WORKER_PID)
    return (f"{USER} ALL=(root) NOPASSWD: {_sudoers_command(shutdown)}\n"
            f"{USER} ALL=(ALL,!root) NOPASSWD: {_sudoers_command(decommission)}\n")


def _sudoers_command(argv) -> str:
    """argv as a sudoers command matching exactly it: the program's full path, the arguments
    with sudoers' and its wildcards' special characters escaped, "" for none."""
    if not argv[0].startswith("/") or any("\n" in arg for arg in argv):
        raise ValueError(f"the watcher's shutdown command {list(argv)}: name the program by its "
                         "full path (e.g. /usr/bin/systemctl), no newline: sudo allows it so")
    args = [re.sub(r"([,:=#*?\[\]! \t])", r"\\\1", arg.replace("\\", "\\" * 4))
            for arg in argv[1:]]
    return " ".join([argv[0], *args]) if args else f'{argv[0]} ""'


def restart_command() -> str:
    """Shell command, run as root: the watcher's user (created once) and sudoers rules, its
    state folder its own; then (re)start the watcher as that user, as the systemd service where
    systemd runs the host, else as a detached process (hosts without systemd: the tests'
    namespace hosts, which share /etc: flock, as they may add the user at once)."""
    rules, pid, log = (path.removeprefix(f"{HOME}/") for path in (SUDOERS_RULES, PID, LOG))
    # a system user (-r) with its own group (-U), no home (-M), no login shell
    add_user = f"id -u {USER} >/dev/null 2>&1 || useradd -rUM -s /usr/sbin/nologin {USER}"
    grant = (f"cd {HOME} && flock /etc/passwd sh -c '{add_user}' && visudo -cqf {rules} && "
             f"t=$(mktemp {SUDOERS}.XXXXXX) && install -m 440 {rules} $t && mv -f $t {SUDOERS} "
             f"&& mkdir -p {STATE} && chown -R {USER}: {STATE}")
    detached = (f"old=$(cat {pid} 2>/dev/null); if [ -n \"$old\" ] && grep -qs "
                f"ops.agent.autostop /proc/$old/cmdline; then kill $old; "
                f"timeout 10 sh -c \"while kill -0 $old 2>/dev/null; do sleep 0.1; done\"; fi; "
                f"(setsid nohup setpriv --reuid={USER} --regid={USER} --init-groups {PYTHON} -m "
                f"ops.agent.autostop {SETTINGS} >> {log} 2>&1 < /dev/null & echo $! > {pid})")
    return (f"{grant} && if [ -d /run/systemd/system ]; then systemctl daemon-reload && "
            f"systemctl enable --quiet {UNIT} && systemctl restart --no-block {UNIT}; "
            f"else {detached}; fi")


def files(values: dict) -> dict[str, str]:
    """Host path -> text of everything the watcher needs: code, settings, sudoers rules, unit."""
    return code() | {SETTINGS: json.dumps(values) + "\n", SUDOERS_RULES: sudoers(values),
                     UNIT_FILE: unit()}
