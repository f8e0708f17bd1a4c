"""What `fab deploy` sets up on a cluster's hosts, one module per service (as Flintrock's
services): the hosts' basics, HDFS, Spark and the watcher. Each owns its commands, steps, health
check, status lines and failure explanations (ops.services.base); `ClusterTarget.deploy` and
`.status` are loops over SERVICES.
"""

from ops.services.base import DeployContext, Service, Step, bring_up
from ops.services.hdfs import Hdfs
from ops.services.host import HostBasics
from ops.services.spark import Spark
from ops.services.watcher import Watcher

SERVICES: tuple[Service, ...] = (HostBasics(), Hdfs(), Spark(), Watcher())
"""In deploy order; `fab status` shows their lines in this order too."""

__all__ = ["SERVICES", "DeployContext", "Service", "Step", "bring_up"]
