"""`fab deploy`: every service the job needs (ops.services), its checks first on every host,
then its steps where they are not current; and `fab run`'s check that it was done."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

from kindling import Inventory, UserError
from ops.cluster import Cluster, console
from ops.remote import read_stamp
from ops.services import SERVICES, DeployContext
from workloads.jobs import Job

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WHEEL_BUILD_TIMEOUT = 300


def project_wheel() -> Path:
    """kindling as a wheel, rebuilt only when its sources change (.kindling/dist/<hash>/)."""
    if not (PROJECT_ROOT / "pyproject.toml").is_file():
        raise UserError(f"{PROJECT_ROOT} is not a kindling checkout (no pyproject.toml); run fab "
                        "from the cloned repository")
    sources = sorted([PROJECT_ROOT / "kindling.py", *(p for pkg in ("infra", "ops", "workloads")
                                                      for p in (PROJECT_ROOT / pkg).rglob("*.py"))])
    digest = hashlib.sha256()
    for path in [PROJECT_ROOT / "pyproject.toml", *sources]:
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode() + path.read_bytes())
    out = PROJECT_ROOT / ".kindling" / "dist" / digest.hexdigest()[:16]
    wheels = list(out.glob("kindling-*.whl"))
    if not wheels:
        out.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                               "--no-build-isolation", "-w", str(out), str(PROJECT_ROOT)],
                              capture_output=True, text=True, timeout=WHEEL_BUILD_TIMEOUT)
        wheels = list(out.glob("kindling-*.whl"))
        if done.returncode != 0 or not wheels:
            raise UserError(f"building the kindling wheel failed: {done.stderr.strip()[-300:]}")
    return wheels[0]


def deploy_context(inventory: Inventory, staged: dict[str, str],
                   wheelhouse: str | None = None) -> DeployContext:
    """What the services need, built and checked on the control machine before any host work."""
    wheelhouse_dir = None
    if wheelhouse:
        wheelhouse_dir = Path(wheelhouse).expanduser()
        if not wheelhouse_dir.is_dir() or not any(wheelhouse_dir.glob("*.whl")):
            raise UserError(f"--wheelhouse {wheelhouse}: not a folder of wheels; build one with "
                            "`fab wheelhouse --folder DIR`")
    return DeployContext(inventory, PROJECT_ROOT / "constraints.txt", project_wheel(),
                         wheelhouse_dir, staged)


def deploy(cluster: Cluster, job: Job, ctx: DeployContext) -> None:
    """The services job needs: every one's checks before any host changes, then each in turn."""
    started = time.monotonic()
    services = [service for service in SERVICES if service.wanted(cluster.inventory, job)]
    for service in services:
        service.preflight(cluster)
    for service in services:
        service.deploy(cluster, ctx)
    console.print(f"deploy took {time.monotonic() - started:.1f}s")


def check_deployed(cluster: Cluster, job: Job) -> None:
    """One clear error when `fab deploy JOB` has not been run."""
    def installed(host, cxn) -> bool:
        return bool(read_stamp(cxn, "python-deps")) and bool(read_stamp(cxn, "project"))

    missing = [name for name, ok in cluster.parallel(installed).items() if not ok]
    if missing:
        raise UserError(f"kindling is not deployed on {', '.join(missing)}; run "
                        f"`fab deploy {job.name}` first")
