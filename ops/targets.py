"""Where fab acts: the `local` target (this machine) or a cluster (an inventory or a Pulumi stack).

Both are a `Target`: hosts reached through ops.cluster's one runner, run folders laid out by
ops.runs, the job's own process plan. They differ only in how hosts are reached, what `deploy`
installs, where Spark comes from, and whether results must be fetched back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote, urlparse

from invoke import Context

from kindling import Inventory, KindlingError, UserError, load_inventory, parse_inventory
from ops import autostop, hdfs, jvm, local, runs, ssh
from ops.cluster import LOST_CONNECTION, Cluster, console
from ops.deploy import (check_deployed, check_java_for_hdfs, deploy_context, fetch_results, install_hosts,
                        name_failed_host, ship_s3a_jars, stage_data, start_hdfs,
                        start_spark, start_watchers, store_data)
from ops.launch import Run
from ops.remote import AUTOSTOP_STATE, BIN, PYTHON, RUNS, SPOT_NOTICE_FILE, jar_folder, sh
from ops.services import (down_datanodes, fetch_json, master_status, namenode_info,
                          remote_spark_home)
from ops.spark import alive_workers, worker_states
from ops.storage import HDFS_URI, S3_URI, ObjectStore, local_endpoint
from workloads import stored
from workloads.common import SPOT_NOTICE_ENV, describe_notice
from workloads.jobs import Download, Job, Placement, split_output

TARGET_ENV = "KINDLING_TARGET"
LOCAL = "local"
PULUMI_TIMEOUT = 120
NOTICE_TIMEOUT = 15
DOWNLOAD_CHECK_TIMEOUT = 10


class Target:
    """A place to deploy and run jobs: hosts, their runner, and where run folders live."""

    cluster: Cluster
    runs_dir: str
    spark_workers: int
    """How many Spark workers the target runs when Spark is up."""

    # -- what each target does its own way -----------------------------------------------------

    def deploy(self, job: Job, args: list[str], wheelhouse: str | None) -> None:
        raise NotImplementedError

    def run_folder(self, run_id: str, output: str | None) -> str:
        """Where the run's processes keep their files (and the job its results) on the hosts."""
        raise NotImplementedError

    def prepare(self, job: Job, args: list[str]) -> list[str]:
        """Make the target ready for a run of job; returns args as the hosts see them."""
        raise NotImplementedError

    def placement(self, job: Job) -> Placement:
        raise NotImplementedError

    def results(self, run: Run, since: float) -> Path:
        """The run's results folder on this machine."""
        raise NotImplementedError

    def explain(self, job: Job, error: KindlingError, results: Path,
                notices: dict[str, dict]) -> str:
        """The failure message, naming the host that failed when the target can tell."""
        return str(error)

    def spot_notices(self) -> dict[str, dict]:
        """Host name -> the spot interruption notice its watcher wrote (ops.spot)."""
        return {}

    def release(self, job: Job) -> None:
        """Undo what prepare started for one run (after the run, not after --detach)."""

    def spark_status(self) -> dict | None:
        """The Spark master's /json/ document, or None when it is not running."""
        raise NotImplementedError

    def object_store(self) -> ObjectStore:
        """Where this target's s3:// paths live."""
        raise NotImplementedError

    def s3a_jars(self) -> str:
        """The folder of the S3A jars, as the Spark driver and executors see it."""
        raise NotImplementedError

    def close(self) -> None:
        self.cluster.close()

    def __enter__(self) -> "Target":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- the same on every target --------------------------------------------------------------

    def run(self, job: Job, args: list[str], timeout: float, detach: bool = False,
            deploy: bool = False, wheelhouse: str | None = None,
            fresh: bool = False) -> Path | None:
        """Refuse bad flags/data first, then (deploy and) launch job; its results folder, or
        None when detached. A job whose last run a spot interruption stopped resumes from it
        (unless fresh)."""
        args, output = split_output(job.with_offline_defaults(args))
        if not fresh:
            args = resume_interrupted(job, args)
        run_id = runs.new_run_id(job.name)
        run_dir = self.run_folder(run_id, output)
        check_downloads(job.downloads(job.parse(args)))
        self.storage(job.uri_values(args))  # a bad location is refused before anything starts
        if deploy:
            self.deploy(job, args, wheelhouse)
        try:
            host_args = self.prepare(job, args)
            conf, env = self.storage(job.uri_values(host_args), self.run_store(run_id),
                                     check=False)  # checked above, or just uploaded by fab
            placement = self.placement(job)
            placement = replace(placement, spark_conf=tuple(conf.items()),
                                process_env=placement.process_env + tuple(env.items()))
            launch = job.plan(job, placement, host_args, run_dir)
            run = Run(run_id, run_dir, launch.processes, self.cluster, files=launch.files,
                      noise=launch.noise)
            started = time.time()
            run.start()
            if detach:
                console.print(f"detached: {run_id}")
                console.print(f"follow it with `fab logs --job {job.name}`, stop it with "
                              f"`fab stop --job {job.name}`")
                return None
            run.stream()
            try:
                run.wait(timeout)
            except KindlingError as exc:
                results = self.results(run, started)
                notices = self.spot_notices()
                if notices:
                    runs.record_interruption(results, list(notices.values()),
                                             self.run_store(run_id) or str(results))
                raise KindlingError(f"{self.explain(job, exc, results, notices)}; logs in "
                                    f"{os.path.relpath(results)}") from None
            results = self.results(run, started)
            for notice in self.spot_notices().values():
                console.print(f"note: {describe_notice(notice)}, during the run"
                              + ("; Spark decommissioned its worker and the job finished on "
                                 "the others" if job.uses_spark else ""))
            return results
        finally:
            if not detach:
                self.release(job)

    def storage(self, uris: list[str], run_store: str = "",
                check: bool = True) -> tuple[dict[str, str], dict[str, str]]:
        """The spark-submit confs and the environment that let the job's processes read the
        locations they were given (s3://bucket/prefix, hdfs:///path, each checked from here
        first unless check is False) and write the run's folder in the cluster's storage."""
        other = next((uri for uri in uris if not S3_URI.match(uri) and not HDFS_URI.match(uri)),
                     None)
        if other:
            raise UserError(f"{other}: kindling reads s3:// (or s3a://) and hdfs:// locations; "
                            "pass one, or a local folder (copied to the hosts)")
        conf: dict[str, str] = {}
        in_hdfs = [uri for uri in uris if HDFS_URI.match(uri)]
        if in_hdfs or HDFS_URI.match(run_store):
            conf |= self.hdfs_conf(in_hdfs if check else [])
        in_s3 = [uri for uri in uris if S3_URI.match(uri)]
        env = {stored.RUN_STORE_ENV: run_store} if run_store else {}
        if not in_s3 and not S3_URI.match(run_store):
            return conf, env
        store = self.object_store()
        for uri in in_s3 if check else []:
            store.check(uri)
        access = store.job_env((in_s3 or [run_store])[0])
        return conf | store.spark_conf(self.s3a_jars(), access), env | access

    def store_root(self) -> str:
        """Where the cluster keeps data and runs in its storage ("" when it has none)."""
        return ""

    def run_store(self, run_id: str) -> str:
        """The run's folder in the cluster's storage ("" when it has none)."""
        root = self.store_root()
        return stored.join(root, "runs", run_id) if root else ""

    def hdfs_conf(self, uris: list[str]) -> dict[str, str]:
        """Spark confs for reading the cluster's HDFS, once each path was found there."""
        raise NotImplementedError

    def status(self) -> None:
        live = self.cluster.parallel(lambda host, cxn: sh(cxn, runs.live_command(self.runs_dir)))
        for host in self.cluster.hosts:
            processes = live[host.name].split() or ["no job processes"]
            console.print(f"[bold]{host.name}[/] {host.address} ({self.cluster.role(host)}): "
                          "reachable; " + ", ".join(processes))
        status = self.spark_status()
        if status is None:
            console.print("spark: master not running (`fab run JOB` or `fab deploy JOB` starts it)")
            return
        alive = alive_workers(status)
        console.print(f"spark: master {status.get('url', '')} ALIVE, {len(alive)}/"
                      f"{self.spark_workers} workers: " + ", ".join(alive))

    def logs(self, job: Job | None) -> None:
        texts = self.cluster.parallel(lambda host, cxn: sh(
            cxn, runs.latest_logs_command(self.runs_dir, job.name if job else None)))
        if not any(texts.values()):
            raise UserError(f"no runs{' of ' + job.name if job else ''} yet; start one with "
                            "`fab run JOB`")
        for name, text in texts.items():
            if text:
                console.print(f"[bold]{name}[/]")
                print(text)

    def stop(self, job: Job | None) -> None:
        self.cluster.parallel(lambda host, cxn: sh(
            cxn, runs.stop_command(self.runs_dir, job.name if job else None), timeout=120))


class LocalTarget(Target):
    """This machine: a local Spark standalone cluster and TF processes on free ports."""

    def __init__(self) -> None:
        inventory = Inventory(clusterName=LOCAL, region=LOCAL, sshUser="", sshPrivateKey="",
                              knownHosts="", master=local.LOCAL_HOST,
                              workers=(local.LOCAL_HOST,))
        self.cluster = Cluster(inventory, lambda inventory, host: Context())
        self.runs_dir = str(runs.runs_root())
        self.spark = local.spark_cluster()
        self.spark_workers = local.SPARK_WORKERS

    def deploy(self, job, args, wheelhouse):
        if wheelhouse:
            raise UserError("--wheelhouse is for cluster hosts; the local target uses this "
                            "machine's installation")

    def run_folder(self, run_id, output):
        return str(Path(output).resolve()) if output else f"{self.runs_dir}/{run_id}"

    def prepare(self, job, args):
        """Path flags made absolute (the processes run in their run folder), local Spark up."""
        if job.uses_spark:
            self.spark.start()
        return job.with_paths(args, {value: str(Path(value).expanduser().resolve())
                                     for _, value in job.path_values(args)})

    def placement(self, job):
        workers = (local.LOCAL_HOST,) * local.SPARK_WORKERS
        ps, chief, *worker_ports = local.free_ports(2 + len(workers))
        return Placement(local.LOCAL_HOST, workers, (), sys.executable, self.spark.master_url,
                         self.spark.spark_home,
                         ports={"ps": [ps], "worker": worker_ports, "chief": [chief]})

    def results(self, run, since):
        return Path(run.run_dir)

    def release(self, job):
        if job.uses_spark:
            self.spark.stop()

    def spark_status(self):
        try:
            return local.master_json("127.0.0.1")
        except OSError:
            return None

    def stop(self, job):
        super().stop(job)
        if job is None:
            self.spark.stop()

    def object_store(self):
        return ObjectStore(local_endpoint(), os.environ.get("AWS_REGION")
                           or os.environ.get("AWS_DEFAULT_REGION", ""))

    def hdfs_conf(self, uris):
        """An HDFS reached by its NameNode's address (hdfs://NAMENODE:8020/path): checked over
        WebHDFS from here, read by pyspark's own HDFS client."""
        for uri in uris:
            if not urlparse(uri).hostname:
                raise UserError(f"{uri}: the local target has no HDFS of its own; name the "
                                "NameNode (hdfs://NAMENODE:8020/path), run on a cluster with "
                                "`hdfs: true`, or pass a local folder")
            if not stored.exists(uri):
                raise UserError(f"{uri}: no such path in that HDFS; put the data there first "
                                "(`hdfs dfs -put DIR PATH`) or fix the path")
        return {}

    def s3a_jars(self):
        return str(jvm.resolve("s3a", Path(local.local_spark_home())))


class ClusterTarget(Target):
    """Hosts over SSH, host keys pinned; Spark daemons installed and started by `fab deploy`."""

    def __init__(self, inventory: Inventory):
        self.inventory = inventory
        self.cluster = Cluster(inventory, ssh.Connector())
        self.runs_dir = RUNS
        self.spark_workers = len(inventory.workers)
        self.cluster.connect_all()

    def deploy(self, job, args, wheelhouse):
        started = time.monotonic()
        ctx = deploy_context(self.inventory, job, args, wheelhouse)
        if self.inventory.hdfs:
            check_java_for_hdfs(self.cluster)
        install_hosts(self.cluster, ctx)
        if self.inventory.hdfs:
            start_hdfs(self.cluster, ctx)
        if job.uses_spark:
            start_spark(self.cluster, ctx)
        start_watchers(self.cluster, ctx)
        console.print(f"deploy took {time.monotonic() - started:.1f}s")

    def run_folder(self, run_id, output):
        if output is not None:
            raise UserError("--output is chosen by fab on a cluster: results come back to "
                            f"runs/<id>/ (set {runs.RUNS_DIR_ENV} to move that folder)")
        return f"{self.runs_dir}/{run_id}"

    def prepare(self, job, args):
        check_deployed(self.cluster, job)
        if job.uses_spark:
            self.check_spark_workers(job)
        root = self.store_root()
        if root:
            args = store_data(self.cluster, job, args, self.data_root(), self.object_store())
        if job.uses_spark and (any(S3_URI.match(uri) for uri in job.uri_values(args))
                               or (job.writes_store and S3_URI.match(root))):
            ship_s3a_jars(self.cluster)  # hdfs:// needs none: pyspark has the HDFS client
        return [arg.replace("hdfs:///", self.hdfs_root() + "/")
                for arg in stage_data(self.cluster, job, args)]

    def hdfs_root(self) -> str:
        """hdfs://NAMENODE:8020: what hdfs:///path means on this cluster, spelt out for the
        processes that reach HDFS without Hadoop's configuration (WebHDFS)."""
        return hdfs.default_fs(self.inventory.master.privateIp)

    def data_root(self) -> str:
        """Where a local --data folder goes: HDFS when the cluster runs it (the hosts read it
        there, close by), else the bucket."""
        return self.hdfs_root() + "/kindling" if self.inventory.hdfs else self.store_root()

    def store_root(self):
        """The bucket, where runs outlive the cluster; HDFS on a cluster without one."""
        if self.inventory.bucket:
            return f"s3://{self.inventory.bucket}"
        return self.hdfs_root() + "/kindling" if self.inventory.hdfs else ""

    def check_spark_workers(self, job: Job) -> None:
        """Every worker host's Spark worker ALIVE on the master, or which one is not and the fix."""
        status = self.spark_status()
        if status is None:
            master = self.inventory.master
            raise KindlingError(f"the Spark master on {master.name} is not running; "
                                f"`fab deploy {job.name}` starts it")
        states = worker_states(status)
        down = [f"{w.name} ({w.privateIp}) is {states.get(w.privateIp, 'not registered')}"
                for w in self.inventory.workers if states.get(w.privateIp) != "ALIVE"]
        if down:
            raise KindlingError(f"the Spark worker on {', '.join(down)} on the master; "
                                f"`fab deploy {job.name}` restarts it")

    def placement(self, job):
        inventory = self.inventory
        cores = self.cluster.parallel(lambda host, cxn: int(sh(cxn, "nproc")), inventory.workers)
        spark_home = remote_spark_home(self.cluster.connection(inventory.master))
        return Placement(inventory.master, inventory.workers, inventory.ps, PYTHON,
                         inventory.sparkMasterUrl, spark_home, spark_home.rsplit("/", 1)[0],
                         min(cores.values()), process_env=((SPOT_NOTICE_ENV, SPOT_NOTICE_FILE),))

    def results(self, run, since):
        local_dir = runs.runs_root() / run.run_id
        fetch_results(self.cluster, run.run_dir, local_dir, since)
        if self.inventory.bucket:
            self.keep_in_bucket(local_dir, run.run_id)
        return local_dir

    def keep_in_bucket(self, local_dir: Path, run_id: str) -> None:
        """The fetched results also in the cluster's bucket, s3://BUCKET/runs/<id>/, where they
        outlive the cluster; a failed upload is a warning (the results are here)."""
        import botocore.exceptions
        import boto3.exceptions

        where = f"s3://{self.inventory.bucket}/runs/{run_id}/"
        try:
            count = self.object_store().upload(local_dir, self.inventory.bucket, f"runs/{run_id}")
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
                boto3.exceptions.S3UploadFailedError) as exc:
            print(f"warning: results not copied to {where} ({exc}); they are in "
                  f"{os.path.relpath(local_dir)}", file=sys.stderr)
            return
        console.print(f"results also in {where} ({count} files)")

    def explain(self, job, error, results, notices):
        if notices:  # the host's Spark worker is decommissioned: not "died"
            unsaid = [describe_notice(n) for n in notices.values()
                      if describe_notice(n) not in str(error)]
            after = (f"`fab run {job.name}` resumes from the last checkpoint" if job.resume
                     else f"run `fab run {job.name}` again")
            return (f"{error}{' (' + '; '.join(unsaid) + ')' if unsaid else ''}; once `pulumi "
                    f"up` has replaced the instance and `fab deploy {job.name}` set it up, {after}")
        status = self.spark_status()
        states = worker_states(status) if status else {}
        dead = [w for w in self.inventory.workers if states and states.get(w.privateIp) != "ALIVE"]
        if dead:
            names = ", ".join(f"{w.name} ({w.privateIp})" for w in dead)
            return (f"the Spark worker on {names} died during the run ({error}); "
                    "`fab deploy JOB` restarts it")
        return name_failed_host(self.inventory, results, str(error))

    def spark_status(self):
        master = self.inventory.master
        return master_status(self.cluster.connection(master), master)

    def spot_notices(self):
        """Read from the spot hosts that still answer: EC2 takes one two minutes after its
        notice, and a host gone (or not answering within NOTICE_TIMEOUT) has none to tell."""
        def read(host, cxn) -> dict | None:
            try:
                text = sh(cxn, f"cat {SPOT_NOTICE_FILE} 2>/dev/null || true", timeout=NOTICE_TIMEOUT)
                return json.loads(text) if text else None
            except (KindlingError, ValueError, *LOST_CONNECTION):
                return None

        spot = tuple(host for host in self.inventory.hosts if host.spot)
        notices = self.cluster.parallel(read, spot) if spot else {}
        return {name: notice for name, notice in notices.items() if notice}

    def status(self):
        super().status()
        for notice in self.spot_notices().values():
            console.print(f"spot: {describe_notice(notice)}; `pulumi up` replaces the instance "
                          "once EC2 took it")
        watcher = self.autostop_status()
        self.cost_status(watcher)
        if not self.inventory.hdfs:
            return
        master = self.inventory.master
        info = namenode_info(self.cluster.connection(master), master)
        if info is None:
            console.print(f"hdfs: NameNode on {master.name} not running (`fab deploy JOB` starts it)")
            return
        down = down_datanodes(self.inventory, info)
        live = len(self.inventory.workers) - len(down)
        console.print(f"hdfs: NameNode {hdfs.default_fs(master.privateIp)} up, {live}/"
                      f"{len(self.inventory.workers)} DataNodes live, capacity "
                      f"{info.get('Total', 0) / 1e9:.1f} GB, {info.get('Free', 0) / 1e9:.1f} GB free"
                      + (f"; DataNode down on {', '.join(down)} (`fab deploy JOB` restarts it)"
                         if down else ""))

    def autostop_status(self) -> dict | None:
        """What the master's idle watcher decided last (busy, or when it stops the cluster);
        its status document."""
        if not any(host.instanceId for host in self.inventory.hosts):
            return None
        text = sh(self.cluster.connection(self.inventory.master),
                  f"cat {AUTOSTOP_STATE}/status.json 2>/dev/null || true")
        if not text:
            console.print("auto-stop: not running (`fab deploy JOB` starts it)")
            return None
        state = json.loads(text)
        console.print(autostop.describe(state))
        return state

    def cost_status(self, watcher: dict | None) -> None:
        """Cost per hour from the price table `pulumi up` used, and the spend since the cluster
        last started (the master's watcher start, else the master's uptime)."""
        if not self.inventory.hourlyCostUsd:
            return
        costs = dict(self.inventory.hourlyCostUsd)
        if watcher:
            up = watcher["checked"] - watcher["started"]
        else:
            up = float(sh(self.cluster.connection(self.inventory.master),
                          "cut -d' ' -f1 /proc/uptime"))
        console.print(f"cost: ${costs['running']:.4f}/h running (${costs['stopped']:.4f}/h "
                      f"stopped); up {up / 3600:.2f} h since it last started: "
                      f"${costs['running'] * up / 3600:.2f}")

    def object_store(self):
        return ObjectStore(self.inventory.s3Endpoint, self.inventory.region)

    def hdfs_conf(self, uris):
        master = self.inventory.master
        if not self.inventory.hdfs:
            raise UserError(f"{uris[0]}: cluster {self.inventory.clusterName!r} runs no HDFS; "
                            "`pulumi config set hdfs true`, `pulumi up`, then `fab deploy`")
        cxn = self.cluster.connection(master)
        if namenode_info(cxn, master) is None:
            raise UserError(f"{uris[0]}: the HDFS NameNode on {master.name} is not running; "
                            "`fab deploy JOB` starts it")
        for uri in uris:
            path = urlparse(uri).path or "/"
            url = (f"http://{master.privateIp}:{hdfs.NAMENODE_HTTP_PORT}/webhdfs/v1{quote(path)}"
                   "?op=GETFILESTATUS")
            if fetch_json(cxn, url) is None:
                raise UserError(f"{uri}: no such path in the cluster's HDFS; put the data there "
                                f"first (`fab exec --role master '{BIN}/hdfs dfs -put DIR "
                                f"{path}'`) or fix the path")
        return {"spark.hadoop.fs.defaultFS": self.hdfs_root()}

    def s3a_jars(self):
        return jar_folder("s3a")


def resume_interrupted(job: Job, args: list[str]) -> list[str]:
    """args plus the job's resume flag, naming its last run, when a spot interruption stopped
    that run (and args choose no run to resume)."""
    if not job.resume or job.given(args, job.resume):
        return args
    interrupted = runs.interrupted_run(job.name)
    if interrupted is None:
        return args
    run_id, record = interrupted
    hosts = ", ".join(notice["host"] for notice in record["notices"])
    console.print(f"resuming {run_id} (stopped by a spot interruption on {hosts}) from its last "
                  f"checkpoint: {job.resume} {record['resume']} (--fresh starts over)")
    return [*args, job.resume, record["resume"]]


def target_spec(target: str | None) -> str:
    """--target, else $KINDLING_TARGET, else the current Pulumi stack."""
    return target or os.environ.get(TARGET_ENV) or "pulumi"


def load_target(target: str | None) -> Target:
    """`local`, an inventory JSON file, or `pulumi[:STACK]`."""
    spec = target_spec(target)
    if spec == LOCAL:
        return LocalTarget()
    return ClusterTarget(load_cluster_inventory(spec))


def load_cluster_inventory(spec: str) -> Inventory:
    if spec == "pulumi" or spec.startswith("pulumi:"):
        return _from_pulumi(spec.partition(":")[2])
    return load_inventory(spec)


def check_downloads(downloads: list[Download]) -> None:
    """Everything the job would download is reachable, or one line naming it and the fix.

    Any HTTP answer counts as reachable; a proxy in $https_proxy is honoured, as Keras does."""
    for download in downloads:
        try:
            request = urllib.request.Request(download.url, method="HEAD")
            urllib.request.urlopen(request, timeout=DOWNLOAD_CHECK_TIMEOUT).close()
        except urllib.error.HTTPError:
            continue
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"cannot fetch {download.what} from {download.url} ({reason}); "
                            f"{download.fix}") from None


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
