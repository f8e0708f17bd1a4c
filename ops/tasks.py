"""The fab tasks: `fab deploy JOB`, `fab run JOB`, status, logs, stop, exec, put, ssh, ui, jobs.

Every task takes `--target`: `local`, an inventory JSON file, or `pulumi[:STACK]` (the default,
read with `pulumi stack output --json --show-secrets`); $KINDLING_TARGET sets the default.
Job flags pass through: `fab run classify --data photos/ --model ResNet50`, and anything else
with `--job-args "--learning-rate 0.01"`.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from fabric import task
from invoke.exceptions import Exit

from ops import local, runs
from ops.cluster import Cluster, console
from ops.deploy import deploy_context, install_hosts, start_spark
from ops.launch import kill_command
from ops.plans import flag_value
from ops.remote import RUNS, sh
from ops.services import master_status
from ops.spark import MASTER_WEBUI_PORT, alive_workers, master_json
from ops.ssh import ssh_command
from ops.targets import is_local, load_target
from workloads.common import UserError
from workloads.jobs import JOBS, Job, get_job

JOB_TIMEOUT = 6 * 3600
PASS_THROUGH = ("data", "model", "weights", "epochs", "steps", "batch_size", "input_mode",
                "strategy")
TARGET_HELP = "local | path/to/cluster.json | pulumi[:STACK] (default: $KINDLING_TARGET or pulumi)"
JOB_HELP = {
    "target": TARGET_HELP,
    "detach": "start the job and return at once (follow with `fab logs --job JOB`)",
    "timeout": "seconds before the job is stopped (default 6 hours)",
    "job_args": "extra job flags, quoted: --job-args '--learning-rate 0.01'",
    "data": "the job's data (a local folder or file, copied to every host)",
    "model": "model: classify's featurizer name, train-mnist's export folder",
    "weights": "classify: imagenet or a weights file",
    "epochs": "training epochs", "steps": "training steps", "batch_size": "batch size",
    "input_mode": "train-mnist: spark | tensorflow", "strategy": "train-ps: ps | sync",
}


def user_errors(body):
    """A user mistake ends as one `error: ...` line and exit code 2, never a traceback."""
    @functools.wraps(body)
    def wrapper(*args, **kwargs):
        try:
            return body(*args, **kwargs)
        except UserError as exc:
            raise Exit(f"error: {exc}", code=2) from None
    return wrapper


def job_args(job: Job, flags: dict, extra: str) -> list[str]:
    args = []
    for name in PASS_THROUGH:
        value = flags.get(name)
        if value is not None:
            args += [f"--{name.replace('_', '-')}", str(value)]
    try:
        args += shlex.split(extra or "")
    except ValueError as exc:
        raise UserError(f"--job-args {extra!r} is not a valid shell-quoted list ({exc})") from None
    return job.with_offline_defaults(args)


def _launch(job_name: str, target: str | None, deploy_first: bool, wheelhouse: str | None,
            detach: bool, timeout: int | None, extra: str, flags: dict) -> None:
    job = get_job(job_name)
    args = job_args(job, flags, extra)
    timeout = timeout or JOB_TIMEOUT
    if is_local(target):
        results = local.run_local(job, args, timeout, detach)
    else:
        if flag_value(args, "--output", ""):
            raise UserError("--output is chosen by fab on a cluster: results come back to "
                            "runs/<id>/ (set KINDLING_RUNS_DIR to move that folder)")
        with Cluster(load_target(target)) as cluster:
            cluster.connect_all()
            ctx, remote_args = deploy_context(cluster, job, args, wheelhouse)
            if deploy_first:
                started = time.monotonic()
                install_hosts(cluster, ctx)
                if job.launcher == "spark":
                    start_spark(cluster, ctx)
                console.print(f"deploy took {time.monotonic() - started:.1f}s")
            else:
                runs.check_deployed(cluster, job)
                runs.stage_data(cluster, ctx)
            results = runs.launch(cluster, job, remote_args, timeout, detach)
    if results is not None:
        _report(results)


def _report(results: Path) -> None:
    metrics = results / "metrics.json"
    if metrics.is_file():
        import json

        accuracy = json.loads(metrics.read_text()).get("accuracy")
        if isinstance(accuracy, (int, float)):
            console.print(f"accuracy: {accuracy:.4f}")
    print(f"results: {os.path.relpath(results)}", flush=True)


@task(help=JOB_HELP | {"wheelhouse": "install from this folder of wheels (no PyPI on the hosts)"})
@user_errors
def deploy(c, job, target=None, wheelhouse=None, detach=False, timeout=None, job_args="",
           data=None, model=None, weights=None, epochs=None, steps=None, batch_size=None,
           input_mode=None, strategy=None):
    """Install everything JOB needs on every host (skipping what is done), then launch it."""
    _launch(job, target, True, wheelhouse, detach, timeout, job_args, locals())


@task(name="run", help=JOB_HELP)
@user_errors
def run_job(c, job, target=None, detach=False, timeout=None, job_args="", data=None, model=None,
            weights=None, epochs=None, steps=None, batch_size=None, input_mode=None,
            strategy=None):
    """Launch JOB on an already deployed cluster (the local target needs no deploy)."""
    _launch(job, target, False, None, detach, timeout, job_args, locals())


@task
def jobs(c):
    """List the jobs kindling can deploy and run."""
    width = max(map(len, JOBS))
    for job in JOBS.values():
        print(f"{job.name:<{width}}  {job.summary}")


@task(help={"target": TARGET_HELP})
@user_errors
def status(c, target=None):
    """Hosts reachable, Spark master and workers alive, job processes running."""
    if is_local(target):
        alive = _local_spark_workers()
        print(f"local: Spark {'up with ' + str(alive) + ' workers' if alive is not None else 'down'}")
        return
    with Cluster(load_target(target)) as cluster:
        running = cluster.parallel(lambda host, cxn: sh(
            cxn, f"for f in {RUNS}/*/*.pid; do [ -e \"$f\" ] || continue; "
                 f"[ -e \"${{f%.pid}}.rc\" ] && continue; kill -0 $(cat \"$f\") 2>/dev/null && "
                 f"echo \"$(basename $(dirname $f))/$(basename ${{f%.pid}})\"; done; true"))
        master = cluster.inventory.master
        spark_status = master_status(cluster.connection(master), master)
        for host in cluster.inventory.hosts:
            procs = running[host.name].split() or ["no job processes"]
            console.print(f"[bold]{host.name}[/] {host.address} ({cluster.role(host)}): reachable; "
                          + ", ".join(procs))
        if spark_status is None:
            console.print("spark: master not running (run `fab deploy JOB`)")
        else:
            alive = alive_workers(spark_status)
            console.print(f"spark: master {cluster.inventory.sparkMasterUrl} ALIVE, "
                          f"{len(alive)}/{len(cluster.inventory.workers)} workers: "
                          + ", ".join(alive))


def _local_spark_workers() -> int | None:
    try:
        return len(alive_workers(master_json("127.0.0.1")))
    except OSError:
        return None


@task(help={"target": TARGET_HELP, "job": "only this job's runs (default: all)"})
@user_errors
def stop(c, job=None, target=None):
    """Stop job processes on every host (idempotent); on local also the Spark daemons."""
    pattern = f"{get_job(job).name}-*" if job else "*"
    if is_local(target):
        local.stop_local()
        print("local: stopped")
        return
    with Cluster(load_target(target)) as cluster:
        cluster.parallel(lambda host, cxn: sh(
            cxn, f"for d in {RUNS}/{pattern}/; do [ -d \"$d\" ] && "
                 f"{{ {kill_command('$d')} ; }}; done; true", timeout=120))
        print(f"stopped {job or 'all jobs'} on {len(cluster.inventory.hosts)} hosts")


@task(help={"target": TARGET_HELP, "job": "this job's latest run (default: the latest run)"})
@user_errors
def logs(c, job=None, target=None):
    """Print the logs of a job's latest run from every host."""
    pattern = f"{get_job(job).name}-*" if job else "*"
    if is_local(target):
        found = sorted(runs.runs_root().glob(f"{pattern}/*.log"), key=os.path.getmtime)
        latest = found[-1].parent if found else None
        if latest is None:
            raise UserError("no local runs yet; start one with `fab run JOB --target local`")
        for log in sorted(latest.glob("*.log")):
            console.print(f"[bold]== {log}[/]")
            print(log.read_text(errors="replace"))
        return
    with Cluster(load_target(target)) as cluster:
        texts = cluster.parallel(lambda host, cxn: sh(
            cxn, f"d=$(ls -dt {RUNS}/{pattern}/ 2>/dev/null | head -1); [ -n \"$d\" ] && "
                 f"for f in \"$d\"*.log; do [ -e \"$f\" ] && echo \"== $f\" && tail -n 200 \"$f\"; "
                 f"done; true"))
        for name, text in texts.items():
            if text:
                console.print(f"[bold]{name}[/]")
                print(text)


def _hosts_by_role(cluster: Cluster, role: str | None):
    if role is None:
        return cluster.inventory.hosts
    roles = {"master": (cluster.inventory.master,), "workers": cluster.inventory.workers,
             "worker": cluster.inventory.workers, "ps": cluster.inventory.ps}
    if role not in roles:
        raise UserError(f"unknown role {role!r}; use master, workers or ps")
    return roles[role]


@task(name="exec", help={"target": TARGET_HELP, "role": "master | workers | ps (default: all)"})
@user_errors
def exec_(c, command, role=None, target=None):
    """Run a shell command on every host (or one role), output prefixed by host."""
    with Cluster(load_target(target)) as cluster:
        results = cluster.parallel(
            lambda host, cxn: cxn.run(command, hide=True, warn=True, timeout=600, in_stream=False),
            _hosts_by_role(cluster, role))
        failed = []
        for name, result in results.items():
            for line in (result.stdout + result.stderr).splitlines():
                console.print(f"[cyan]\\[{name}][/] {line}", highlight=False)
            if result.exited:
                failed.append(f"{name} (exit {result.exited})")
        if failed:
            raise UserError(f"command failed on {', '.join(failed)}")


@task(help={"target": TARGET_HELP, "role": "master | workers | ps (default: all)"})
@user_errors
def put(c, src, dest, role=None, target=None):
    """Copy a local file to DEST on every host (or one role)."""
    if not Path(src).is_file():
        raise UserError(f"{src}: no such file")
    with Cluster(load_target(target)) as cluster:
        cluster.parallel(lambda host, cxn: cxn.put(src, dest), _hosts_by_role(cluster, role))
        print(f"copied {src} to {dest} on {len(_hosts_by_role(cluster, role))} hosts")


@task(help={"target": TARGET_HELP, "host": "host name (default: master)"})
@user_errors
def ssh(c, host="master", target=None):
    """Open an interactive SSH shell on a host, with the pinned host key."""
    inventory = load_target(target)
    argv = ssh_command(inventory, inventory.host(host))
    os.execvp(argv[0], argv)


@task(help={"target": TARGET_HELP, "seconds": "keep the tunnels this long (default: until Ctrl-C)"})
@user_errors
def ui(c, target=None, seconds=0):
    """SSH tunnels to the Spark master UI and TensorBoard; prints their local URLs."""
    inventory = load_target(target)
    master = inventory.master
    argv = ssh_command(inventory, master)
    spark_port, tensorboard_port = local.free_ports(2)
    tunnels = {"Spark master UI": (spark_port, MASTER_WEBUI_PORT),
               "TensorBoard": (tensorboard_port, 6006)}
    forwards = [a for lp, rp in tunnels.values() for a in ("-L", f"127.0.0.1:{lp}:{master.privateIp}:{rp}")]
    tunnel = subprocess.Popen([argv[0], "-N", "-o", "ExitOnForwardFailure=yes", *forwards, *argv[1:]])
    for name, (local_port, _) in tunnels.items():
        print(f"{name}: http://127.0.0.1:{local_port}/", flush=True)
    try:
        tunnel.wait(timeout=int(seconds) or None)
    except subprocess.TimeoutExpired:
        pass
    except KeyboardInterrupt:
        pass
    finally:
        tunnel.terminate()
        tunnel.wait(timeout=10)


@task(help={"folder": "where to write the wheels (default: wheelhouse)"})
@user_errors
def wheelhouse(c, folder="wheelhouse"):
    """Build a folder of every wheel the hosts need, for `fab deploy --wheelhouse` (air-gapped)."""
    from ops.deploy import PROJECT_ROOT
    from ops.services import workload_requirements

    constraints = PROJECT_ROOT / "constraints.txt"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-c", str(constraints),
                           "-w", folder, *workload_requirements(constraints)], timeout=3600)
    if done.returncode != 0:
        raise UserError("pip wheel failed (see above); check your network or pip configuration")
    print(f"wheelhouse: {folder} ({len(list(Path(folder).glob('*.whl')))} wheels)")
