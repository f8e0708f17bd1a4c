"""The built-in `local` target: a Spark standalone master and 2 workers on 127.0.0.1 from the pip
pyspark, TF processes on free localhost ports, results straight into runs/<id>/.

`run` needs no prior `deploy`: it starts what the job needs and stops it at the end.
"""

from __future__ import annotations

import socket
import sys
from contextlib import ExitStack, closing
from pathlib import Path

from invoke import Context

from ops import spark
from ops.inventory import Host
from ops.launch import Run, kill_command
from ops.plans import Placement, spark_driver, tf_processes
from ops.targets import runs_root
from workloads.common import new_run_id
from workloads.jobs import Job

LOCAL_HOST = Host(name="local", hostname=socket.gethostname(), privateIp="127.0.0.1")
SPARK_WORKERS = 2
STATE_DIR = Path(".kindling") / "local"


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spark_cluster() -> spark.LocalSparkCluster:
    return spark.LocalSparkCluster(workers=SPARK_WORKERS, cores=1, memory="2g",
                                   base_dir=str((STATE_DIR / "spark").resolve()))


def run_local(job: Job, args: list[str], timeout: float, detach: bool = False) -> Path:
    """Run job here; returns its results folder runs/<id>/."""
    run_id = new_run_id(job.name)
    run_dir = (runs_root() / run_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    workers = tuple(LOCAL_HOST for _ in range(SPARK_WORKERS))
    with ExitStack() as cleanup:
        if job.launcher == "spark":
            cluster = spark_cluster()
            placement = Placement(LOCAL_HOST, workers, (), sys.executable, cluster.master_url,
                                  cluster.spark_home)
            cluster.start()
            if not detach:
                cleanup.callback(cluster.stop)
            processes, files = spark_driver(job, placement, job.script, args, str(run_dir)), {}
        else:
            placement = Placement(LOCAL_HOST, workers, (), sys.executable)
            ports = {"ps": [free_port()], "worker": [free_port() for _ in workers],
                     "chief": [free_port()]}
            processes, spec = tf_processes(placement, args, str(run_dir), ports)
            files = {"cluster_spec.json": spec}
        run = Run(run_id, str(run_dir), processes, {LOCAL_HOST.name: Context()}, files=files)
        run.start()
        if detach:
            return run_dir
        cleanup.callback(run.stop)
        run.stream()
        run.wait(timeout)
    return run_dir


def stop_local() -> None:
    """Stop every local run's processes and the local Spark daemons (idempotent)."""
    context = Context()
    for run_dir in sorted(runs_root().glob("*/")):
        if any(run_dir.glob("*.pid")):
            context.run(kill_command(str(run_dir.resolve())), hide=True, warn=True, timeout=60)
    spark_cluster().stop_daemons()
