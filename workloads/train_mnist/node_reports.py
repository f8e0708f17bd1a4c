"""What the TensorFlow nodes tell the driver while train-mnist runs: the chief's progress, and
which node failed first (the root cause of a failed run, told once).

The nodes run inside Spark executors, whose output stays in the workers' log files; the
driver's is what `fab run` streams. So the chief sends each epoch's line to a small server on
the driver, which prints it. When one node of a synchronous cluster fails, its peers fail too
(UnavailableError, aborted collectives) as soon as they lose it, and Spark ends the job with
whichever task failure reaches the driver first: a race. So every node reports its own failure,
with the time it happened, before re-raising; the driver then names the first failure in time
and the node (role, index, host) it happened on. Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import socket
import socketserver
import threading
import time
import traceback
from typing import NamedTuple

REPORT_TIMEOUT = 5.0
"""Seconds a node spends trying to reach the driver: a report must never hold up a failure."""
GATHER_SECONDS = 3.0
"""How long the driver waits for the other nodes' reports once the job failed."""


class NodeFailure(NamedTuple):
    role: str
    index: int
    host: str
    time: float
    """Epoch seconds on the node's clock when its exception was caught."""
    error: str

    @property
    def node(self) -> str:
        return f"{self.role}:{self.index} on {self.host}"


def error_line(message: str) -> str:
    """The last `SomeError: ...` line of a (Python-in-Java) traceback, else its first line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)
              and not line.startswith(("org.apache.", "java.", "py4j."))]
    return (errors[-1] if errors else lines[0] if lines else "unknown")[:300]


def node_address() -> str:
    """The address this node advertises (kindling's Spark daemons export SPARK_LOCAL_IP)."""
    return os.environ.get("SPARK_LOCAL_IP") or socket.gethostname()


def _send(reports: str | None, message: dict) -> None:
    """One JSON line to the driver's NodeReports ("host:port"); never raises."""
    if not reports:
        return
    host, port = reports.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=REPORT_TIMEOUT) as connection:
            connection.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        pass  # the driver is gone or unreachable: Spark's own error still reaches it


def report_failure(reports: str | None, role: str, index: int, exc: BaseException) -> None:
    """Send this node's failure to the driver."""
    _send(reports, {"failure": NodeFailure(role, index, node_address(), time.time(), error_line(
        "".join(traceback.format_exception(exc))))._asdict()})


def report_progress(reports: str | None, line: str) -> None:
    """Have the driver print `line` (the chief's epochs)."""
    _send(reports, {"progress": line})


class NodeReports:
    """A TCP server on the driver: prints the progress lines it gets and keeps every node's
    failure report (one JSON line each)."""

    def __init__(self, bind_address: str):
        self.failures: list[NodeFailure] = []
        self.arrived = threading.Condition()
        reports = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = REPORT_TIMEOUT

            def handle(self):
                try:
                    message = json.loads(self.rfile.readline())
                    if "progress" in message:
                        # one write per line: two reports at once must not interleave
                        print(f"{str(message['progress'])[:500]}\n", end="", flush=True)
                        return
                    failure = NodeFailure(**message["failure"])
                except (ValueError, TypeError, KeyError, OSError):
                    return  # not a node of ours
                with reports.arrived:
                    reports.failures.append(failure)
                    reports.arrived.notify_all()

        self.server = socketserver.ThreadingTCPServer((bind_address, 0), Handler)
        self.server.daemon_threads = True
        self.address = f"{bind_address}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="node-reports",
                         daemon=True).start()

    def first_failure(self, nodes: int, timeout: float = GATHER_SECONDS) -> NodeFailure | None:
        """The earliest reported failure, once every node reported or `timeout` passed."""
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.failures) >= nodes, timeout=timeout)
            return min(self.failures, key=lambda failure: failure.time, default=None)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> NodeReports:
        return self

    def __exit__(self, *_) -> None:
        self.close()
