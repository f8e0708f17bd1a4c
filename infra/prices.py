"""What the configured cluster costs per hour, running and stopped, from a price table kept here.

Source: AWS's public price list (EC2 On-Demand, Linux, shared tenancy; EBS gp3; VPC public IPv4
addresses), figures as of PRICES_AS_OF, written from that list without a network fetch: check
them at https://aws.amazon.com/ec2/pricing/on-demand/ before relying on a total. Spot workers are
counted at their price cap (spotMaxPrice, or the on-demand price that caps them by default), so
the running figure is an upper bound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

PRICES_AS_OF = "2025-01"
HOURS_PER_MONTH = 730  # AWS's own month for turning $/GB-month into $/hour

# USD/hour of the .large size (2 vCPUs); every other size of these families costs in proportion to
# its vCPUs (xlarge = 2x, 2xlarge = 4x, medium = 1/2x, ...), as AWS prices them.
LARGE_USD_PER_HOUR: dict[str, dict[str, float]] = {
    region: {"m7i": 0.1008, "c7i": 0.08925, "r7i": 0.1323, "t3": 0.0832}
    for region in ("us-east-1", "us-east-2", "us-west-2")
}
GP3_USD_PER_GB_MONTH = {"us-east-1": 0.08, "us-east-2": 0.08, "us-west-2": 0.08}
PUBLIC_IPV4_USD_PER_HOUR = 0.005  # every public IPv4 since 2024-02: Elastic (even idle) or auto-assigned
SIZE_TO_LARGE = {"nano": 1 / 16, "micro": 1 / 8, "small": 1 / 4, "medium": 1 / 2, "large": 1,
                 "xlarge": 2, **{f"{n}xlarge": 2 * n for n in (2, 4, 8, 12, 16, 24, 48)}}


@dataclass(frozen=True)
class HostCost:
    """One host as the bill sees it."""
    instance_type: str
    root_volume_gib: int
    spot: bool
    public_ipv4: bool
    """An auto-assigned public address: billed while running, released when stopped."""
    elastic_ip: bool
    """An Elastic IP: billed as long as it is allocated."""
    spot_max_price: Optional[float] = None


def on_demand_price(region: str, instance_type: str) -> Optional[float]:
    """USD/hour from the table, or None when the region or type is not in it."""
    match = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9]+)", instance_type)
    family, size = match.groups() if match else ("", "")
    large = LARGE_USD_PER_HOUR.get(region, {}).get(family)
    return None if large is None or size not in SIZE_TO_LARGE else large * SIZE_TO_LARGE[size]


def hourly_cost(region: str, hosts: list[HostCost]) -> Optional[dict[str, float]]:
    """{"running": USD/h, "stopped": USD/h}, or None when the table lacks the region or a type.

    Stopped: spot workers do not exist (one-time spot cannot be stopped: see ClusterHost), the other
    hosts keep their disks, and the Elastic IP stays allocated.
    """
    prices = [h.spot_max_price if h.spot and h.spot_max_price else on_demand_price(region, h.instance_type)
              for h in hosts]
    if region not in GP3_USD_PER_GB_MONTH or None in prices:
        return None
    disk = [h.root_volume_gib * GP3_USD_PER_GB_MONTH[region] / HOURS_PER_MONTH for h in hosts]
    addresses = [PUBLIC_IPV4_USD_PER_HOUR * (h.public_ipv4 or h.elastic_ip) for h in hosts]
    running = sum(prices) + sum(disk) + sum(addresses)
    stopped = sum(d + PUBLIC_IPV4_USD_PER_HOUR * h.elastic_ip for h, d in zip(hosts, disk) if not h.spot)
    return {"running": round(running, 4), "stopped": round(stopped, 4)}
