"""A `fab notebook` kernel's side: its `spark` session, attached to the cluster as a job's driver
is (the confs ops gives spark-submit, in the kernelspec's startup file), and the note the hosts'
watcher reads while a cell runs (ops.agent.autostop counts a busy kernel as activity, an idle one
not: the session's Spark application alone keeps no cluster up)."""

from __future__ import annotations

import os
from pathlib import Path


def note_cells(shell, folder: str) -> None:
    """While a cell runs, folder/<this kernel's pid>.busy exists (world-readable, as the
    watcher runs as its own user); IPython runs post_run_cell after an error or an interrupt too."""
    busy = Path(folder, f"{os.getpid()}.busy")

    def started(*_) -> None:
        fd = os.open(busy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w") as note:
            note.write(str(os.getpid()))

    def ended(*_) -> None:
        busy.unlink(missing_ok=True)

    shell.events.register("pre_run_cell", started)
    shell.events.register("post_run_cell", ended)


def attach(conf: dict[str, str], kernels: str):
    """The kernel's SparkSession on the cluster's master with conf (spark.master and
    spark.app.name among them), its cells noted in kernels ("": not noted, no watcher)."""
    from IPython import get_ipython
    from pyspark.sql import SparkSession

    if kernels:
        note_cells(get_ipython(), kernels)
    return SparkSession.builder.config(map=conf).getOrCreate()
