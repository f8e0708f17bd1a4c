"""Running a job's processes on their hosts: start detached, stream, watch, stop, no orphans.

The processes are the job's plan (workloads.jobs.Launch); the run folder layout and its shell
commands are ops.runs; the hosts and the parallel runner are ops.cluster. The same code serves
the local target (an invoke Context) and cluster hosts (Fabric Connections).
"""

from __future__ import annotations

import re
import shlex
import threading
import time
from dataclasses import dataclass, field

from rich.markup import escape

from kindling import KindlingError
from ops import runs
from ops.cluster import Cluster, console
from ops.remote import write_files_command
from workloads.jobs import Process

POLL_SECONDS = 1.0
GRACE_SECONDS = 30
"""After the main process succeeds, how long the others get to exit on their own."""
COMMAND_TIMEOUT = 60


def failure(state: str) -> int:
    """0 for a healthy state; else a rank, lowest for the likeliest first cause of a failure."""
    if state == "gone":
        return 1
    if state.startswith("rc ") and state != "rc 0":
        return 2 if int(state[3:]) >= 128 else 3
    return 0


class PrefixedOutput:
    """A stream that prints each complete line as `[label] line` (shared lock: no interleaving),
    leaving out the lines that match `noise`."""

    lock = threading.Lock()

    def __init__(self, prefix: str, noise: re.Pattern | None = None):
        self.prefix = prefix
        self.noise = noise
        self.partial = ""

    def write(self, text: str) -> None:
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        with self.lock:
            for line in lines:
                if self.noise and self.noise.match(line):
                    continue
                console.print(f"[cyan]\\[{self.prefix}][/] {escape(line)}", highlight=False,
                              soft_wrap=True)

    def flush(self) -> None:
        pass


@dataclass
class Run:
    """A job's processes, each on its host of the cluster."""
    run_id: str
    run_dir: str
    processes: list[Process]
    cluster: Cluster
    grace: float = GRACE_SECONDS
    files: dict[str, str] = field(default_factory=dict)
    """name -> text written into the run folder on every host before any process starts."""
    folders: tuple[str, ...] = ()
    """Made in the run folder on every host before any process starts."""
    noise: tuple[str, ...] = ()
    """Regexes of output lines not streamed (the log files keep them)."""
    _tails: list[threading.Thread] = field(default_factory=list)

    @property
    def hosts(self) -> tuple:
        return tuple({p.host.name: p.host for p in self.processes}.values())

    def _on_each_host(self, command_for) -> dict[str, str]:
        """command_for(that host's processes) on every host of the run; host name -> stdout."""
        def one(host, cxn) -> str:
            names = [p for p in self.processes if p.host.name == host.name]
            return cxn.run(command_for(names), hide=True, warn=True, timeout=COMMAND_TIMEOUT,
                           in_stream=False).stdout
        return self.cluster.parallel(one, self.hosts)

    def start(self) -> None:
        self._on_each_host(
            lambda ps: write_files_command(self.run_dir, self.files, self.folders))
        for process in self.processes:  # in order: servers before the chief / driver
            result = self.cluster.connection(process.host).run(
                runs.start_command(process, self.run_dir), hide=True, warn=True,
                timeout=COMMAND_TIMEOUT, in_stream=False)
            if result.exited != 0:
                self.stop()
                raise KindlingError(f"could not start {process.where}: "
                                    f"{result.stderr.strip()[-200:]}")

    def stream(self) -> None:
        """Follow every process's log with a `[label@host]` prefix until it exits."""
        noise = re.compile("|".join(f"(?:{n})" for n in self.noise)) if self.noise else None
        for process in self.processes:
            cxn = self.cluster.connection(process.host)
            prefix = (process.label if len(self.hosts) == 1
                      else f"{process.label}@{process.host.name}")
            command = (f"cd {shlex.quote(self.run_dir)} && "
                       f"tail -n +1 -F --pid=$(cat {process.name}.pid) {process.name}.log 2>/dev/null")
            thread = threading.Thread(target=cxn.run, args=(command,), daemon=True, kwargs=dict(
                out_stream=PrefixedOutput(prefix, noise), hide=True, warn=True, in_stream=False))
            thread.start()
            self._tails.append(thread)

    def states(self) -> dict[str, str]:
        """process name -> 'alive' | 'rc N' | 'gone'."""
        out: dict[str, str] = {}
        for text in self._on_each_host(
                lambda ps: runs.state_command(self.run_dir, [p.name for p in ps])).values():
            for line in text.splitlines():
                name, _, state = line.partition(" ")
                out[name] = state
        return out

    def wait(self, timeout: float) -> None:
        """Until the main process succeeds; any failure stops every process and names it."""
        deadline = time.monotonic() + timeout
        main = next(p for p in self.processes if p.main)
        while True:
            states = self.states()
            failed = [p for p in self.processes if failure(states.get(p.name, "gone"))]
            if failed:
                self.stop()
                # the first cause: a killed process before one that exited on its peer's death
                culprit = min(failed, key=lambda p: (failure(states.get(p.name, "gone")), p.main))
                state = states.get(culprit.name, "gone")
                how = "died (killed?)" if state == "gone" else f"exited with code {state[3:]}"
                raise KindlingError(f"{culprit.where} {how}{self._last_words(culprit)}; every "
                                    "process of the run was stopped")
            if states.get(main.name) == "rc 0":
                self._let_others_finish()
                return
            if time.monotonic() > deadline:
                self.stop()
                raise KindlingError(f"{main.where} did not finish within {timeout:.0f}s; the "
                                    "run was stopped (raise --timeout for longer jobs)")
            time.sleep(POLL_SECONDS)

    def _last_words(self, process: Process) -> str:
        """': <its last error: line>' (or last line) from the process's log, for the message."""
        tail = self.cluster.connection(process.host).run(
            f"tail -n 30 \"{self.run_dir}/{process.name}.log\" 2>/dev/null", hide=True, warn=True,
            timeout=COMMAND_TIMEOUT, in_stream=False).stdout.splitlines()
        lines = [line.strip() for line in tail if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        last = (errors or lines or [""])[-1]
        return f": {last[:300]}" if last else ""

    def _let_others_finish(self) -> None:
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            if all(s != "alive" for s in self.states().values()):
                break
            time.sleep(POLL_SECONDS)
        self.stop()

    def stop(self) -> None:
        self._on_each_host(lambda ps: runs.kill_command(self.run_dir, [p.name for p in ps]))
        for thread in self._tails:
            thread.join(timeout=5)
