"""What train-mnist's nodes tell the driver: the chief's epochs, which the driver prints, and
their failures, of which it names the first in time. Real sockets, real processes, no Spark."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from workloads.train_mnist import node_reports
from workloads.train_mnist.node_reports import NodeReports, report_failure, report_progress


def fail_and_report(collector: str, role: str, index: int, message: str) -> None:
    """A node process that raises `message` and reports it, as main_fun does."""
    code = ("import sys; from workloads.train_mnist.node_reports import report_failure\n"
            "try:\n"
            f"    raise RuntimeError({message!r})\n"
            "except RuntimeError as exc:\n"
            f"    report_failure({collector!r}, {role!r}, {index}, exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"SPARK_LOCAL_IP": "127.0.0.9", "PATH": "/usr/bin:/bin",
                               "PYTHONPATH": ":".join(sys.path)})
    assert done.returncode == 0, done.stderr


def connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def test_the_first_failure_in_time_is_named_whichever_report_arrives_first():
    with NodeReports("127.0.0.1") as collector:
        chief_failed = time.time()
        # the peer's report reaches the driver first, but it happened later (after the chief's
        # process, which may take seconds to start on a busy machine, has surely raised)
        late = node_reports.NodeFailure("worker", 0, "10.0.0.4", chief_failed + 120,
                                         "UnavailableError: Graph execution error")
        with connect(collector.address) as peer:
            peer.sendall(json.dumps({"failure": late._asdict()}).encode() + b"\n")
        fail_and_report(collector.address, "chief", 0, "/out/checkpoints is not a directory")
        first = collector.first_failure(nodes=2, timeout=30)
    assert first.node == "chief:0 on 127.0.0.9"
    assert first.error == "RuntimeError: /out/checkpoints is not a directory"
    assert chief_failed < first.time < late.time


def test_the_driver_waits_a_bounded_time_for_reports_that_never_come():
    with NodeReports("127.0.0.1") as collector:
        fail_and_report(collector.address, "worker", 1, "lost its peer")
        started = time.monotonic()
        first = collector.first_failure(nodes=3, timeout=1.0)
    assert 1.0 <= time.monotonic() - started < 10
    assert first.node == "worker:1 on 127.0.0.9"


def test_no_report_is_none_and_garbage_is_ignored():
    with NodeReports("127.0.0.1") as collector:
        with connect(collector.address) as stranger:
            stranger.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert collector.first_failure(nodes=1, timeout=0.5) is None


def test_the_driver_prints_the_progress_lines_as_they_come(capfd):
    lines = ["epoch 1/8: loss 2.1034, accuracy 0.2512 (13.2s)",
             "epoch 2/8: loss 1.0410, accuracy 0.6620 (12.9s)"]
    printed = ""
    with NodeReports("127.0.0.1") as reports:
        for line in lines:  # an epoch apart, as the chief sends them
            report_progress(reports.address, line)
            deadline = time.monotonic() + 30
            while line not in printed and time.monotonic() < deadline:
                printed += capfd.readouterr().out
                time.sleep(0.05)
        assert reports.first_failure(nodes=1, timeout=0) is None  # progress is not a failure
    assert printed.splitlines() == lines


def test_a_node_whose_driver_is_gone_reports_nothing_and_does_not_raise():
    with NodeReports("127.0.0.1") as collector:
        address = collector.address
    started = time.monotonic()
    report_failure(address, "chief", 0, RuntimeError("x"))
    report_failure(None, "chief", 0, RuntimeError("x"))  # launched without a collector
    assert time.monotonic() - started < node_reports.REPORT_TIMEOUT * 2 + 1


def test_error_line_is_the_python_error_inside_the_java_one():
    message = (
        "An error occurred while calling o123.collectAndServe.\n"
        ": org.apache.spark.SparkException: Job aborted due to stage failure: Task 9 failed\n"
        "org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n"
        '  File "/work/main/workloads/train_mnist/node.py", line 130, in main_fun\n'
        "tensorflow.python.framework.errors_impl.FailedPreconditionError: /out/checkpoints is "
        "not a directory\n"
        "\tat org.apache.spark.api.python.BasePythonRunner.handlePythonException(Runner.scala:1)\n"
        "java.lang.RuntimeException: wrapped\n")
    assert node_reports.error_line(message) == (
        "tensorflow.python.framework.errors_impl.FailedPreconditionError: /out/checkpoints is "
        "not a directory")
    assert node_reports.error_line("1") == "1"


