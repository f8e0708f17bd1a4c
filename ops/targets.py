"""Where fab acts: the `local` target (this machine) or a cluster (an inventory or a Pulumi stack).

A `Target` is hosts reached through ops.cluster's one runner, run folders laid out by ops.runs,
the placement of a job's processes, its storage (ops.storage) and its services (ops.services).
The local target runs everything on this machine and keeps results where they are; a cluster is
deployed by `fab deploy`, prepared for each run (deployed? Spark workers alive? data placed)
and its results are fetched back (ops.results). ops.run drives a run through either.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from invoke import Context

from kindling import Inventory, KindlingError, UserError, load_inventory, parse_inventory
from ops import local, results, runs, ssh, storage
from ops.cluster import Cluster, console
from ops.deploy import CONSTRAINTS, check_deployed, deploy, deploy_context, package_wheel
from ops.launch import Run
from ops.remote import PYTHON, RUNS, SPARK_CONF, SPOT_NOTICE_FILE, sh
from ops.requirements import Requirements, gather, install_here, resolve
from ops.services import SERVICES, Service
from ops.services.host import ship_jars
from ops.services.spark import Spark, master_status, remote_spark_home, require_secret
from ops.services.watcher import Watcher
from ops.storage.staging import remote_path, stage
from workloads.common import SPOT_NOTICE_ENV
from workloads.jobs import Job, Placement
from workloads.scripts import check_sparkdl_here

TARGET_ENV = "KINDLING_TARGET"
LOCAL = "local"
PULUMI_TIMEOUT = 120


class Target:
    """A place to deploy and run jobs: hosts, their runner, where run folders live, its storage
    and its services."""

    cluster: Cluster
    runs_dir: str
    spark_workers: int
    """How many Spark workers the target runs when Spark is up."""
    storage: storage.Storage
    services: tuple[Service, ...]

    # -- what each target does its own way -----------------------------------------------------

    def deploy(self, request, wheelhouse: str | None) -> None:
        raise NotImplementedError

    def run_folder(self, run_id: str, output: str | None) -> str:
        """Where the run's processes keep their files (and the job its results) on the hosts."""
        raise NotImplementedError

    def prepare(self, request):
        """Make the target ready for a run (an ops.run.RunRequest); the request as the hosts see
        it: local data placed, storage locations spelt out for the job's processes."""
        raise NotImplementedError

    def check(self, job: Job) -> None:
        """Refuse, in one line, a run this target cannot start (before anything starts)."""

    def requirements(self, job: Job, file: str | None) -> Requirements | None:
        """What the run installs beside kindling's dependencies: --requirements FILE (the local
        target's venv already has the package a job comes from, with its dependencies)."""
        return gather(file, None)

    def placement(self, job: Job) -> Placement:
        raise NotImplementedError

    def results(self, run: Run, since: float) -> Path:
        """The run's results folder on this machine."""
        return Path(run.run_dir)

    def explain(self, job: Job, error: KindlingError, results: Path,
                notices: dict[str, dict]) -> str:
        """The failure message, naming the host that failed when a service can tell."""
        for service in self.services:
            said = service.explain(self, job, error, results, notices)
            if said:
                return said
        return str(error)

    def spot_notices(self) -> dict[str, dict]:
        """Host name -> the spot interruption notice its watcher wrote (ops.agent.spot)."""
        return {}

    def release(self, job: Job) -> None:
        """Undo what prepare started for one run (after the run, not after --detach)."""

    def spark_status(self) -> dict | None:
        """The Spark master's /json/ document, or None when it is not running."""
        raise NotImplementedError

    def close(self) -> None:
        self.cluster.close()

    def __enter__(self) -> "Target":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- the same on every target --------------------------------------------------------------

    def status(self) -> None:
        live = self.cluster.parallel(lambda host, cxn: sh(cxn, runs.live_command(self.runs_dir)))
        for host in self.cluster.hosts:
            processes = live[host.name].split() or ["no job processes"]
            console.print(f"[bold]{host.name}[/] {host.address} ({self.cluster.role(host)}): "
                          "reachable; " + ", ".join(processes))
        for service in self.services:
            for line in service.status(self):
                console.print(line)

    def logs(self, job: Job | None) -> None:
        texts = self.cluster.parallel(lambda host, cxn: sh(
            cxn, runs.latest_logs_command(self.runs_dir, job.run_name if job else None)))
        if not any(texts.values()):
            raise UserError(f"no runs{' of ' + job.name if job else ''} yet; start one with "
                            "`fab run JOB`")
        for name, text in texts.items():
            if text:
                console.print(f"[bold]{name}[/]")
                print(text)

    def stop(self, job: Job | None) -> None:
        self.cluster.parallel(lambda host, cxn: sh(
            cxn, runs.stop_command(self.runs_dir, job.run_name if job else None), timeout=120))


class LocalTarget(Target):
    """This machine: a local Spark standalone cluster and TF processes on free ports."""

    def __init__(self) -> None:
        inventory = Inventory(clusterName=LOCAL, region=LOCAL, sshUser="", sshPrivateKey="",
                              knownHosts="", master=local.LOCAL_HOST,
                              workers=(local.LOCAL_HOST,))
        self.cluster = Cluster(inventory, lambda inventory, host: Context())
        self.runs_dir = str(runs.runs_root())
        self.spark = local.spark_cluster()
        self.spark_users: list[Path] = []  # this run's claims on the local Spark
        self.spark_workers = local.SPARK_WORKERS
        self.storage = storage.for_local()
        self.services = (Spark(),)

    def deploy(self, request, wheelhouse):
        if wheelhouse:
            raise UserError("--wheelhouse is for cluster hosts; the local target uses this "
                            "machine's installation")

    def run_folder(self, run_id, output):
        return str(Path(output).resolve()) if output else f"{self.runs_dir}/{run_id}"

    def check(self, job):
        """Spark's daemons need Java on this machine, as its scripts find it; a script runs
        with this machine's Python, whose sparkdl must be kindling's."""
        check_sparkdl_here(job)
        if job.uses_spark and not os.environ.get("JAVA_HOME") and not shutil.which("java"):
            raise UserError(f"{job.name} runs on Spark, and Spark needs Java 17 or 21: there is no "
                            "`java` on the PATH and no JAVA_HOME; install one (Debian/Ubuntu: `sudo "
                            "apt-get install default-jre-headless`) or set JAVA_HOME")

    def prepare(self, request):
        """Your requirements in the venv fab runs from (ops.requirements), path flags made
        absolute (the processes run in their run folder), local Spark up: started, or used as
        found when it already runs (a notebook's, another run's); the last of its users stops it."""
        if request.requirements:
            lock = resolve(request.requirements, CONSTRAINTS)
            installed = install_here(lock, CONSTRAINTS)
            print(f"requirements: {', '.join(installed)} installed into {sys.prefix}"
                  if installed else f"requirements: {request.requirements.origin} already "
                  "installed (skipped)", flush=True)
        if request.job.uses_spark:
            self.spark_users = self.spark.acquire(request.run_dir)
        return replace(request, args=request.job.with_paths(request.args, {
            value: str(path) for value, path in request.local_paths().items()}))

    def placement(self, job):
        workers = (local.LOCAL_HOST,) * local.SPARK_WORKERS
        ps, chief, *worker_ports = local.free_ports(2 + len(workers))
        return Placement(local.LOCAL_HOST, workers, (), sys.executable, self.spark.master_url,
                         self.spark.spark_home,
                         ports={"ps": [ps], "worker": worker_ports, "chief": [chief]},
                         spark_conf_dir=self.spark.conf_dir)

    def explain(self, job, error, results, notices):
        return str(error)  # one host: the message names the process, and so the host

    def release(self, job):
        if self.spark_users:
            self.spark.release(self.spark_users)

    def spark_status(self):
        try:
            return local.master_json("127.0.0.1")
        except OSError:
            return None

    def stop(self, job):
        super().stop(job)
        if job is None:
            self.spark.stop()


class ClusterTarget(Target):
    """Hosts over SSH, host keys pinned; set up by `fab deploy` (ops.services)."""

    def __init__(self, inventory: Inventory):
        self.inventory = inventory
        self.cluster = Cluster(inventory, ssh.Connector())
        self.runs_dir = RUNS
        self.spark_workers = len(inventory.workers)
        self.storage = storage.for_cluster(inventory,
                                           lambda: self.cluster.connection(inventory.master))
        self.services = SERVICES
        self.cluster.connect_all()

    def check(self, job):
        """Its Spark needs the inventory's secret."""
        if job.uses_spark:
            require_secret(self.inventory)

    def requirements(self, job, file):
        """--requirements FILE and the dependencies of the package the job comes from."""
        return gather(file, package_wheel(job))

    def deploy(self, request, wheelhouse):
        staged = {str(local): remote for local, remote in self.staged(request).values()}
        deploy(self.cluster, request.job, deploy_context(self.cluster, request.job, staged,
                                                         wheelhouse, request.requirements))

    def run_folder(self, run_id, output):
        if output is not None:
            raise UserError("--output is chosen by fab on a cluster: results come back to "
                            f"runs/<id>/ (set {runs.RUNS_DIR_ENV} to move that folder)")
        return f"{self.runs_dir}/{run_id}"

    def staged(self, request) -> dict[str, tuple[Path, str]]:
        """Each local path value copied to every host -> (the path here, its path there): all of
        them, but the data a cluster with storage of its own keeps there instead."""
        shared = bool(self.storage.data_root)
        staged = {}
        for value, path in request.local_paths(stored=False if shared else None).items():
            if not path.exists():
                raise UserError(f"{value}: no such file or folder on this machine; pass an "
                                "existing path (it is copied to every host)")
            staged[value] = (path, remote_path(path))
        return staged

    def stored(self, request) -> dict[str, str]:
        """Each local path value the cluster keeps in its storage -> its location there,
        uploaded once (content-addressed)."""
        if not self.storage.data_root:
            return {}
        located = {}
        for value, path in request.local_paths(stored=True).items():
            if not path.exists():
                raise UserError(f"{value}: no such file or folder on this machine; pass an "
                                "existing path (it is uploaded to the cluster's storage)")
            located[value] = self.storage.put(path)
        return located

    def prepare(self, request):
        job = request.job
        check_deployed(self.cluster, job, request.requirements)
        if job.uses_spark:
            Spark.check_workers(self, job)
        located = self.stored(request)
        located |= {uri: self.storage.store(uri).on_hosts(uri) for uri in request.locations}
        staged = self.staged(request)
        stage(self.cluster, dict(staged.values()))
        placed = located | {value: remote for value, (_, remote) in staged.items()}
        prepared = replace(request, args=job.with_paths(request.args, placed),
                           locations=list(located.values()))
        written = [self.storage.run_location(request.run_id)] if job.writes_store else []
        jars = self.storage.jars([*prepared.locations, *filter(None, written)])
        if job.uses_spark and jars:
            ship_jars(self.cluster, jars)
        return prepared

    def placement(self, job):
        inventory = self.inventory
        cores = self.cluster.parallel(lambda host, cxn: int(sh(cxn, "nproc")), inventory.workers)
        spark_home = remote_spark_home(self.cluster.connection(inventory.master))
        return Placement(inventory.master, inventory.workers, inventory.ps, PYTHON,
                         inventory.sparkMasterUrl, spark_home, spark_home.rsplit("/", 1)[0],
                         min(cores.values()), process_env=((SPOT_NOTICE_ENV, SPOT_NOTICE_FILE),),
                         spark_conf_dir=SPARK_CONF)

    def results(self, run, since):
        return results.collect(self.cluster, self.storage, run.run_id, run.run_dir, since)

    def spark_status(self):
        master = self.inventory.master
        return master_status(self.cluster.connection(master), master)

    def spot_notices(self):
        return Watcher.notices(self.cluster)


def target_spec(target: str | None) -> str:
    """--target, else $KINDLING_TARGET, else the current Pulumi stack."""
    return target or os.environ.get(TARGET_ENV) or "pulumi"


def load_target(target: str | None) -> Target:
    """`local`, an inventory JSON file, or `pulumi[:STACK]`."""
    spec = target_spec(target)
    if spec == LOCAL:
        if sys.platform != "linux":
            raise UserError(f"the local target runs on Linux only (it tells its Spark's processes "
                            f"through /proc), not on {sys.platform}; use a cluster: --target "
                            "cluster.json or pulumi:STACK")
        return LocalTarget()
    return ClusterTarget(load_cluster_inventory(spec))


def load_cluster_inventory(spec: str) -> Inventory:
    if spec == "pulumi" or spec.startswith("pulumi:"):
        return _from_pulumi(spec.partition(":")[2])
    return load_inventory(spec)


def _from_pulumi(stack: str) -> Inventory:
    pulumi = shutil.which("pulumi")
    if not pulumi:
        raise UserError("the pulumi CLI is not installed, so there is no stack to read; install "
                        "Pulumi, or pass --target local or --target cluster.json")
    argv = [pulumi, "stack", "output", "--json", "--show-secrets"]
    if stack:
        argv += ["--stack", stack]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PULUMI_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise UserError(f"`{' '.join(argv[1:])}` did not answer within {PULUMI_TIMEOUT}s; "
                        "check `pulumi whoami` and your backend") from None
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"could not read the Pulumi stack ({reason}); run `pulumi up` first, or "
                        "select a stack with `pulumi stack select`")
    try:
        outputs = json.loads(done.stdout or "{}")
    except json.JSONDecodeError:
        raise UserError("`pulumi stack output --json` printed something that is not JSON") from None
    if not outputs:
        raise UserError("the Pulumi stack has no outputs; run `pulumi up` first")
    return parse_inventory(outputs, source=f"pulumi stack {stack or '(current)'}")
