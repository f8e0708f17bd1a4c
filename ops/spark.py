"""Spark standalone daemons from the pip pyspark: the shell commands that start and stop them.

The pip package has no start-master.sh / start-worker.sh, but its sbin/spark-daemon.sh starts
the Master and Worker classes just as well. The command builders below return one shell string
each, so ops runs them over SSH on cluster hosts and ops.local runs them on this machine.
"""

from __future__ import annotations

import shlex
import sys

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
MASTER_PORT = 7077
MASTER_WEBUI_PORT = 8080
WORKER_WEBUI_PORT = 8081
IDENT = "kindling"
"""SPARK_IDENT_STRING: names the pid and log files, the same for start and stop."""


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
                         memory: str, base_dir: str, python: str = sys.executable,
                         extra_env: dict[str, str] | None = None) -> str:
    """Worker number `instance` (1, 2, ...) of this host; its web UI port is 8080 + instance."""
    env = daemon_env(base_dir, host, python) | (extra_env or {})
    return _daemon_command(spark_home, env, "start", WORKER_CLASS,
                           instance, "--host", host, "--cores", str(cores), "--memory", memory,
                           "--webui-port", str(WORKER_WEBUI_PORT + instance - 1), master_url)


def worker_pid_file(base_dir: str, instance: int) -> str:
    """Where spark-daemon.sh keeps the pid of worker number `instance`."""
    return f"{base_dir}/pids/spark-{IDENT}-{WORKER_CLASS}-{instance}.pid"


def master_stop_command(spark_home: str, base_dir: str) -> str:
    return _daemon_command(spark_home, daemon_env(base_dir), "stop", MASTER_CLASS, 1)


def worker_stop_command(spark_home: str, instance: int, base_dir: str) -> str:
    return _daemon_command(spark_home, daemon_env(base_dir), "stop", WORKER_CLASS, instance)


def alive_workers(master_json: dict) -> list[str]:
    """Hosts of the workers the master lists as ALIVE (a host once per worker), from /json/."""
    return [w["host"] for w in master_json.get("workers", []) if w.get("state") == "ALIVE"]


def worker_states(master_json: dict) -> dict[str, str]:
    """Host -> the state the master last saw its worker in (ALIVE, DEAD...); ALIVE wins."""
    states: dict[str, str] = {}
    for worker in master_json.get("workers", []):
        if states.get(worker["host"]) != "ALIVE":
            states[worker["host"]] = worker.get("state", "UNKNOWN")
    return states
