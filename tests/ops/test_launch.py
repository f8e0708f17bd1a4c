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
from workloads.jobs import Process

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
    while "running" not in (tmp_path / "worker-0.log").read_text():
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
