"""The service interface, as in Flintrock: a `Service` is one concern of the cluster (the hosts'
basics, Spark, HDFS, the watcher) and owns every face of it: where its steps go, the checks
before anything changes, its health check, its `fab status` lines and how it explains a failure.
A `Step` is one thing installed on one host: is it current, install it. `fab deploy` skips a
step whose `is_current` says so, keyed on content hashes and versions in stamp files on the
host, which makes deploy idempotent.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fabric import Connection

from kindling import Host, Inventory, KindlingError
from ops.cluster import Cluster, Progress

if TYPE_CHECKING:
    from ops.requirements import Lock
    from ops.services.wheels import ServedWheelhouse
    from ops.targets import Target
    from workloads.jobs import Job


@dataclass
class DeployContext:
    """What every step may need to know about this deploy (built once on the control machine)."""
    inventory: Inventory
    constraints: Path
    project_wheel: Path | None
    wheelhouse: Path | None = None
    staged: dict[str, str] = field(default_factory=dict)
    """Local path -> remote path of data/weights staged on every host."""
    served: "ServedWheelhouse | None" = None
    """The wheelhouse as the master serves it to the other hosts, when they need it."""
    jars: dict[str, Path] = field(default_factory=dict)
    """Feature -> its jars (ops.jvm) on this machine, for the features this deploy needs."""
    package_wheel: Path | None = None
    """The wheel of the package the job comes from (None: a job of kindling's own)."""
    lock: "Lock | None" = None
    """Your requirements (and the package's dependencies), resolved (ops.requirements)."""


class Step:
    """One thing installed on one host."""

    name = "step"
    installed = "installed"
    """What the progress line says once it was installed (a daemon says `started`)."""
    current = "current"

    def is_current(self, cxn: Connection, host: Host, ctx: DeployContext) -> bool:
        raise NotImplementedError

    def install(self, cxn: Connection, host: Host, ctx: DeployContext) -> None:
        raise NotImplementedError


Stage = tuple[tuple[Step, ...], tuple[Host, ...]]
"""Steps run in order on each of the hosts, every host at once."""


class Service:
    """One concern of the cluster, deployed as stages of steps."""

    def wanted(self, inventory: Inventory, job: "Job") -> bool:
        """Whether `fab deploy JOB` sets this service up."""
        return True

    def preflight(self, cluster: Cluster) -> None:
        """Before any host changes: refuse what cannot work, in one line."""

    def plan(self, ctx: DeployContext) -> list[Stage]:
        raise NotImplementedError

    def health_check(self, cluster: Cluster, ctx: DeployContext) -> None:
        """Raise a KindlingError when the service is installed but not working."""

    def ready(self, inventory: Inventory) -> str:
        """The line that ends its deploy."""
        raise NotImplementedError

    def deploy(self, cluster: Cluster, ctx: DeployContext) -> None:
        """Each stage's steps where they are not current, every host at once; then health."""
        progress = Progress(cluster.inventory.hosts)
        for steps, hosts in self.plan(ctx):
            cluster.parallel(lambda host, cxn, steps=steps: bring_up(host, cxn, steps, ctx,
                                                                      progress), hosts)
        self.health_check(cluster, ctx)
        progress.done(self.ready(cluster.inventory))

    def status(self, target: "Target") -> list[str]:
        """Its `fab status` lines."""
        return []

    def explain(self, target: "Target", job: "Job", error: KindlingError, results: Path,
                notices: dict[str, dict]) -> str | None:
        """A run's failure in its terms (naming the host that failed), or None."""
        return None


def bring_up(host: Host, cxn: Connection, steps: tuple[Step, ...], ctx: DeployContext,
             progress: Progress) -> None:
    """Install each step that is not current on the host, in order, reporting each."""
    for step in steps:
        t0 = time.monotonic()
        if step.is_current(cxn, host, ctx):
            progress.step(host, step.name, f"skipped ({step.current})", time.monotonic() - t0)
            continue
        progress.step(host, step.name, "installing...", 0.0)
        try:
            step.install(cxn, host, ctx)
        except KindlingError:
            progress.step(host, step.name, "failed", time.monotonic() - t0)
            raise
        progress.step(host, step.name, step.installed, time.monotonic() - t0)


def file_digest(paths: list[Path]) -> str:
    """A short sha256 over the files' names and bytes: a version to stamp."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
