"""`fab wheelhouse`: every wheel the hosts need, for THEIR Python and platform, for air-gapped deploys.

The control machine's Python need not be the hosts' (Ubuntu 24.04 ships 3.12, Debian 13 3.13):
pip downloads wheels for a foreign interpreter with --python-version/--platform (wheels only).
Requirements PyPI ships only as a pure-Python sdist (pyspark) are built into a wheel here once,
which fits every interpreter. A folder is stamped with its recipe, so building it again for the
same constraints and interpreter is instant.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from invoke import Context

from kindling import UserError
from ops.remote import sh

SDIST_ONLY = ("pyspark",)
"""Pinned requirements PyPI ships as a pure-Python sdist only: built into a wheel here."""
OLDEST_MANYLINUX_GLIBC = 17
PIP_TIMEOUT = 3600
STAMP = ".kindling-wheelhouse"
INSTALLER = "uv"
"""What the hosts install the job dependencies with (pinned in constraints.txt): it unpacks
the big wheels (TensorFlow, pyspark) several times faster than pip."""


@dataclass(frozen=True)
class Interpreter:
    """The hosts' Python: what a wheel must fit."""
    python: str
    """major.minor, e.g. 3.13"""
    glibc: str
    """e.g. 2.41: manylinux_2_N wheels with N up to its minor run there."""
    machine: str = "x86_64"

    @property
    def platforms(self) -> list[str]:
        major, minor = (int(part) for part in self.glibc.split(".")[:2])
        if major != 2 or minor < OLDEST_MANYLINUX_GLIBC:
            raise UserError(f"glibc {self.glibc} is older than manylinux2014 (2.17); the hosts "
                            "need a newer OS image")
        return [f"manylinux2014_{self.machine}",
                *(f"manylinux_2_{n}_{self.machine}" for n in range(OLDEST_MANYLINUX_GLIBC, minor + 1))]


PROBE = ("import platform, sys; print('%d.%d' % sys.version_info[:2], platform.libc_ver()[1], "
         "platform.machine())")


def this_machine() -> Interpreter:
    return Interpreter(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.libc_ver()[1],
                       platform.machine())


def host_interpreter(cxn: Context) -> Interpreter:
    """Ask a host which python3 it has (the one `fab deploy` makes the venv with)."""
    python, glibc, machine = sh(cxn, f"python3 -c {PROBE!r}", what="asking for its python3").split()
    return Interpreter(python, glibc, machine)


def parse_python_version(text: str) -> Interpreter:
    """--python-version 3.13[:2.41] (glibc default: this machine's)."""
    python, _, glibc = text.partition(":")
    parts = python.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or (
            glibc and not re.fullmatch(r"\d+\.\d+", glibc)):
        raise UserError(f"--python-version {text!r} is not MAJOR.MINOR[:GLIBC]; e.g. 3.12 "
                        "(Ubuntu 24.04) or 3.13:2.41 (Debian 13)")
    return Interpreter(python, glibc or platform.libc_ver()[1], platform.machine())


def pins(constraints: Path) -> dict[str, str]:
    """name (lower case, - for _) -> pinned version, from the `name==version` lines."""
    found = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found[name.strip().lower().replace("_", "-")] = version.strip()
    return found


def build(folder: Path, interpreter: Interpreter, constraints: Path, requirements: list[str],
          no_deps: list[str] | tuple = ()) -> int:
    """Fill folder with wheels of requirements (and of no_deps, without their dependencies) for
    interpreter; the number of wheels."""
    requirements = [*requirements, INSTALLER]
    recipe = hashlib.sha256(json.dumps({
        "constraints": constraints.read_text(), "requirements": requirements,
        "no_deps": list(no_deps), "python": interpreter.python,
        "platforms": interpreter.platforms}).encode()).hexdigest()
    stamp = folder / STAMP
    if stamp.is_file() and stamp.read_text() == recipe:
        return len(list(folder.glob("*.whl")))
    folder.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    pinned = pins(constraints)
    for name in SDIST_ONLY:
        if name not in pinned:
            raise UserError(f"{constraints} pins no {name}; pin it (pip freeze > constraints.txt)")
        _pip("wheel", "--no-deps", "-w", str(folder), f"{name}=={pinned[name]}")
    download = ("download", "--only-binary=:all:", "--python-version", interpreter.python,
                "--implementation", "cp",
                *(a for p in interpreter.platforms for a in ("--platform", p)),
                "--find-links", str(folder), "-c", str(constraints), "-d", str(folder))
    _pip(*download, *requirements)
    if no_deps:
        _pip(*download, "--no-deps", *no_deps)
    stamp.write_text(recipe)
    return len(list(folder.glob("*.whl")))


def _pip(*args: str) -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True, timeout=PIP_TIMEOUT)
    if done.returncode:
        last = ((done.stderr or done.stdout).strip().splitlines() or ["no output"])[-1]
        raise UserError(f"pip {args[0]} failed after {time.monotonic() - started:.0f}s ({last}); "
                        "check this machine's access to PyPI (or its pip configuration)")
