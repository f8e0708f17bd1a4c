"""Liveness of a train-ps task's peers, by TCP probes of their TensorFlow ports.

TensorFlow alone would wait: a ParameterServerStrategy chief whose peers are not up blocks
silently, and its ClusterCoordinator waits up to an hour for a lost worker to come back. A
job that must fail fast, with the task named, watches its peers itself. Standard library only.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from typing import NoReturn

from workloads.common import spot_notice
from workloads.train_ps.tf_cluster import ClusterSpec, Task, describe, reachable

PROBE_SECONDS = 1.0
MISSES_TO_LOSE = 5
"""A peer that was up and then refuses this many probes in a row (~5 s) is gone."""


def exit_now(code: int, error: str | None = None) -> NoReturn:
    """Flush, print the `error:` line if any, and exit at once, skipping TensorFlow's C++
    teardown: after a lost peer it may block on that peer where no Python exception reaches,
    and after success it only spends seconds closing connections to tasks that leave too."""
    sys.stdout.flush()
    if error:
        print(f"error: {error}", file=sys.stderr)
    sys.stderr.flush()
    os._exit(code)


class PeerWatch:
    """Every peer must answer within `timeout` seconds, and the cluster form (`formed()`) by
    then; afterwards a peer that stops answering is lost."""

    def __init__(self, spec: ClusterSpec, peers: list[Task], timeout: float,
                 formed: bool = False):
        self.spec = spec
        self.peers = peers
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.is_formed = formed
        self.seen: set[Task] = set()
        self.misses: Counter[Task] = Counter()

    def formed(self) -> None:
        """The cluster works: every peer counts as seen from now on."""
        self.is_formed = True
        self.seen.update(self.peers)

    def problem(self) -> str | None:
        """Probe every peer once; a one-line description of what is wrong, or None. A spot
        interruption notice for this host comes first: its task leaves before its peers."""
        notice = spot_notice()
        if notice:
            return notice
        for peer in self.peers:
            if reachable(self.spec[peer[0]][peer[1]], timeout=PROBE_SECONDS):
                self.seen.add(peer)
                self.misses[peer] = 0
            elif peer in self.seen:
                self.misses[peer] += 1
                if self.misses[peer] >= MISSES_TO_LOSE:
                    return (f"{describe(self.spec, *peer)} stopped answering (down for "
                            f"{MISSES_TO_LOSE} probes in a row): it died or its host is "
                            "unreachable")
        if time.monotonic() < self.deadline:
            return None
        missing = [describe(self.spec, *peer) for peer in self.peers if peer not in self.seen]
        if missing:
            return (f"{', '.join(missing)} not reachable within {self.timeout:g}s; start "
                    "every task with the same cluster spec, or fix the spec "
                    "(--timeout waits longer)")
        if not self.is_formed:
            return (f"the cluster did not form within {self.timeout:g}s although every peer "
                    "answers; run every task with the same cluster spec and --strategy")
        return None

    def watch_in_background(self) -> threading.Event:
        """Probe every PROBE_SECONDS in a daemon thread and exit_now(1) on a problem; set the
        returned event to stop watching (before peers exit on purpose)."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(PROBE_SECONDS):
                problem = self.problem()
                if problem and not stop.is_set():
                    exit_now(1, problem)

        threading.Thread(target=loop, name="peer-watch", daemon=True).start()
        return stop
