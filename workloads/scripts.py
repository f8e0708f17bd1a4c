"""A plain script of yours as an ad-hoc job: `fab run path/to/script.py [--roles worker=2]`.

The script imports nothing of kindling and declares nothing: the `Job` is made here from its
path, then runs as every job does (checks before anything starts, staging, launch, a failure
named by host and role, results). Its folder (or `--code DIR`) is its one path flag, so it is
staged on every host by content hash as the jobs' local data is, and it is on every process's
PYTHONPATH. Without roles, spark-submit runs the script on the master with the cluster's confs.
With roles (`worker=2`, `chief=1,worker=2,ps=1`) each TensorFlow task runs it with its own
TF_CONFIG, tf.distribute's convention, and with TF_USE_LEGACY_KERAS=1: `tf.keras` is then the
Keras 2 of the hosts' tf-keras, under which `model.fit` works with MultiWorkerMirroredStrategy
(Keras 3's fails there); `import keras` stays Keras 3. Every process gets KINDLING_OUTPUT: the
main process's (the driver, else the chief, else worker 0) is the run folder, whose files come
back into runs/<id>/; each other process's, its own subfolder there (`worker-1/`).

Standard library only: ops makes these jobs on the control machine.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import os
from pathlib import Path

from kindling import UserError
from workloads.classify.sparkdl_conflict import conflict, real_sparkdl
from workloads.jobs import (JOBS, Flag, Job, Launch, Placement, Process, get_job, spark_driver)
from workloads.train_ps import tf_cluster

OUTPUT_ENV = "KINDLING_OUTPUT"
"""The folder a script's process writes its results to."""
LEGACY_KERAS_ENV = "TF_USE_LEGACY_KERAS"
"""TensorFlow's switch from Keras 3 to tf-keras for `tf.keras`: the role processes get 1, or
the value it has where fab runs (`TF_USE_LEGACY_KERAS=0 fab run ...` keeps Keras 3)."""
ROLES_EXAMPLE = "--roles worker=2, or --roles chief=1,worker=2,ps=1"
CODE_LIMIT_MB = 256
"""The most a code folder may hold: it is copied to every host (a script in a home folder
would ship the home folder)."""


def check_code(folder: str) -> None:
    """The code folder is small enough to copy to every host, or one line with the fix."""
    total = 0
    for path in Path(folder).rglob("*"):
        total += path.stat().st_size if path.is_file() else 0
        if total > CODE_LIMIT_MB << 20:
            raise UserError(f"--code {folder}: over {CODE_LIMIT_MB} MB to copy to every host; "
                            "put your script in a folder of its own (or pass --code DIR), and "
                            "large data in the cluster's storage")


CODE = Flag("--code", "the folder shipped with the script, on its PYTHONPATH (default: the "
            "script's folder)", path=True, check=check_code)


def parse_roles(text: str) -> dict[str, int]:
    """`worker=2` or `chief=1,worker=2,ps=1` -> {role: count}, or one UserError with the fix."""
    roles: dict[str, int] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        role, equals, count = (part.strip() for part in entry.partition("="))
        if role not in tf_cluster.ROLES:
            raise UserError(f"--roles {text}: unknown role {role!r}; the roles are chief, worker "
                            f"and ps ({ROLES_EXAMPLE})")
        if not equals or not count.isdigit() or int(count) < 1 or role in roles:
            raise UserError(f"--roles {text}: {entry!r} is not ROLE=COUNT with a whole count of "
                            f"at least 1, each role once ({ROLES_EXAMPLE})")
        roles[role] = int(count)
    if "worker" not in roles:
        raise UserError(f"--roles {text}: no worker; tf.distribute needs at least one "
                        f"({ROLES_EXAMPLE})")
    if roles.get("chief", 0) > 1:
        raise UserError(f"--roles {text}: a cluster has at most one chief (chief=1)")
    if "ps" in roles and "chief" not in roles:
        raise UserError(f"--roles {text}: parameter servers need a chief, which runs "
                        "ParameterServerStrategy's coordinator (--roles chief=1,worker=2,ps=1)")
    return roles


def job_and_args(name: str, options: dict[str, object], job_args: str = "",
                 roles: str | None = None, code: str | None = None) -> tuple[Job, list[str]]:
    """What `fab deploy|run NAME` runs, and its argv: the job NAME, or the script at path NAME."""
    if name in JOBS or name in JOBS.broken() or not names_a_file(name):
        if roles is not None or code is not None:
            raise UserError(f"--roles and --code are for a script of yours (`fab run "
                            f"path/to/script.py --roles worker=2`); {name} is a job, whose flags "
                            "`fab --help run` lists")
        job = get_job(name)
        return job, job.command_line(options, job_args)
    script = Path(name).expanduser()
    if script.suffix != ".py":
        raise UserError(f"{name} is not a Python script (.py); fab runs a .py script of yours or "
                        "a job (`fab jobs` lists them)")
    if not script.is_file():
        raise UserError(f"{name}: no such script; pass the path of your .py file (from here)")
    folder = Path(code).expanduser() if code is not None else script.parent
    if not folder.is_dir() or not script.resolve().is_relative_to(folder.resolve()):
        raise UserError(f"--code {code}: not a folder that holds {name}; pass the folder your "
                        "script is in, or one above it")
    job = script_job(name, script.resolve().relative_to(folder.resolve()).as_posix(), roles)
    return job, job.command_line({**options, CODE.dest: str(folder)}, job_args)


def names_a_file(name: str) -> bool:
    """Whether NAME of `fab run NAME` means a file (a script), not a job."""
    return name.endswith(".py") or "/" in name or os.path.exists(name)


def check_sparkdl_here(job: Job) -> None:
    """A script that imports sparkdl, run with this machine's Python (the local target), must
    get kindling's sparkdl-compatible API: refused before anything starts when Databricks'
    sparkdl is installed here too (whose files may have replaced kindling's `sparkdl`)."""
    found = real_sparkdl()
    if found and names_a_file(job.name) and "sparkdl" in imported(job.name):
        raise UserError(f"{job.name} imports sparkdl, and {conflict(found)}")


def check_no_findspark(script: str, args: argparse.Namespace) -> None:
    """A notebook's way to a Spark (findspark.init, PYSPARK_SUBMIT_ARGS) is refused before
    anything starts: the script gets the cluster's Spark from spark-submit, and the hosts have
    no findspark (nor the Spark folder it names)."""
    if "findspark" in imported(script):
        raise UserError(f"{script} imports findspark; fab runs it with spark-submit and the "
                        "cluster's Spark, so remove its findspark lines (and PYSPARK_SUBMIT_ARGS' "
                        "--packages: the hosts have what kindling's jobs need)")


def imported(script: str) -> set[str]:
    """The top-level modules the script imports (absolute imports, anywhere in it); none when
    Python cannot parse it, which then fails with Python's own error."""
    try:
        tree = ast.parse(Path(script).read_bytes(), script)
    except (OSError, SyntaxError, ValueError):
        return set()
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names]
    names += [node.module for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module]
    return {name.split(".")[0] for name in names}


def find_job(name: str) -> Job:
    """The job, or the script, NAME (for `fab logs|stop --job NAME`)."""
    return job_and_args(name, {})[0]


def script_job(path: str, script: str, roles: str | None) -> Job:
    """The ad-hoc job of the script at path (script: its path in its code folder)."""
    plan = spark_script_plan
    if roles is not None:
        plan = functools.partial(roles_plan, parse_roles(roles),
                                 os.environ.get(LEGACY_KERAS_ENV, "1"))
    return Job(path, script, f"your script {path}", flags=(CODE,), plan=plan,
               uses_spark=roles is None, validate=functools.partial(check_no_findspark, path),
               writes_store=True, passthrough=True)


def spark_script_plan(job: Job, placement: Placement, args: list[str], run_dir: str) -> Launch:
    """spark-submit of the script on the master; its code folder on the driver's and the
    executors' PYTHONPATH (it is on every host)."""
    values = job.values(args)
    return spark_driver(placement, [f"{values.code}/{job.module}", *values.program_args],
                        {"spark.executorEnv.PYTHONPATH": values.code},
                        (("PYTHONPATH", python_path(placement, values.code)),
                         (OUTPUT_ENV, run_dir)))


def python_path(placement: Placement, code: str) -> str:
    """A script's PYTHONPATH: its code folder; with this machine's installation (the local
    target), then the PYTHONPATH fab runs with, so that a kindling checkout used from its folder
    is what the script imports (`sparkdl` too). Spark adds its daemons' own to the executors'."""
    here = "" if placement.site_packages else os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(filter(None, (code, here)))


def roles_plan(roles: dict[str, int], legacy_keras: str, job: Job, placement: Placement,
               args: list[str], run_dir: str) -> Launch:
    """One process per TF task, each running the script with its TF_CONFIG: workers dealt to
    the worker hosts in turn, ps tasks to the ps hosts (else the master), the chief on the
    master. Servers start first; the chief (else worker 0) decides the run."""
    values = job.values(args)
    ps_hosts = placement.ps or (placement.master,)
    hosts = {"chief": [placement.master] * roles.get("chief", 0),
             "worker": [placement.workers[i % len(placement.workers)]
                        for i in range(roles["worker"])],
             "ps": [ps_hosts[i % len(ps_hosts)] for i in range(roles.get("ps", 0))]}
    spec = cluster_spec(hosts, placement.ports)
    main = ("chief", 0) if "chief" in spec else ("worker", 0)
    processes = []
    for role, index, _ in tf_cluster.tasks(spec):
        task = {"cluster": spec, "task": {"type": role, "index": index}}
        output = run_dir if (role, index) == main else f"{run_dir}/{role}-{index}"
        env = (("TF_CONFIG", json.dumps(task)), ("PYTHONPATH", python_path(placement, values.code)),
               (OUTPUT_ENV, output), (LEGACY_KERAS_ENV, legacy_keras), ("PYTHONUNBUFFERED", "1"),
               *placement.process_env)
        argv = (placement.python, f"{values.code}/{job.module}", *values.program_args)
        processes.append(Process(f"{role} {index}", hosts[role][index], argv, env,
                                 main=(role, index) == main))
    folders = tuple(p.name for p in processes if not p.main)
    return Launch(processes, folders=folders)


def cluster_spec(hosts: dict[str, list], ports: dict[str, list[int]] | None
                 ) -> tf_cluster.ClusterSpec:
    """TF's cluster spec of the tasks on their hosts: on a cluster, each host's tasks on
    consecutive ports from 2222; where hosts are shared (the local target), its free ports."""
    if ports is None:
        chief = hosts["chief"][0].privateIp if hosts["chief"] else None
        return tf_cluster.cluster_spec([h.privateIp for h in hosts["worker"]],
                                       [h.privateIp for h in hosts["ps"]], chief)
    spec = {}
    for role, role_hosts in hosts.items():
        free = ports.get(role, [])
        if len(role_hosts) > len(free):
            raise UserError(f"--roles {role}={len(role_hosts)}: the local target runs at most "
                            f"{len(free)} {role} task(s); run more on a cluster")
        if role_hosts:
            spec[role] = [f"{host.privateIp}:{port}" for host, port in zip(role_hosts, free)]
    return spec
