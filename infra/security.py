"""The cluster firewall: SSH from one CIDR, everything between members, nothing else from outside.

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
    security_group_id: pulumi.Output[str]

    def __init__(self, name: str, args: ClusterFirewallArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("kindling:infra:ClusterFirewall", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        cluster = args.cluster_name
        # Rules are separate resources (not inline) so each one is visible and changeable on its own.
        group = aws.ec2.SecurityGroup(
            f"{name}-sg", vpc_id=args.vpc_id,
            description=f"kindling cluster {cluster}: SSH from sshCidr, all traffic between members",
            tags=cluster_tags(cluster, "sg"), opts=child)
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-ssh", security_group_id=group.id, ip_protocol="tcp", from_port=SSH_PORT,
            to_port=SSH_PORT, cidr_ipv4=args.ssh_cidr, description="SSH from sshCidr",
            tags=cluster_tags(cluster, "ssh"), opts=child)
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-members", security_group_id=group.id, ip_protocol="-1",
            referenced_security_group_id=group.id, description="all traffic between cluster members",
            tags=cluster_tags(cluster, "members"), opts=child)
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-egress", security_group_id=group.id, ip_protocol="-1", cidr_ipv4="0.0.0.0/0",
            description="all outbound (packages, S3)", tags=cluster_tags(cluster, "egress"), opts=child)
        self.security_group_id = group.id
        self.register_outputs({"securityGroupId": group.id})
