"""The process runner on real local OS processes: success, failure, kill, timeout, no orphans."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from kindling import Host, KindlingError
from ops.launch import Run
from ops.targets import LocalTarget
from workloads.jobs import STREAM_NOISE, Process

HOST = Host(name="local", hostname="localhost", privateIp="127.0.0.1")


def proc(label: str, code: str, main: bool = False) -> Process:
    return Process(label, HOST, (sys.executable, "-c", code), (("KINDLING_TEST", "1"),), main)


def make_run(tmp_path: Path, processes: list[Process]) -> Run:
    return Run("test", str(tmp_path), processes, LocalTarget().cluster, grace=2)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def pids(tmp_path: Path) -> list[int]:
    return [int(p.read_text()) for p in tmp_path.glob("*.pid")]


def test_main_success_stops_servers_and_keeps_logs(tmp_path):
    run = make_run(tmp_path, [
        proc("ps 0", "import time; print('serving', flush=True); time.sleep(300)"),
        proc("chief 0", "import os; print('trained', os.environ['KINDLING_TEST'])", main=True),
    ])
    run.start()
    run.wait(timeout=30)
    assert (tmp_path / "chief-0.log").read_text().strip() == "trained 1"
    assert (tmp_path / "chief-0.rc").read_text().strip() == "0"
    assert "serving" in (tmp_path / "ps-0.log").read_text()
    assert not any(alive(p) for p in pids(tmp_path))


def test_failing_process_is_named_and_everything_stops(tmp_path):
    run = make_run(tmp_path, [
        proc("ps 0", "import time; time.sleep(300)"),
        proc("worker 1", "import time, sys; time.sleep(0.5); sys.exit(3)"),
        proc("chief 0", "import time; time.sleep(300)", main=True),
    ])
    run.start()
    started = time.monotonic()
    with pytest.raises(KindlingError, match=r"^worker 1 on local \(127\.0\.0\.1\) exited with code 3"):
        run.wait(timeout=60)
    assert time.monotonic() - started < 20
    assert not any(alive(p) for p in pids(tmp_path))


def test_killed_process_reported_as_died(tmp_path):
    run = make_run(tmp_path, [
        proc("worker 0", "import time; print('running', flush=True); time.sleep(300)"),
        proc("chief 0", "import time; time.sleep(300)", main=True),
    ])
    run.start()
    deadline = time.monotonic() + 10
    log = tmp_path / "worker-0.log"  # made by the detached shell, maybe after start() returns
    while not log.is_file() or "running" not in log.read_text():
        assert time.monotonic() < deadline, "worker 0 never started"
        time.sleep(0.05)
    worker_pid = int((tmp_path / "worker-0.pid").read_text())
    os.killpg(worker_pid, signal.SIGKILL)
    with pytest.raises(KindlingError, match=r"worker 0 on local .* (died|exited with code)"):
        run.wait(timeout=60)
    assert not any(alive(p) for p in pids(tmp_path))


def test_timeout_stops_the_run(tmp_path):
    run = make_run(tmp_path, [proc("driver", "import time; time.sleep(300)", main=True)])
    run.start()
    with pytest.raises(KindlingError, match="did not finish within 2s"):
        run.wait(timeout=2)
    assert not any(alive(p) for p in pids(tmp_path))


def test_the_stream_leaves_out_tf_and_spark_chatter_which_the_log_keeps(tmp_path, capsys):
    """The lines real train-mnist and classify drivers printed (chatter) around the job's own lines."""
    chatter = [
        "WARNING: Using incubator modules: jdk.incubator.vector",
        "26/12/05 15:55:50 INFO SparkContext: Running Spark version 4.3.0",
        "/venv/site-packages/tensorflowonspark/TFSparkNode.py:15: UserWarning: pkg_resources is "
        "deprecated as an API.",
        "  import pkg_resources",
        "I0000 00:00:1796486170.757809   10665 cpu_feature_guard.cc:227] This TensorFlow binary "
        "is optimized",
        "I0000 00:00:1796632095.641473   12111 coordination_service.h:529] /job:worker/replica:0/"
        "task:0 has connected to coordination service.",  # a MultiWorkerMirroredStrategy task's
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow",
        "2026-12-05 15:56:16,709 INFO (MainThread-10665) waiting for 2 reservations",
        "netlib-blas: JNI_OnLoad: dlopen(libblas.so.3) failed: libblas.so.3: cannot open shared "
        "object file: No such file or directory",  # classify's LogisticRegression
    ]
    own = ["train-mnist: 2 TF nodes (tfos), spark input",
           "26/12/05 15:57:01 WARN TaskSetManager: Lost task 1.0 in stage 2.0",
           "error: training failed on the cluster: chief:0 on 10.0.0.4 failed first: x"]
    lines = [chatter[0], own[0], *chatter[1:], *own[1:]]
    run = Run("test", str(tmp_path), [proc("driver", f"print({chr(10).join(lines)!r})", main=True)],
              LocalTarget().cluster, grace=2, noise=STREAM_NOISE)
    run.start()
    run.stream()
    run.wait(timeout=30)
    run.stop()  # joins the tail
    streamed = [line.removeprefix("[driver] ") for line in capsys.readouterr().out.splitlines()]
    assert streamed == own
    assert (tmp_path / "driver.log").read_text().splitlines() == lines
