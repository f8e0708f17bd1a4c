"""One cluster host: pinned host key, a fixed private address, the instance.

The address comes from the address plan (infra/addresses.py), so the name (ip-a-b-c-d) and the
known_hosts line exist before the instance, and a replaced host comes back with the same name,
address and key. Replacements delete the old instance first: only one instance can hold an
address (and the master's network interface).

Only the master has an Elastic IP, on its own network interface, so it reaches the internet
from the first boot and keeps its public address across stop/start and replacement. Workers and
ps hosts get an auto-assigned public IPv4 for their own egress (apt, pip) and are reached over
SSH through the master on their private address, so a cluster of any size needs one Elastic IP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pulumi
import pulumi_aws as aws
import pulumi_tls as tls

from infra.cloud_init import cloud_config
from infra.tags import HDFS_TAG, MARKET_TAG, ROLE_TAG, cluster_tags
from kindling import known_hosts_line


def aws_hostname(private_ip: str) -> str:
    """The name EC2 gives a host (ip-10-42-0-7), which VPC DNS resolves for every member."""
    return "ip-" + private_ip.replace(".", "-")


@dataclass(frozen=True)
class ClusterHostArgs:
    cluster_name: str
    host_name: str
    """Inventory name: master, worker-0, ps-0..."""
    role: str
    """kindling:role tag: master, worker or ps."""
    instance_type: str
    ami: pulumi.Input[str]
    pin_ami: bool
    """False when the AMI is looked up: a newer image then leaves existing hosts alone."""
    subnet_id: pulumi.Input[str]
    private_ip: str
    security_group_ids: list[pulumi.Input[str]]
    key_name: pulumi.Input[str]
    instance_profile: pulumi.Input[str]
    root_volume_gib: int
    running: bool
    hdfs: bool
    elastic_ip: bool = False
    """The master: reached from outside on a stable public address."""
    spot: bool = False
    spot_max_price: Optional[str] = None
    placement_group: Optional[pulumi.Input[str]] = None
    ready: list[pulumi.Resource] = field(default_factory=list)
    """What must exist before the host boots: the internet route and the security-group rules."""
    watcher: dict = field(default_factory=dict)
    """The settings of the host's watcher (ops.agent.install.settings), armed at first boot."""


class ClusterHost(pulumi.ComponentResource):
    entry: pulumi.Output[dict]
    """The inventory HOST object: name, hostname, publicIp, privateIp, publicDns."""
    known_hosts: pulumi.Output[str]
    """This host's known_hosts line: every address ops may reach it on, and its pinned ED25519 key."""

    def __init__(self, name: str, args: ClusterHostArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("kindling:infra:ClusterHost", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = cluster_tags(args.cluster_name, args.host_name,
                            **{ROLE_TAG: args.role, HDFS_TAG: str(args.hdfs).lower(),
                               MARKET_TAG: "spot" if args.spot else "on-demand"})
        host_key = tls.PrivateKey(f"{name}-host-key", algorithm="ED25519", opts=child)
        hostname = aws_hostname(args.private_ip)
        user_data = pulumi.Output.all(host_key.private_key_openssh, host_key.public_key_openssh).apply(
            lambda keys: cloud_config(hostname, *keys, watcher=args.watcher))
        public, network, boot_after = self._network(name, args, tags)
        instance = self._instance(name, args, tags, user_data, network, boot_after)
        instance_id = instance.id if instance else pulumi.Output.from_input("")
        self.entry = pulumi.Output.all(public, instance_id).apply(lambda v: {
            "name": args.host_name, "hostname": hostname, "publicIp": v[0][0],
            "privateIp": args.private_ip, "publicDns": v[0][1], "instanceId": v[1],
            "spot": args.spot})
        self.known_hosts = pulumi.Output.all(self.entry, host_key.public_key_openssh).apply(
            lambda v: known_hosts_line([v[0]["publicIp"], v[0]["privateIp"], v[0]["hostname"],
                                        v[0]["publicDns"]], v[1]))
        self.register_outputs({"host": self.entry})

    def _network(self, name: str, args: ClusterHostArgs, tags: dict):
        """(public address and DNS name, the instance's network arguments, what its boot waits
        for): an Elastic IP on its own interface for a host reached from outside, else an
        address in the subnet."""
        if not args.elastic_ip:
            network = {"subnet_id": args.subnet_id, "private_ip": args.private_ip,
                       "vpc_security_group_ids": args.security_group_ids, "associate_public_ip_address": True}
            return pulumi.Output.from_input(["", ""]), network, args.ready
        interface = aws.ec2.NetworkInterface(
            f"{name}-eni", subnet_id=args.subnet_id, private_ips=[args.private_ip],
            security_groups=args.security_group_ids,
            description=f"kindling {args.cluster_name} {args.host_name}", tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=args.ready))
        address = aws.ec2.Eip(f"{name}-eip", domain="vpc", network_interface=interface.id, tags=tags,
                              opts=pulumi.ResourceOptions(parent=self, depends_on=args.ready))
        network = {"primary_network_interface": aws.ec2.InstancePrimaryNetworkInterfaceArgs(
            network_interface_id=interface.id)}
        return (pulumi.Output.all(address.public_ip, address.public_dns), network,
                [*args.ready, address])

    def _instance(self, name: str, args: ClusterHostArgs, tags: dict, user_data, network: dict,
                  boot_after) -> Optional[aws.ec2.Instance]:
        """The EC2 instance, and its running/stopped state for an on-demand one. None for a spot
        host while the cluster is stopped: one-time spot instances cannot be stopped, so
        `running=false` removes spot workers instead."""
        if not args.running and args.spot:
            return None
        instance = aws.ec2.Instance(
            f"{name}-instance",
            ami=args.ami,
            instance_type=args.instance_type,
            key_name=args.key_name,
            iam_instance_profile=args.instance_profile,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_type="gp3", volume_size=args.root_volume_gib, encrypted=True,
                delete_on_termination=True),
            instance_market_options=_spot_market(args) if args.spot else None,
            # the watcher stops an idle host with an OS shutdown (no EC2 permission needed): an
            # on-demand host then stops, its disk kept; a one-time spot one cannot stop.
            instance_initiated_shutdown_behavior="terminate" if args.spot else "stop",
            credit_specification=_standard_credits(args.instance_type),
            placement_group=args.placement_group,
            user_data=user_data,
            tags=tags,
            volume_tags=tags,
            **network,
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=boot_after, delete_before_replace=True,
                # cloud-init reads user data once, at first boot: a newer template must not
                # stop/start or replace running hosts (a replacement reuses the recorded text).
                ignore_changes=["userData"] + ([] if args.pin_ami else ["ami"]),
                # EC2 cannot change a spot instance's type in place (stop, modify, start).
                replace_on_changes=["instanceType"] if args.spot else []))
        if not args.spot:
            aws.ec2transitgateway.InstanceState(
                f"{name}-state", instance_id=instance.id, state="running" if args.running else "stopped",
                opts=pulumi.ResourceOptions(parent=self))
        return instance


BURSTABLE_FAMILIES = ("t2", "t3", "t3a", "t4g")


def _standard_credits(instance_type: str) -> Optional[aws.ec2.InstanceCreditSpecificationArgs]:
    """A burstable host in standard credit mode: EC2 launches t3/t3a/t4g in unlimited mode,
    billed beyond the hourly price the cost line shows; standard throttles instead."""
    if instance_type.split(".")[0] not in BURSTABLE_FAMILIES:
        return None
    return aws.ec2.InstanceCreditSpecificationArgs(cpu_credits="standard")


def _spot_market(args: ClusterHostArgs) -> aws.ec2.InstanceInstanceMarketOptionsArgs:
    """One-time spot, terminated on interruption: no request outlives its instance.

    A persistent request survives `pulumi destroy` and replacements (the provider does not cancel
    it: terraform-provider-aws#38142) and would start an untracked instance; a one-time request
    closes with its instance.
    """
    return aws.ec2.InstanceInstanceMarketOptionsArgs(
        market_type="spot",
        spot_options=aws.ec2.InstanceInstanceMarketOptionsSpotOptionsArgs(
            spot_instance_type="one-time", instance_interruption_behavior="terminate",
            max_price=args.spot_max_price))
