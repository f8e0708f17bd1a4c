"""`pulumi up` entry point: stack config in, the cluster inventory out (its hourly cost too).

`pulumi stack output --json --show-secrets > cluster.json` is then what `fab deploy` reads.
"""

import pulumi

from infra.cluster import SparkCluster
from infra.config import load_config

cluster = SparkCluster("kindling", load_config())
for key, value in cluster.inventory.items():
    pulumi.export(key, value)
