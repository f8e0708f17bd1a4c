"""The run folder: one layout for every target, read by launch, status, logs and stop.

Every process of a run lives in `<runs>/<run id>/`: its output in `<name>.log`, its pid in
`<name>.pid` and, when it ends, its exit code in `<name>.rc`. The local target keeps runs in
runs/ (KINDLING_RUNS_DIR), cluster hosts in /srv/kindling/runs; the shell commands below work on
both, so `--detach`, `fab logs`, `fab status` and `fab stop` work from any later shell.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from workloads.jobs import Process

KILL_GRACE_SECONDS = 3
RUNS_DIR_ENV = "KINDLING_RUNS_DIR"
INTERRUPTED = "interrupted.json"
"""In a run's results folder: the spot interruption notices that stopped it, and the location
its next run resumes from."""


def runs_root() -> Path:
    """The local folder results land in (runs/<id>/); $KINDLING_RUNS_DIR moves it."""
    return Path(os.environ.get(RUNS_DIR_ENV, "runs")).resolve()


RUN_ID_STAMP = "-".join("[0-9]" * width for width in (8, 6, 4))
"""Glob of what new_run_id (workloads.common) puts after the job's name."""


def run_pattern(job_name: str | None) -> str:
    """Glob of the run folders of one job (those of a job named `train` only, not those of a
    job named `train-x`), or of all."""
    return f"{job_name}-{RUN_ID_STAMP}" if job_name else "*"


def record_interruption(results: Path, notices: list[dict], resume: str) -> None:
    (results / INTERRUPTED).write_text(json.dumps({"notices": notices, "resume": resume}, indent=1))


def interrupted_run(job_name: str) -> tuple[str, dict] | None:
    """(run id, its record) of the job's latest run here, when a spot interruption stopped it."""
    latest = max(runs_root().glob(run_pattern(job_name)), default=None)
    record = latest / INTERRUPTED if latest else None
    if record is None or not record.is_file():
        return None
    return latest.name, json.loads(record.read_text())


def start_command(process: Process, run_dir: str) -> str:
    """Start process detached in its own session, its pid and (when it ends) exit code noted."""
    exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in process.env)
    inner = (f"{exports}{shlex.join(process.argv)} > {process.name}.log 2>&1; "
             f"echo $? > {process.name}.rc")
    return (f"mkdir -p {shlex.quote(run_dir)} && cd {shlex.quote(run_dir)} && "
            f"rm -f {process.name}.rc && "
            f"(setsid nohup bash -c {shlex.quote(inner)} > /dev/null 2>&1 < /dev/null & "
            f"echo $! > {process.name}.pid)")


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


def stop_command(runs_dir: str, job_name: str | None) -> str:
    """Stop every process of every run (of one job) under runs_dir; idempotent."""
    return (f"for d in {runs_dir}/{run_pattern(job_name)}/; do [ -d \"$d\" ] && "
            f"{{ ( {kill_command('$d')} ) ; }}; done; true")


def live_command(runs_dir: str) -> str:
    """Prints `<run id>/<process name>` for every live process under runs_dir."""
    return (f"for f in {runs_dir}/*/*.pid; do [ -e \"$f\" ] || continue; "
            f"[ -e \"${{f%.pid}}.rc\" ] && continue; kill -0 $(cat \"$f\") 2>/dev/null && "
            f"echo \"$(basename $(dirname $f))/$(basename ${{f%.pid}})\"; done; true")


def latest_logs_command(runs_dir: str, job_name: str | None, lines: int = 200) -> str:
    """Prints `== <log>` and the last lines of each log of the latest run (of one job)."""
    return (f"d=$(ls -dt {runs_dir}/{run_pattern(job_name)}/ 2>/dev/null | head -1); "
            f"[ -n \"$d\" ] && for f in \"$d\"*.log; do [ -e \"$f\" ] && echo \"== $f\" && "
            f"tail -n {lines} \"$f\"; done; true")
