"""`fab deploy`: every service the job needs (ops.services), its checks first on every host,
then its steps where they are not current; and `fab run`'s check that it was done. The wheels
the hosts install: kindling's, and that of the package a job comes from; and your requirements,
resolved here (ops.requirements)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import tomllib
import urllib.parse
import urllib.request
from importlib.metadata import Distribution
from pathlib import Path

from kindling import UserError
from ops.cluster import Cluster, console
from ops.remote import read_stamp
from ops.requirements import Requirements, check_wheelhouse, resolve
from ops.services import SERVICES, DeployContext
from ops.services.base import file_digest
from ops.services.host import package_stamp
from ops.wheelhouse import host_interpreter
from workloads.jobs import JOBS, KINDLING, Job

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = PROJECT_ROOT / "constraints.txt"
WHEELS = PROJECT_ROOT / ".kindling" / "dist"
"""Wheels built for the hosts, one folder per content hash."""
WHEEL_BUILD_TIMEOUT = 300
NOT_SOURCES = {"build", "dist", "__pycache__", "node_modules", "wheelhouse", "runs"}
"""Folders of a package's source tree that its wheel does not come from."""


def project_wheel() -> Path:
    """kindling as a wheel, rebuilt only when its sources change (.kindling/dist/<hash>/)."""
    if not (PROJECT_ROOT / "pyproject.toml").is_file():
        raise UserError(f"{PROJECT_ROOT} is not a kindling checkout (no pyproject.toml); run fab "
                        "from the cloned repository")
    sources = sorted([PROJECT_ROOT / "kindling.py", *(p for pkg in shipped_packages()
                                                      for p in (PROJECT_ROOT / pkg).rglob("*.py"))])
    digest = hashlib.sha256()
    for path in [PROJECT_ROOT / "pyproject.toml", *sources]:
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode() + path.read_bytes())
    return build_wheel(str(PROJECT_ROOT), WHEELS / digest.hexdigest()[:16], "kindling")


def shipped_packages() -> list[str]:
    """The checkout's top-level packages in kindling's wheel (pyproject's packages.find)."""
    with open(PROJECT_ROOT / "pyproject.toml", "rb") as f:
        found = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    return [pattern.rstrip("*") for pattern in found]


def package_wheel(job: Job) -> Path | None:
    """The wheel of the installed package that declares job, for the hosts (None for kindling's
    own jobs: kindling's wheel holds them), in .kindling/dist/<name>-<hash>/."""
    declared = JOBS.declared(job.name)
    if declared is None or declared.distribution is None or declared.package.lower() == KINDLING:
        return None
    dist = declared.distribution
    source, digest = installed_from(dist)
    return build_wheel(source, WHEELS / f"{package_stamp(dist.name)}-{digest[:16]}",
                       f"{dist.name}, the package of the job {job.name}")


def installed_from(dist: Distribution) -> tuple[str, str]:
    """What pip installed a distribution from (its direct_url.json, PEP 610) and a digest of
    it: its source folder (editable or not) and its files, the wheel file, or else
    name==version, which pip gets from the index the way it installed it."""
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    url = urllib.parse.urlparse(direct.get("url", ""))
    path = Path(urllib.request.url2pathname(url.path)) if url.scheme == "file" else None
    if path and "dir_info" in direct and path.is_dir():
        return str(path), tree_digest(path)
    if path and path.suffix == ".whl" and path.is_file():
        return str(path), file_digest([path])
    spec = f"{dist.name}=={dist.version}"
    return spec, hashlib.sha256(spec.encode()).hexdigest()


def tree_digest(root: Path) -> str:
    """A sha256 over a source tree's files, without hidden folders and build outputs."""
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not (d.startswith(".") or d in NOT_SOURCES
                                                 or d.endswith(".egg-info")))
        for name in sorted(files):
            path = Path(folder, name)
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def build_wheel(source: str, out: Path, what: str) -> Path:
    """pip's wheel of source (a project folder, a wheel, or name==version) in out, unless one is
    there: built with this venv's build backend (no download)."""
    wheels = list(out.glob("*.whl"))
    if not wheels:
        out.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                               "--no-build-isolation", "-w", str(out), source],
                              capture_output=True, text=True, timeout=WHEEL_BUILD_TIMEOUT)
        wheels = list(out.glob("*.whl"))
        if done.returncode != 0 or not wheels:
            lines = done.stderr.strip().splitlines() or ["no wheel written"]
            raise UserError(f"building the wheel of {what} from {source} failed ({lines[-1]}); "
                            f"`pip wheel --no-deps --no-build-isolation {source}` shows why "
                            "(its build backend must be installed in this venv)")
    return wheels[0]


def deploy_context(cluster: Cluster, job: Job, staged: dict[str, str],
                   wheelhouse: str | None = None,
                   requirements: Requirements | None = None) -> DeployContext:
    """What the services need, built and checked on the control machine before any host work:
    your requirements resolved for the master's Python (asked, nothing changed) and, with a
    wheelhouse, found there."""
    wheelhouse_dir = wheelhouse_folder(wheelhouse)
    ctx = DeployContext(cluster.inventory, CONSTRAINTS, project_wheel(), wheelhouse_dir, staged,
                        package_wheel=package_wheel(job))
    if requirements:
        master = cluster.inventory.master
        ctx.lock = resolve(requirements, CONSTRAINTS,
                           host_interpreter(cluster.connection(master)))
        if wheelhouse_dir:
            check_wheelhouse(ctx.lock, wheelhouse_dir, f"fab wheelhouse --folder {wheelhouse} "
                             f"--requirements {requirements.file or 'FILE'} --target TARGET")
    return ctx


def wheelhouse_folder(wheelhouse: str | None) -> Path | None:
    """--wheelhouse as a folder of wheels (None without one), or one line naming the fix."""
    if not wheelhouse:
        return None
    folder = Path(wheelhouse).expanduser()
    if not folder.is_dir() or not any(folder.glob("*.whl")):
        raise UserError(f"--wheelhouse {wheelhouse}: not a folder of wheels; build one with "
                        "`fab wheelhouse --folder DIR`")
    return folder


def deploy(cluster: Cluster, job: Job, ctx: DeployContext) -> None:
    """The services job needs: every one's checks before any host changes, then each in turn."""
    started = time.monotonic()
    services = [service for service in SERVICES if service.wanted(cluster.inventory, job)]
    for service in services:
        service.preflight(cluster)
    for service in services:
        service.deploy(cluster, ctx)
    console.print(f"deploy took {time.monotonic() - started:.1f}s")


def check_deployed(cluster: Cluster, job: Job, requirements: Requirements | None = None) -> None:
    """One clear error when `fab deploy JOB` (with those requirements) has not been run."""
    stamps = ["python-deps", "project"]
    declared = JOBS.declared(job.name)
    if declared and declared.package.lower() != KINDLING:
        stamps.append(package_stamp(declared.package))

    def installed(host, cxn) -> tuple[bool, bool]:
        return (all(read_stamp(cxn, stamp) for stamp in stamps),
                not requirements or bool(read_stamp(cxn, requirements.stamp(CONSTRAINTS))))

    found = cluster.parallel(installed)
    missing = [name for name, (ok, _) in found.items() if not ok]
    if missing:
        what = "kindling" if len(stamps) == 2 else f"kindling or {declared.package}"
        raise UserError(f"{what} is not deployed on {', '.join(missing)}; run "
                        f"`fab deploy {job.name}` first")
    lacking = [name for name, (_, ok) in found.items() if not ok]
    if lacking:
        given = f" --requirements {requirements.file}" if requirements.file else ""
        raise UserError(f"{requirements.origin}: not installed on {', '.join(lacking)}; run "
                        f"`fab deploy {job.name}{given}` first")
