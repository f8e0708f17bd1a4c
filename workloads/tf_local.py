"""Run a whole train-ps cluster on this machine: every task a real OS process on 127.0.0.1.

The processes get the very argvs that remote hosts run (tf_cluster.process_argvs), so a
local run tries exactly what a cluster will run; each gets its own process group so that one
failure stops them all, children included. Standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from workloads.tf_cluster import ClusterSpec, cluster_spec, process_argvs

STOP_GRACE_SECONDS = 5.0


class ClusterFailed(RuntimeError):
    """A local train-ps run failed or timed out; the message names the task and its last words."""


def free_ports(count: int) -> list[int]:
    """Ports that are free on 127.0.0.1 right now (all held open together, so distinct)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def local_cluster_spec(workers: int = 2, ps: int = 1, chief: bool = True) -> ClusterSpec:
    """A spec on 127.0.0.1 with free ports; ps=0 (and chief=False) for --strategy sync."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers + ps + int(chief))]
    return cluster_spec(workers=addresses[:workers], ps=addresses[workers:workers + ps],
                        chief=addresses[-1] if chief else None)


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen
    lines: deque = field(default_factory=lambda: deque(maxlen=50))
    reader: threading.Thread | None = None

    def last_words(self) -> str:
        """Its `error: ...` line if it printed one, else its last line of output."""
        errors = [line for line in self.lines if line.startswith("error:")]
        return (errors or list(self.lines) or ["(no output)"])[-1]

    def outcome(self) -> str:
        code = self.popen.returncode
        if code < 0:
            return f"{self.name} was killed by {signal.Signals(-code).name}"
        return f"{self.name} exited with code {code}"

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after a grace period."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.popen.poll() is not None:
                return
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                continue


def _stream(process: _Process, out: TextIO, lock: threading.Lock) -> None:
    for line in process.popen.stdout:
        line = line.rstrip("\n")
        process.lines.append(line)
        with lock:
            out.write(f"[{process.name}] {line}\n")
            out.flush()


def launch_local(spec: ClusterSpec, job_args: list[str], workdir: str | os.PathLike,
                 timeout: float, python: str = sys.executable, out: TextIO | None = None) -> None:
    """Start every task of `spec`, stream their output prefixed `[worker 1]`, and wait.

    Returns when all exited with 0. On the first failure, or after `timeout` seconds, stops
    the rest and raises ClusterFailed naming the task that failed and its last output line."""
    out = out or sys.stdout
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / "cluster-spec.json"
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    lock = threading.Lock()
    processes: list[_Process] = []
    try:
        for role, index, _host, argv in process_argvs(spec, job_args, str(spec_path), python):
            popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, bufsize=1,
                                     start_new_session=True)
            process = _Process(f"{role} {index}", popen)
            process.reader = threading.Thread(target=_stream, args=(process, out, lock),
                                              daemon=True)
            process.reader.start()
            processes.append(process)
        failed, running = _wait(processes, timeout)
    finally:
        for process in processes:
            process.stop()
        for process in processes:
            process.reader.join(STOP_GRACE_SECONDS)
    if failed:
        raise ClusterFailed(f"train-ps failed: {failed.outcome()}: {failed.last_words()}")
    if running:
        raise ClusterFailed(f"train-ps did not finish within {timeout:g}s (still running: "
                            f"{', '.join(running)}); stopped all processes")


def _wait(processes: list[_Process], timeout: float) -> tuple[_Process | None, list[str]]:
    """(first process that failed, []); at the timeout (None, names still running); or
    (None, []) when all exited with 0."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        failed = [p for p in processes if p.popen.poll() not in (None, 0)]
        if failed:
            return failed[0], []
        if all(p.popen.returncode == 0 for p in processes):
            return None, []
        time.sleep(0.2)
    return None, [p.name for p in processes if p.popen.poll() is None]
