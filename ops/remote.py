"""Running commands on a cluster host: the folder layout, timeouts, install stamps."""

from __future__ import annotations

import shlex

from invoke import Context
from invoke.exceptions import CommandTimedOut

from kindling import HostError

HOME = "/opt/kindling"
VENV = f"{HOME}/venv"
PYTHON = f"{VENV}/bin/python"
WHEELHOUSE = f"{HOME}/wheelhouse"
WHEELHOUSE_SERVER_PID = f"{HOME}/wheelhouse-server.pid"
HADOOP_CONF = f"{HOME}/hadoop/conf"
BIN = f"{HOME}/bin"
STAMPS = f"{HOME}/stamps"
SRV = "/srv/kindling"
DATA = f"{SRV}/data"
RUNS = f"{SRV}/runs"
SPARK_STATE = f"{SRV}/spark"
HDFS_STATE = f"{SRV}/hdfs"
AUTOSTOP_STATE = f"{SRV}/autostop"
SPOT_NOTICE_FILE = f"{AUTOSTOP_STATE}/spot-notice.json"
"""Where a spot host's watcher writes EC2's interruption notice (ops.spot)."""

INSTALL_TIMEOUT = 1800
COMMAND_TIMEOUT = 120


def jar_folder(feature: str) -> str:
    """Where a feature's jars (ops.jvm) live on every host."""
    return f"{HOME}/jars/{feature}"


def where(cxn: Context) -> tuple[str, str]:
    """(host name, role) of a context opened by ops.cluster.Cluster."""
    return getattr(cxn, "where", (getattr(cxn, "host", "local"), "host"))


def sh(cxn: Context, command: str, timeout: int = COMMAND_TIMEOUT, what: str = "") -> str:
    """Run a command on a host; a failure is a HostError naming host, role and step."""
    try:
        result = cxn.run(command, hide=True, warn=True, timeout=timeout, in_stream=False)
    except CommandTimedOut:
        raise HostError(*where(cxn), what or command.split()[0],
                        f"no answer within {timeout}s") from None
    if result.exited != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise HostError(*where(cxn), what or command.split()[0], f"exit {result.exited}: {detail[0]}")
    return result.stdout.strip()


def read_stamp(cxn: Context, name: str) -> str:
    return cxn.run(f"cat {STAMPS}/{name} 2>/dev/null || true", hide=True, warn=True,
                   timeout=COMMAND_TIMEOUT, in_stream=False).stdout.strip()


def write_stamp(cxn: Context, name: str, value: str) -> None:
    sh(cxn, f"mkdir -p {STAMPS} && printf %s {shlex.quote(value)} > {STAMPS}/{name}",
       what="writing install stamp")
