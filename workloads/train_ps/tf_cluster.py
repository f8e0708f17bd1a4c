"""TensorFlow cluster specs for train-ps: build, validate, describe, and the argv of every process.

A cluster spec is TF's own dict, ``{"chief": ["host:port"], "worker": [...], "ps": [...]}``.
Standard library only: the job's declaration (its plan) uses this on the control machine without
TensorFlow, and local and remote launches both take their argvs from :func:`process_argvs`.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections import Counter
from pathlib import Path

from kindling import UserError

ROLES = ("chief", "worker", "ps")
STRATEGIES = ("ps", "sync")
DEFAULT_PORT = 2222

ClusterSpec = dict[str, list[str]]
Task = tuple[str, int]
"""(role, index), e.g. ("worker", 1)."""

_TF_TASK = re.compile(r"/job:(chief|worker|ps)/replica:\d+/task:(\d+)")


def split_address(address: object, where: str) -> tuple[str, int]:
    """'host:port' -> (host, port), or a UserError naming the entry and the expected form."""
    host, sep, port = str(address).rpartition(":")
    if not isinstance(address, str) or not sep or not host or not port.isdigit() \
            or not 0 < int(port) < 65536:
        raise UserError(f"cluster spec {where}: {address!r} is not host:port with a port "
                        "in 1..65535 (e.g. 10.0.1.12:2222)")
    return host, int(port)


def host_list(text: str) -> list[str]:
    """'h1:2222,h2:2222' (the --worker-hosts style) -> ['h1:2222', 'h2:2222']."""
    return [item.strip() for item in text.split(",") if item.strip()]


def cluster_spec(workers: list[str], ps: list[str] = (), chief: str | None = None,
                 port: int = DEFAULT_PORT) -> ClusterSpec:
    """A spec from host names; a host without ':port' gets `port`, and every further task on
    the same host the next free port, so a ps may share a host with a worker."""
    used: Counter[str] = Counter()

    def place(host: str) -> str:
        if ":" in host:
            return host
        address = f"{host}:{port + used[host]}"
        used[host] += 1
        return address

    spec = {"chief": [place(chief)] if chief else [],
            "worker": [place(h) for h in workers],
            "ps": [place(h) for h in ps]}
    return {role: addresses for role, addresses in spec.items() if addresses}


def validate_cluster_spec(spec: object, strategy: str) -> ClusterSpec:
    """The spec with empty roles dropped, or a UserError naming what is wrong and the fix."""
    if not isinstance(spec, dict):
        raise UserError("a cluster spec is a JSON object like "
                        '{"chief": ["host:port"], "worker": [...], "ps": [...]}')
    unknown = sorted(set(spec) - set(ROLES))
    if unknown:
        raise UserError(f"cluster spec has unknown role(s) {', '.join(unknown)}; "
                        f"roles are {', '.join(ROLES)}")
    clean: ClusterSpec = {}
    for role in ROLES:
        addresses = spec.get(role) or []
        if not isinstance(addresses, list):
            raise UserError(f"cluster spec {role!r} must be a list of host:port strings")
        for index, address in enumerate(addresses):
            split_address(address, f"{role} {index}")
        if addresses:
            clean[role] = list(addresses)
    owners: dict[str, str] = {}
    for role, index, address in tasks(clean):
        if address in owners:
            raise UserError(f"cluster spec gives {address} to both {owners[address]} and "
                            f"{role} {index}; every task needs its own host:port")
        owners[address] = f"{role} {index}"
    if len(clean.get("chief", [])) > 1:
        raise UserError("cluster spec has more than one chief; give exactly one chief address")
    if not clean.get("worker"):
        raise UserError("cluster spec has no worker; give at least one worker address")
    if strategy == "ps" and not (clean.get("ps") and clean.get("chief")):
        raise UserError("--strategy ps needs at least one ps and one chief in the cluster spec "
                        "(or use --strategy sync for workers only)")
    if strategy == "sync" and clean.get("ps"):
        raise UserError("--strategy sync uses no parameter servers; drop the ps addresses "
                        "or use --strategy ps")
    return clean


def load_cluster_spec(path: str) -> object:
    """The JSON in a --cluster-spec file (validated by the caller)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"cluster spec file not found: {path}; pass an existing JSON file "
                        "with --cluster-spec")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"cluster spec {path} is not valid JSON ({exc.msg} at line "
                        f"{exc.lineno} column {exc.colno})") from None


def parse_tf_config(text: str) -> tuple[object, Task | None]:
    """TF_CONFIG -> (its cluster, its task or None); the cluster is validated by the caller."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"TF_CONFIG is not valid JSON ({exc.msg}); it looks like "
                        '{"cluster": {...}, "task": {"type": "worker", "index": 0}}') from None
    if not isinstance(config, dict) or "cluster" not in config:
        raise UserError("TF_CONFIG has no 'cluster'; it looks like "
                        '{"cluster": {...}, "task": {"type": "worker", "index": 0}}')
    task = config.get("task")
    if not task:
        return config["cluster"], None
    if not isinstance(task, dict) or "type" not in task \
            or not isinstance(task.get("index", 0), int):
        raise UserError("TF_CONFIG 'task' must look like {\"type\": \"worker\", \"index\": 0}")
    return config["cluster"], (str(task["type"]), task.get("index", 0))


def check_task(spec: ClusterSpec, role: str, index: int) -> str:
    """This task's address, or a UserError for a bad role or an index outside the spec."""
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}; the role is one of {', '.join(ROLES)}")
    count = len(spec.get(role, []))
    if not 0 <= index < count:
        raise UserError(f"{role} {index} is not in the cluster spec, which has {count} {role} "
                        f"task(s) (indices 0..{count - 1})" if count else
                        f"{role} {index} is not in the cluster spec, which has no {role}")
    return spec[role][index]


def tasks(spec: ClusterSpec) -> list[tuple[str, int, str]]:
    """(role, index, address) of every task, servers first: the order to start them in."""
    return [(role, index, address) for role in ("ps", "worker", "chief")
            for index, address in enumerate(spec.get(role, []))]


def describe(spec: ClusterSpec, role: str, index: int) -> str:
    """'worker 1 at 10.0.1.12:2222': how every message names a task."""
    return f"{role} {index} at {spec[role][index]}"


def tf_error_line(spec: ClusterSpec, message: str, me: Task) -> str:
    """One line for a TensorFlow error: the first other task it names (TF says
    '/job:worker/replica:0/task:1', we say 'worker 1 at host:port') and its first line."""
    first = (message.strip().splitlines() or ["unknown error"])[0]
    for match in _TF_TASK.finditer(message):
        task = (match.group(1), int(match.group(2)))
        if task != me and task[1] < len(spec.get(task[0], [])):
            return f"{describe(spec, *task)} failed: {first}"
    return f"training failed: {first}"


def reachable(address: str, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at host:port (a TF server, once started)."""
    host, port = split_address(address, "address")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def process_argvs(spec: ClusterSpec, module: str, job_args: list[str], spec_path: str,
                  python: str = "python3") -> list[tuple[str, int, str, list[str]]]:
    """(role, index, host, argv) for every process of a train-ps run, servers first.

    The argv is what runs on `host`: `python -m module` (the job's declared module), with the
    spec JSON at `spec_path` there; job_args are the train-ps flags (--strategy, --epochs,
    --data, ...), the same for every process."""
    return [(role, index, split_address(address, f"{role} {index}")[0],
             [python, "-m", module, role, str(index), "--cluster-spec", os.fspath(spec_path),
              *job_args])
            for role, index, address in tasks(spec)]
