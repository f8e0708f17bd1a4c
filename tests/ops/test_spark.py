"""ops/spark.py: the daemon commands ops runs over SSH, the master health parser, and a real
local standalone cluster that starts, registers its workers and stops without leftovers."""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import subprocess
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from invoke import Context

from kindling import Host, Inventory, UserError
from ops import local
from ops.local import LocalSparkCluster, free_port, master_json
from ops.remote import write_private
from ops.services import spark
from workloads.jobs import JOBS, Placement

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
        # the daemons authenticate with a secret of this start, readable by this user only,
        # on none of their command lines
        defaults = Path(cluster.conf_dir, "spark-defaults.conf")
        assert (defaults.stat().st_mode & 0o777, Path(cluster.conf_dir).stat().st_mode & 0o777) \
            == (0o600, 0o700)
        secret = re.search(r"^spark.authenticate.secret (\w{64})$", defaults.read_text(), re.M)[1]
        assert "spark.authenticate true" in defaults.read_text()
        assert not [pid for pid in cluster.processes()
                    if secret.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()]
        # what `fab stop` does: a fresh object stops the cluster from its pid files
        LocalSparkCluster(workers=2, base_dir=str(tmp_path)).stop()
        assert cluster.processes() == []
        with pytest.raises(OSError):
            master_json(cluster.host, cluster.webui_port, timeout=2)
    finally:
        cluster.stop()  # idempotent
    assert cluster.processes() == []


def test_a_master_pid_file_from_before_the_boot_is_no_running_spark(tmp_path):
    """After a reboot the local Spark's pid files stay: the pid they name may be anyone's now."""
    cluster = LocalSparkCluster(workers=1, base_dir=str(tmp_path))
    master = Path(spark.pid_file(str(tmp_path), spark.MASTER_CLASS))
    master.parent.mkdir()
    master.write_text(str(os.getpid()))  # a live process
    assert cluster.running()
    os.utime(master, (0, 0))  # written before this machine booted
    assert not cluster.running()


def test_the_local_spark_counts_live_fab_processes_and_runs_as_its_users(tmp_path):
    """A user is a fab process (a file with its pid) or a run (a link to its folder, where its
    processes note their pids): a detached run keeps counting after its fab exits."""
    cluster = LocalSparkCluster(workers=1, base_dir=str(tmp_path / "spark"))
    cluster.users_dir.mkdir(parents=True)
    ended = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    (cluster.users_dir / "fab-that-crashed").write_text(ended.stdout)
    (tmp_path / "run").mkdir()
    (cluster.users_dir / "run").symlink_to(tmp_path / "run", target_is_directory=True)
    assert cluster.live_users() == []  # a run before its processes start, a gone fab
    driver = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "run" / "driver.pid").write_text(str(driver.pid))
        assert cluster.live_users() == [cluster.users_dir / "run" / "driver.pid"]
    finally:
        driver.kill()
        driver.wait()
    assert cluster.live_users() == []


def test_a_fab_stuck_starting_the_local_spark_is_one_line_naming_its_lock(tmp_path, monkeypatch):
    """Another fab holds the users' lock (starting the cluster) past the wait: one line, the lock
    named, and this process is no user."""
    monkeypatch.setattr(local, "USERS_LOCK_TIMEOUT", 0.5)
    cluster = LocalSparkCluster(workers=1, base_dir=str(tmp_path))
    with open(tmp_path / "users.lock", "w") as held:  # its own open file: a second flock waits
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(UserError, match=r"^another fab held .*/users\.lock \(starting or "
                                            r"stopping the local Spark\) for over 0s; end it"):
            cluster.acquire()
    assert not cluster.users_dir.exists() and not cluster.running()


@pytest.mark.slow
def test_a_worker_that_exits_ends_the_start_at_once_naming_the_logs(tmp_path):
    cluster = LocalSparkCluster(workers=1, base_dir=str(tmp_path), port=free_port(),
                                      webui_port=free_port(), memory="0m")  # the worker refuses
    try:  # this line, not the timeout's
        with pytest.raises(RuntimeError, match=f"the worker 1 exited before .*{tmp_path}/logs"):
            cluster.start(timeout=120)
        assert cluster.processes() == []
    finally:
        cluster.stop()


@pytest.mark.slow
def test_start_timeout_names_the_logs_and_leaves_nothing_running(tmp_path):
    cluster = LocalSparkCluster(workers=1, base_dir=str(tmp_path), port=free_port(),
                                      webui_port=free_port())
    try:
        with pytest.raises(RuntimeError, match=f"0 of 1 workers ALIVE after 0s.*{tmp_path}/logs"):
            cluster.start(timeout=0)  # no time to register
        assert cluster.processes() == []
    finally:
        cluster.stop()  # a cluster that started anyway: not left running


SECRET_INVENTORY = Inventory("c", "us-east-1", "ubuntu", "key", "",
                             Host(name="master", hostname="m", privateIp="10.0.0.5"),
                             (Host(name="worker-0", hostname="w", privateIp="10.0.1.12"),),
                             sparkSecret="Letters4nd", source="cluster.json")


def test_every_daemon_and_driver_reads_the_secret_from_spark_conf_dir():
    _, master_env = words_and_env(spark.master_start_command(SPARK_HOME, "h", "/b", conf_dir="/c"))
    _, worker_env = words_and_env(spark.worker_start_command(SPARK_HOME, "h", "spark://h:7077",
                                                             1, 1, "1g", "/b", conf_dir="/c"))
    assert master_env["SPARK_CONF_DIR"] == worker_env["SPARK_CONF_DIR"] == "/c"
    job = JOBS["classify"]
    placement = Placement(SECRET_INVENTORY.master, SECRET_INVENTORY.workers, (), "/venv/bin/python",
                          "spark://10.0.0.5:7077", "/spark", "/site", spark_conf_dir="/c")
    [driver] = job.plan(job, placement, [], "/run").processes
    assert dict(driver.env)["SPARK_CONF_DIR"] == "/c"
    assert "Letters4nd" not in " ".join(driver.argv)
    assert spark.spark_defaults("a\\b") == ("spark.authenticate true\n"
                                            "spark.authenticate.secret a\\\\b\n")


@pytest.mark.parametrize("secret, message", [
    ("", "inventory cluster.json has no sparkSecret, the secret Spark authenticates with .*"
         r"run `pulumi up` \(it only adds the secret\)"),
    ("two words", "field 'sparkSecret' has a space or line break"),
])
def test_a_cluster_without_a_usable_secret_is_refused_before_any_host_changes(secret, message):
    with pytest.raises(UserError, match=message):
        spark.Spark().preflight(SimpleNamespace(inventory=replace(SECRET_INVENTORY,
                                                                  sparkSecret=secret)))
    spark.require_secret(SECRET_INVENTORY)


def test_the_secret_is_written_through_stdin_readable_by_this_user_only(tmp_path):
    """SparkDefaults' write, run here: the text never on the command line, the file 0600 in a
    0700 folder, replaced whole when the secret changes."""
    commands = []

    class Recording:
        def run(self, command, **kwargs):
            commands.append(command)
            return Context().run(command, **kwargs)

    path = tmp_path / "secrets" / "spark" / "spark-defaults.conf"
    for secret in ("first0secret", "second0secret"):
        write_private(Recording(), str(path), spark.spark_defaults(secret), what="writing")
        assert path.read_text() == spark.spark_defaults(secret)
    assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    assert len(commands) == 2 and not [c for c in commands if "0secret" in c]
    assert [p.name for p in path.parent.iterdir()] == ["spark-defaults.conf"]
