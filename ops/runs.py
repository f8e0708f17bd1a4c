"""Launching a job on a deployed cluster and fetching its results back to runs/<id>/."""

from __future__ import annotations

import re
from pathlib import Path

from ops.cluster import Cluster, console
from ops.launch import Run
from ops.plans import Placement, spark_driver, tf_processes
from ops.remote import PYTHON, RUNS, SPARK_STATE, read_stamp, sh
from ops.services import DeployContext, StagedData, master_status, remote_spark_home
from ops.targets import runs_root
from workloads.common import UserError, new_run_id
from workloads.jobs import Job

FETCH_TIMEOUT = 600


def check_deployed(cluster: Cluster, job: Job) -> None:
    """One clear error when `fab deploy JOB` has not been run (or Spark is down)."""
    hosts = cluster.inventory.hosts

    def installed(host, cxn) -> bool:
        return bool(read_stamp(cxn, "python-deps")) and bool(read_stamp(cxn, "project"))

    missing = [name for name, ok in cluster.parallel(installed, hosts).items() if not ok]
    if missing:
        raise UserError(f"kindling is not deployed on {', '.join(missing)}; run "
                        f"`fab deploy {job.name}` first")
    if job.launcher == "spark":
        master = cluster.inventory.master
        status = master_status(cluster.connection(master), master)
        if status is None:
            raise UserError(f"the Spark master on {master.name} is not running; run "
                            f"`fab deploy {job.name}` first")


def stage_data(cluster: Cluster, ctx: DeployContext) -> None:
    service = StagedData()

    def stage(host, cxn) -> None:
        if not service.is_current(cxn, host, ctx):
            service.install(cxn, host, ctx)
    cluster.parallel(stage)


def placement(cluster: Cluster) -> Placement:
    inventory = cluster.inventory
    cores = cluster.parallel(lambda host, cxn: int(sh(cxn, "nproc")), inventory.workers)
    spark_home = remote_spark_home(cluster.connection(inventory.master))
    return Placement(inventory.master, inventory.workers, inventory.ps, PYTHON,
                     inventory.sparkMasterUrl, spark_home, min(cores.values()))


def launch(cluster: Cluster, job: Job, args: list[str], timeout: float,
           detach: bool = False) -> Path | None:
    """Start job's processes on their hosts; follow them and fetch the results (None: detached)."""
    run_id = new_run_id(job.name)
    run_dir = f"{RUNS}/{run_id}"
    where = placement(cluster)
    if job.launcher == "spark":
        master = cluster.connection(cluster.inventory.master)
        script = sh(master, f"{PYTHON} -c 'import importlib.util as u; "
                            f"print(u.find_spec(\"{job.module}\").origin)'",
                    what=f"locating {job.module}")
        processes, files = spark_driver(job, where, script, args, run_dir), {}
    else:
        processes, spec = tf_processes(where, args, run_dir)
        files = {"cluster_spec.json": spec}
    hosts = {p.host.name: p.host for p in processes}
    involved = tuple(hosts.values())
    if job.launcher == "spark":
        involved = (*involved, *(w for w in cluster.inventory.workers if w.name not in hosts))
    contexts = {host.name: cluster.connection(host) for host in involved}
    cluster.parallel(lambda host, cxn: sh(cxn, f"mkdir -p {run_dir} && touch {run_dir}/.started"),
                     involved)
    run = Run(run_id, run_dir, processes, contexts, files=files)
    run.start()
    local = runs_root() / run_id
    if detach:
        console.print(f"detached: {run_id} runs on the cluster; follow it with `fab logs --job "
                      f"{job.name}`, stop it with `fab stop --job {job.name}`")
        return None
    run.stream()
    try:
        run.wait(timeout)
    except UserError as exc:
        fetch_results(cluster, run_dir, local, involved)
        raise UserError(f"{name_failed_host(cluster, local, exc)}; logs in {local}") from None
    fetch_results(cluster, run_dir, local, involved)
    return local


def fetch_results(cluster: Cluster, run_dir: str, local: Path, hosts) -> None:
    """Every file of the run from every host into local/ (logs under logs/<host>/)."""
    local.mkdir(parents=True, exist_ok=True)

    def fetch(host, cxn) -> None:
        listing = sh(cxn, f"cd {run_dir} 2>/dev/null && find . -type f ! -name '*.pid' "
                          f"! -name '*.rc' ! -name .started -printf '%P\\n'; "
                          f"find {SPARK_STATE}/work -name stderr -newer {run_dir}/.started "
                          f"2>/dev/null; true", timeout=FETCH_TIMEOUT)
        for rel in filter(None, listing.splitlines()):
            if rel.startswith(SPARK_STATE):
                app, executor = rel.split("/")[-3:-1]
                target = local / "logs" / host.name / f"executor-{app}-{executor}.stderr"
                source = rel
            else:
                is_log = rel.endswith(".log") and "/" not in rel
                target = local / "logs" / host.name / rel if is_log else local / rel
                source = f"{run_dir}/{rel}"
            if target.exists() and not target.is_relative_to(local / "logs"):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            cxn.get(source, str(target))

    cluster.parallel(fetch, hosts)


def name_failed_host(cluster: Cluster, local: Path, error: UserError) -> str:
    """Make a Spark driver failure name the executor host that failed, when its log says."""
    message = str(error)
    driver_log = local / "logs" / cluster.inventory.master.name / "driver.log"
    if not message.startswith("driver") or not driver_log.is_file():
        return message
    text = driver_log.read_text(errors="replace")
    ips = re.findall(r"\((\d+\.\d+\.\d+\.\d+) executor \d+\)", text)
    ips += re.findall(r"Lost executor \d+ on (\d+\.\d+\.\d+\.\d+)", text)
    for ip in ips:
        for host in cluster.inventory.workers:
            if host.privateIp == ip:
                return f"{message}: a task failed on {host.name} ({ip}), see its executor log"
    return message
