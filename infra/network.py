"""The cluster's network: its own VPC with one public subnet in a chosen zone, or an existing subnet.

The VPC kindling creates has an S3 gateway endpoint on the subnet's route table: the hosts reach
S3 of their region through it (free, no internet hop), and the instance role's S3 access works
only through it (infra/iam.py), so the role's credentials are useless off the hosts. No endpoint
policy (AWS's default: full access): the hosts have an internet route anyway, so narrowing the
endpoint would stop no exfiltration but would break anonymous reads of public buckets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from infra.tags import cluster_tags

VPC_CIDR = "10.42.0.0/16"
SUBNET_CIDR = "10.42.0.0/20"


@dataclass(frozen=True)
class ClusterNetworkArgs:
    cluster_name: str
    availability_zone: str
    zone_picked: bool = False
    """kindling chose the zone: later runs keep the subnet where it is even if they would choose
    another zone (a new zone would replace the subnet and so every host)."""
    subnet_id: Optional[str] = None
    """Use this existing subnet (its route table must send 0.0.0.0/0 to an internet gateway)..."""
    vpc_id: Optional[str] = None
    """...which is in this VPC (looked up from the subnet by ClusterPlan)."""


class ClusterNetwork(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    subnet_id: pulumi.Output[str]
    internet_route: list[pulumi.Resource]
    """What hosts must wait for: the Elastic IP needs the internet gateway, cloud-init needs the
    route, S3 (with the role) needs the gateway endpoint's route."""
    s3_endpoint_id: Optional[pulumi.Output[str]]
    """The S3 gateway endpoint in the cluster's VPC; None on an existing subnet, whose route
    tables are not kindling's to change."""

    def __init__(self, name: str, args: ClusterNetworkArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("kindling:infra:ClusterNetwork", name, None, opts)
        if args.subnet_id:
            self.vpc_id = pulumi.Output.from_input(args.vpc_id)
            self.subnet_id = pulumi.Output.from_input(args.subnet_id)
            self.internet_route = []
            self.s3_endpoint_id = None
            pulumi.log.warn(f"subnetId {args.subnet_id}: kindling adds no S3 gateway endpoint to a VPC it "
                            "did not create, so the instance role's S3 access is not tied to the VPC "
                            "(docs/ec2.md, \"Least power on the hosts\")", resource=self)
        else:
            self._create(name, args)
        self.register_outputs({"vpcId": self.vpc_id, "subnetId": self.subnet_id})

    def _create(self, name: str, args: ClusterNetworkArgs) -> None:
        child = pulumi.ResourceOptions(parent=self)
        cluster = args.cluster_name
        # DNS hostnames on: hosts resolve each other's ip-a-b-c-d names and Elastic IPs get public DNS.
        vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=VPC_CIDR, enable_dns_support=True,
                          enable_dns_hostnames=True, tags=cluster_tags(cluster, "vpc"), opts=child)
        gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=cluster_tags(cluster, "igw"), opts=child)
        subnet = aws.ec2.Subnet(
            f"{name}-subnet", vpc_id=vpc.id, cidr_block=SUBNET_CIDR, availability_zone=args.availability_zone,
            tags=cluster_tags(cluster, "subnet"),
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["availabilityZone"] if args.zone_picked else []))
        routes = aws.ec2.RouteTable(
            f"{name}-routes", vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=gateway.id)],
            tags=cluster_tags(cluster, "routes"), opts=child)
        association = aws.ec2.RouteTableAssociation(f"{name}-routes-subnet", subnet_id=subnet.id,
                                                    route_table_id=routes.id, opts=child)
        self.s3_endpoint_id, s3_route = self._s3_gateway(name, cluster, vpc.id, routes.id)
        self.vpc_id = vpc.id
        self.subnet_id = subnet.id
        self.internet_route = [gateway, association, s3_route]

    def _s3_gateway(self, name: str, cluster: str, vpc_id: pulumi.Output[str],
                    route_table_id: pulumi.Output[str]) -> tuple[pulumi.Output[str], pulumi.Resource]:
        """(endpoint id, its route): S3 of the stack's region, through the VPC, for the hosts' subnet."""
        child = pulumi.ResourceOptions(parent=self)
        service = aws.ec2.get_vpc_endpoint_service_output(  # com.amazonaws.<region>.s3, in any partition
            service="s3", service_type="Gateway", opts=pulumi.InvokeOutputOptions(parent=self))
        endpoint = aws.ec2.VpcEndpoint(f"{name}-s3", vpc_id=vpc_id, service_name=service.service_name,
                                       vpc_endpoint_type="Gateway", tags=cluster_tags(cluster, "s3"), opts=child)
        route = aws.ec2.VpcEndpointRouteTableAssociation(f"{name}-s3-routes", vpc_endpoint_id=endpoint.id,
                                                         route_table_id=route_table_id, opts=child)
        return endpoint.id, route
