"""train-mnist on a real Spark standalone cluster (master + 2 workers, ops/spark.py) through
spark-submit with the argv of the job's own plan (workloads.jobs), on the offline MNIST.

The cluster binds 127.0.0.2, not the 127.0.0.1 TFoS would find by itself (the hostname's
address): the TF nodes can only meet, and be fed, if every executor advertises SPARK_LOCAL_IP.
Run inside a loopback-only namespace: unshare -n sh -c 'ip link set lo up; pytest ...'.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from floors import ACCURACY_FLOOR
from kindling import Host
from ops.local import LocalSparkCluster, free_port
from workloads.jobs import JOBS, Placement

pytestmark = pytest.mark.slow

HOST = "127.0.0.2"
JOB_TIMEOUT = 240
"""No run may take longer, failures included: a hang fails the test instead of the suite."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("spark")
    with LocalSparkCluster(workers=2, host=HOST, base_dir=str(base), port=free_port(),
                           webui_port=free_port()) as running:
        yield running


def submit(cluster: LocalSparkCluster, output: Path, *args: str, nodes: int = 2,
           conf: tuple[tuple[str, str], ...] = ()) -> subprocess.CompletedProcess:
    """spark-submit the job as its plan says, with `nodes` executors (one per worker host)."""
    master = Host(name="master", hostname="master", privateIp=HOST)
    workers = tuple(Host(name=f"worker-{i}", hostname=f"w{i}", privateIp=HOST)
                    for i in range(nodes))
    placement = Placement(master, workers, (), sys.executable, cluster.master_url,
                          cluster.spark_home, spark_conf=conf, spark_conf_dir=cluster.conf_dir)
    job = JOBS["train-mnist"]
    [driver] = job.plan(job, placement, list(args), str(output)).processes
    process = subprocess.Popen(driver.argv, env={**os.environ, **dict(driver.env)},
                               cwd=output.parent, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output_text, _ = process.communicate(timeout=JOB_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"train-mnist still running after {JOB_TIMEOUT}s: {' '.join(args)}")
    # spark-submit passes the Python driver's stderr on to its own stdout: one stream
    return subprocess.CompletedProcess(driver.argv, process.returncode, output_text)


def node_logs(cluster: LocalSparkCluster, driver_output: str) -> str:
    """The executors' stderr files of the application this driver ran."""
    app_id = re.search(r"Spark application (app-\d+-\d+)", driver_output).group(1)
    return "\n".join(f.read_text(errors="replace")
                     for f in (cluster.work_dir / app_id).glob("*/stderr"))


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_barrier_engine_trains_on_two_executors_and_the_chief_writes_results(cluster, assets,
                                                                            tmp_path):
    """Spark's barrier mode, TF reading its own input. (tfos + spark input: the spot notice test's
    resumed run; tfos + tensorflow input: the multi-host e2e, tests/e2e/conftest.py `deployed`.)"""
    output = tmp_path / "run"
    result = submit(cluster, output, "--data", str(assets / "datasets" / "mnist"),
                    "--engine", "barrier", "--input_mode", "tensorflow", "--epochs", "2")
    check_results(cluster, output, result, "barrier", "tensorflow")


def check_results(cluster: LocalSparkCluster, output: Path, result: subprocess.CompletedProcess,
                  engine: str, input_mode: str) -> dict:
    """A run of 2 epochs on 2 executors that ended well: its metrics, curve, model, checkpoint,
    printed lines, the nodes' logs (authkey redacted) and the cluster spec the nodes met in."""
    assert result.returncode == 0, result.stdout[-3000:]
    metrics = json.loads((output / "metrics.json").read_text())
    print(f"{engine}/{input_mode}: accuracy {metrics['accuracy']:.4f}, "
          f"timings {metrics['timings']}")
    assert metrics["accuracy"] >= ACCURACY_FLOOR["train-mnist"]
    assert (metrics["engine"], metrics["input_mode"], metrics["cluster_size"],
            metrics["test_digits"]) == (engine, input_mode, 2, 10000)
    assert metrics["train_digits"] == 5000 and metrics["steps"] > 60
    assert len(metrics["timings"]["epoch_seconds"]) == 2
    assert metrics["model"] == "model.keras"  # no path of the machine that ran it
    history = metrics["history"]
    assert len(history["loss"]) == len(history["accuracy"]) == 2
    assert history["loss"][1] < history["loss"][0] and history["accuracy"][1] > history["accuracy"][0]
    assert (output / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with zipfile.ZipFile(output / "model.keras") as model:
        assert "config.json" in model.namelist()
    assert (output / "checkpoints" / "checkpoint").is_file()
    assert f"results: {output}" in result.stdout
    assert re.search(r"test accuracy: 0\.9\d{3}", result.stdout)
    # the driver printed the chief's epochs as they ended, with the chief's figures (a resumed
    # run, the epochs after its checkpoint's)
    printed = re.findall(r"^epoch (\d+/\d+): loss ([\d.]+), accuracy ([\d.]+) \(\d+\.\ds\)$",
                         result.stdout, re.MULTILINE)
    first = metrics["epochs"] - len(history["loss"]) + 1
    assert printed == [(f"{number}/{metrics['epochs']}", f"{loss:.4f}", f"{accuracy:.4f}")
                       for number, loss, accuracy in zip(range(first, metrics["epochs"] + 1),
                                                         history["loss"], history["accuracy"])]

    # TFoS logs each node's manager authkey, on the driver and on the executors: redacted
    executor_logs = node_logs(cluster, result.stdout)
    for log in (result.stdout, executor_logs):
        assert not re.search(r"authkey'?: b['\"]", log)
        assert ("'authkey': <redacted>" in log) == (engine == "tfos")  # barrier: no TFoS manager

    # both nodes met on the advertised address, as chief and worker
    cluster_lines = re.findall(r"\[(chief|worker):0\] in cluster (.*): training", executor_logs)
    address = rf"'{re.escape(HOST)}:\d+'"
    assert sorted(role for role, _ in cluster_lines) == ["chief", "worker"]
    for _, spec in cluster_lines:
        assert re.fullmatch(rf"\{{'chief': \[{address}\], 'worker': \[{address}\]\}}", spec), spec
    return metrics


def test_a_failing_node_ends_the_job_with_one_error_line(cluster, assets, tmp_path):
    """The chief cannot write its checkpoint (a file is in the way) after 5 steps: the job must
    end non-zero and say why, with no TF node left running, not wait for the lost node."""
    output = tmp_path / "run"
    output.mkdir()
    (output / "checkpoints").write_text("in the way")
    result = submit(cluster, output, "--data", str(assets / "datasets" / "mnist"),
                    "--input_mode", "spark", "--steps", "5", "--timeout", "120")

    assert result.returncode == 1, result.stdout[-3000:]
    [line] = error_lines(result.stdout)
    # the chief failed first; its peer then lost it (UnavailableError), which must not be named
    assert line.startswith(f"error: training failed on the cluster: chief:0 on {HOST} failed "
                           "first: "), line
    assert f"{output / 'checkpoints'} is not a directory" in line
    deadline = time.monotonic() + 30
    while (left := [pid for pid in cluster.processes() if is_executor_side(pid)]) \
            and time.monotonic() < deadline:
        time.sleep(1)
    assert left == [], "executor processes outlived the failed application"


def test_a_spot_notice_fails_the_job_at_once_and_a_rerun_resumes_from_its_checkpoint(
        cluster, assets, tmp_path):
    """The host watcher's notice file appears once the chief saved a checkpoint (the nodes find
    it through KINDLING_SPOT_NOTICE, which a cluster's Spark workers pass their executors): the
    job ends naming a node and the notice. `--resume` of that run restarts every node at the
    chief's last checkpoint and trains the remaining 2 epochs (TFoS feeding from Spark), ending
    as any good run does (check_results)."""
    data = str(assets / "datasets" / "mnist")
    notice, first = tmp_path / "spot-notice.json", tmp_path / "first"
    saved = first / "checkpoints" / "checkpoint"

    noticed, ended = threading.Event(), threading.Event()

    def notice_after_a_checkpoint():
        deadline = time.monotonic() + JOB_TIMEOUT
        while not saved.exists():
            if ended.is_set() or time.monotonic() > deadline:
                return  # no notice: asserted once the job has ended
            time.sleep(0.1)
        notice.write_text('{"host": "worker-1", "address": "10.0.0.4", "action": "terminate", '
                          '"time": "2026-12-06T18:00:00Z"}')
        noticed.set()

    watcher = threading.Thread(target=notice_after_a_checkpoint, daemon=True)
    watcher.start()
    steps = ("--input_mode", "spark", "--epochs", "3")  # a checkpoint per epoch
    result = submit(cluster, first, "--data", data, *steps,
                    conf=(("spark.executorEnv.KINDLING_SPOT_NOTICE", str(notice)),))
    ended.set()
    watcher.join(timeout=10)
    assert noticed.is_set(), (f"the job ended (exit {result.returncode}) before the chief saved a "
                              f"checkpoint at {saved}: no notice was given; {result.stdout[-3000:]}")
    assert result.returncode == 1, result.stdout[-3000:]
    [line] = error_lines(result.stdout)
    assert re.match(rf"error: training failed on the cluster: (chief|worker):0 on {HOST} failed "
                    r"first: workloads.common.SpotInterruptionError: worker-1 \(10\.0\.0\.4\) got a spot "
                    r"interruption notice: EC2 will terminate it at 2026-12-06T18:00:00Z", line), line
    last_step = int(re.search(r"ckpt-(\d+)", saved.read_text()).group(1))

    second = tmp_path / "second"
    result = submit(cluster, second, "--data", data, *steps, "--resume", str(first))
    metrics = check_results(cluster, second, result, "tfos", "spark")  # epochs 2 and 3
    assert metrics["resumed_at_step"] == last_step and 0 < last_step < metrics["steps"], metrics
    print(f"train-mnist: stopped by the notice after step {last_step}, resumed to step "
          f"{metrics['steps']}: accuracy {metrics['accuracy']:.4f}")


def is_executor_side(pid: int) -> bool:
    """An executor JVM or a Python process under it (workers, TF nodes), not a daemon JVM."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"CoarseGrainedExecutorBackend" in argv or "python" in Path(argv[0].decode()).name


def test_more_nodes_than_executors_is_one_clear_line(cluster, assets, tmp_path):
    """3 executors asked for (spark.cores.max=3) on a cluster with 2 free cores: detected after
    --startup_timeout instead of TFoS waiting for a node that never comes."""
    result = submit(cluster, tmp_path / "run", "--data", str(assets / "datasets" / "mnist"),
                    "--startup_timeout", "5", nodes=3)
    assert result.returncode == 2, result.stdout[-3000:]
    [line] = error_lines(result.stdout)
    # how many of the 2 possible executors made it within 5 s depends on the machine's load
    assert re.fullmatch(r"error: --cluster_size 3 but only [012] Spark executors joined within "
                        r"5s; the cluster has too few free cores \(one executor per TF node\): "
                        r"lower --cluster_size or add workers", line), line
