"""The address plan: every host's private IPv4 is fixed by its name, not handed out by AWS.

A fixed address is what lets a host be replaced (delete, then create) and come back with the same
name (ip-a-b-c-d), the same address and the same pinned host key, and what lets the inventory and
knownHosts be written before any instance exists. Offsets from the subnet's first address:

    .10         master
    .16 - .31   ps-0 .. ps-15
    .32 - ...   worker-0, worker-1, ...   (a /20 holds 4063 workers, a /24 holds 223)

AWS reserves the first four addresses and the last one of every subnet; .4-.9 stay free.
"""

from __future__ import annotations

import ipaddress

MASTER_OFFSET = 10
PS_OFFSET = 16
MAX_PS_HOSTS = 16
WORKER_OFFSET = PS_OFFSET + MAX_PS_HOSTS


def host_addresses(cidr_block: str, worker_count: int, ps_count: int) -> dict[str, str]:
    """Host name -> private IPv4 in cidr_block; ValueError naming the room left when they do not fit."""
    subnet = ipaddress.ip_network(cidr_block)
    offsets = {"master": MASTER_OFFSET,
               **{f"worker-{i}": WORKER_OFFSET + i for i in range(worker_count)},
               **{f"ps-{i}": PS_OFFSET + i for i in range(ps_count)}}
    room = subnet.num_addresses - 1 - WORKER_OFFSET  # the last address is AWS's
    if ps_count > MAX_PS_HOSTS or worker_count > room:
        raise ValueError(f"subnet {cidr_block} holds at most {max(room, 0)} workers and "
                         f"{MAX_PS_HOSTS} ps hosts at kindling's fixed addresses")
    return {name: str(subnet.network_address + offset) for name, offset in offsets.items()}
