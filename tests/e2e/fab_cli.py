"""`fab` as a user types it, for the end-to-end tests: run it, read its one error line or results."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ops import jvm

REPO = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")


def fab_env(assets: Path, runs: Path, home: Path) -> dict[str, str]:
    """The environment of a user's shell: offline assets, a runs folder and a home of the test's
    (the JVM jars resolved once per machine are shared, as the wheelhouse is)."""
    return {"KINDLING_ASSETS": str(assets), "KINDLING_RUNS_DIR": str(runs),
            "KINDLING_CONNECT_DEADLINE": "8", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": str(home), "LANG": "C.UTF-8",
            "XDG_CACHE_HOME": str(jvm.cache_root().parents[1])}


def fab(env: dict, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([FAB, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_error_line(done: subprocess.CompletedProcess, code: int = 2) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == code, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def results_of(done: subprocess.CompletedProcess) -> Path:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("results: "), last
    return Path(REPO, last.removeprefix("results: "))


def job_processes(cluster, host: str) -> list[str]:
    """Command lines of kindling job processes on a host."""
    out = cluster.exec(host, "ps -eo args").stdout
    return [line for line in out.splitlines() if "workloads." in line or "pyspark.daemon" in line]
