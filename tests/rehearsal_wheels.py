"""A wheelhouse for the rehearsal hosts' interpreter (CPython 3.13 on Debian trixie), cached outside the repo.

Why: the control machine runs Python 3.11, the rehearsal hosts 3.13 and have no route to PyPI, so
`fab deploy --wheelhouse` needs wheels built for *their* interpreter and platform. pip downloads
them for a foreign target with --python-version/--platform (wheels only); pyspark is an sdist
(pure Python), so its wheel is built once with `pip wheel --no-deps` and offered to the download
with --find-links. The folder is keyed by the constraints and the requirements, and built once:
later runs reuse it.

`python tests/rehearsal_wheels.py build` builds (or reuses) it and prints the time;
`python tests/rehearsal_wheels.py check-pins` lists the pins of constraints.txt with no wheel
for the target (metadata only: nothing is downloaded).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ops.services import workload_requirements
from kindling import UserError
from workloads.common import run_cli

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "constraints.txt"
CACHE_ROOT = Path(os.environ.get("KINDLING_REHEARSAL_CACHE", "/var/cache/kindling-rehearsal"))
PYTHON_VERSION = "3.13"
"""Debian trixie's python3."""
TARGET_GLIBC_MINOR = 41
"""trixie's glibc is 2.41: every manylinux_2_N wheel with N <= 41 runs there."""
PLATFORMS = ("manylinux2014_x86_64", *(f"manylinux_2_{n}_x86_64" for n in range(17, TARGET_GLIBC_MINOR + 1)))
SDIST_ONLY = ("pyspark",)
"""Pinned requirements PyPI ships as sdists only (pure Python): built here once with `pip wheel`."""
PIP_TIMEOUT = 3600


def _target_args() -> list[str]:
    return ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
            *(arg for platform in PLATFORMS for arg in ("--platform", platform))]


def _pins(constraints: Path) -> dict[str, str]:
    """name (lower case, - for _) -> pinned version, from `name==version` lines."""
    pins = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def wheelhouse_dir(constraints: Path = CONSTRAINTS) -> Path:
    """Where the wheelhouse for these constraints lives (one folder per recipe)."""
    recipe = json.dumps({"constraints": constraints.read_text(), "requirements": workload_requirements(constraints),
                         "python": PYTHON_VERSION, "platforms": PLATFORMS}, sort_keys=True)
    return CACHE_ROOT / f"wheels-cp{PYTHON_VERSION.replace('.', '')}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def build_wheelhouse(constraints: Path = CONSTRAINTS) -> Path:
    """The wheelhouse folder, built now if absent (into a temporary sibling, renamed when complete)."""
    folder = wheelhouse_dir(constraints)
    if (folder / ".complete").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=folder.name + ".partial-", dir=folder.parent))
    try:
        pins = _pins(constraints)
        for name in SDIST_ONLY:
            if name not in pins:
                raise UserError(f"{constraints} pins no {name}; pin it (`pip freeze` > constraints.txt)")
            _pip("wheel", "--no-deps", "-w", str(partial), f"{name}=={pins[name]}")
        _pip("download", *_target_args(), "--find-links", str(partial), "-c", str(constraints),
             "-d", str(partial), *workload_requirements(constraints))
        (partial / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def pins_without_wheels(constraints: Path = CONSTRAINTS) -> list[str]:
    """`name==version` pins pip finds no wheel of for the target (asks for metadata only)."""
    missing = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, version in _pins(constraints).items():
            probe = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps", "--ignore-installed",
                 "--disable-pip-version-check", *_target_args(), "--target", scratch, f"{name}=={version}"],
                capture_output=True, text=True, timeout=300)
            if probe.returncode:
                missing.append(f"{name}=={version}")
    return missing


def _pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True, timeout=PIP_TIMEOUT)
    if done.returncode:
        raise UserError(f"`pip {args[0]}` for the rehearsal wheelhouse failed: "
                        f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}; check pip's access to PyPI")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("command", choices=("build", "check-pins"))
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.command == "build":
        folder = build_wheelhouse()
        print(f"wheelhouse {folder}: {len(list(folder.glob('*.whl')))} wheels in {time.monotonic() - started:.1f} s")
    else:
        missing = pins_without_wheels()
        print("\n".join(missing) if missing else f"every pin has a wheel for CPython {PYTHON_VERSION}")


if __name__ == "__main__":
    run_cli(main)
