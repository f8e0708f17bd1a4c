"""The fab tasks: `fab deploy JOB`, `fab run JOB` (or a script of yours: `fab run
path/to/script.py`), status, logs, stop, exec, put, ssh, ui, tensorboard, notebook, jobs,
wheelhouse, jars.

Every task takes `--target`: `local`, an inventory JSON file, or `pulumi[:STACK]` (the default,
read with `pulumi stack output --json --show-secrets`); $KINDLING_TARGET sets the default.
Job flags pass through (`fab run JOB --data DIR`), and any other job flag with
`--job-args "--flag value"`. Which flags exist is each job's declaration
(workloads.jobs): this module knows no job and no job flag.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from fabric import task
from invoke.exceptions import Exit

from kindling import Inventory, KindlingError, UserError
from ops import local
from ops.cluster import console
from ops.run import run
from ops.services.hdfs import NAMENODE_HTTP_PORT
from ops.services.spark import MASTER_WEBUI_PORT
from ops.ssh import ssh_command, tunnel_command
from ops.targets import (LOCAL, ClusterTarget, Target, load_cluster_inventory, load_target,
                         target_spec)
from workloads.jobs import JOBS, Flag
from workloads.scripts import find_job, job_and_args

JOB_TIMEOUT = 6 * 3600
TARGET_HELP = "local | path/to/cluster.json | pulumi[:STACK] (default: $KINDLING_TARGET or pulumi)"
LAUNCH_HELP = {
    "target": TARGET_HELP,
    "detach": "start the job and return at once (follow with `fab logs --job JOB`)",
    "timeout": "seconds before the job is stopped (default 6 hours)",
    "job_args": "extra job flags, quoted: --job-args '--flag value --other-flag'",
    "fresh": "start over even when a spot interruption stopped the job's last run (default: "
             "a job that can resume does)",
    "roles": "a script's TensorFlow tasks, each with its TF_CONFIG: worker=2 or "
             "chief=1,worker=2,ps=1 (default: spark-submit of the script)",
    "code": "the folder shipped with a script, on its PYTHONPATH (default: the script's folder)",
    "requirements": "a pip requirements file installed beside kindling's dependencies, resolved "
                    "against its pins (on the local target: into the venv fab runs from)",
}
BUG_EXIT_CODE = 70  # EX_SOFTWARE


def cli_errors(body):
    """Expected failures end as one `error: ...` line (exit 2 for user mistakes); anything else
    is a bug in kindling: its traceback, then a line saying so."""
    @functools.wraps(body)
    def wrapper(*args, **kwargs):
        try:
            return body(*args, **kwargs)
        except KindlingError as exc:
            raise Exit(f"error: {exc}", code=exc.exit_code) from None
        except (Exit, KeyboardInterrupt):
            raise
        except Exception as exc:
            traceback.print_exc()
            raise Exit(f"error: this is a bug in kindling ({type(exc).__name__}: {exc}); please "
                       "report it with the traceback above", code=BUG_EXIT_CODE) from None
    return wrapper


def _fab_flags() -> dict[str, list[tuple[str, Flag]]]:
    """Option name -> (job, flag) of every job flag offered as a fab option."""
    options: dict[str, list[tuple[str, Flag]]] = {}
    for job in JOBS.values():
        for flag in job.flags:
            if flag.fab:
                options.setdefault(flag.dest, []).append((job.name, flag))
    return options


def launch_task(name: str, deploy: bool, doc: str):
    """`fab deploy` / `fab run`: one body, whose options are the union of the jobs' flags."""
    flags = _fab_flags()

    def body(c, job, target=None, detach=False, timeout=None, job_args="", fresh=False,
             wheelhouse=None, roles=None, code=None, requirements=None, **options):
        chosen, args = job_and_args(job, options, job_args, roles, code)
        with load_target(target) as where:
            results = run(where, chosen, args, float(timeout or JOB_TIMEOUT), detach, deploy,
                          wheelhouse, fresh, requirements)
        if results is not None:
            _report(results)

    base = [p for p in inspect.signature(body).parameters.values() if p.kind != p.VAR_KEYWORD]
    if not deploy:
        base = [p for p in base if p.name != "wheelhouse"]
    body.__signature__ = inspect.Signature(base + [
        inspect.Parameter(dest, inspect.Parameter.KEYWORD_ONLY,
                          default=False if declared[0][1].switch else None)
        for dest, declared in flags.items()])
    body.__doc__ = doc
    body.__name__ = name
    help_texts = {}
    for dest, declared in flags.items():
        by_help: dict[str, list[str]] = {}
        for job_name, flag in declared:
            by_help.setdefault(flag.help, []).append(job_name)
        help_texts[dest] = "; ".join(f"{', '.join(names)}: {text}" for text, names in by_help.items())
    extra = {"wheelhouse": "install from this folder of wheels (no PyPI on the hosts)"} if deploy else {}
    return task(name=name, help=LAUNCH_HELP | extra | help_texts)(cli_errors(body))


deploy = launch_task("deploy", True, "Install everything JOB (or path/to/script.py) needs on "
                     "every host (skipping what is done), then launch it.")
run_job = launch_task("run", False, "Launch JOB (or path/to/script.py) on a deployed cluster "
                      "(the local target needs no deploy).")


def _report(results: Path) -> None:
    metrics = results / "metrics.json"
    if metrics.is_file():
        accuracy = json.loads(metrics.read_text()).get("accuracy")
        if isinstance(accuracy, (int, float)):
            console.print(f"accuracy: {accuracy:.4f}")
    print(f"results: {os.path.relpath(results)}", flush=True)


@task
def jobs(c):
    """List the jobs fab can deploy and run, with the package each comes from; then one line for
    each job an installed package declares but fab cannot use, and its fix."""
    packages = {name: JOBS.package(name) for name in JOBS}
    width, package_width = (max(map(len, texts), default=0) for texts in (packages, packages.values()))
    for name, job in JOBS.items():
        print(f"{name:<{width}}  {packages[name]:<{package_width}}  {job.summary}")
    broken = JOBS.broken()
    if broken:
        raise Exit("\n".join(f"error: {line}" for line in broken.values()), code=UserError.exit_code)


@task(help={"target": TARGET_HELP})
@cli_errors
def status(c, target=None):
    """Hosts reachable, job processes running, Spark master and workers alive."""
    with load_target(target) as where:
        where.status()


@task(help={"target": TARGET_HELP, "job": "only this job's runs (default: all)"})
@cli_errors
def stop(c, job=None, target=None):
    """Stop job processes on every host (idempotent); on local also the Spark daemons."""
    chosen = find_job(job) if job else None
    with load_target(target) as where:
        where.stop(chosen)
        print(f"stopped {job or 'all jobs'} on {len(where.cluster.hosts)} hosts")


@task(help={"target": TARGET_HELP, "job": "this job's latest run (default: the latest run)"})
@cli_errors
def logs(c, job=None, target=None):
    """Print the logs of a job's latest run from every host."""
    chosen = find_job(job) if job else None
    with load_target(target) as where:
        where.logs(chosen)


def _hosts_by_role(where: Target, role: str | None):
    inventory = where.cluster.inventory
    if role is None:
        return where.cluster.hosts
    roles = {"master": (inventory.master,), "workers": inventory.workers,
             "worker": inventory.workers, "ps": inventory.ps}
    if role not in roles:
        raise UserError(f"unknown role {role!r}; use master, workers or ps")
    return roles[role]


@task(name="exec", help={"target": TARGET_HELP, "role": "master | workers | ps (default: all)"})
@cli_errors
def exec_(c, command, role=None, target=None):
    """Run a shell command on every host (or one role), output prefixed by host."""
    with load_target(target) as where:
        results = where.cluster.parallel(
            lambda host, cxn: cxn.run(command, hide=True, warn=True, timeout=600, in_stream=False),
            _hosts_by_role(where, role))
    failed = []
    for name, result in results.items():
        for line in (result.stdout + result.stderr).splitlines():
            console.print(f"[cyan]\\[{name}][/] {line}", highlight=False)
        if result.exited:
            failed.append(f"{name} (exit {result.exited})")
    if failed:
        raise Exit(f"error: command failed on {', '.join(failed)}", code=1)


def _cluster(target: str | None) -> ClusterTarget:
    where = load_target(target)
    if not isinstance(where, ClusterTarget):
        where.close()
        raise UserError("this task needs a cluster target: --target cluster.json or pulumi[:STACK]")
    return where


@task(help={"target": TARGET_HELP, "role": "master | workers | ps (default: all)"})
@cli_errors
def put(c, src, dest, role=None, target=None):
    """Copy a local file to DEST on every host (or one role)."""
    if not Path(src).is_file():
        raise UserError(f"{src}: no such file")
    with _cluster(target) as where:
        hosts = _hosts_by_role(where, role)
        where.cluster.parallel(lambda host, cxn: cxn.put(src, dest), hosts)
        print(f"copied {src} to {dest} on {len(hosts)} hosts")


def _inventory(target: str | None) -> Inventory:
    """The cluster inventory of a target, without connecting (for OpenSSH tasks)."""
    spec = target_spec(target)
    if spec == LOCAL:
        raise UserError("this task needs a cluster target: --target cluster.json or pulumi[:STACK]")
    return load_cluster_inventory(spec)


@task(help={"target": TARGET_HELP, "host": "host name (default: master)"})
@cli_errors
def ssh(c, host="master", target=None):
    """Open an interactive SSH shell on a host, with the pinned host key."""
    inventory = _inventory(target)
    argv = ssh_command(inventory, inventory.host(host))
    os.execvp(argv[0], argv)


@task(help={"target": TARGET_HELP, "seconds": "keep the tunnels this long (default: until Ctrl-C)"})
@cli_errors
def ui(c, target=None, seconds=0):
    """SSH tunnels to the cluster's web UIs (the Spark master's, HDFS's NameNode's); prints
    their local URLs."""
    inventory = _inventory(target)
    spark_port, namenode_port = local.free_ports(2)
    tunnels = {"Spark master UI": (spark_port, MASTER_WEBUI_PORT)}
    if inventory.hdfs:
        tunnels["HDFS NameNode UI"] = (namenode_port, NAMENODE_HTTP_PORT)

    def start():
        tunnel = subprocess.Popen(tunnel_command(inventory, inventory.master, [*tunnels.values()]))
        for name, (local_port, _) in tunnels.items():
            print(f"{name}: http://127.0.0.1:{local_port}/", flush=True)
        return tunnel, None
    _serve(start, seconds)


@task(help={"logdir": "folder of runs (default: runs/, where fab fetches results)",
            "seconds": "serve this long (default: until Ctrl-C)"})
@cli_errors
def tensorboard(c, logdir=None, seconds=0):
    """TensorBoard on this machine over the fetched runs: each training run's loss and accuracy."""
    from ops.runs import runs_root

    folder = Path(logdir).expanduser().resolve() if logdir else runs_root()
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; run a training job first (`fab run "
                        "JOB`) or pass --logdir DIR")

    def start():
        server, url = local.start_server(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(folder), "--host",
             "127.0.0.1", "--port", "0"], r"TensorBoard \S+ at (http://\S+/)", "TensorBoard")
        print(f"TensorBoard: {url} (runs in {folder})", flush=True)
        return server, None
    _serve(start, seconds)


@task(help={"target": TARGET_HELP, "seconds": "serve this long (default: until Ctrl-C)",
            "wheelhouse": "install JupyterLab on the master from this folder of wheels (no "
                          "PyPI there; `fab wheelhouse` includes it)"})
@cli_errors
def notebook(c, target=None, seconds=0, wheelhouse=None):
    """JupyterLab on the master (--target local: this machine) through an SSH tunnel; its
    kernel's `spark` runs on the cluster. Prints its local URL, with the token."""
    from ops import notebook as notebooks

    def start():
        where = load_target(target)
        try:
            session = notebooks.open_session(where, wheelhouse)
        except BaseException:
            where.close()
            raise
        print(f"JupyterLab: {session.url}", flush=True)

        def stop():
            try:
                session.stop()
            finally:
                where.close()
        return session.process, stop
    _serve(start, seconds)


def _serve(start, seconds) -> None:
    """start() -> (a tunnel or server process, what ends the rest or None): kept up for
    `seconds` (0: until Ctrl-C), then ended. A kill or a hangup (the terminal closed) ends it
    too, while it starts as well: nothing outlives fab. Its end is not interrupted."""
    ends = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.getsignal(sig) for sig in ends}
    for sig in ends:
        signal.signal(sig, signal.default_int_handler)
    process = stop = None
    try:
        process, stop = start()
        process.wait(timeout=int(seconds) or None)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        pass
    finally:
        for sig in ends:
            signal.signal(sig, signal.SIG_IGN)
        try:
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if stop is not None:
                stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@task(help={"folder": "where to write the wheels (default: wheelhouse)",
            "python_version": "the hosts' Python, MAJOR.MINOR[:GLIBC] (e.g. 3.12, 3.13:2.41)",
            "target": "ask this target's master for its Python instead",
            "requirements": "your requirements file too (what `fab deploy --requirements` installs)"})
@cli_errors
def wheelhouse(c, folder="wheelhouse", python_version=None, target=None, requirements=None):
    """Build a folder of every wheel the hosts need, for `fab deploy --wheelhouse` (air-gapped),
    and resolve the JVM jars (S3A, HDFS) that fab deploy copies to them."""
    from ops import requirements as yours
    from ops import wheelhouse as wheels
    from ops.deploy import CONSTRAINTS
    from ops.services.wheels import (no_deps_requirements, notebook_requirements,
                                     workload_requirements)

    if python_version and target:
        raise UserError("give --python-version or --target, not both")
    if python_version:
        interpreter = wheels.parse_python_version(python_version)
    elif target:
        with _cluster(target) as where:
            master = where.inventory.master
            interpreter = wheels.host_interpreter(where.cluster.connection(master))
    else:
        interpreter = wheels.this_machine()
    from concurrent.futures import ThreadPoolExecutor

    from ops import jvm

    wanted = yours.gather(requirements, None)
    lock = yours.resolve(wanted, CONSTRAINTS, interpreter) if wanted else None
    spark_home = Path(local.local_spark_home())
    started = time.monotonic()
    with ThreadPoolExecutor(1) as ivy:  # Maven Central's jars download while pip's wheels do
        jars = ivy.submit(lambda: [jvm.resolve(feature, spark_home) for feature in jvm.FEATURES])
        hosts = (workload_requirements(CONSTRAINTS) + notebook_requirements(CONSTRAINTS)
                 + (lock.text.split() if lock else []))
        count = wheels.build(Path(folder), interpreter, CONSTRAINTS, hosts,
                             no_deps_requirements(CONSTRAINTS))
        print(f"wheelhouse: {folder} ({count} wheels for CPython {interpreter.python}, glibc "
              f"{interpreter.glibc}, in {time.monotonic() - started:.0f}s)")
        for feature, path in zip(jvm.FEATURES, jars.result()):  # what fab deploy copies to hosts
            print(f"{feature} jars: {path}")


@task(help={"lock": "resolve afresh and rewrite ops/jars.lock with what Maven Central served"})
@cli_errors
def jars(c, lock=False):
    """The JVM jars Spark gets beyond pyspark's (S3A), resolved by Ivy and checked against the lock."""
    from ops import jvm

    spark_home = Path(local.local_spark_home())
    if lock:
        lines = jvm.write_lock(spark_home)
        print(f"{jvm.LOCK}: {len(lines) - 1} jars pinned")
        return
    for feature in jvm.FEATURES:
        print(f"{feature}: {jvm.resolve(feature, spark_home)} (matches {jvm.LOCK.name})")
