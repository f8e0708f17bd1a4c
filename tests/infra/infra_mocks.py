"""Run the Pulumi program against in-process mocks that answer like AWS, and record everything.

Each MockedStack installs fresh mocks (pulumi's runtime is process-global) with preview=False (so
every `.apply` really runs), builds one SparkCluster and returns what was registered and exported.
Mocks answer with realistic ids, IPs, ARNs and real ED25519 keys: an output the mock forgot would
silently be None, so an unknown resource type or invoke fails loudly instead.

`python tests/infra/infra_mocks.py` prints the resource list a real `pulumi preview` would show.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import runpy
import secrets
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable
from unittest.mock import patch

import pulumi
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from infra.cluster import SparkCluster
from infra.config import SparkClusterArgs

ACCOUNT = "123456789012"
AMI_ID = "ami-0a1b2c3d4e5f60718"
AMI_NAME = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20260115"
GET_AMI = "aws:ec2/getAmi:getAmi"
GET_SUBNET = "aws:ec2/getSubnet:getSubnet"
GET_OFFERINGS = "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings"
GET_INSTANCE_TYPE = "aws:ec2/getInstanceType:getInstanceType"
GET_QUOTA = "aws:servicequotas/getServiceQuota:getServiceQuota"
GET_ZONES = "aws:index/getAvailabilityZones:getAvailabilityZones"
# The families each zone offers: the first zone lacks m7i, as some us-east-1 zones really do. An
# opted-in Local Zone sorts before them all and offers them all (which no Local Zone does).
ZONE_FAMILIES = {"us-east-1-bos-1a": {"t3", "c7i", "m7i", "r7i"},
                 "us-east-1a": {"t3", "c7i"}, "us-east-1b": {"t3", "c7i", "m7i"},
                 "us-east-1c": {"t3", "c7i", "m7i", "r7i"}, "us-east-1d": {"t3", "m7i", "r7i", "x2idn"}}
LOCAL_ZONES = {"us-east-1-bos-1a"}
EXISTING_SUBNET = {"id": "subnet-0123456789abcdef0", "vpcId": "vpc-0123456789abcdef0",
                   "cidrBlock": "172.31.32.0/24", "availabilityZone": "us-east-1c"}
# Quota code -> value: what a young account has been granted. Elastic IPs at AWS's default of 5.
QUOTAS = {"L-0263D0A3": 5.0, "L-1216C47A": 64.0, "L-34B43A08": 64.0}
MAIN = Path(__file__).resolve().parents[2] / "infra" / "__main__.py"


@dataclass(frozen=True)
class Registered:
    """One resource registration: inputs as the engine saw them (camelCase keys), outputs returned,
    and the options that matter (parent, explicit dependencies, ignoreChanges, replaceOnChanges,
    deleteBeforeReplace)."""
    type: str
    name: str
    id: str
    inputs: dict
    outputs: dict
    custom: bool
    urn: str = ""
    parent: str = ""
    dependencies: frozenset[str] = frozenset()
    ignore_changes: tuple[str, ...] = ()
    replace_on_changes: tuple[str, ...] = ()
    delete_before_replace: bool = False


class RecordingMonitor(pulumi.runtime.mocks.MockMonitor):
    """The stock mock monitor, plus a note of each registration's resource options."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.options: dict[tuple[str, str], dict] = {}

    def RegisterResource(self, request):  # noqa: N802 (gRPC method name)
        response = super().RegisterResource(request)
        self.options[(request.type, request.name)] = {
            "urn": response.urn, "parent": request.parent,
            "dependencies": frozenset(request.dependencies), "ignore_changes": tuple(request.ignoreChanges),
            "replace_on_changes": tuple(request.replaceOnChanges),
            "delete_before_replace": request.deleteBeforeReplace}
        return response


def _openssh_keypair() -> dict:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode() + "\n"
    return {"privateKeyOpenssh": private, "publicKeyOpenssh": public,
            "privateKeyPem": private, "publicKeyPem": "", "publicKeyFingerprintSha256": "SHA256:mock"}


class AwsMocks(pulumi.runtime.Mocks):
    """Answers like AWS/tls for every resource type the program uses; anything else is an error."""

    def __init__(self, quotas: dict[str, float] = QUOTAS, unanswered: frozenset[str] = frozenset()) -> None:
        """quotas: the account's EC2 quotas by code; unanswered: codes whose lookup fails as a denied call does."""
        self.quotas = quotas
        self.unanswered = unanswered
        self.registered: list[Registered] = []
        self.invokes: list[tuple[str, dict]] = []
        self._serial = itertools.count(1)
        self._computed: dict[str, Callable[[dict, str, int], tuple[str, dict]]] = {
            "aws:ec2/vpc:Vpc": lambda i, name, n: self._with_arn("vpc", n, "vpc"),
            "aws:ec2/internetGateway:InternetGateway": lambda i, name, n: self._with_arn("igw", n, "internet-gateway"),
            "aws:ec2/subnet:Subnet": lambda i, name, n: (
                f"subnet-{n:017x}", {"availabilityZone": i.get("availabilityZone") or "us-east-1a"}),
            "aws:ec2/routeTable:RouteTable": lambda i, name, n: (f"rtb-{n:017x}", {}),
            "aws:ec2/routeTableAssociation:RouteTableAssociation": lambda i, name, n: (f"rtbassoc-{n:017x}", {}),
            "aws:ec2/securityGroup:SecurityGroup": lambda i, name, n: self._with_arn("sg", n, "security-group"),
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": lambda i, name, n: (f"sgr-{n:017x}", {}),
            "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": lambda i, name, n: (f"sgr-{n:017x}", {}),
            "aws:ec2/keyPair:KeyPair": self._key_pair,
            "tls:index/privateKey:PrivateKey": lambda i, name, n: (f"tls-{n}", _openssh_keypair()),
            "aws:ec2/networkInterface:NetworkInterface": lambda i, name, n: (
                f"eni-{n:017x}", {"privateIp": i["privateIps"][0]}),
            "aws:ec2/eip:Eip": self._elastic_ip,
            "aws:ec2/instance:Instance": self._instance,
            "aws:ec2transitgateway/instanceState:InstanceState": lambda i, name, n: (i["instanceId"], {}),
            "aws:ec2/placementGroup:PlacementGroup": lambda i, name, n: (
                f"{name}-{n:07x}", {"name": f"{name}-{n:07x}", "placementGroupId": f"pg-{n:017x}"}),
            "aws:s3/bucket:Bucket": self._bucket,
            "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": lambda i, name, n: (i["bucket"], {}),
            "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration":
                lambda i, name, n: (i["bucket"], {}),
            "aws:iam/role:Role": self._iam("role"),
            "aws:iam/instanceProfile:InstanceProfile": self._iam("instance-profile"),
            "aws:iam/rolePolicy:RolePolicy": lambda i, name, n: (f"{i['role']}:{name}", {"name": name}),
            "random:index/randomPassword:RandomPassword": lambda i, name, n: ("none", {
                "result": _random_password(i["length"], i.get("special", True))}),
        }

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        n = next(self._serial)
        if not args.custom:  # a component: the engine keeps no state for it
            resource_id, computed = "", {}
        elif args.typ in self._computed:
            resource_id, computed = self._computed[args.typ](args.inputs, args.name, n)
        else:
            raise NotImplementedError(f"AwsMocks has no outputs for {args.typ}; add them, "
                                      "or every computed output of it would silently be None")
        outputs = {**args.inputs, **computed}
        self.registered.append(Registered(args.typ, args.name, resource_id, args.inputs, outputs, bool(args.custom)))
        return resource_id, outputs

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.invokes.append((args.token, args.args))
        if args.token == GET_AMI:
            return {"id": AMI_ID, "imageId": AMI_ID, "name": AMI_NAME, "architecture": "x86_64",
                    "ownerId": "099720109477", "rootDeviceName": "/dev/sda1"}
        if args.token == GET_SUBNET:
            if args.args["id"] != EXISTING_SUBNET["id"]:
                return {}, [("id", f"no matching EC2 Subnet found for {args.args['id']}")]
            return dict(EXISTING_SUBNET)
        if args.token == GET_OFFERINGS:
            [wanted] = [f["values"] for f in args.args["filters"] if f["name"] == "instance-type"]
            offered = [(t, zone) for zone, families in ZONE_FAMILIES.items() for t in wanted
                       if t.split(".")[0] in families]
            return {"id": "us-east-1", "instanceTypes": [t for t, _ in offered],
                    "locations": [zone for _, zone in offered],
                    "locationTypes": [args.args["locationType"]] * len(offered)}
        if args.token == GET_ZONES:
            [types] = [f["values"] for f in args.args.get("filters", []) if f["name"] == "zone-type"] or [
                ["availability-zone", "local-zone"]]
            names = [zone for zone in ZONE_FAMILIES
                     if ("local-zone" if zone in LOCAL_ZONES else "availability-zone") in types]
            return {"id": "us-east-1", "names": names, "zoneIds": [f"use1-az{i}" for i, _ in enumerate(names)]}
        if args.token == GET_INSTANCE_TYPE:
            return {"id": args.args["instanceType"], "defaultVcpus": _vcpus(args.args["instanceType"])}
        if args.token == GET_QUOTA:
            code = args.args["quotaCode"]
            if code in self.unanswered or code not in self.quotas:
                # How the engine reports a failed call: a failure, which the SDK raises as an exception.
                return {}, [("quotaCode", f"AccessDeniedException: not authorized to read {code}")]
            return {"id": f"ec2/{code}", "quotaCode": code, "serviceCode": "ec2", "value": self.quotas[code]}
        raise NotImplementedError(f"AwsMocks does not answer {args.token}")

    @staticmethod
    def _instance(inputs: dict, name: str, n: int) -> tuple[str, dict]:
        """Private IP as asked (or the master's interface), a public IP only when auto-assigned."""
        resource_id, outputs = AwsMocks._with_arn("i", n, "instance")
        public_ip = f"54.160.{n // 250}.{n % 250 + 1}" if inputs.get("associatePublicIpAddress") else ""
        return resource_id, {**outputs, "publicIp": public_ip, "privateIp": inputs.get("privateIp", "")}

    @staticmethod
    def _with_arn(prefix: str, n: int, kind: str) -> tuple[str, dict]:
        resource_id = f"{prefix}-{n:017x}"
        return resource_id, {"arn": f"arn:aws:ec2:us-east-1:{ACCOUNT}:{kind}/{resource_id}"}

    @staticmethod
    def _key_pair(inputs: dict, name: str, n: int) -> tuple[str, dict]:
        key_name = f"{inputs['keyNamePrefix']}{20260101000000 + n:026d}"
        return f"key-{n:017x}", {"keyName": key_name, "keyPairId": f"key-{n:017x}",
                                  "arn": f"arn:aws:ec2:us-east-1:{ACCOUNT}:key-pair/{key_name}"}

    @staticmethod
    def _elastic_ip(inputs: dict, name: str, n: int) -> tuple[str, dict]:
        ip = f"3.91.{n // 250}.{n % 250 + 1}"
        return f"eipalloc-{n:017x}", {
            "publicIp": ip, "allocationId": f"eipalloc-{n:017x}",
            "publicDns": f"ec2-{ip.replace('.', '-')}.compute-1.amazonaws.com",
            "privateIp": "", "associationId": f"eipassoc-{n:017x}"}

    @staticmethod
    def _bucket(inputs: dict, name: str, n: int) -> tuple[str, dict]:
        bucket = f"{inputs['bucketPrefix']}{20260101000000 + n:026d}"
        return bucket, {"bucket": bucket, "arn": f"arn:aws:s3:::{bucket}",
                        "bucketDomainName": f"{bucket}.s3.amazonaws.com"}

    @staticmethod
    def _iam(kind: str) -> Callable[[dict, str, int], tuple[str, dict]]:
        def computed(inputs: dict, name: str, n: int) -> tuple[str, dict]:
            physical = f"{name}-{n:07x}"
            return physical, {"name": physical, "arn": f"arn:aws:iam::{ACCOUNT}:{kind}/{physical}",
                              "uniqueId": f"AROA{n:016X}"}
        return computed


def _random_password(length: int, special: bool) -> str:
    """What pulumi_random's RandomPassword gives: `length` characters, letters and digits (and
    its default specials unless special=false); its id is always "none"."""
    alphabet = string.ascii_letters + string.digits + ("!@#$%&*()-_=+[]{}<>:?" if special else "")
    return "".join(secrets.choice(alphabet) for _ in range(int(length)))


def _vcpus(instance_type: str) -> int:
    """vCPUs as EC2 counts them: 2 up to .large, 4 per xlarge."""
    size = instance_type.split(".")[1]
    match = re.fullmatch(r"(\d*)xlarge", size)
    return 4 * int(match.group(1) or 1) if match else 2


class _Records(logging.Handler):
    """pulumi.log messages as the engine would print them, kept for the test."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelname.lower(), record.getMessage()))


@dataclass(frozen=True)
class Deployment:
    """What one mocked `pulumi up` registered, invoked, logged and exported."""
    resources: list[Registered]
    invokes: list[tuple[str, dict]]
    inventory: dict
    """The stack outputs, resolved: the JSON `pulumi stack output --json --show-secrets` prints."""
    secret_outputs: frozenset[str]
    logs: list[tuple[str, str]] = field(default_factory=list)
    """(level, message) of every pulumi.log call: what `pulumi preview` shows under Diagnostics."""

    def of_type(self, type_: str) -> list[Registered]:
        return [r for r in self.resources if r.type == type_]

    def named(self, type_: str, name: str) -> Registered:
        matches = [r for r in self.of_type(type_) if r.name == name]
        assert len(matches) == 1, f"{len(matches)} {type_} named {name}: {[r.name for r in self.of_type(type_)]}"
        return matches[0]


class MockedStack:
    """One fresh mocked stack. Pulumi's runtime is process-global, so every scenario makes its own."""

    def __init__(self, stack: str = "test", mocks: AwsMocks | None = None) -> None:
        self.mocks = mocks or AwsMocks()
        self.monitor = RecordingMonitor(self.mocks)
        self.records = _Records()
        logger = logging.getLogger(f"kindling.mocks.{id(self)}")
        logger.setLevel(logging.INFO)  # the SDK logs its own RPCs at DEBUG
        logger.propagate = False
        logger.addHandler(self.records)
        pulumi.runtime.set_mocks(self.mocks, project="kindling", stack=stack, preview=False,
                                 logger=logger, monitor=self.monitor)
        pulumi.runtime.set_all_config({}, [])  # no config left over from an earlier scenario

    def set_config(self, config: dict[str, str], secret_keys: Iterable[str] = ()) -> None:
        """`pulumi config set` for this stack: full keys (kindling:workerCount, aws:region)."""
        pulumi.runtime.set_all_config(dict(config), list(secret_keys))

    def deploy(self, args: SparkClusterArgs) -> Deployment:
        """Build SparkCluster(args) and wait for all of it."""
        return self._run(lambda: SparkCluster("kindling", args).inventory)

    def run_main(self) -> Deployment:
        """Run infra/__main__.py as `pulumi up` does (config from set_config), capturing its exports."""
        def program() -> dict[str, pulumi.Output]:
            exported: dict[str, pulumi.Output] = {}
            with patch.object(pulumi, "export", exported.__setitem__):
                runpy.run_path(str(MAIN), run_name="__main__")
            return exported
        return self._run(program)

    def _run(self, build: Callable[[], dict[str, pulumi.Output]]) -> Deployment:
        resolved: dict = {}

        @pulumi.runtime.test
        def program() -> pulumi.Output:
            outputs = {key: pulumi.Output.from_input(value) for key, value in build().items()}
            secrets = {key: pulumi.Output.from_input(asyncio.ensure_future(output.is_secret()))
                       for key, output in outputs.items()}
            return pulumi.Output.all(values=pulumi.Output.all(**outputs),
                                     secrets=pulumi.Output.all(**secrets)).apply(resolved.update)

        program()
        # With preview=True (or a broken program) the apply never runs: refuse to assert nothing.
        assert set(resolved) == {"values", "secrets"}, "the mocked deployment resolved no outputs"
        resources = [replace(r, **self.monitor.options[(r.type, r.name)]) for r in self.mocks.registered]
        return Deployment(resources, list(self.mocks.invokes), resolved["values"],
                          frozenset(key for key, secret in resolved["secrets"].items() if secret),
                          list(self.records.lines))


def cluster_args(**overrides) -> SparkClusterArgs:
    """Valid args for a small cluster, with the given fields changed."""
    return SparkClusterArgs(**{"cluster_name": "kindling-test", "region": "us-east-1",
                               "ssh_cidr": "203.0.113.7/32", **overrides})


def deploy(mocks: AwsMocks | None = None, **overrides) -> Deployment:
    """A fresh mocked `pulumi up` of cluster_args(**overrides), against mocks (default: AwsMocks())."""
    return MockedStack(mocks=mocks).deploy(cluster_args(**overrides))


def preview_lines(deployment: Deployment) -> list[str]:
    """The resource tree as `pulumi preview` lists it: type and name, children indented under parents."""
    children: dict[str, list[Registered]] = {}
    urns = {r.urn for r in deployment.resources}
    for resource in deployment.resources:
        children.setdefault(resource.parent if resource.parent in urns else "", []).append(resource)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for resource in sorted(children.get(parent, []), key=lambda r: (r.custom, r.name, r.type)):
            lines.append(f"{'    ' * depth}{resource.type}  {resource.name}")
            walk(resource.urn, depth + 1)

    walk("", 0)
    return lines


if __name__ == "__main__":
    example = deploy(cluster_name="kindling-dev", worker_count=2, ps_count=1, placement_group=True)
    print("\n".join(preview_lines(example)))
    print(f"{len(example.resources)} resources")
