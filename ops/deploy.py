"""A cluster's hosts for a job: `fab deploy` installs (skipping what is done), `fab run` checks
that it was, stages the job's data, and fetches the results back."""

from __future__ import annotations

import hashlib
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from kindling import Host, Inventory, KindlingError, UserError
from ops.cluster import Cluster, Progress, console
from ops.remote import COMMAND_TIMEOUT, PYTHON, SPARK_STATE, read_stamp, sh
from ops import hdfs, jvm
from ops.local import local_spark_home
from ops.services import (BasePackages, CloudInit, DeployContext, Layout, ProjectWheel,
                          DataNode, JvmJars, NameNode, PythonDependencies, ServedWheelhouse, Service, SparkMaster,
                          SparkWorker, StagedData, Watcher, WheelhouseServer, fetch_json,
                          stops)
from ops.staging import TRANSFER_TIMEOUT, content_digest, push_path, remote_path, staged_check
from ops.storage import ObjectStore
from workloads.jobs import Job

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STORED_DATA = "data"
"""Below the cluster's storage root: data uploaded from the control machine, by content hash."""
STORED_MARKER = "_COMPLETE"
HOST_SERVICES: tuple[Service, ...] = (Layout(), WheelhouseServer(), CloudInit(), BasePackages(),
                                      PythonDependencies(), ProjectWheel(), StagedData())
"""In order on each host. The wheelhouse upload (master only) overlaps the hosts' cloud-init."""
WHEEL_BUILD_TIMEOUT = 300
FETCH_TIMEOUT = 600


def project_wheel() -> Path:
    """kindling as a wheel, rebuilt only when its sources change (.kindling/dist/<hash>/)."""
    if not (PROJECT_ROOT / "pyproject.toml").is_file():
        raise UserError(f"{PROJECT_ROOT} is not a kindling checkout (no pyproject.toml); run fab "
                        "from the cloned repository")
    sources = sorted([PROJECT_ROOT / "kindling.py", *(p for pkg in ("infra", "ops", "workloads")
                                                      for p in (PROJECT_ROOT / pkg).rglob("*.py"))])
    digest = hashlib.sha256()
    for path in [PROJECT_ROOT / "pyproject.toml", *sources]:
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode() + path.read_bytes())
    out = PROJECT_ROOT / ".kindling" / "dist" / digest.hexdigest()[:16]
    wheels = list(out.glob("kindling-*.whl"))
    if not wheels:
        out.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                               "--no-build-isolation", "-w", str(out), str(PROJECT_ROOT)],
                              capture_output=True, text=True, timeout=WHEEL_BUILD_TIMEOUT)
        wheels = list(out.glob("kindling-*.whl"))
        if done.returncode != 0 or not wheels:
            raise UserError(f"building the kindling wheel failed: {done.stderr.strip()[-300:]}")
    return wheels[0]


def staged_paths(job: Job, args: list[str], shared: bool = False) -> dict[str, tuple[Path, str]]:
    """Each value of the job's path flags -> (the local file or folder, its path on the hosts);
    on a cluster with shared storage, not the data that goes there (see store_data)."""
    staged = {}
    for _, value in job.path_values(args, stored=False if shared else None):
        local = Path(value).expanduser().resolve()
        if not local.exists():
            raise UserError(f"{value}: no such file or folder on this machine; pass an existing "
                            "path (it is copied to every host)")
        staged[value] = (local, remote_path(local))
    return staged


def deploy_context(inventory: Inventory, job: Job, args: list[str],
                   wheelhouse: str | None = None) -> DeployContext:
    """What the services need, built and checked on the control machine before any host work."""
    wheelhouse_dir = None
    if wheelhouse:
        wheelhouse_dir = Path(wheelhouse).expanduser()
        if not wheelhouse_dir.is_dir() or not any(wheelhouse_dir.glob("*.whl")):
            raise UserError(f"--wheelhouse {wheelhouse}: not a folder of wheels; build one with "
                            "`fab wheelhouse --folder DIR`")
    shared = bool(inventory.bucket or inventory.hdfs)
    staged = {str(local): remote for local, remote in staged_paths(job, args, shared).values()}
    return DeployContext(inventory, PROJECT_ROOT / "constraints.txt", project_wheel(),
                         wheelhouse_dir, staged)


def bring_up(host: Host, cxn, services, ctx: DeployContext, progress: Progress) -> None:
    """Install each service that is not current on the host, in order, reporting each step."""
    for service in services:
        t0 = time.monotonic()
        if service.is_current(cxn, host, ctx):
            progress.step(host, service.name, "skipped (current)", time.monotonic() - t0)
            continue
        progress.step(host, service.name, "installing...", 0.0)
        try:
            service.install(cxn, host, ctx)
        except KindlingError:
            progress.step(host, service.name, "failed", time.monotonic() - t0)
            raise
        progress.step(host, service.name, "installed", time.monotonic() - t0)


def install_hosts(cluster: Cluster, ctx: DeployContext) -> None:
    """Run every host service where it is not current, on every host at once. With a
    wheelhouse, the master serves it to the hosts that need it (see ServedWheelhouse)."""
    progress = Progress(cluster.inventory.hosts)
    master = cluster.inventory.master
    if ctx.wheelhouse:
        stale = [name for name, current in cluster.parallel(
            lambda host, cxn: PythonDependencies().is_current(cxn, host, ctx)).items()
            if not current and name != master.name]
        ctx.served = ServedWheelhouse(master) if stale else None

    def install(host: Host, cxn) -> None:
        services = [s for s in HOST_SERVICES
                    if not isinstance(s, WheelhouseServer) or (ctx.served and host == master)]
        try:
            bring_up(host, cxn, services, ctx, progress)
        finally:
            if ctx.served and host == master:
                ctx.served.publish(None)  # no-op once published: a waiting worker never hangs

    try:
        cluster.parallel(install)
    finally:
        if ctx.served:
            sh(cluster.connection(master), ctx.served.stop_command(),
               what="stopping the wheelhouse server")
    progress.done("hosts ready")


def start_spark(cluster: Cluster, ctx: DeployContext) -> None:
    """Spark master on the master host, a worker on each worker host, then a health check."""
    inventory = cluster.inventory
    progress = Progress(inventory.hosts)
    plan = [(SparkMaster(), (inventory.master,)), (SparkWorker(), inventory.workers)]
    for service, hosts in plan:
        def start(host: Host, cxn, service=service) -> None:
            t0 = time.monotonic()
            if service.is_current(cxn, host, ctx):
                progress.step(host, service.name, "skipped (running)", time.monotonic() - t0)
                return
            service.install(cxn, host, ctx)
            progress.step(host, service.name, "started", time.monotonic() - t0)
        cluster.parallel(start, hosts)
    master = inventory.master
    SparkMaster().health_check(cluster.connection(master), master, ctx)
    progress.done(f"spark ready: {len(inventory.workers)} workers registered with "
                  f"{inventory.sparkMasterUrl}")


def check_java_for_hdfs(cluster: Cluster) -> None:
    """HDFS's daemons need Java on every host: there already, or installable by the base
    packages (apt-get). Else one line naming the hosts, before anything changes on any host."""
    def java_or_apt(host: Host, cxn) -> bool:
        return cxn.run("java -version >/dev/null 2>&1 || apt-get --version >/dev/null 2>&1",
                       hide=True, warn=True, timeout=COMMAND_TIMEOUT, in_stream=False).exited == 0

    missing = [name for name, ok in cluster.parallel(java_or_apt).items() if not ok]
    if missing:
        raise UserError(f"hdfs: true needs Java on every host, and {', '.join(missing)} has no "
                        "`java` and no apt-get to install one: install a JRE 17+ there, or turn "
                        "HDFS off (`pulumi config set hdfs false`, or \"hdfs\": false in the "
                        "inventory)")


def start_hdfs(cluster: Cluster, ctx: DeployContext) -> None:
    """HDFS's jars on the master and workers, the NameNode on the master (formatted on its
    first start only), a DataNode on each worker, then every DataNode live on the NameNode."""
    inventory = cluster.inventory
    ctx.jars["hdfs"] = jvm.resolve("hdfs", Path(local_spark_home()))
    progress = Progress(inventory.hosts)
    master = inventory.master
    plan = [((JvmJars("hdfs"),), (master, *inventory.workers)), ((NameNode(),), (master,)),
            ((DataNode(),), inventory.workers)]
    for services, hosts in plan:
        cluster.parallel(lambda host, cxn, services=services: bring_up(
            host, cxn, services, ctx, progress), hosts)
    NameNode().health_check(cluster.connection(master), master, ctx)
    progress.done(f"hdfs ready: {len(inventory.workers)} DataNodes live on "
                  f"hdfs://{master.privateIp}:{hdfs.NAMENODE_PORT}")


def start_watchers(cluster: Cluster, ctx: DeployContext) -> None:
    """The watcher on every host, when there is something to watch: instances to stop when idle
    (the inventory names them and a limit is set), or spot hosts to take back."""
    inventory = cluster.inventory
    spot = [host.name for host in inventory.hosts if host.spot]
    if not stops(inventory) and not spot:
        return
    progress = Progress(inventory.hosts)
    cluster.parallel(lambda host, cxn: bring_up(host, cxn, (Watcher(),), ctx, progress))
    lines = []
    if stops(inventory):
        limits = [f"after {inventory.idleStopMinutes:g} idle minutes" if inventory.idleStopMinutes
                  else "", f"{inventory.maxHours:g} h after it started" if inventory.maxHours
                  else ""]
        lines.append("auto-stop: the cluster stops " + " or ".join(filter(None, limits)))
    if spot:
        lines.append(f"spot: {', '.join(spot)} watched for interruption notices (Spark "
                     "decommissions a host's worker on one)")
    progress.done("; ".join(lines))


def check_deployed(cluster: Cluster, job: Job) -> None:
    """One clear error when `fab deploy JOB` has not been run."""
    def installed(host, cxn) -> bool:
        return bool(read_stamp(cxn, "python-deps")) and bool(read_stamp(cxn, "project"))

    missing = [name for name, ok in cluster.parallel(installed).items() if not ok]
    if missing:
        raise UserError(f"kindling is not deployed on {', '.join(missing)}; run "
                        f"`fab deploy {job.name}` first")


def stage_data(cluster: Cluster, job: Job, args: list[str]) -> list[str]:
    """The job's local data/weights on every host (skipped where present); args with host paths."""
    staged = staged_paths(job, args)
    ctx = DeployContext(cluster.inventory, PROJECT_ROOT / "constraints.txt", None, None,
                        {str(local): remote for local, remote in staged.values()})
    service = StagedData()

    def stage(host, cxn) -> None:
        if not service.is_current(cxn, host, ctx):
            service.install(cxn, host, ctx)
    cluster.parallel(stage)
    return job.with_paths(args, {value: remote for value, (_, remote) in staged.items()})


def store_data(cluster: Cluster, job: Job, args: list[str], root: str,
               bucket_store: ObjectStore) -> list[str]:
    """Each local folder or file given to a flag the job can read from storage, uploaded once
    to the cluster's storage under root (HDFS through the master, or the bucket from here) at a
    content-addressed location, skipped when already there; args with those locations."""
    located = {}
    for _, value in job.path_values(args, stored=True):
        local = Path(value).expanduser().resolve()
        if not local.exists():
            raise UserError(f"{value}: no such file or folder on this machine; pass an existing "
                            "path (it is uploaded to the cluster's storage)")
        digest = content_digest(local)
        location = f"{root}/{STORED_DATA}/{digest}"
        if root.startswith("hdfs://"):
            put_in_hdfs(cluster, local, urlparse(location).path)
        else:
            put_in_bucket(bucket_store, local, location)
        located[value] = f"{location}/{local.name}"
    return job.with_paths(args, located)


def put_in_hdfs(cluster: Cluster, local: Path, folder: str) -> None:
    """local in HDFS as folder/<name>: pushed to the master (once), then written into HDFS from
    there over WebHDFS, whole or not at all (workloads.stored.publish)."""
    master = cluster.inventory.master
    cxn = cluster.connection(master)
    url = (f"http://{master.privateIp}:{hdfs.NAMENODE_HTTP_PORT}/webhdfs/v1{folder}/{local.name}"
           "?op=GETFILESTATUS")
    if fetch_json(cxn, url) is not None:
        console.print(f"data: {local.name} already in hdfs://{folder}/{local.name}")
        return
    started = time.monotonic()
    remote = remote_path(local)
    if cxn.run(staged_check(remote), hide=True, warn=True, timeout=COMMAND_TIMEOUT,
               in_stream=False).exited != 0:
        push_path(cxn, local, remote)
    target = f"{hdfs.default_fs(master.privateIp)}{folder}/{local.name}"
    publish = "import sys; from workloads import stored; stored.publish(*sys.argv[1:])"
    sh(cxn, shlex.join([PYTHON, "-c", publish, remote, target]), timeout=TRANSFER_TIMEOUT,
       what=f"copying {local.name} into HDFS")
    console.print(f"data: {local.name} copied once into hdfs://{folder}/{local.name} "
                  f"({time.monotonic() - started:.1f}s)")


def put_in_bucket(store: ObjectStore, local: Path, location: str) -> None:
    """local in the bucket as location/<name>, then a marker: a later run finding the marker
    skips the upload."""
    import botocore.exceptions

    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    store.credentials(location)
    client = store.client()
    marker = f"{prefix}/{STORED_MARKER}"
    try:
        client.head_object(Bucket=bucket, Key=marker)
        console.print(f"data: {local.name} already in {location}/{local.name}")
        return
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code not in ("404", "NoSuchKey"):
            raise UserError(f"{location}: S3 refused to look for the data there ({code}); use "
                            f"credentials that may read and write s3://{bucket}") from None
    except botocore.exceptions.EndpointConnectionError:
        raise UserError(f"{location}: cannot reach the S3 endpoint {store.endpoint or 'of AWS'}; "
                        "fix the inventory's s3Endpoint") from None
    started = time.monotonic()
    if local.is_dir():
        count = store.upload(local, bucket, f"{prefix}/{local.name}")
    else:
        client.upload_file(str(local), bucket, f"{prefix}/{local.name}")
        count = 1
    client.put_object(Bucket=bucket, Key=marker, Body=b"")
    console.print(f"data: {local.name} uploaded once to {location}/{local.name} ({count} files, "
                  f"{time.monotonic() - started:.1f}s)")


def ship_s3a_jars(cluster: Cluster) -> None:
    """The S3A jars on every host that lacks them (resolved here first, checked by the lock)."""
    ctx = DeployContext(cluster.inventory, PROJECT_ROOT / "constraints.txt", None,
                        jars={"s3a": jvm.resolve("s3a", Path(local_spark_home()))})
    progress = Progress(cluster.inventory.hosts)
    cluster.parallel(lambda host, cxn: bring_up(host, cxn, (JvmJars("s3a"),), ctx, progress))


def fetch_results(cluster: Cluster, run_dir: str, local: Path, since: float) -> None:
    """Every file of the run from every host into local/ (logs under logs/<host>/), and the
    Spark executors' stderr written since the run started."""
    local.mkdir(parents=True, exist_ok=True)

    def fetch(host, cxn) -> None:
        listing = sh(cxn, f"cd {run_dir} 2>/dev/null && find . -type f ! -name '*.pid' "
                          f"! -name '*.rc' -printf '%P\\n'; "
                          f"find {SPARK_STATE}/work -name stderr -newermt @{int(since) - 1} "
                          f"2>/dev/null; true", timeout=FETCH_TIMEOUT, what="listing results")
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

    try:
        cluster.parallel(fetch)
    except KindlingError as exc:  # a host that died keeps its files; fetch what the others have
        print(f"warning: some results could not be fetched: {exc}", file=sys.stderr)


DIED = re.compile(r"exited unexpectedly|crashed|ExecutorLostFailure|Worker lost|Lost executor|"
                  r"killed|Connection reset|EOFError")
"""How Spark reports a task whose process or host died, as opposed to one that failed on its own
(a TF node whose peer vanished fails too, and must not be blamed)."""


def name_failed_host(inventory: Inventory, local: Path, message: str) -> str:
    """Make a Spark driver failure name the executor host that died, when the driver log says:
    a task lost because its Python worker or executor died beats one that failed by itself."""
    driver_log = local / "logs" / inventory.master.name / "driver.log"
    if not message.startswith("driver") or not driver_log.is_file():
        return message
    failures = []  # (died?, ip) in log order
    for line in driver_log.read_text(errors="replace").splitlines():
        task = re.search(r"\((\d+\.\d+\.\d+\.\d+) executor \d+\)", line)
        lost = re.search(r"Lost executor \d+ on (\d+\.\d+\.\d+\.\d+)", line)
        if task or lost:
            failures.append((bool(lost or DIED.search(line)), (task or lost).group(1)))
    workers = {host.privateIp: host for host in inventory.workers}
    for died, ip in sorted(failures, key=lambda failure: not failure[0]):  # stable: log order
        if ip in workers:
            what = "its Python worker or executor died" if died else "a task failed"
            return f"{message}: {what} on {workers[ip].name} ({ip}), see its executor log"
    return message
