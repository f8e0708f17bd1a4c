"""Which processes a job runs, on which hosts, with which argv: the same for every target.

The local target and a cluster differ only in the hosts, the Python to use and where the
run folder is; the argv built here is what runs in both places.
"""

from __future__ import annotations

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
    submit = python.rsplit("/", 1)[0] + "/spark-submit"
    argv = [submit, "--master", placement.spark_master_url]
    for key, value in conf.items():
        if key != "spark.master":
            argv += ["--conf", f"{key}={value}"]
    argv += [script, *args, "--output", run_dir]
    env = (("SPARK_LOCAL_IP", placement.master.privateIp), ("PYTHONUNBUFFERED", "1"))
    return [Process("driver", placement.master, tuple(argv), env, main=True)]


def tf_processes(placement: Placement, args: list[str], run_dir: str,
                 ports: dict[str, list[int]] | None = None) -> list[Process]:
    """ps, workers and chief of train-ps; ps on the master unless the cluster has ps hosts."""
    ps_hosts = placement.ps or (placement.master,)
    hosts = {"ps": list(ps_hosts), "worker": list(placement.workers), "chief": [placement.master]}
    addresses = {
        role: [f"{h.privateIp}:{ports[role][i] if ports else TF_PORTS[role]}"
               for i, h in enumerate(role_hosts)]
        for role, role_hosts in hosts.items()
    }
    spec = tf_cluster.cluster_spec(addresses["ps"], addresses["worker"], addresses["chief"][0])
    processes = []
    for role, index, argv in tf_cluster.process_argvs(spec, [*args, "--output", run_dir],
                                                     python=placement.python):
        processes.append(Process(f"{role} {index}", hosts[role][index], tuple(argv),
                                 (("PYTHONUNBUFFERED", "1"),), main=(role == "chief")))
    return processes
