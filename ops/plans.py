"""Which processes a job runs, on which hosts, with which argv: the same for every target.

The local target and a cluster differ only in the hosts, the Python to use and where the
run folder is; the argv built here is what runs in both places.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ops import spark
from ops.inventory import Host
from ops.launch import Process
from workloads import tf_cluster
from workloads.jobs import Job

TF_PORTS = {"ps": 2222, "worker": 2223, "chief": 2224}
"""Fixed ports on cluster hosts (each role once per host); the local target picks free ports."""


@dataclass(frozen=True)
class Placement:
    """Where a job's parts go on a target."""
    master: Host
    workers: tuple[Host, ...]
    ps: tuple[Host, ...]
    python: str
    """The Python on the hosts (the venv's)."""
    spark_master_url: str = ""
    spark_home: str = ""
    """The pyspark package folder on the master (spark-submit needs it as SPARK_HOME)."""
    executor_cores: int = 1


def spark_driver(job: Job, placement: Placement, script: str, args: list[str],
                 run_dir: str) -> list[Process]:
    """spark-submit on the master, with the confs TensorFlowOnSpark needs for train-mnist."""
    python = placement.python
    if job.name == "train-mnist":
        cluster_size = len(placement.workers)
        conf = spark.tfos_submit_conf(placement.spark_master_url, cluster_size, python,
                                      placement.executor_cores)
        if not any(a.split("=")[0] in ("--cluster_size", "--cluster-size") for a in args):
            args = [*args, "--cluster_size", str(cluster_size)]
    else:
        conf = {"spark.master": placement.spark_master_url, "spark.pyspark.python": python,
                "spark.pyspark.driver.python": python,
                "spark.executorEnv.PYTHONUNBUFFERED": "1"}
    conf["spark.driver.host"] = placement.master.privateIp
    conf.setdefault("spark.log.level", "WARN")  # job output, not Spark's INFO chatter
    submit = python.rsplit("/", 1)[0] + "/spark-submit"
    argv = [submit, "--master", placement.spark_master_url]
    for key, value in conf.items():
        if key != "spark.master":
            argv += ["--conf", f"{key}={value}"]
    argv += [script, *args, "--output", run_dir]
    env = (("SPARK_HOME", placement.spark_home), ("SPARK_LOCAL_IP", placement.master.privateIp),
           ("PYTHONUNBUFFERED", "1"))
    return [Process("driver", placement.master, tuple(argv), env, main=True)]


def flag_value(args: list[str], flag: str, default: str) -> str:
    """The value of `--flag V` / `--flag=V` in a job's args."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return default


def tf_processes(placement: Placement, args: list[str], run_dir: str,
                 ports: dict[str, list[int]] | None = None) -> tuple[list[Process], str]:
    """train-ps's processes and its cluster spec JSON (to write as <run>/cluster_spec.json).

    --strategy ps: ps on the ps hosts (the master when there are none), a worker per worker
    host, the chief on the master. --strategy sync: the workers only; worker 0 is the chief.
    """
    sync = flag_value(args, "--strategy", "ps") == "sync"
    hosts = {"worker": list(placement.workers)}
    if not sync:
        hosts |= {"ps": list(placement.ps or (placement.master,)), "chief": [placement.master]}
    addresses = {role: [f"{h.privateIp}:{ports[role][i] if ports else TF_PORTS[role]}"
                        for i, h in enumerate(role_hosts)]
                 for role, role_hosts in hosts.items()}
    spec = tf_cluster.cluster_spec(addresses["worker"], addresses.get("ps", []),
                                   (addresses.get("chief") or [None])[0])
    spec_path = f"{run_dir}/cluster_spec.json"
    main_task = ("worker", 0) if sync else ("chief", 0)
    processes = [
        Process(f"{role} {index}", hosts[role][index], tuple(argv), (("PYTHONUNBUFFERED", "1"),),
                main=(role, index) == main_task)
        for role, index, _, argv in tf_cluster.process_argvs(
            spec, [*args, "--output", run_dir], spec_path, python=placement.python)]
    return processes, json.dumps(spec)
