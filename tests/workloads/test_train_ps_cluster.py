"""train-ps on real TensorFlow processes on 127.0.0.1 free ports, with the offline MNIST:
parameter servers, sync all-reduce, a worker killed mid-training, a chief that fails at once.

Each run leaves no process behind: checked in /proc by the run's unique cluster-spec path."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from floors import ACCURACY_FLOOR
from kindling import KindlingError
from ops.local import free_ports
from ops.run import run
from ops.targets import LocalTarget
from workloads.jobs import JOBS
from workloads.mnist import IDX_FILES
from workloads.train_ps.tf_cluster import cluster_spec, process_argvs

pytestmark = pytest.mark.slow

SMALL = ["--epochs", "2", "--threads", "1", "--timeout", "60"]


def processes_mentioning(marker: str) -> list[str]:
    """Command lines of live processes whose argv contains marker (psutil-free: /proc)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(marker.encode() in arg for arg in argv):
            found.append(" ".join(a.decode(errors="replace") for a in argv))
    return found


def check_results(output: Path, assets: Path, strategy: str, cluster: dict) -> dict:
    """metrics.json, a checkpoint per epoch and a model.keras that loads and scores the same."""
    import keras
    import numpy as np

    from workloads.mnist import load_mnist, to_model_input

    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["strategy"] == strategy and metrics["cluster"] == cluster
    assert metrics["epochs"] == 2 and metrics["steps"] == 2 * 79 and metrics["batch_size"] == 64
    assert metrics["examples_per_second"] > 0 and metrics["test_examples"] == 10_000
    assert metrics["accuracy"] >= ACCURACY_FLOOR["train-ps"], metrics
    assert (output / "checkpoints" / "checkpoint").read_text().startswith(
        'model_checkpoint_path: "ckpt-2"')
    history = metrics["history"]
    assert len(history["loss"]) == len(history["accuracy"]) == 2 and history["first_epoch"] == 1
    assert history["loss"][1] < history["loss"][0] and history["accuracy"][1] > history["accuracy"][0]
    assert (output / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = keras.saving.load_model(output / "model.keras")
    _, (x_test, y_test) = load_mnist(str(assets / "datasets" / "mnist"))
    predicted = np.argmax(model.predict(to_model_input(x_test), batch_size=1000, verbose=0), 1)
    assert abs(float(np.mean(predicted == y_test)) - metrics["accuracy"]) < 1e-3
    print(json.dumps(metrics))  # shown with -rP or on failure
    return metrics


def run_local(tmp_path: Path, args: list[str], capsys, timeout: float = 170) -> str:
    """`fab run train-ps --target local`: ps/workers/chief as real processes on 127.0.0.1."""
    try:
        with LocalTarget() as local:
            run(local, JOBS["train-ps"], args, timeout)
    finally:
        log = capsys.readouterr().out
        print(log)  # shown by pytest when the test fails
        assert processes_mentioning(str(tmp_path)) == []
    return log


def test_parameter_servers_train_the_cnn(tmp_path, assets, capsys):
    output = tmp_path / "results"
    log = run_local(tmp_path, ["--data", str(assets / "datasets" / "mnist"),
                               "--output", str(output), *SMALL], capsys)
    for name in ("ps 0", "worker 0", "worker 1"):
        assert f"[{name}] {name}: the chief is done" in log
    check_results(output, assets, "ps", {"chief": 1, "worker": 2, "ps": 1})


def test_sync_workers_train_the_cnn(tmp_path, assets, capsys):
    output = tmp_path / "results"
    log = run_local(tmp_path, ["--strategy", "sync", "--data", str(assets / "datasets" / "mnist"),
                               "--output", str(output), *SMALL], capsys)
    assert "[worker 1] epoch 2/2" in log and "[worker 0] test accuracy" in log
    check_results(output, assets, "sync", {"chief": 0, "worker": 2, "ps": 0})


def test_the_launcher_stops_everything_when_the_chief_fails(tmp_path, capsys):
    """Files that look like MNIST (so nothing refuses them up front) but are not: the chief, the
    only process that reads them, fails while the ps and workers serve."""
    corrupt = tmp_path / "mnist"
    corrupt.mkdir()
    for name in IDX_FILES.values():
        (corrupt / name).write_bytes(gzip.compress(b"not an IDX file"))
    with pytest.raises(KindlingError, match=r"^chief 0 on local \(127.0.0.1\) exited with code 2: "
                                            r"error: .*train-images-idx3-ubyte.gz is not an IDX file"):
        run_local(tmp_path, ["--data", str(corrupt), "--output", str(tmp_path / "results"),
                             *SMALL], capsys, timeout=60)


def local_spec() -> dict:
    ps, chief, *workers = (f"127.0.0.1:{port}" for port in free_ports(4))
    return cluster_spec(workers, [ps], chief)


def test_a_killed_worker_fails_the_job_naming_it_and_a_rerun_resumes(tmp_path, assets, capsys):
    """The argvs remote hosts run, without any launcher: the processes end themselves.
    Then the local target resumes the run from its last checkpoint."""
    spec = local_spec()
    spec_path = tmp_path / "cluster-spec.json"
    spec_path.write_text(json.dumps(spec))
    results = tmp_path / "results"

    def args(epochs: int) -> list[str]:
        return ["--data", str(assets / "datasets" / "mnist"), "--output", str(results),
                "--epochs", str(epochs), "--steps-per-epoch", "10", "--threads", "1",
                "--timeout", "60"]

    processes, logs = {}, {}
    try:
        module = JOBS["train-ps"].module
        for role, index, _, argv in process_argvs(spec, module, args(50), str(spec_path),
                                                  sys.executable):
            logs[role, index] = tmp_path / f"{role}-{index}.log"
            with logs[role, index].open("w") as log:
                processes[role, index] = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while "epoch 1/50" not in logs["chief", 0].read_text():
            assert time.monotonic() < deadline and processes["chief", 0].poll() is None
            time.sleep(0.2)

        processes["worker", 1].send_signal(signal.SIGKILL)
        assert processes["chief", 0].wait(60) == 1  # within 60 s of the kill, or TimeoutExpired
        assert f"error: worker 1 at {spec['worker'][1]} " in logs["chief", 0].read_text()
        for task in (("ps", 0), ("worker", 0)):  # they notice that the chief is gone
            assert processes[task].wait(30) == 1
            assert f"error: chief 0 at {spec['chief'][0]} stopped answering" in \
                logs[task].read_text()
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for task, log in logs.items():  # shown by pytest when the test fails
            print(f"--- {task}", log.read_text(), sep="\n")
    assert processes_mentioning(str(spec_path)) == []

    saved = int(re.search(r'"ckpt-(\d+)"', (results / "checkpoints" / "checkpoint").read_text())[1])
    run_local(tmp_path, args(saved + 1), capsys)
    metrics = json.loads((results / "metrics.json").read_text())
    assert (metrics["epochs"], metrics["epochs_this_run"]) == (saved + 1, 1)
