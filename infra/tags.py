"""One tagging rule for every AWS resource, so a cluster's resources are found (and billed) by tag."""

from __future__ import annotations

CLUSTER_TAG = "kindling:cluster"
ROLE_TAG = "kindling:role"
HDFS_TAG = "kindling:hdfs"
MARKET_TAG = "kindling:market"
"""spot or on-demand: idle auto-stop may terminate only the cluster's spot instances."""


def cluster_tags(cluster_name: str, name: str, **extra: str) -> dict[str, str]:
    """Name = <cluster>-<name>, kindling:cluster = <cluster>, plus any extra kindling:* tags."""
    return {"Name": f"{cluster_name}-{name}", CLUSTER_TAG: cluster_name, **extra}
