"""Running commands on a cluster host: the folder layout, timeouts, install stamps, and the
shell helpers every service uses (did it exit 0, fetch a JSON page, start/stop a daemon)."""

from __future__ import annotations

import io
import json
import shlex

from invoke import Context
from invoke.exceptions import CommandTimedOut

from kindling import HostError
from ops.agent import install

HOME = "/opt/kindling"
VENV = f"{HOME}/venv"
PYTHON = f"{VENV}/bin/python"
WHEELHOUSE = f"{HOME}/wheelhouse"
WHEELHOUSE_SERVER_PID = f"{HOME}/wheelhouse-server.pid"
HADOOP_CONF = f"{HOME}/hadoop/conf"
BIN = f"{HOME}/bin"
STAMPS = f"{HOME}/stamps"
SECRETS = f"{HOME}/secrets"
"""Mode 0700: what only the SSH user (who runs Spark, HDFS and the jobs) may read: Spark's
configuration with the cluster's authentication secret, a non-AWS store's credentials."""
SPARK_CONF = f"{SECRETS}/spark"
"""SPARK_CONF_DIR of the daemons and of spark-submit: its spark-defaults.conf holds the secret."""
SRV = "/srv/kindling"
DATA = f"{SRV}/data"
RUNS = f"{SRV}/runs"
SPARK_STATE = f"{SRV}/spark"
HDFS_STATE = f"{SRV}/hdfs"
AUTOSTOP_STATE = install.STATE
SPOT_NOTICE_FILE = install.SPOT_NOTICE
"""Where a spot host's watcher writes EC2's interruption notice (ops.spot)."""

INSTALL_TIMEOUT = 1800
COMMAND_TIMEOUT = 120


def jar_folder(feature: str) -> str:
    """Where a feature's jars (ops.jvm) live on every host."""
    return f"{HOME}/jars/{feature}"


def where(cxn: Context) -> tuple[str, str]:
    """(host name, role) of a context opened by ops.cluster.Cluster."""
    return getattr(cxn, "where", (getattr(cxn, "host", "local"), "host"))


def sh(cxn: Context, command: str, timeout: int = COMMAND_TIMEOUT, what: str = "",
       stdin: str | None = None) -> str:
    """Run a command on a host (stdin: text fed to it); a failure is a HostError naming host,
    role and step."""
    try:
        result = cxn.run(command, hide=True, warn=True, timeout=timeout,
                         in_stream=io.StringIO(stdin) if stdin is not None else False)
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


def ok(cxn: Context, command: str, timeout: int = COMMAND_TIMEOUT) -> bool:
    """Whether a command exits 0 on the host (a test, not a step: its failure is an answer)."""
    return cxn.run(command, hide=True, warn=True, timeout=timeout, in_stream=False).exited == 0


def fetch_json(cxn: Context, url: str) -> dict | None:
    """A JSON document fetched on the host (the UIs listen on private addresses only), or None
    when nothing answers."""
    result = cxn.run(f"python3 -c \"import urllib.request; "
                     f"print(urllib.request.urlopen('{url}', timeout=5).read().decode())\"",
                     hide=True, warn=True, timeout=COMMAND_TIMEOUT, in_stream=False)
    if result.exited != 0:
        return None
    return json.loads(result.stdout)


def answers_command(url: str, seconds: int) -> str:
    """Shell command on a host: poll url until it answers, for up to seconds; else exit 1 saying
    "no answer"."""
    return (f"python3 -c \"import urllib.request, time\nfor _ in range({seconds * 10}):\n"
            f"  try: urllib.request.urlopen('{url}', timeout=2); break\n"
            "  except OSError: time.sleep(0.1)\nelse: raise SystemExit('no answer')\"")


def write_files_command(folder: str, files: dict[str, str],
                        folders: tuple[str, ...] = ()) -> str:
    """Write each name -> text into folder (created first, with the subfolders named)."""
    writes = " && ".join([*(f"printf %s {shlex.quote(text)} > {shlex.quote(name)}"
                            for name, text in files.items()),
                          *(f"mkdir -p {shlex.quote(name)}" for name in folders)])
    return f"mkdir -p {shlex.quote(folder)} && cd {shlex.quote(folder)} && {writes or 'true'}"


def write_private(cxn: Context, path: str, text: str, what: str) -> None:
    """text into path, readable by this user only (file 0600, its folder 0700), handed over on
    the command's stdin: a secret never on a command line (world-readable in /proc)."""
    folder, file = shlex.quote(path.rsplit("/", 1)[0]), shlex.quote(path)
    sh(cxn, f"umask 077 && mkdir -p {folder} && chmod 700 {folder} && rm -f {file}.new && "
            f"cat > {file}.new && mv -f {file}.new {file}", stdin=text, what=what)


def start_daemon(command: str, log: str, pid: str) -> str:
    """Start a daemon detached, in its own session, its output in log and its pid noted (as
    ops.runs does for job processes)."""
    return f"(setsid nohup {command} > {log} 2>&1 < /dev/null & echo $! > {pid})"


def stop_daemon(pid: str) -> str:
    """Stop the daemon a pid file names; idempotent."""
    return f"test -f {pid} && kill $(cat {pid}) 2>/dev/null; rm -f {pid}; true"


def daemon_alive(pid: str) -> str:
    """Shell test: the daemon a pid file names is running."""
    return f"kill -0 $(cat {pid} 2>/dev/null) 2>/dev/null"
