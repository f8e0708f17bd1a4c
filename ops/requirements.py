"""Your requirements on the hosts: `--requirements FILE`, and the dependencies of the package a job
comes from (its wheel's Requires-Dist), resolved once on this machine by uv against kindling's
pins (constraints.txt) for the hosts' Python and platform.

The result is a lock, one `name==version` a line. A conflict with a pin, or a requirement that
does not resolve, is one line here, before any host changes. The hosts install the lock into
their venv with uv (ops.services.wheels), from PyPI or from the wheelhouse, which must hold every
wheel it names; a host stamp named by the requirements and holding the lock's hash makes a
second deploy skip, and lets `fab run` check that they were deployed without resolving again.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

from kindling import UserError
from ops.wheelhouse import Interpreter

RESOLVE_TIMEOUT = 300
UV_MANYLINUX = (17, 28, *range(31, 41))
"""The glibc minors of uv's `--python-platform x86_64-manylinux_2_N` targets."""
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)$")
EXTRA_MARKER = re.compile(r";.*\bextra\s*==")
"""A Requires-Dist that only an extra of the package asks for."""
KINDLING = "kindling"
"""A package's dependency on kindling itself is kindling's own wheel, not PyPI's."""


@dataclass(frozen=True)
class Requirements:
    """What to install beside kindling's dependencies: a requirements file, the dependencies of
    the package a job comes from, or both (resolved together: they must agree)."""
    file: Path | None
    extra: tuple[str, ...] = ()
    """Requirements from the package's wheel."""
    origin: str = ""
    """What they are, for messages: `requirements.txt`, `the dependencies of my-jobs`."""

    def stamp(self, constraints: Path) -> str:
        """The host stamp of their install: named by what was asked, holding the lock's hash."""
        digest = hashlib.sha256(constraints.read_bytes())
        digest.update(self.file.read_bytes() if self.file else b"")
        digest.update("\n".join(self.extra).encode())
        return "requirements-" + digest.hexdigest()[:16]


@dataclass(frozen=True)
class Lock:
    """Requirements resolved: every distribution to install, `name==version` a line."""
    requirements: Requirements
    text: str

    @property
    def key(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    @property
    def pins(self) -> dict[str, str]:
        return {normalize(m[1]): m[2] for line in self.text.splitlines() if (m := PIN.match(line))}


def gather(file: str | None, wheel: Path | None) -> Requirements | None:
    """The requirements of a run: FILE (checked here), and the Requires-Dist of the package's
    wheel (not those of its extras, nor kindling); None when there are none."""
    path = None
    if file is not None:
        path = Path(file).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"--requirements {file}: no such file; pass a pip requirements file "
                            "(one requirement a line)")
    extra, package = (), ""
    if wheel is not None:
        package, extra = wheel.name.split("-")[0], package_dependencies(wheel)
    if path is None and not extra:
        return None
    origin = " and ".join(filter(None, (path and path.name,
                                        extra and f"the dependencies of {package}")))
    return Requirements(path, extra, origin)


def package_dependencies(wheel: Path) -> tuple[str, ...]:
    """The Requires-Dist of a wheel, but those of its extras and kindling."""
    with zipfile.ZipFile(wheel) as archive:
        [metadata] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        declared = Parser().parsestr(archive.read(metadata).decode()).get_all("Requires-Dist") or []
    return tuple(r for r in declared if not EXTRA_MARKER.search(r)
                 and normalize(re.split(r"[\s\[<>=!~;(@]", r, 1)[0]) != KINDLING)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def uv(*command: str) -> list[str]:
    """argv of a command of the uv that kindling's `ops` extra installs here (the hosts'
    installer, same pin), trusting this machine's certificate store as pip does."""
    try:
        from uv import find_uv_bin
        return [find_uv_bin(), *command, "--system-certs"]
    except (ImportError, FileNotFoundError):
        raise UserError("this machine has no uv, which resolves --requirements (kindling's `ops` "
                        "extra installs it): run scripts/bootstrap.sh, or `pip install -c "
                        "constraints.txt uv`") from None


def platform_args(interpreter: Interpreter | None) -> list[str]:
    """uv's target: the hosts' Python and manylinux platform, or (None) the Python fab runs on,
    which also builds any sdist's metadata (uv would otherwise look for, even download, a
    Python of the hosts' version here)."""
    here = ["--python", sys.executable, "--no-python-downloads"]
    if interpreter is None:
        return here
    minor = int(interpreter.glibc.split(".")[1])
    glibc = max((n for n in UV_MANYLINUX if n <= minor), default=UV_MANYLINUX[0])
    return [*here, "--python-version", interpreter.python,
            "--python-platform", f"{interpreter.machine}-manylinux_2_{glibc}"]


def resolve(requirements: Requirements, constraints: Path,
            interpreter: Interpreter | None = None) -> Lock:
    """The lock of requirements against kindling's pins for interpreter (from the index fab's uv
    is configured with); a conflict or a requirement that does not resolve is one UserError."""
    with tempfile.TemporaryDirectory(prefix="kindling-requirements-") as scratch:
        inputs = [str(requirements.file)] if requirements.file else []
        if requirements.extra:
            (Path(scratch) / "package.in").write_text("\n".join(requirements.extra) + "\n")
            inputs.append(str(Path(scratch) / "package.in"))
        argv = [*uv("pip", "compile"), "--quiet", "--no-header", "--no-annotate",
                *platform_args(interpreter), "-c", str(constraints), *inputs]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=RESOLVE_TIMEOUT,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise UserError(f"resolving {requirements.origin} took over {RESOLVE_TIMEOUT}s; "
                            "check this machine's access to PyPI") from None
    if done.returncode:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        cause = next((line.removeprefix("cause:").strip() for line in lines
                      if line.startswith("cause:")), lines[-1] if lines else "no output")
        raise UserError(f"{requirements.origin} does not resolve against kindling's pins "
                        f"(constraints.txt): {cause} Change the requirement it names: the hosts "
                        "keep kindling's versions")
    foreign = [line for line in done.stdout.splitlines() if line.strip() and not PIN.match(line)]
    if foreign:
        raise UserError(f"{requirements.origin}: {foreign[0]} is not a release on an index, "
                        "which is all the hosts install from; publish it (or build its wheel into "
                        "the wheelhouse) and require it by name")
    return Lock(requirements, done.stdout)


def check_wheelhouse(lock: Lock, wheelhouse: Path, rebuild: str) -> None:
    """Every distribution of the lock has a wheel in the wheelhouse, or one line with the fix."""
    present = set()
    for wheel in wheelhouse.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        present.add((normalize(name), version))
    missing = [f"{name}=={version}" for name, version in lock.pins.items()
               if (name, version) not in present]
    if missing:
        raise UserError(f"the wheelhouse {wheelhouse} has no wheel of {', '.join(missing)} "
                        f"({lock.requirements.origin}); rebuild it with `{rebuild}`")


def installed_here(lock: Lock) -> list[str]:
    """The lock's distributions the Python fab runs on lacks (or has at another version)."""
    from importlib.metadata import PackageNotFoundError, version

    def has(name: str, wanted: str) -> bool:
        try:
            return version(name) == wanted
        except PackageNotFoundError:
            return False
    return [f"{name}=={wanted}" for name, wanted in lock.pins.items() if not has(name, wanted)]


def install_here(lock: Lock, constraints: Path) -> list[str]:
    """The lock installed into the venv fab runs from (the local target's processes run on it);
    what was installed. Refused when that Python is not a venv: it would change the system's."""
    missing = installed_here(lock)
    if not missing:
        return []
    if sys.prefix == sys.base_prefix:
        raise UserError(f"{lock.requirements.origin}: the local target installs requirements into "
                        f"the venv fab runs from, and {sys.executable} is not one; run fab from a "
                        "venv (scripts/bootstrap.sh makes .venv)")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="kindling-lock-") as pinned:
        pinned.write(lock.text)
        pinned.flush()
        done = subprocess.run([*uv("pip", "install"), "--quiet", "--python", sys.executable,
                               "-c", str(constraints), "-r", pinned.name],
                              capture_output=True, text=True, timeout=RESOLVE_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"installing {lock.requirements.origin} into {sys.prefix} failed ({last}); "
                        "check this machine's access to PyPI")
    return missing
