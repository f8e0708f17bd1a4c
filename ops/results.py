"""A run's results on this machine: every file of the run fetched from every host into
runs/<id>/ (logs under logs/<host>/, the Spark executors' stderr too), then kept in the
cluster's storage as well (ops.storage), where they outlive the cluster."""

from __future__ import annotations

import sys
from pathlib import Path

from kindling import KindlingError
from ops import runs
from ops.cluster import Cluster
from ops.remote import SPARK_STATE, sh
from ops.storage import Storage

FETCH_TIMEOUT = 600


def collect(cluster: Cluster, storage: Storage, run_id: str, run_dir: str, since: float) -> Path:
    """The run's results folder here, fetched from the hosts and kept in the storage."""
    local_dir = runs.runs_root() / run_id
    fetch(cluster, run_dir, local_dir, since)
    storage.keep(local_dir, run_id)
    return local_dir


def fetch(cluster: Cluster, run_dir: str, local: Path, since: float) -> None:
    """Every file of the run from every host into local/ (logs under logs/<host>/), and the
    Spark executors' stderr written since the run started. A host that died keeps its files:
    what the others have is fetched, with a warning."""
    local.mkdir(parents=True, exist_ok=True)

    def one(host, cxn) -> None:
        listing = sh(cxn, f"cd {run_dir} 2>/dev/null && find . -type f ! -name '*.pid' "
                          f"! -name '*.rc' -printf '%P\\n'; "
                          f"find {SPARK_STATE}/work -name stderr -newermt @{int(since) - 1} "
                          f"2>/dev/null; true", timeout=FETCH_TIMEOUT, what="listing results")
        for rel in filter(None, listing.splitlines()):
            source, target = where_to(rel, run_dir, local, host.name)
            if target.exists() and not target.is_relative_to(local / "logs"):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            cxn.get(source, str(target))

    try:
        cluster.parallel(one)
    except KindlingError as exc:
        print(f"warning: some results could not be fetched: {exc}", file=sys.stderr)


def where_to(rel: str, run_dir: str, local: Path, host: str) -> tuple[str, Path]:
    """(remote source, local target) of one listed file: a top-level log under logs/<host>/,
    an executor's stderr as logs/<host>/executor-<app>-<executor>.stderr, the rest as it is."""
    if rel.startswith(SPARK_STATE):
        app, executor = rel.split("/")[-3:-1]
        return rel, local / "logs" / host / f"executor-{app}-{executor}.stderr"
    is_log = rel.endswith(".log") and "/" not in rel
    return f"{run_dir}/{rel}", (local / "logs" / host / rel if is_log else local / rel)
