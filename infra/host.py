"""One cluster host: pinned host key, network interface with a stable public address, instance.

The network interface and Elastic IP exist before the instance, so the hostname (from the private
IP) goes into cloud-init and both addresses survive stop/start: the inventory and knownHosts stay
true while `running` toggles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pulumi
import pulumi_aws as aws
import pulumi_tls as tls

from infra.cloud_init import cloud_config
from infra.tags import HDFS_TAG, ROLE_TAG, cluster_tags
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
    security_group_id: pulumi.Input[str]
    key_name: pulumi.Input[str]
    instance_profile: pulumi.Input[str]
    root_volume_gib: int
    running: bool
    hdfs: bool
    spot: bool = False
    spot_max_price: Optional[str] = None
    placement_group: Optional[pulumi.Input[str]] = None
    internet_route: list[pulumi.Resource] = field(default_factory=list)


class ClusterHost(pulumi.ComponentResource):
    entry: pulumi.Output[dict]
    """The inventory HOST object: name, hostname, publicIp, privateIp, publicDns."""
    known_hosts: pulumi.Output[str]
    """This host's known_hosts line: all its addresses and its pinned ED25519 host key."""

    def __init__(self, name: str, args: ClusterHostArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("kindling:infra:ClusterHost", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = cluster_tags(args.cluster_name, args.host_name,
                            **{ROLE_TAG: args.role, HDFS_TAG: str(args.hdfs).lower()})
        host_key = tls.PrivateKey(f"{name}-host-key", algorithm="ED25519", opts=child)
        interface = aws.ec2.NetworkInterface(
            f"{name}-eni", subnet_id=args.subnet_id, security_groups=[args.security_group_id],
            description=f"kindling {args.cluster_name} {args.host_name}", tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=args.internet_route))
        address = aws.ec2.Eip(
            f"{name}-eip", domain="vpc", network_interface=interface.id, tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=args.internet_route))
        hostname = interface.private_ip.apply(aws_hostname)
        user_data = pulumi.Output.all(hostname, host_key.private_key_openssh,
                                      host_key.public_key_openssh).apply(lambda v: cloud_config(*v))
        instance = aws.ec2.Instance(
            f"{name}-instance",
            ami=args.ami,
            instance_type=args.instance_type,
            key_name=args.key_name,
            iam_instance_profile=args.instance_profile,
            primary_network_interface=aws.ec2.InstancePrimaryNetworkInterfaceArgs(
                network_interface_id=interface.id),
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_type="gp3", volume_size=args.root_volume_gib, encrypted=True,
                delete_on_termination=True),
            instance_market_options=_spot_market(args) if args.spot else None,
            placement_group=args.placement_group,
            user_data=user_data,
            user_data_replace_on_change=True,  # a new host key or name means a new host
            tags=tags,
            volume_tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[address],
                                        ignore_changes=[] if args.pin_ami else ["ami"]))
        aws.ec2transitgateway.InstanceState(
            f"{name}-state", instance_id=instance.id, state="running" if args.running else "stopped",
            opts=child)
        self.entry = pulumi.Output.all(hostname, address.public_ip, interface.private_ip,
                                       address.public_dns).apply(
            lambda v: {"name": args.host_name, "hostname": v[0], "publicIp": v[1],
                       "privateIp": v[2], "publicDns": v[3]})
        self.known_hosts = pulumi.Output.all(self.entry, host_key.public_key_openssh).apply(
            lambda v: known_hosts_line([v[0]["publicIp"], v[0]["privateIp"], v[0]["hostname"],
                                        v[0]["publicDns"]], v[1]))
        self.register_outputs({"host": self.entry})


def _spot_market(args: ClusterHostArgs) -> aws.ec2.InstanceInstanceMarketOptionsArgs:
    """Persistent spot, stopped (not terminated) on interruption: the only spot kind EC2 can stop."""
    return aws.ec2.InstanceInstanceMarketOptionsArgs(
        market_type="spot",
        spot_options=aws.ec2.InstanceInstanceMarketOptionsSpotOptionsArgs(
            spot_instance_type="persistent", instance_interruption_behavior="stop",
            max_price=args.spot_max_price))
