"""Typed, validated stack configuration: every mistake stops `pulumi up` before anything is created.

SparkClusterArgs validates itself, so args built directly (tests, other programs) get the same
checks as `load_config()`, which only maps `pulumi config` keys onto it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Callable, NoReturn, Optional

import pulumi

from infra.addresses import MAX_PS_HOSTS

EXAMPLE_SSH_CIDR = "203.0.113.7/32"
MIN_SSH_PREFIX = 8
"""The widest sshCidr accepted without allowSshFromAnywhere: a /8 is a whole private range;
0.0.0.0/1 would be half the internet."""
MIN_ROOT_VOLUME_GIB = 16   # Ubuntu + JDK + TensorFlow + Spark take ~10 GiB
MAX_ROOT_VOLUME_GIB = 16384  # gp3 limit


class ClusterConfigError(pulumi.RunError):
    """A stack-config mistake; pulumi prints a RunError as one `error:` line, without a traceback."""


def _fail(message: str) -> NoReturn:
    raise ClusterConfigError(message)


@dataclass(frozen=True)
class SparkClusterArgs:
    """What the cluster is made of. Field comments name the `pulumi config` key that sets each field."""

    cluster_name: str                               # clusterName (default kindling-<stack>)
    region: str                                     # aws:region
    ssh_cidr: Optional[str]                         # sshCidr (required)
    allow_ssh_from_anywhere: bool = False           # allowSshFromAnywhere
    master_instance_type: str = "m7i.large"         # masterInstanceType
    worker_instance_type: str = "m7i.large"         # workerInstanceType (2 vCPUs: the defaults fit
                                                    #   a new account's 5 spot vCPUs, infra/quotas.py)
    ps_instance_type: Optional[str] = None          # psInstanceType (default: masterInstanceType)
    worker_count: int = 2                           # workerCount
    ps_count: int = 0                               # psCount (0: the ps tasks run on the master)
    spot_workers: bool = True                       # spotWorkers
    spot_max_price: Optional[str] = None            # spotMaxPrice (USD/hour; default: on-demand price)
    root_volume_gib: int = 40                       # rootVolumeSize
    ami: Optional[str] = None                       # ami (default: latest Ubuntu 24.04 LTS)
    placement_group: bool = False                   # placementGroup
    hdfs: bool = False                              # hdfs (recorded as the kindling:hdfs tag)
    running: bool = True                            # running (false: stop instances, keep disks)
    idle_stop_minutes: float = 60.0                 # idleStopMinutes (0: never auto-stop)
    max_hours: float = 0.0                          # maxHours (stop this long after start; 0: no limit)
    availability_zone: Optional[str] = None         # availabilityZone (own VPC only; default: a zone
                                                    #   offering every instance type chosen)
    subnet_id: Optional[str] = None                 # subnetId (use an existing subnet and its VPC)
    vpc_id: Optional[str] = None                    # vpcId (optional: checked against the subnet's)
    ssh_public_key: Optional[str] = None            # sshPublicKey  } your own login key
    ssh_private_key: Optional[pulumi.Input[str]] = None  # sshPrivateKey (secret) }

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9-]{1,28}[a-z0-9]", self.cluster_name or ""):
            _fail(f"clusterName {self.cluster_name!r} must be 3-30 lowercase letters, digits or "
                  "hyphens (it prefixes the bucket name); e.g. `pulumi config set clusterName kindling-dev`")
        if not self.region:
            _fail("aws:region is not set; e.g. `pulumi config set aws:region us-east-1`")
        object.__setattr__(self, "ssh_cidr", self._checked_ssh_cidr())
        for key, value in (("masterInstanceType", self.master_instance_type),
                           ("workerInstanceType", self.worker_instance_type),
                           ("psInstanceType", self.ps_instance_type)):
            if value is not None and not re.fullmatch(r"[a-z][a-z0-9-]*\.[a-z0-9]+", value):
                _fail(f"{key} {value!r} is not an EC2 instance type; e.g. "
                      f"`pulumi config set {key} m7i.xlarge`")
        if self.worker_count < 1:
            _fail(f"workerCount is {self.worker_count}; a Spark cluster needs at least one worker: "
                  "`pulumi config set workerCount 2`")
        if not 0 <= self.ps_count <= MAX_PS_HOSTS:
            _fail(f"psCount is {self.ps_count}; use 0 (parameter servers run on the master) up to "
                  f"{MAX_PS_HOSTS}: `pulumi config set psCount 0`")
        if not MIN_ROOT_VOLUME_GIB <= self.root_volume_gib <= MAX_ROOT_VOLUME_GIB:
            _fail(f"rootVolumeSize is {self.root_volume_gib} GiB; use {MIN_ROOT_VOLUME_GIB}.."
                  f"{MAX_ROOT_VOLUME_GIB}: `pulumi config set rootVolumeSize 40`")
        if self.spot_max_price is not None and not _is_positive_price(self.spot_max_price):
            _fail(f"spotMaxPrice {self.spot_max_price!r} is not a price in USD per hour; e.g. "
                  "`pulumi config set spotMaxPrice 0.10`, or `pulumi config rm spotMaxPrice` "
                  "to cap at the on-demand price")
        if self.spot_max_price is not None and not self.spot_workers:
            _fail("spotMaxPrice is set but spotWorkers is false; `pulumi config rm spotMaxPrice` "
                  "or `pulumi config set spotWorkers true`")
        for key, value in (("idleStopMinutes", self.idle_stop_minutes), ("maxHours", self.max_hours)):
            if value < 0:
                _fail(f"{key} is {value:g}; use 0 (off) or a positive number: "
                      f"`pulumi config set {key} {60 if key == 'idleStopMinutes' else 8}`")
        if self.ami is not None and not re.fullmatch(r"ami-[0-9a-f]{8,17}", self.ami):
            _fail(f"ami {self.ami!r} is not an AMI id; e.g. `pulumi config set ami ami-0123456789abcdef0`, "
                  "or `pulumi config rm ami` for the latest Ubuntu 24.04")
        self._check_network()
        if (self.ssh_public_key is None) != (self.ssh_private_key is None):
            _fail("set both sshPublicKey and sshPrivateKey (or neither, to let kindling generate a key): "
                  "`pulumi config set sshPublicKey \"$(cat ~/.ssh/id_ed25519.pub)\"` and "
                  "`pulumi config set --secret sshPrivateKey < ~/.ssh/id_ed25519`")
        self._check_login_key()

    def _checked_ssh_cidr(self) -> str:
        """The normalised IPv4 network SSH is open to; anything wider than asked for is refused."""
        fix = f"`pulumi config set sshCidr {EXAMPLE_SSH_CIDR}` with your public IP (curl https://checkip.amazonaws.com)"
        if not self.ssh_cidr:
            _fail(f"sshCidr is not set: SSH must be limited to your address; run {fix}")
        try:
            network = ipaddress.ip_network(self.ssh_cidr.strip(), strict=False)
        except ValueError:
            _fail(f"sshCidr {self.ssh_cidr!r} is not a CIDR; run {fix}")
        if network.version != 4:
            _fail(f"sshCidr {self.ssh_cidr!r} is IPv6 but the cluster network is IPv4 only; run {fix}")
        if network.prefixlen < MIN_SSH_PREFIX and not self.allow_ssh_from_anywhere:
            reach = ("the whole internet" if network.prefixlen == 0
                     else f"{network.num_addresses:,} addresses (wider than /{MIN_SSH_PREFIX})")
            _fail(f"sshCidr {self.ssh_cidr} opens SSH to {reach}; run {fix}, "
                  "or accept it with `pulumi config set allowSshFromAnywhere true`")
        return str(network)

    def _check_login_key(self) -> None:
        """EC2 imports RSA and ED25519 keys only: anything else would fail at KeyPair creation."""
        if self.ssh_public_key is None:
            return
        fix = "`pulumi config set sshPublicKey \"$(cat ~/.ssh/id_ed25519.pub)\"`"
        key_type = (self.ssh_public_key.split() or [""])[0]
        if key_type.startswith(("ecdsa-", "sk-")):
            _fail(f"sshPublicKey is a {key_type} key, which EC2 cannot import (RSA and ED25519 only); "
                  f"make one with `ssh-keygen -t ed25519` and {fix}")
        if not re.fullmatch(r"(ssh-ed25519|ssh-rsa) [A-Za-z0-9+/=]+( .*)?", self.ssh_public_key.strip()):
            _fail(f"sshPublicKey is not an OpenSSH public key line; {fix}")

    def _check_network(self) -> None:
        if self.vpc_id is not None and self.subnet_id is None:
            _fail("vpcId is set without subnetId; kindling uses an existing subnet (its VPC follows): "
                  "`pulumi config set subnetId subnet-...`, or `pulumi config rm vpcId` to create a network")
        if self.vpc_id is not None and not re.fullmatch(r"vpc-[0-9a-f]{8,17}", self.vpc_id):
            _fail(f"vpcId {self.vpc_id!r} is not a VPC id (vpc-...); fix it with `pulumi config set vpcId vpc-...`")
        if self.subnet_id is not None and not re.fullmatch(r"subnet-[0-9a-f]{8,17}", self.subnet_id):
            _fail(f"subnetId {self.subnet_id!r} is not a subnet id (subnet-...); "
                  "fix it with `pulumi config set subnetId subnet-...`")
        if self.subnet_id is not None and self.availability_zone is not None:
            _fail("availabilityZone applies only to the network kindling creates; the subnet fixes it "
                  "when subnetId is set: `pulumi config rm availabilityZone`")

    @property
    def ps_type(self) -> str:
        return self.ps_instance_type or self.master_instance_type


def _is_positive_price(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


# config key -> (SparkClusterArgs field, how to read it). The one place config key names live.
CONFIG_KEYS: dict[str, tuple[str, Callable[[pulumi.Config, str], object]]] = {
    "clusterName": ("cluster_name", pulumi.Config.get),
    "sshCidr": ("ssh_cidr", pulumi.Config.get),
    "allowSshFromAnywhere": ("allow_ssh_from_anywhere", pulumi.Config.get_bool),
    "masterInstanceType": ("master_instance_type", pulumi.Config.get),
    "workerInstanceType": ("worker_instance_type", pulumi.Config.get),
    "psInstanceType": ("ps_instance_type", pulumi.Config.get),
    "workerCount": ("worker_count", pulumi.Config.get_int),
    "psCount": ("ps_count", pulumi.Config.get_int),
    "spotWorkers": ("spot_workers", pulumi.Config.get_bool),
    "spotMaxPrice": ("spot_max_price", pulumi.Config.get),
    "rootVolumeSize": ("root_volume_gib", pulumi.Config.get_int),
    "ami": ("ami", pulumi.Config.get),
    "placementGroup": ("placement_group", pulumi.Config.get_bool),
    "hdfs": ("hdfs", pulumi.Config.get_bool),
    "running": ("running", pulumi.Config.get_bool),
    "idleStopMinutes": ("idle_stop_minutes", pulumi.Config.get_float),
    "maxHours": ("max_hours", pulumi.Config.get_float),
    "availabilityZone": ("availability_zone", pulumi.Config.get),
    "vpcId": ("vpc_id", pulumi.Config.get),
    "subnetId": ("subnet_id", pulumi.Config.get),
    "sshPublicKey": ("ssh_public_key", pulumi.Config.get),
    "sshPrivateKey": ("ssh_private_key", pulumi.Config.get_secret),
}


def load_config() -> SparkClusterArgs:
    """SparkClusterArgs from the stack's `pulumi config`; unset keys keep the defaults above."""
    config = pulumi.Config()
    values = {field: read(config, key) for key, (field, read) in CONFIG_KEYS.items()}
    values = {field: value for field, value in values.items() if value is not None}
    values.setdefault("cluster_name", f"kindling-{pulumi.get_stack()}")
    values.setdefault("ssh_cidr", None)
    return SparkClusterArgs(region=pulumi.Config("aws").get("region") or "", **values)
