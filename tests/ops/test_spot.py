"""Spot interruption notices (ops.agent.spot) against a fake metadata service: read with an IMDSv2
token, acted on once (the notice file, SIGPWR to the Spark worker), gone when the notice goes;
and what fab makes of an interrupted run (ops.runs, ops.targets.resume_interrupted)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from imds_server import NOTICE_PATH, fake_imds
from ops import runs
from ops.agent import spot
from ops.run import resume_interrupted
from workloads.common import SPOT_NOTICE_ENV, spot_notice
from workloads.jobs import get_job
from workloads.train_ps.peer_watch import PeerWatch

SPARK_WORKER = """
import signal, sys, time
signal.signal(signal.SIGPWR, lambda *_: open(sys.argv[1], "w").write("decommissioning"))
print("ready", flush=True)
time.sleep(60)
"""


def wait_for(condition, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_the_notice_is_read_with_a_session_token_and_only_once_given():
    with fake_imds("127.0.0.1") as imds:
        with pytest.raises(urllib.error.HTTPError) as refused:  # the fake, like EC2, wants IMDSv2
            urllib.request.urlopen(imds.endpoint + NOTICE_PATH, timeout=5)
        assert refused.value.code == 401
        assert spot.instance_action(imds.endpoint) is None
        imds.notify("127.0.0.1", "2026-12-06T18:00:00Z")
        assert spot.instance_action(imds.endpoint) == {"action": "terminate",
                                                       "time": "2026-12-06T18:00:00Z"}


def test_a_notice_writes_the_notice_file_decommissions_the_spark_worker_and_goes_with_it(
        tmp_path, monkeypatch):
    signalled = tmp_path / "signalled"
    worker = subprocess.Popen([sys.executable, "-c", SPARK_WORKER, str(signalled)],
                              stdout=subprocess.PIPE, text=True)
    processes = [worker]
    try:
        assert worker.stdout.readline() == "ready\n"
        (tmp_path / "worker.pid").write_text(str(worker.pid))
        notice_file = tmp_path / "spot-notice.json"
        monkeypatch.setenv(SPOT_NOTICE_ENV, str(notice_file))
        with fake_imds("127.0.0.1") as imds:
            watcher = subprocess.Popen([sys.executable, "-c", "import sys; from ops.agent import spot; "
                                        "spot.watch(*sys.argv[1:6], interval=0.05)", "worker-1",
                                        "10.0.0.3", str(notice_file), str(tmp_path / "worker.pid"),
                                        imds.endpoint])
            processes.append(watcher)
            wait_for(lambda: imds.notice_reads.get("127.0.0.1", 0) >= 2, "the watcher to poll")
            assert not notice_file.exists() and not signalled.exists() and spot_notice() is None
            imds.notify("127.0.0.1", "2026-12-06T18:00:00Z")
            wait_for(signalled.exists, "SIGPWR to the Spark worker")
            assert worker.poll() is None  # decommissioned, not killed: EC2 does that
            notice = json.loads(notice_file.read_text())
            assert notice["host"] == "worker-1" and notice["time"] == "2026-12-06T18:00:00Z"
            assert spot_notice() == ("worker-1 (10.0.0.3) got a spot interruption notice: EC2 "
                                     "will terminate it at 2026-12-06T18:00:00Z")
            problem = PeerWatch({"worker": ["127.0.0.1:1"]}, [("worker", 0)], 60).problem()
            assert problem == spot_notice()  # a TF task leaves before its peers are probed
            reads = imds.notice_reads["127.0.0.1"]
            wait_for(lambda: imds.notice_reads["127.0.0.1"] >= reads + 3, "more polls")
            assert signalled.read_text() == "decommissioning"  # acted on once
            imds.clear("127.0.0.1")
            wait_for(lambda: not notice_file.exists(), "the notice file to go with the notice")
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_a_job_resumes_its_latest_run_only_when_a_spot_interruption_stopped_it(
        tmp_path, monkeypatch):
    monkeypatch.setenv(runs.RUNS_DIR_ENV, str(tmp_path))
    train_ps = get_job("train-ps")
    notice = {"host": "worker-1", "address": "10.0.0.3", "time": "2026-12-06T18:00:00Z"}
    older, latest = tmp_path / "train-ps-20261206-170000-0001", tmp_path / "train-ps-20261206-180000-0002"
    for folder in (older, latest):
        folder.mkdir()
    runs.record_interruption(older, [notice], "s3://bucket/runs/" + older.name)
    assert resume_interrupted(train_ps, ["--epochs", "3"]) == ["--epochs", "3"]  # latest: fine

    runs.record_interruption(latest, [notice], str(latest))
    assert resume_interrupted(train_ps, ["--epochs", "3"]) == ["--epochs", "3", "--resume",
                                                               str(latest)]
    chosen = ["--resume=runs/other"]
    assert resume_interrupted(train_ps, chosen) == chosen
    assert resume_interrupted(get_job("classify"), []) == []  # no checkpoint to resume from
