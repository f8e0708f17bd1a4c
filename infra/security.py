"""The cluster firewall: members talk freely, SSH from sshCidr reaches the master only.

Every host is in the members group (all traffic between members, all outbound); the master alone
is also in the SSH group. Workers and ps hosts are reached through the master (an SSH jump host),
so their port 22 is open to cluster members only, although they have a public IPv4 for egress.
Spark and TensorFlow UIs stay closed to the internet; reach them through an SSH tunnel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from infra.tags import cluster_tags

SSH_PORT = 22


@dataclass(frozen=True)
class ClusterFirewallArgs:
    cluster_name: str
    vpc_id: pulumi.Input[str]
    ssh_cidr: str


class ClusterFirewall(pulumi.ComponentResource):
    members_group_id: pulumi.Output[str]
    ssh_group_id: pulumi.Output[str]
    members_rules: list[pulumi.Resource]
    """What every host waits for: the provider strips AWS's default egress, so a host booting
    before the egress rule exists cannot reach apt."""
    ssh_rules: list[pulumi.Resource]

    def __init__(self, name: str, args: ClusterFirewallArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("kindling:infra:ClusterFirewall", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        cluster = args.cluster_name
        # Rules are separate resources (not inline) so each one is visible and changeable on its own.
        members = aws.ec2.SecurityGroup(
            f"{name}-sg", vpc_id=args.vpc_id,
            description=f"kindling cluster {cluster}: all traffic between members, all outbound",
            tags=cluster_tags(cluster, "sg"), opts=child)
        ssh = aws.ec2.SecurityGroup(
            f"{name}-ssh-sg", vpc_id=args.vpc_id, description=f"kindling cluster {cluster}: SSH from sshCidr",
            tags=cluster_tags(cluster, "ssh-sg"), opts=child)
        self.ssh_rules = [aws.vpc.SecurityGroupIngressRule(
            f"{name}-ssh", security_group_id=ssh.id, ip_protocol="tcp", from_port=SSH_PORT,
            to_port=SSH_PORT, cidr_ipv4=args.ssh_cidr, description="SSH from sshCidr",
            tags=cluster_tags(cluster, "ssh"), opts=child)]
        self.members_rules = [
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-members", security_group_id=members.id, ip_protocol="-1",
                referenced_security_group_id=members.id, description="all traffic between cluster members",
                tags=cluster_tags(cluster, "members"), opts=child),
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-egress", security_group_id=members.id, ip_protocol="-1", cidr_ipv4="0.0.0.0/0",
                description="all outbound (packages, S3)", tags=cluster_tags(cluster, "egress"), opts=child),
        ]
        self.members_group_id = members.id
        self.ssh_group_id = ssh.id
        self.register_outputs({"membersGroupId": members.id, "sshGroupId": ssh.id})
