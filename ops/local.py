"""The built-in `local` target: a Spark standalone master and 2 workers on 127.0.0.1 from the pip
pyspark, TF processes on free localhost ports, results straight into runs/<id>/.

`run` needs no prior `deploy`: it starts what the job needs and stops it at the end.
"""

from __future__ import annotations

import socket
import sys
from contextlib import ExitStack
from pathlib import Path

from invoke import Context

from ops import spark
from ops.inventory import Host
from ops.launch import Run, kill_command
from ops.plans import Placement, flag_value, spark_driver, tf_processes
from ops.targets import runs_root
from workloads.common import new_run_id
from workloads.jobs import Job

LOCAL_HOST = Host(name="local", hostname=socket.gethostname(), privateIp="127.0.0.1")
SPARK_WORKERS = 2
STATE_DIR = Path(".kindling") / "local"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now, all held open together so they are distinct."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def spark_cluster() -> spark.LocalSparkCluster:
    return spark.LocalSparkCluster(workers=SPARK_WORKERS, cores=1, memory="2g",
                                   base_dir=str((STATE_DIR / "spark").resolve()))


def run_local(job: Job, args: list[str], timeout: float, detach: bool = False) -> Path:
    """Run job here; returns its results folder runs/<id>/."""
    run_id = new_run_id(job.name)
    run_dir = Path(flag_value(args, "--output", str(runs_root() / run_id))).resolve()
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
            ps, chief, *worker_ports = free_ports(2 + len(workers))
            ports = {"ps": [ps], "worker": worker_ports, "chief": [chief]}
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
    spark_cluster().stop()
