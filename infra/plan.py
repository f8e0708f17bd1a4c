"""Everything decided before the first resource: zone, subnet, addresses, cost and quotas.

These are read-only lookups (invokes) whose answers shape the resources, so a zone that lacks an
instance type, a subnet too small, or a quota too low stops `pulumi preview`/`up` with one line
before anything is created.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from infra.addresses import host_addresses
from infra.config import ClusterConfigError, SparkClusterArgs
from infra.network import SUBNET_CIDR
from infra.prices import PRICES_AS_OF, HostCost, hourly_cost
from infra.quotas import check_quotas, quota_needs


@dataclass(frozen=True)
class ClusterPlan:
    availability_zone: str
    zone_picked: bool
    """True when kindling chose the zone (no availabilityZone, no subnetId)."""
    cidr_block: str
    """The subnet the addresses come from: kindling's SUBNET_CIDR, or the existing subnet's."""
    vpc_id: Optional[str]
    """The existing subnet's VPC; None when kindling creates the network."""
    addresses: dict[str, str]
    hourly_cost_usd: Optional[dict[str, float]]


def plan_cluster(args: SparkClusterArgs) -> ClusterPlan:
    types = sorted({args.master_instance_type, args.worker_instance_type} | ({args.ps_type} if args.ps_count else set()))
    if args.subnet_id:
        subnet = aws.ec2.get_subnet(id=args.subnet_id)
        if args.vpc_id and args.vpc_id != subnet.vpc_id:
            raise ClusterConfigError(f"subnetId {args.subnet_id} is in {subnet.vpc_id}, not in vpcId {args.vpc_id}: "
                                     "`pulumi config rm vpcId` (the subnet fixes the VPC)")
        zone, cidr, vpc_id = subnet.availability_zone, subnet.cidr_block, subnet.vpc_id
        _check_zone_offers(zone, types, f"subnetId {args.subnet_id} is in {zone}, which",
                           "or another subnet: `pulumi config set subnetId subnet-...`")
    elif args.availability_zone:
        zone, cidr, vpc_id = args.availability_zone, SUBNET_CIDR, None
        _check_zone_offers(zone, types, f"availabilityZone {zone}",
                           "or `pulumi config rm availabilityZone` to let kindling pick a zone")
    else:
        zone, cidr, vpc_id = _zone_offering(types), SUBNET_CIDR, None
    try:
        addresses = host_addresses(cidr, args.worker_count, args.ps_count)
    except ValueError as error:
        raise ClusterConfigError(f"{error}: lower workerCount, or use a larger subnet") from None
    hosts = _billed_hosts(args)
    cost = hourly_cost(args.region, hosts)
    pulumi.log.info(_cost_line(args, cost))
    running = [(h.instance_type, h.spot) for h in hosts] if args.running else []
    vcpus = {t: aws.ec2.get_instance_type(instance_type=t).default_vcpus for t, _ in set(running)}
    check_quotas(quota_needs(running, vcpus, elastic_ips=1), args.region)
    return ClusterPlan(zone, zone_picked=not (args.subnet_id or args.availability_zone), cidr_block=cidr,
                       vpc_id=vpc_id, addresses=addresses, hourly_cost_usd=cost)


def _billed_hosts(args: SparkClusterArgs) -> list[HostCost]:
    """Master: Elastic IP; workers and ps: an auto-assigned public IPv4 for their own egress."""
    max_price = float(args.spot_max_price) if args.spot_max_price else None
    return [HostCost(args.master_instance_type, args.root_volume_gib, spot=False, public_ipv4=False, elastic_ip=True),
            *[HostCost(args.worker_instance_type, args.root_volume_gib, spot=args.spot_workers, public_ipv4=True,
                       elastic_ip=False, spot_max_price=max_price)] * args.worker_count,
            *[HostCost(args.ps_type, args.root_volume_gib, spot=False, public_ipv4=True, elastic_ip=False)]
            * args.ps_count]


def _cost_line(args: SparkClusterArgs, cost: Optional[dict[str, float]]) -> str:
    if cost is None:
        return (f"{args.cluster_name}: no cost shown: infra/prices.py has no {args.region} price for "
                f"one of its instance types")
    return (f"{args.cluster_name}: ${cost['running']:.4f}/h running at most (spot workers at their price cap), "
            f"${cost['stopped']:.4f}/h stopped (disks and the Elastic IP); {args.region} prices of "
            f"{PRICES_AS_OF} (infra/prices.py)")


def _offered_zones(types: list[str]) -> dict[str, set[str]]:
    offerings = aws.ec2.get_instance_type_offerings(
        location_type="availability-zone",
        filters=[aws.ec2.GetInstanceTypeOfferingsFilterArgs(name="instance-type", values=types)])
    zones: dict[str, set[str]] = {t: set() for t in types}
    for instance_type, zone in zip(offerings.instance_types, offerings.locations):
        zones.setdefault(instance_type, set()).add(zone)
    return zones


def _availability_zones() -> set[str]:
    """The region's Availability Zones proper: not its Local or Wavelength Zones (an opted-in
    `us-east-1-bos-1a` sorts before `us-east-1a`, and offers few types and no regional Elastic IP)."""
    return set(aws.get_availability_zones(state="available", filters=[
        aws.GetAvailabilityZonesFilterArgs(name="zone-type", values=["availability-zone"])]).names)


def _zone_offering(types: list[str]) -> str:
    """The first Availability Zone (by name) that offers every type, so the choice is stable
    across runs."""
    proper = _availability_zones()
    zones = {instance_type: offered & proper for instance_type, offered in _offered_zones(types).items()}
    common = set.intersection(*zones.values())
    if not common:
        offered = "; ".join(f"{t} in {', '.join(sorted(z)) or 'no zone'}" for t, z in zones.items())
        raise ClusterConfigError(f"no availability zone of this region offers all of {', '.join(types)} "
                                 f"({offered}): pick types offered together, e.g. "
                                 "`pulumi config set workerInstanceType m7i.xlarge`")
    return min(common)


def _check_zone_offers(zone: str, types: list[str], where: str, fix: str) -> None:
    missing = [t for t, zones in _offered_zones(types).items() if zone not in zones]
    if missing:
        raise ClusterConfigError(f"{where} does not offer {', '.join(missing)}: choose other instance types, {fix}")
