"""ops/spark.py: the daemon commands ops runs over SSH, the master health parser, and a real
local standalone cluster that starts, registers its workers and stops without leftovers."""

from __future__ import annotations

import shlex

import pytest

from ops.services import spark
from ops.local import LocalSparkCluster, free_port, master_json

SPARK_HOME = "/opt/venv/lib/python3.11/site-packages/pyspark"


def words_and_env(command: str) -> tuple[list[str], dict[str, str]]:
    """Split a builder's command as the remote shell will; peel off the `env K=V ...` prefix."""
    words = shlex.split(command)
    assert words[0] == "env"
    env = {}
    rest = words[1:]
    while "=" in rest[0]:
        key, value = rest.pop(0).split("=", 1)
        env[key] = value
    return rest, env


def test_master_start_command_binds_the_host_and_keeps_state_under_base_dir():
    words, env = words_and_env(spark.master_start_command(
        SPARK_HOME, "10.0.0.5", "/srv/kindling/spark", python="/opt/venv/bin/python"))
    assert words == ["bash", f"{SPARK_HOME}/sbin/spark-daemon.sh", "start",
                     "org.apache.spark.deploy.master.Master", "1",
                     "--host", "10.0.0.5", "--port", "7077", "--webui-port", "8080"]
    assert env == {"SPARK_IDENT_STRING": "kindling", "SPARK_LOG_DIR": "/srv/kindling/spark/logs",
                   "SPARK_PID_DIR": "/srv/kindling/spark/pids",
                   "SPARK_WORKER_DIR": "/srv/kindling/spark/work",
                   "SPARK_LOCAL_IP": "10.0.0.5", "PYSPARK_PYTHON": "/opt/venv/bin/python"}


def test_worker_start_command_offers_cores_and_memory_to_the_master():
    words, env = words_and_env(spark.worker_start_command(
        SPARK_HOME, "10.0.1.12", "spark://10.0.0.5:7077", 2, 8, "12g", "/srv/s", python="/py"))
    assert words[2:] == ["start", "org.apache.spark.deploy.worker.Worker", "2",
                         "--host", "10.0.1.12", "--cores", "8", "--memory", "12g",
                         "--webui-port", "8082", "spark://10.0.0.5:7077"]
    assert env["SPARK_LOCAL_IP"] == "10.0.1.12"  # executors inherit it: TFoS advertises it
    assert env["SPARK_WORKER_DIR"] == "/srv/s/work"


def test_stop_commands_find_the_pid_files_the_starts_wrote():
    start_words, start_env = words_and_env(spark.worker_start_command(
        SPARK_HOME, "h", "spark://h:7077", 3, 1, "1g", "/b"))
    stop_words, stop_env = words_and_env(spark.worker_stop_command(SPARK_HOME, 3, "/b"))
    assert stop_words == ["bash", f"{SPARK_HOME}/sbin/spark-daemon.sh", "stop",
                          "org.apache.spark.deploy.worker.Worker", "3"]
    for key in ("SPARK_PID_DIR", "SPARK_IDENT_STRING"):  # what names the pid file
        assert stop_env[key] == start_env[key]
    master_words, _ = words_and_env(spark.master_stop_command(SPARK_HOME, "/b"))
    assert master_words[2:] == ["stop", "org.apache.spark.deploy.master.Master", "1"]


def test_paths_with_spaces_survive_the_shell():
    command = spark.master_start_command("/opt/my spark", "h", "/srv/my state",
                                         python="/p y/python")
    words, env = words_and_env(command)
    assert words[1] == "/opt/my spark/sbin/spark-daemon.sh"
    assert env["SPARK_LOG_DIR"] == "/srv/my state/logs" and env["PYSPARK_PYTHON"] == "/p y/python"


def test_alive_workers_lists_alive_ones_once_per_worker():
    status = {"workers": [
        {"host": "10.0.1.12", "state": "ALIVE"},
        {"host": "10.0.1.13", "state": "DEAD"},
        {"host": "10.0.1.14", "state": "ALIVE"},
        {"host": "10.0.1.14", "state": "ALIVE"},
    ]}
    assert spark.alive_workers(status) == ["10.0.1.12", "10.0.1.14", "10.0.1.14"]
    assert spark.alive_workers({"status": "ALIVE"}) == []


def test_worker_states_prefer_alive_over_an_older_dead_registration():
    status = {"workers": [{"host": "10.0.1.12", "state": "DEAD"}, {"host": "10.0.1.12", "state": "ALIVE"},
                          {"host": "10.0.1.13", "state": "DEAD"}]}
    assert spark.worker_states(status) == {"10.0.1.12": "ALIVE", "10.0.1.13": "DEAD"}


@pytest.mark.slow
def test_local_cluster_registers_workers_and_stops_without_leftovers(tmp_path):
    cluster = LocalSparkCluster(workers=2, base_dir=str(tmp_path), port=free_port(),
                                      webui_port=free_port()).start()
    try:
        status = master_json(cluster.host, cluster.webui_port)
        assert spark.alive_workers(status) == ["127.0.0.1", "127.0.0.1"]
        assert status["url"] == cluster.master_url
        assert len(cluster.processes()) >= 3
        # what `fab stop` does: a fresh object stops the cluster from its pid files
        LocalSparkCluster(workers=2, base_dir=str(tmp_path)).stop()
        assert cluster.processes() == []
        with pytest.raises(OSError):
            master_json(cluster.host, cluster.webui_port, timeout=2)
    finally:
        cluster.stop()  # idempotent
    assert cluster.processes() == []


@pytest.mark.slow
def test_start_timeout_names_the_logs_and_leaves_nothing_running(tmp_path):
    cluster = LocalSparkCluster(workers=1, base_dir=str(tmp_path), port=free_port(),
                                      webui_port=free_port(), memory="0m")  # the worker refuses
    with pytest.raises(RuntimeError, match=f"0 of 1 workers ALIVE.*{tmp_path}/logs"):
        cluster.start(timeout=6)
    assert cluster.processes() == []
