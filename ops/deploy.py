"""`fab deploy`: bring every host to the state a job needs, in parallel, skipping what is done."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

from ops.cluster import Cluster, Progress
from ops.inventory import Host
from ops.services import (BasePackages, CloudInit, DeployContext, Layout, ProjectWheel,
                          PythonDependencies, Service, SparkMaster, SparkWorker, StagedData)
from ops.staging import remote_path
from workloads.common import UserError
from workloads.jobs import Job

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HOST_SERVICES: tuple[Service, ...] = (CloudInit(), Layout(), BasePackages(), PythonDependencies(),
                                      ProjectWheel(), StagedData())
WHEEL_BUILD_TIMEOUT = 300


def project_wheel() -> Path:
    """kindling as a wheel, rebuilt only when its sources change (.kindling/dist/<hash>/)."""
    if not (PROJECT_ROOT / "pyproject.toml").is_file():
        raise UserError(f"{PROJECT_ROOT} is not a kindling checkout (no pyproject.toml); run fab "
                        "from the cloned repository")
    sources = sorted(p for pkg in ("infra", "ops", "workloads")
                     for p in (PROJECT_ROOT / pkg).rglob("*.py"))
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


def stage_plan(job: Job, args: list[str]) -> tuple[dict[str, str], list[str]]:
    """Local data/weights named by the job's path flags -> remote paths; args rewritten to them."""
    staged: dict[str, str] = {}
    rewritten = list(args)
    for i, arg in enumerate(args):
        flag, eq, inline = arg.partition("=")
        if flag not in job.path_flags:
            continue
        value = inline if eq else (args[i + 1] if i + 1 < len(args) else "")
        local = Path(value).expanduser()
        if not local.exists():
            if flag == "--weights" and value == "imagenet":
                continue  # downloaded by Keras on the hosts
            raise UserError(f"{flag} {value}: no such file or folder on this machine; pass an "
                            "existing path (it is copied to every host)")
        remote = remote_path(local.resolve())
        staged[str(local.resolve())] = remote
        if eq:
            rewritten[i] = f"{flag}={remote}"
        else:
            rewritten[i + 1] = remote
    return staged, rewritten


def install_hosts(cluster: Cluster, ctx: DeployContext) -> None:
    """Run every host service where it is not current, on every host at once."""
    progress = Progress(cluster.inventory.hosts)

    def bring_up(host: Host, cxn) -> None:
        for service in HOST_SERVICES:
            t0 = time.monotonic()
            if service.is_current(cxn, host, ctx):
                progress.step(host, service.name, "skipped (current)", time.monotonic() - t0)
                continue
            progress.step(host, service.name, "installing...", 0.0)
            try:
                service.install(cxn, host, ctx)
            except UserError:
                progress.step(host, service.name, "failed", time.monotonic() - t0)
                raise
            progress.step(host, service.name, "installed", time.monotonic() - t0)

    cluster.parallel(bring_up)
    progress.done("hosts ready")


def start_spark(cluster: Cluster, ctx: DeployContext) -> None:
    """Spark master on the master host, a worker on each worker host, then a health check."""
    inventory = cluster.inventory
    progress = Progress(inventory.hosts)
    plan = [(SparkMaster(), (inventory.master,)), (SparkWorker(), inventory.workers)]
    for service, hosts in plan:
        def start(host: Host, cxn, service=service) -> None:
            t0 = time.monotonic()
            if service.is_current(cxn, host, ctx):
                progress.step(host, service.name, "skipped (running)", time.monotonic() - t0)
                return
            service.install(cxn, host, ctx)
            progress.step(host, service.name, "started", time.monotonic() - t0)
        cluster.parallel(start, hosts)
    master = inventory.master
    SparkMaster().health_check(cluster.connection(master), master, ctx)
    progress.done(f"spark ready: {len(inventory.workers)} workers registered with "
                  f"{inventory.sparkMasterUrl}")


def deploy_context(cluster: Cluster, job: Job, args: list[str],
                   wheelhouse: str | None) -> tuple[DeployContext, list[str]]:
    wheelhouse_dir = None
    if wheelhouse:
        wheelhouse_dir = Path(wheelhouse).expanduser()
        if not wheelhouse_dir.is_dir() or not any(wheelhouse_dir.glob("*.whl")):
            raise UserError(f"--wheelhouse {wheelhouse}: not a folder of wheels; build one with "
                            "`fab wheelhouse DIR`")
    staged, remote_args = stage_plan(job, args)
    ctx = DeployContext(cluster.inventory, PROJECT_ROOT / "constraints.txt", project_wheel(),
                        wheelhouse_dir, staged)
    return ctx, remote_args
