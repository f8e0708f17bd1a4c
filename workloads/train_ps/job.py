"""train-ps declared: its flags and its process plan (ps, workers and chief on their hosts).
Standard library only: ops reads this on the control machine."""

from __future__ import annotations

import json

from workloads.jobs import OUTPUT_FLAG, Flag, Job, Launch, Placement, Process
from workloads.train_ps import tf_cluster
from workloads.training_flags import (BATCH_SIZE, MNIST_DATA, RESUME, epochs, learning_rate,
                                      mnist_download)

TF_PORTS = {"ps": 2222, "worker": 2223, "chief": 2224}
"""Fixed ports on cluster hosts (each role once per host); the local target picks free ports."""


def tf_roles_plan(job: Job, placement: Placement, args: list[str], run_dir: str) -> Launch:
    """--strategy ps: ps on the ps hosts (the master when there are none), a worker per worker
    host, the chief on the master. --strategy sync: the workers only; worker 0 is the chief.
    Every process runs the job's module; the cluster spec JSON goes into the run folder on
    every host."""
    sync = job.values(args).strategy == "sync"
    hosts = {"worker": list(placement.workers)}
    if not sync:
        hosts |= {"ps": list(placement.ps or (placement.master,)), "chief": [placement.master]}
    ports = placement.ports or {role: [port] * len(hosts.get(role, []))
                                for role, port in TF_PORTS.items()}
    addresses = {role: [f"{h.privateIp}:{ports[role][i]}" for i, h in enumerate(role_hosts)]
                 for role, role_hosts in hosts.items()}
    spec = tf_cluster.cluster_spec(addresses["worker"], addresses.get("ps", []),
                                   (addresses.get("chief") or [None])[0])
    main_task = ("worker", 0) if sync else ("chief", 0)
    processes = [
        Process(f"{role} {index}", hosts[role][index], tuple(argv),
                (("PYTHONUNBUFFERED", "1"), *placement.process_env), main=(role, index) == main_task)
        for role, index, _, argv in tf_cluster.process_argvs(
            spec, job.module, [*args, OUTPUT_FLAG, run_dir], f"{run_dir}/cluster_spec.json",
            python=placement.python)]
    return Launch(processes, {"cluster_spec.json": json.dumps(spec)})


JOB = Job(
    "train-ps", "workloads.train_ps",
    "Distributed TensorFlow MNIST CNN: parameter servers + workers + chief (or --strategy sync)",
    flags=(MNIST_DATA,
           Flag("--strategy", "ps: asynchronous parameter servers; sync: all-reduce, no ps",
                default="ps", choices=tf_cluster.STRATEGIES),
           epochs(3),
           Flag("--steps-per-epoch", "training steps per epoch (default: one pass over "
                "the data)", type=int, minimum=1),
           BATCH_SIZE, learning_rate(1e-3),
           RESUME,
           Flag("--timeout", "seconds to wait for peers to come up or answer",
                type=float, default=120.0, minimum=1, fab=False),
           Flag("--threads", "intra-op threads per process (0: TensorFlow's default)",
                type=int, default=0, minimum=0, fab=False)),
    plan=tf_roles_plan, uses_spark=False, downloads=mnist_download, resume="--resume")
