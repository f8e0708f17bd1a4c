"""A Spark standalone cluster from the pip pyspark: shell commands for any host, and a local one.

The pip package has no start-master.sh / start-worker.sh, but its sbin/spark-daemon.sh starts
the Master and Worker classes just as well. The command builders below return one shell string
each, so ops can run them over SSH on cluster hosts and LocalSparkCluster runs them here.

Standard library only: ops imports this on the control machine.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
MASTER_PORT = 7077
MASTER_WEBUI_PORT = 8080
WORKER_WEBUI_PORT = 8081
IDENT = "kindling"
"""SPARK_IDENT_STRING: names the pid and log files, the same for start and stop."""


def local_spark_home() -> str:
    """The installed pyspark package folder, which is a complete SPARK_HOME."""
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.origin:
        raise RuntimeError("pyspark is not installed; pip install -e '.[workloads]'")
    return str(Path(spec.origin).parent)


def daemon_env(base_dir: str, host: str | None = None, python: str | None = None) -> dict[str, str]:
    """Where a daemon keeps logs, pids and executor folders, and which address it binds.

    SPARK_LOCAL_IP also reaches every executor (they inherit the Worker's environment), which
    is how kindling's TensorFlowOnSpark nodes learn the address to advertise.
    """
    env = {
        "SPARK_IDENT_STRING": IDENT,
        "SPARK_LOG_DIR": f"{base_dir}/logs",
        "SPARK_PID_DIR": f"{base_dir}/pids",
        "SPARK_WORKER_DIR": f"{base_dir}/work",
    }
    if host:
        env["SPARK_LOCAL_IP"] = host
    if python:
        env["PYSPARK_PYTHON"] = python
    return env


def _daemon_command(spark_home: str, env: dict[str, str], action: str, daemon_class: str,
                    instance: int, *args: str) -> str:
    return shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), "bash",
                       f"{spark_home}/sbin/spark-daemon.sh", action, daemon_class, str(instance),
                       *args])


def master_start_command(spark_home: str, host: str, base_dir: str, port: int = MASTER_PORT,
                         webui_port: int = MASTER_WEBUI_PORT, python: str = sys.executable) -> str:
    return _daemon_command(spark_home, daemon_env(base_dir, host, python), "start", MASTER_CLASS, 1,
                           "--host", host, "--port", str(port), "--webui-port", str(webui_port))


def worker_start_command(spark_home: str, host: str, master_url: str, instance: int, cores: int,
                         memory: str, base_dir: str, python: str = sys.executable) -> str:
    """Worker number `instance` (1, 2, ...) of this host; its web UI port is 8080 + instance."""
    return _daemon_command(spark_home, daemon_env(base_dir, host, python), "start", WORKER_CLASS,
                           instance, "--host", host, "--cores", str(cores), "--memory", memory,
                           "--webui-port", str(WORKER_WEBUI_PORT + instance - 1), master_url)


def master_stop_command(spark_home: str, base_dir: str) -> str:
    return _daemon_command(spark_home, daemon_env(base_dir), "stop", MASTER_CLASS, 1)


def worker_stop_command(spark_home: str, instance: int, base_dir: str) -> str:
    return _daemon_command(spark_home, daemon_env(base_dir), "stop", WORKER_CLASS, instance)


def alive_workers(master_json: dict) -> list[str]:
    """Hosts of the workers the master lists as ALIVE (a host once per worker), from /json/."""
    return [w["host"] for w in master_json.get("workers", []) if w.get("state") == "ALIVE"]


def master_json(host: str, webui_port: int = MASTER_WEBUI_PORT, timeout: float = 5.0) -> dict:
    """The master's status document; direct connection, whatever http_proxy says."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{host}:{webui_port}/json/", timeout=timeout) as response:
        return json.load(response)


def tfos_submit_conf(master_url: str, cluster_size: int, python: str = sys.executable,
                     task_cpus: int = 1) -> dict[str, str]:
    """spark-submit --conf values for a TensorFlowOnSpark job of `cluster_size` TF nodes.

    TFoS needs exactly one task per executor (executor.cores == task.cpus) and as many
    executors as nodes (cores.max). maxFailures=1: a retried TF node re-registers and hangs
    the cluster, failing fast is the only sane outcome. Python workers are reused, which
    TFoS' SPARK input mode requires.
    """
    return {
        "spark.master": master_url,
        "spark.cores.max": str(cluster_size * task_cpus),
        "spark.task.cpus": str(task_cpus),
        "spark.executor.cores": str(task_cpus),
        "spark.task.maxFailures": "1",
        "spark.dynamicAllocation.enabled": "false",
        "spark.python.worker.reuse": "true",
        "spark.executorEnv.TF_NUM_INTRAOP_THREADS": str(task_cpus),
        "spark.executorEnv.PYTHONUNBUFFERED": "1",
        "spark.pyspark.python": python,
        "spark.pyspark.driver.python": python,
    }


class LocalSparkCluster:
    """A master and N workers on this machine, for tests, benchmarks and the local target.

    with LocalSparkCluster(workers=2) as cluster:
        subprocess.run(["spark-submit", *conf_args(cluster.submit_conf(2)), job])
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
    def log_dir(self) -> Path:
        return Path(self.base_dir) / "logs"

    @property
    def work_dir(self) -> Path:
        """Executor folders (app-*/N/stderr holds the executors' Python output)."""
        return Path(self.base_dir) / "work"

    def submit_conf(self, cluster_size: int) -> dict[str, str]:
        return tfos_submit_conf(self.master_url, cluster_size, self.python)

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

    def start(self, timeout: float = 60) -> "LocalSparkCluster":
        """Start the daemons and wait until every worker is registered ALIVE with the master."""
        try:
            self._launch_daemons()
            self._await_workers(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch_daemons(self) -> None:
        # All at once: workers keep retrying until the master listens, and spark-daemon.sh
        # spends seconds per daemon checking that its JVM came up.
        starts = [master_start_command(self.spark_home, self.host, self.base_dir, self.port,
                                       self.webui_port, self.python)]
        starts += [worker_start_command(self.spark_home, self.host, self.master_url, instance,
                                        self.cores, self.memory, self.base_dir, self.python)
                   for instance in self._worker_instances]
        launches = [subprocess.Popen(command, shell=True, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL) for command in starts]
        for launch in launches:
            launch.wait(timeout=60)

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

    def __enter__(self) -> "LocalSparkCluster":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
