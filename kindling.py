"""What infra/, ops/ and workloads/ share: the error types and the cluster inventory schema.

Standard library only, so infra/ imports it without Fabric, ops/ without Pulumi and the jobs
without either.

Errors. A `KindlingError` is an expected failure told in one line (no traceback):

- `UserError`: a mistake the user can fix (a bad flag, a missing file); exit code 2.
- `HostError`: a step that failed on a host; the message names the host, its role and the step.

Anything else escaping a command is a bug in kindling and is shown with its traceback.

The cluster inventory: the one schema shared by infra/ (stack outputs) and ops/ (what fab reads).

A cluster is described by a JSON object whose keys are exactly the Pulumi stack outputs, so
``pulumi stack output --json --show-secrets > cluster.json`` is a valid inventory file::

    {
      "clusterName": "kindling-dev",          # str, required
      "region": "us-east-1",                  # str ("local" for the built-in and test clusters)
      "sshUser": "ubuntu",                    # str, required
      "sshPrivateKey": "-----BEGIN OPENSSH PRIVATE KEY-----...",   # str, required (a secret)
      "knownHosts": "10.0.0.5,ip-10-0-0-5 ssh-ed25519 AAAA...\\n...", # str, one OpenSSH line per host
      "master":  {HOST},                      # required
      "workers": [{HOST}, ...],               # required, at least one
      "ps":      [{HOST}, ...],               # dedicated parameter-server hosts, may be empty
      "bucket": "kindling-dev-data-1a2b",     # str, "" when the cluster has no bucket
      "sparkMasterUrl": "spark://10.0.0.5:7077",
      "s3Endpoint": "",                       # str, optional: "" = AWS S3; else the URL of an
                                              #   S3-compatible store (MinIO, Ceph, moto)
      "hdfs": false,                          # bool, optional: fab deploy runs HDFS (a NameNode
                                              #   on the master, a DataNode on every worker)
      "idleStopMinutes": 60,                  # number, optional: stop the cluster after this
                                              #   long idle (0: never)
      "maxHours": 0,                          # number, optional: stop it this long after it
                                              #   started, busy or not (0: no limit)
      "imdsEndpoint": "",                     # str, optional: "" = the hosts' own metadata
                                              #   service; else where theirs is (the tests')
      "hourlyCostUsd": {"running": 0.21, "stopped": 0.01}   # optional: USD/h from the price
    }                                         #   table `pulumi up` used (fab status's cost line)

    HOST = {"name": "worker-0", "hostname": "ip-10-0-1-12", "publicIp": "3.4.5.6",
            "privateIp": "10.0.1.12", "publicDns": "ec2-3-4-5-6.compute-1.amazonaws.com",
            "instanceId": "i-0123456789abcdef0",   # "" where none is known (auto-stop stops it)
            "spot": false}                         # a one-time spot instance

ops connects to a host's ``publicIp``; a host without one (``""``) is reached on its
``privateIp`` through the master as SSH jump host. Cluster members talk to each other on
``privateIp``. Every address ops connects to must have a line in ``knownHosts``: host keys are
pinned, never learned.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA_KEYS = ("clusterName", "region", "sshUser", "sshPrivateKey", "knownHosts",
               "master", "workers", "ps", "bucket", "sparkMasterUrl", "s3Endpoint", "hdfs",
               "idleStopMinutes", "maxHours", "imdsEndpoint", "hourlyCostUsd")
HOST_KEYS = ("name", "hostname", "publicIp", "privateIp", "publicDns", "instanceId", "spot")
DEFAULT_IDLE_STOP_MINUTES = 60.0
SPARK_MASTER_PORT = 7077


class KindlingError(Exception):
    """An expected failure: printed as one `error: ...` line, never with a traceback."""

    exit_code = 1


class UserError(KindlingError):
    """A mistake the user can fix (bad flag, missing data...); exit code 2."""

    exit_code = 2


class HostError(KindlingError):
    """A step that failed on one host: the message names the host, its role and the step."""

    def __init__(self, host: str, role: str, step: str, detail: str):
        super().__init__(f"{host} ({role}): {step} failed: {detail}")
        self.host, self.role, self.step, self.detail = host, role, step, detail


class InventoryError(UserError):
    """A malformed or incomplete inventory; the message names the field and the fix."""


@dataclass(frozen=True)
class Host:
    name: str
    hostname: str
    privateIp: str
    publicIp: str = ""
    publicDns: str = ""
    instanceId: str = ""
    """The EC2 instance ("" where none is known): what idle auto-stop stops."""
    spot: bool = False
    """A one-time spot instance: EC2 cannot stop it, auto-stop terminates it."""

    @property
    def address(self) -> str:
        """The address ops connects to over SSH."""
        return self.publicIp or self.privateIp


@dataclass(frozen=True)
class Inventory:
    clusterName: str
    region: str
    sshUser: str
    sshPrivateKey: str
    knownHosts: str
    master: Host
    workers: tuple[Host, ...]
    ps: tuple[Host, ...] = ()
    bucket: str = ""
    sparkMasterUrl: str = ""
    s3Endpoint: str = ""
    hdfs: bool = False
    idleStopMinutes: float = DEFAULT_IDLE_STOP_MINUTES
    """Stop the cluster after this long with no job, Spark application or SSH login (0: never)."""
    maxHours: float = 0.0
    """Stop the cluster this long after it started, busy or not (0: no limit)."""
    imdsEndpoint: str = ""
    """"" for the hosts' own instance metadata service; else where theirs is (the tests')."""
    hourlyCostUsd: tuple[tuple[str, float], ...] | None = None
    """(("running", USD/h), ("stopped", USD/h)) from the price table `pulumi up` used; None
    where it has no prices."""
    source: str = field(default="", compare=False)

    @property
    def hosts(self) -> tuple[Host, ...]:
        """Every host once, master first."""
        return (self.master, *self.workers, *self.ps)

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if name in (host.name, host.hostname, host.address, host.privateIp):
                return host
        known = ", ".join(h.name for h in self.hosts)
        raise InventoryError(f"no host named {name!r} in cluster {self.clusterName!r}; hosts are: {known}")

    def to_outputs(self) -> dict:
        """The stack-output dict (the JSON an inventory file holds)."""
        data = asdict(self)
        data.pop("source")
        data["workers"] = list(data["workers"])
        data["ps"] = list(data["ps"])
        data["hourlyCostUsd"] = dict(self.hourlyCostUsd) if self.hourlyCostUsd else None
        return data


def spark_master_url(master_private_ip: str) -> str:
    return f"spark://{master_private_ip}:{SPARK_MASTER_PORT}"


def known_hosts_line(addresses: list[str], public_key_openssh: str) -> str:
    """One known_hosts line: comma-separated addresses, then 'type base64' of the host key."""
    key = " ".join(public_key_openssh.split()[:2])
    return f"{','.join(a for a in addresses if a)} {key}"


def _require(data: dict, key: str, kind: type, where: str) -> object:
    if key not in data or data[key] is None:
        raise InventoryError(f"inventory {where}: missing field '{key}'")
    value = data[key]
    if not isinstance(value, kind):
        raise InventoryError(f"inventory {where}: field '{key}' must be a {kind.__name__}, "
                             f"got {type(value).__name__}")
    return value


def _host(data: object, where: str) -> Host:
    if not isinstance(data, dict):
        raise InventoryError(f"inventory {where}: must be an object with {', '.join(HOST_KEYS)}")
    private_ip = _require(data, "privateIp", str, where)
    if not private_ip:
        raise InventoryError(f"inventory {where}: field 'privateIp' is empty")
    values = {k: str(data.get(k) or "") for k in HOST_KEYS if k != "spot"}
    values["name"] = values["name"] or where
    values["hostname"] = values["hostname"] or private_ip
    return Host(**values, spot=_flag(data.get("spot"), "spot", where))


def parse_inventory(data: object, source: str = "inventory") -> Inventory:
    """Validate stack outputs / inventory JSON and return an Inventory, or raise InventoryError."""
    if not isinstance(data, dict):
        raise InventoryError(f"{source}: an inventory is a JSON object of stack outputs, "
                             f"got {type(data).__name__}")
    where = source
    for key in ("clusterName", "sshUser", "sshPrivateKey", "knownHosts"):
        if not _require(data, key, str, where):
            raise InventoryError(f"inventory {where}: field '{key}' is empty")
    if "PRIVATE KEY" not in data["sshPrivateKey"]:
        raise InventoryError(f"inventory {where}: field 'sshPrivateKey' is not a private key "
                             "(export it with `pulumi stack output --json --show-secrets`)")
    master = _host(_require(data, "master", dict, where), "master")
    workers = _require(data, "workers", list, where)
    if not workers:
        raise InventoryError(f"inventory {where}: field 'workers' is empty; a cluster needs at "
                             "least one worker (set workerCount >= 1)")
    ps = data.get("ps") or []
    if not isinstance(ps, list):
        raise InventoryError(f"inventory {where}: field 'ps' must be a list")
    inventory = Inventory(
        clusterName=data["clusterName"],
        region=str(data.get("region") or ""),
        sshUser=data["sshUser"],
        sshPrivateKey=data["sshPrivateKey"],
        knownHosts=data["knownHosts"],
        master=master,
        workers=tuple(_host(h, f"workers[{i}]") for i, h in enumerate(workers)),
        ps=tuple(_host(h, f"ps[{i}]") for i, h in enumerate(ps)),
        bucket=str(data.get("bucket") or ""),
        sparkMasterUrl=str(data.get("sparkMasterUrl") or spark_master_url(master.privateIp)),
        s3Endpoint=_endpoint(data.get("s3Endpoint"), where, "s3Endpoint", "S3"),
        hdfs=_flag(data.get("hdfs"), "hdfs", where),
        idleStopMinutes=_hours_or_minutes(data.get("idleStopMinutes"), "idleStopMinutes",
                                          DEFAULT_IDLE_STOP_MINUTES, where),
        maxHours=_hours_or_minutes(data.get("maxHours"), "maxHours", 0.0, where),
        imdsEndpoint=_endpoint(data.get("imdsEndpoint"), where, "imdsEndpoint", "IMDS"),
        hourlyCostUsd=_costs(data.get("hourlyCostUsd"), where),
        source=source,
    )
    names = [h.name for h in inventory.hosts]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise InventoryError(f"inventory {where}: host name {duplicate!r} appears twice")
    pinned = _pinned_addresses(inventory.knownHosts)
    for host in inventory.hosts:
        if host.address not in pinned:
            raise InventoryError(f"inventory {where}: 'knownHosts' has no host key for "
                                 f"{host.name} ({host.address}); host keys must be pinned")
    return inventory


def _endpoint(value: object, where: str, key: str, service: str) -> str:
    """An optional endpoint field: "" (AWS itself) or an http(s) URL."""
    if not value:
        return ""
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+/?$", value):
        raise InventoryError(f"inventory {where}: field '{key}' must be an http(s)://host[:port] "
                             f"URL of an {service}-compatible endpoint, or \"\" for AWS {service}; "
                             f"got {value!r}")
    return value.rstrip("/")


def _hours_or_minutes(value: object, key: str, default: float, where: str) -> float:
    """An optional duration field: a number >= 0 (0: off)."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InventoryError(f"inventory {where}: field '{key}' must be a number >= 0 (0: off), "
                             f"got {value!r}")
    return float(value)


def _flag(value: object, key: str, where: str) -> bool:
    """An optional boolean field (absent = false)."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InventoryError(f"inventory {where}: field '{key}' must be true or false, got {value!r}")
    return value


def _costs(value: object, where: str) -> tuple[tuple[str, float], ...] | None:
    """The optional hourlyCostUsd: {"running": USD/h, "stopped": USD/h}, or null."""
    if value is None:
        return None
    if not (isinstance(value, dict) and set(value) == {"running", "stopped"} and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            for v in value.values())):
        raise InventoryError(f"inventory {where}: field 'hourlyCostUsd' must be "
                             f"{{\"running\": USD, \"stopped\": USD}} or null, got {value!r}")
    return (("running", float(value["running"])), ("stopped", float(value["stopped"])))


def _pinned_addresses(known_hosts: str) -> set[str]:
    addresses: set[str] = set()
    for line in known_hosts.splitlines():
        parts = line.split()
        if len(parts) >= 3 and not line.startswith("#"):
            for entry in parts[0].split(","):
                addresses.add(re.sub(r"^\[(.*)\](:\d+)?$", r"\1", entry))
    return addresses


def load_inventory(path: str | Path) -> Inventory:
    """Read an inventory JSON file (e.g. `pulumi stack output --json --show-secrets > cluster.json`)."""
    path = Path(path)
    if not path.is_file():
        raise InventoryError(f"inventory file {path} not found; write one with "
                             "`pulumi stack output --json --show-secrets > cluster.json`")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InventoryError(f"inventory file {path} is not valid JSON ({exc}); regenerate it "
                             "with `pulumi stack output --json --show-secrets`") from None
    return parse_inventory(data, source=str(path))
