"""Running a job's processes on their hosts: start detached, stream, watch, stop, no orphans.

Every process runs in its own session (setsid) with its output in `<run>/<name>.log`, its pid in
`<name>.pid` and, when it ends, its exit code in `<name>.rc`. That one layout serves the local
target (an invoke Context) and cluster hosts (Fabric Connections) alike, and makes `--detach`,
`fab logs` and `fab stop` work from any later shell.
"""

from __future__ import annotations

import re
import shlex
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from invoke import Context
from rich.markup import escape

from ops.cluster import console
from ops.inventory import Host
from workloads.common import UserError

POLL_SECONDS = 1.0
GRACE_SECONDS = 30
"""After the main process succeeds, how long the others get to exit on their own."""
KILL_GRACE_SECONDS = 3
COMMAND_TIMEOUT = 60


@dataclass(frozen=True)
class Process:
    """One OS process of a job: ps 0, worker 1, chief 0, or the Spark driver."""
    label: str
    host: Host
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    main: bool = False
    """The job succeeds when this process exits 0 (the chief, or the driver)."""

    @property
    def name(self) -> str:
        """File-name-safe label: `worker-1`."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.label)

    @property
    def where(self) -> str:
        return f"{self.label} on {self.host.name} ({self.host.privateIp})"

    def start_command(self, run_dir: str) -> str:
        exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in self.env)
        inner = (f"{exports}{shlex.join(self.argv)} > {self.name}.log 2>&1; "
                 f"echo $? > {self.name}.rc")
        return (f"mkdir -p {shlex.quote(run_dir)} && cd {shlex.quote(run_dir)} && "
                f"rm -f {self.name}.rc && "
                f"(setsid nohup bash -c {shlex.quote(inner)} > /dev/null 2>&1 < /dev/null & "
                f"echo $! > {self.name}.pid)")


def state_command(run_dir: str, names: list[str]) -> str:
    """Prints `<name> rc N`, `<name> alive` or `<name> gone` per process (zombies count as gone)."""
    checks = []
    for name in names:
        checks.append(
            f"if [ -s {name}.rc ]; then echo \"{name} rc $(cat {name}.rc)\"; "
            f"elif p=$(cat {name}.pid 2>/dev/null) && kill -0 \"$p\" 2>/dev/null && "
            f"! grep -qE '^[0-9]+ \\(.*\\) [ZX]' /proc/\"$p\"/stat 2>/dev/null; then echo '{name} alive'; "
            f"elif [ -s {name}.rc ]; then echo \"{name} rc $(cat {name}.rc)\"; "
            f"else echo '{name} gone'; fi")
    return f"cd \"{run_dir}\" 2>/dev/null && {{ {'; '.join(checks)}; }}"


def kill_command(run_dir: str, names: list[str] | None = None) -> str:
    """TERM then KILL the process group of every (or the named) process of a run.

    run_dir may be a shell expression such as `$d` (run folders have no spaces or quotes).
    """
    pids = " ".join(f"{n}.pid" for n in names) if names else "*.pid"
    # a process with an exit code has ended: its pid may belong to someone else by now
    signal_all = ("for f in {pids}; do [ -e \"${{f%.pid}}.rc\" ] && continue; [ -s \"$f\" ] && "
                  "kill -{sig} -- -$(cat \"$f\") 2>/dev/null && live=1; done")
    return (f"cd \"{run_dir}\" 2>/dev/null || exit 0; live=0; "
            + signal_all.format(pids=pids, sig="TERM") + "; "
            f"for i in $(seq {KILL_GRACE_SECONDS * 10}); do [ $live = 0 ] && break; live=0; "
            + signal_all.format(pids=pids, sig="0") + "; sleep 0.1; done; "
            + signal_all.format(pids=pids, sig="KILL") + "; true")


def failure(state: str) -> int:
    """0 for a healthy state; else a rank, lowest for the likeliest first cause of a failure."""
    if state == "gone":
        return 1
    if state.startswith("rc ") and state != "rc 0":
        return 2 if int(state[3:]) >= 128 else 3
    return 0


class PrefixedOutput:
    """A stream that prints each complete line as `[label] line` (shared lock: no interleaving)."""

    lock = threading.Lock()

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.partial = ""

    def write(self, text: str) -> None:
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        with self.lock:
            for line in lines:
                console.print(f"[cyan]\\[{self.prefix}][/] {escape(line)}", highlight=False,
                              soft_wrap=True)

    def flush(self) -> None:
        pass


@dataclass
class Run:
    """A job's processes, each on a host reached through a Context (local or SSH)."""
    run_id: str
    run_dir: str
    processes: list[Process]
    contexts: dict[str, Context]
    """host name -> invoke Context or Fabric Connection."""
    grace: float = GRACE_SECONDS
    files: dict[str, str] = field(default_factory=dict)
    """name -> text written into the run folder on every host before any process starts."""
    _tails: list[threading.Thread] = field(default_factory=list)

    def _by_host(self) -> dict[str, list[Process]]:
        grouped: dict[str, list[Process]] = {}
        for process in self.processes:
            grouped.setdefault(process.host.name, []).append(process)
        return grouped

    def _on_each_host(self, command_for) -> dict[str, str]:
        def one(item):
            host_name, processes = item
            result = self.contexts[host_name].run(command_for(processes), hide=True, warn=True,
                                                  timeout=COMMAND_TIMEOUT, in_stream=False)
            return host_name, result.stdout
        with ThreadPoolExecutor(max_workers=len(self.contexts)) as pool:
            return dict(pool.map(one, self._by_host().items()))

    def start(self) -> None:
        if self.files:
            writes = " && ".join(f"printf %s {shlex.quote(text)} > {shlex.quote(name)}"
                                 for name, text in self.files.items())
            self._on_each_host(lambda ps: f"mkdir -p \"{self.run_dir}\" && "
                                          f"cd \"{self.run_dir}\" && {writes}")
        for process in self.processes:  # in order: servers before the chief / driver
            result = self.contexts[process.host.name].run(
                process.start_command(self.run_dir), hide=True, warn=True,
                timeout=COMMAND_TIMEOUT, in_stream=False)
            if result.exited != 0:
                self.stop()
                raise UserError(f"could not start {process.where}: {result.stderr.strip()[-200:]}")

    def stream(self) -> None:
        """Follow every process's log with a `[label@host]` prefix until it exits."""
        for process in self.processes:
            cxn = self.contexts[process.host.name]
            prefix = process.label if len(self.contexts) == 1 else f"{process.label}@{process.host.name}"
            command = (f"cd {shlex.quote(self.run_dir)} && "
                       f"tail -n +1 -F --pid=$(cat {process.name}.pid) {process.name}.log 2>/dev/null")
            thread = threading.Thread(target=cxn.run, args=(command,), daemon=True, kwargs=dict(
                out_stream=PrefixedOutput(prefix), hide=True, warn=True, in_stream=False))
            thread.start()
            self._tails.append(thread)

    def states(self) -> dict[str, str]:
        """process name -> 'alive' | 'rc N' | 'gone'."""
        out: dict[str, str] = {}
        for text in self._on_each_host(
                lambda ps: state_command(self.run_dir, [p.name for p in ps])).values():
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
                raise UserError(f"{culprit.where} {how}{self._last_words(culprit)}; every "
                                "process of the run was stopped")
            if states.get(main.name) == "rc 0":
                self._let_others_finish()
                return
            if time.monotonic() > deadline:
                self.stop()
                raise UserError(f"{main.where} did not finish within {timeout:.0f}s; the run was "
                                "stopped (raise --timeout for longer jobs)")
            time.sleep(POLL_SECONDS)

    def _last_words(self, process: Process) -> str:
        """': <its last error: line>' (or last line) from the process's log, for the message."""
        tail = self.contexts[process.host.name].run(
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
        self._on_each_host(lambda ps: kill_command(self.run_dir, [p.name for p in ps]))
        for thread in self._tails:
            thread.join(timeout=5)
