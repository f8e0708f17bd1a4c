"""This machine as a target: the Spark daemons and free ports the `local` target runs on.

The local target is one host (this machine, 127.0.0.1) with a Spark standalone master and
2 workers from the pip pyspark and TF processes on free localhost ports; `fab run` needs no
`fab deploy` there: it starts what the job needs and stops it at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from kindling import Host, KindlingError, UserError
from ops.agent.autostop import alive
from ops.locks import exclusive
from ops.services.spark import (DEFAULTS, MASTER_CLASS, MASTER_PORT, MASTER_WEBUI_PORT,
                                alive_workers, master_start_command, master_stop_command, pid_file,
                                spark_defaults, worker_pid_file, worker_start_command,
                                worker_stop_command)

LOCAL_HOST = Host(name="local", hostname=socket.gethostname(), privateIp="127.0.0.1")
SPARK_WORKERS = 2
STATE_DIR = Path(".kindling") / "local"


SERVER_START_TIMEOUT = 180
"""How long a local server (TensorBoard imports TensorFlow first) may take to say where it serves."""


def free_port() -> int:
    return free_ports(1)[0]


def start_server(argv: list[str], announcement: str, what: str,
                 timeout: float = SERVER_START_TIMEOUT) -> tuple[subprocess.Popen, str]:
    """A server on this machine that picks its own port (a port chosen beforehand can be taken
    before it binds) and the URL it announces on stderr (`announcement`'s group 1); the rest of
    its stderr is read and dropped. One error line, with its last line, if it exits or stays
    silent first; it never outlives an interrupted start."""
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    said = {"url": None, "last": "no output"}
    announced = threading.Event()

    def read() -> None:
        for line in server.stderr:
            if not announced.is_set():
                if found := re.search(announcement, line):
                    said["url"] = found.group(1)
                    announced.set()
                elif line.strip():
                    said["last"] = line.strip()
        announced.set()  # its stderr closed: it exited

    threading.Thread(target=read, daemon=True).start()
    try:
        if not announced.wait(timeout):
            raise KindlingError(f"{what} did not start within {timeout}s: {said['last']}")
        if said["url"] is None:
            raise KindlingError(f"{what} exited with code {server.wait(timeout=10)} before "
                                f"serving: {said['last']}")
    except BaseException:
        if server.poll() is None:
            server.kill()
            server.wait()
        raise
    return server, said["url"]


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now, all held open together so they are distinct."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def spark_cluster() -> "LocalSparkCluster":
    """The local target's Spark: 2 workers of 1 core, state in .kindling/local/spark."""
    return LocalSparkCluster(workers=SPARK_WORKERS, cores=1, memory="2g",
                             base_dir=str((STATE_DIR / "spark").resolve()))


def local_spark_home() -> str:
    """The installed pyspark package folder, which is a complete SPARK_HOME."""
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.origin:
        raise UserError("pyspark is not installed on this machine; pip install -e '.[workloads]'")
    return str(Path(spec.origin).parent)


def master_json(host: str, webui_port: int = MASTER_WEBUI_PORT, timeout: float = 5.0) -> dict:
    """The master's status document; direct connection, whatever http_proxy says."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{host}:{webui_port}/json/", timeout=timeout) as response:
        return json.load(response)


START_TIMEOUT = 180
"""Seconds the daemons may take to register. About 7 s on an idle 2-core machine, 36 s at nice 10
beside three busy processes, and over 60 s in a CI run (the suite runs most of its units at nice
10). A daemon that exits ends the wait at once."""


USERS_LOCK_TIMEOUT = START_TIMEOUT + 60
"""How long a fab waits for another that is starting (or stopping) the local Spark."""


class LocalSparkCluster:
    """A master and N workers on this machine, for the local target, tests and benchmarks.

    Each start makes a new authentication secret, in conf_dir/spark-defaults.conf (0600): any
    user of this machine can reach its ports, only this one can submit an application.

    with LocalSparkCluster(workers=2) as cluster:
        subprocess.run(["spark-submit", "--master", cluster.master_url, job],
                       env=os.environ | {"SPARK_CONF_DIR": cluster.conf_dir})
    """

    def __init__(self, workers: int = 2, cores: int = 1, memory: str = "2g",
                 host: str = "127.0.0.1", base_dir: str | None = None, port: int = MASTER_PORT,
                 webui_port: int = MASTER_WEBUI_PORT, python: str = sys.executable,
                 spark_home: str | None = None):
        self.workers, self.cores, self.memory, self.host = workers, cores, memory, host
        self.port, self.webui_port, self.python = port, webui_port, python
        self.base_dir = str(Path(base_dir or tempfile.mkdtemp(prefix="kindling-spark-")).resolve())
        self.spark_home = spark_home or local_spark_home()

    @property
    def master_url(self) -> str:
        return f"spark://{self.host}:{self.port}"

    @property
    def conf_dir(self) -> str:
        """SPARK_CONF_DIR of the daemons and of every spark-submit to them."""
        return str(Path(self.base_dir) / "conf")

    @property
    def log_dir(self) -> Path:
        return Path(self.base_dir) / "logs"

    @property
    def work_dir(self) -> Path:
        """Executor folders (app-*/N/stderr holds the executors' Python output)."""
        return Path(self.base_dir) / "work"

    @property
    def _worker_instances(self) -> range:
        return range(1, self.workers + 1)

    def processes(self) -> list[int]:
        """Every live process this cluster started: daemons, executors, their Python workers and
        TF nodes, orphans included. All inherit SPARK_LOG_DIR from the daemons' environment."""
        marker = f"SPARK_LOG_DIR={self.log_dir}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:  # gone meanwhile
                continue
        return found

    def start(self, timeout: float = START_TIMEOUT) -> "LocalSparkCluster":
        """Start the daemons and wait until every worker is registered ALIVE with the master, or
        one of them exits."""
        try:
            self._launch_daemons()
            self._await_workers(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _write_secret(self) -> None:
        """A new secret in conf_dir/spark-defaults.conf, readable by this user only."""
        Path(self.conf_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.conf_dir, 0o700)
        defaults = Path(self.conf_dir, DEFAULTS)
        defaults.unlink(missing_ok=True)
        descriptor = os.open(defaults, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(spark_defaults(secrets.token_hex(32)))

    def _launch_daemons(self) -> None:
        # All at once: workers keep retrying until the master listens, and spark-daemon.sh
        # spends seconds per daemon checking that its JVM came up.
        self._write_secret()
        starts = [master_start_command(self.spark_home, self.host, self.base_dir, self.port,
                                       self.webui_port, self.python, conf_dir=self.conf_dir)]
        starts += [worker_start_command(self.spark_home, self.host, self.master_url, instance,
                                        self.cores, self.memory, self.base_dir, self.python,
                                        conf_dir=self.conf_dir)
                   for instance in self._worker_instances]
        launches = [subprocess.Popen(command, shell=True, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL) for command in starts]
        for launch in launches:
            launch.wait(timeout=60)

    def _exited_daemon(self) -> str | None:
        """The first daemon whose process is gone (or never got a pid file), if any."""
        pid_files = {"master": Path(pid_file(self.base_dir, MASTER_CLASS))} | {
            f"worker {instance}": Path(worker_pid_file(self.base_dir, instance))
            for instance in self._worker_instances}
        live = alive(pid_files.values())
        return next((daemon for daemon, path in pid_files.items() if path not in live), None)

    def running(self) -> bool:
        """Its master runs (started by this process or another: a notebook, an earlier run); a
        pid file from before this machine booted names no daemon of it."""
        return bool(alive([Path(pid_file(self.base_dir, MASTER_CLASS))]))

    @property
    def users_dir(self) -> Path:
        """One entry per user of a cluster users started: a file with the pid of a fab process
        (a run, a notebook), or a link to a run's folder, where its processes note their pids
        (a detached run keeps counting after fab exits)."""
        return Path(self.base_dir) / "users"

    def live_users(self) -> list[Path]:
        """The pid files of its users' live processes."""
        entries = list(self.users_dir.glob("*"))
        return alive([entry for entry in entries if entry.is_file()]
                     + [pid for entry in entries if entry.is_dir() for pid in entry.glob("*.pid")])

    def _users_locked(self):
        """One acquire or release at a time, so two runs that start together start one cluster."""
        lock = Path(self.base_dir) / "users.lock"
        return exclusive(lock, USERS_LOCK_TIMEOUT, UserError(
            f"another fab held {lock} (starting or stopping the local Spark) for over "
            f"{USERS_LOCK_TIMEOUT:.0f}s; end it and retry"))

    def acquire(self, run_dir: str | None = None) -> list[Path]:
        """Count this process (and the run in run_dir) among its users, starting it when its
        master does not run; the entries to hand to release. A cluster found running keeps its
        secret: its daemons and drivers hold it."""
        entries = [self.users_dir / str(os.getpid())]
        with self._users_locked():
            self.users_dir.mkdir(exist_ok=True)
            entries[0].write_text(str(os.getpid()))
            if run_dir:  # named by its path: --output folders of two runs may share a name
                folder = Path(run_dir).resolve()
                entries.append(self.users_dir / hashlib.sha256(bytes(folder)).hexdigest()[:16])
                entries[1].unlink(missing_ok=True)
                entries[1].symlink_to(folder, target_is_directory=True)
            if not self.running():
                try:
                    self.start()
                except BaseException:
                    self._forget(entries)
                    raise
                self._marker.write_text(self._master_pid())
                return entries
        self._await_workers(START_TIMEOUT)
        return entries

    def release(self, entries: list[Path]) -> None:
        """These users are done; the last user of a cluster users started stops it. One started
        otherwise (start(), a context manager) runs until its starter stops it."""
        with self._users_locked():
            self._forget(entries)
            if not self.live_users() and self._started_by_a_user():
                self.stop()

    @staticmethod
    def _forget(entries: list[Path]) -> None:
        for entry in entries:
            entry.unlink(missing_ok=True)

    @property
    def _marker(self) -> Path:
        """The pid of the master that acquire started."""
        return Path(self.base_dir) / "started-by-a-user"

    def _master_pid(self) -> str:
        return Path(pid_file(self.base_dir, MASTER_CLASS)).read_text().strip()

    def _started_by_a_user(self) -> bool:
        return self.running() and self._marker.is_file() and (
            self._marker.read_text() == self._master_pid())

    def _await_workers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        alive: list[str] = []
        while time.monotonic() < deadline:
            try:
                alive = alive_workers(master_json(self.host, self.webui_port))
            except (OSError, ValueError):  # not listening yet, or a half-started UI
                alive = []
            if len(alive) >= self.workers:
                return
            if exited := self._exited_daemon():
                raise RuntimeError(f"local Spark cluster: the {exited} exited before the workers "
                                   f"registered; see the daemon logs in {self.log_dir}")
            time.sleep(0.5)
        raise RuntimeError(f"local Spark cluster: {len(alive)} of {self.workers} workers ALIVE "
                           f"after {timeout:.0f}s; see the daemon logs in {self.log_dir}")

    def stop(self, timeout: float = 20) -> None:
        """Stop workers then master, then kill what they started and left behind. Idempotent;
        needs only base_dir (pid files, environments), so it stops a cluster any process started."""
        stops = [worker_stop_command(self.spark_home, i, self.base_dir)
                 for i in self._worker_instances]
        stops.append(master_stop_command(self.spark_home, self.base_dir))
        for command in stops:
            subprocess.run(command, shell=True, timeout=60, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.users_dir, ignore_errors=True)  # their claims end with it

    def __enter__(self) -> "LocalSparkCluster":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
