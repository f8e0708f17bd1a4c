"""Your requirements (`--requirements FILE`, a package's own dependencies), resolved by the real uv
against PyPI and kindling's pins: a lock whose hash keys the install; a conflict with a pin, or a
requirement that does not resolve, is one line; a wheelhouse without the lock's wheels is one
line naming the rebuild. On the local target a script needing a package kindling does not
install gets it in the venv fab runs from (a venv of the test's own), once."""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from test_targets import refused_before_anything_starts

from kindling import UserError
from ops import requirements as yours
from ops.deploy import CONSTRAINTS, build_wheel
from ops.wheelhouse import Interpreter, pins

REPO = Path(__file__).resolve().parents[2]
TABULATED = REPO / "tests" / "data" / "scripts" / "tabulated"
HOSTS = Interpreter("3.13", "2.41")
"""Debian 13's Python and glibc: not this machine's, as the hosts' often is not."""


def requirements_file(tmp_path: Path, *lines: str) -> yours.Requirements:
    path = tmp_path / "requirements.txt"
    path.write_text("\n".join(lines) + "\n")
    return yours.gather(str(path), None)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_a_requirement_is_locked_with_kindlings_pins_for_the_hosts_python(tmp_path):
    """tabulate as asked; python-dateutil (unpinned by the file) and its six at kindling's pins;
    the same lock, so the same key, when resolved again: a second deploy skips."""
    wanted = requirements_file(tmp_path, "tabulate==0.9.0", "python-dateutil")
    lock = yours.resolve(wanted, CONSTRAINTS, HOSTS)
    pinned = pins(CONSTRAINTS)
    assert lock.pins == {"tabulate": "0.9.0", "python-dateutil": pinned["python-dateutil"],
                         "six": pinned["six"]}
    assert yours.resolve(wanted, CONSTRAINTS, HOSTS).key == lock.key
    assert wanted.stamp(CONSTRAINTS) != requirements_file(tmp_path, "tabulate").stamp(CONSTRAINTS)


@pytest.mark.parametrize("requirement, says", [
    ("numpy==1.26.4", r"requirements\.txt does not resolve against kindling's pins "
                      r"\(constraints\.txt\): Because you require numpy==1\.26\.4 and "
                      r"numpy==2\.\S+, .* Change the requirement it names"),
    ("kindling-no-such-package-4f2a", r"requirements\.txt does not resolve .*: Because "
                                      r"kindling-no-such-package-4f2a was not found"),
])
def test_a_conflict_or_an_unknown_requirement_is_one_line(requirement, says, tmp_path):
    with pytest.raises(UserError) as error:
        yours.resolve(requirements_file(tmp_path, requirement), CONSTRAINTS, HOSTS)
    assert re.search(says, one_line(error)), error.value


def test_a_requirement_from_a_path_is_refused(tmp_path):
    """The hosts install from an index (or the wheelhouse): a folder here means nothing there."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "pyproject.toml").write_text('[project]\nname = "mine"\nversion = "1"\n')
    with pytest.raises(UserError) as error:
        yours.resolve(requirements_file(tmp_path, str(tmp_path / "mine")), CONSTRAINTS, HOSTS)
    assert re.search(r": \S*mine is not a release on an index, which is all the hosts install "
                     "from", one_line(error)), error.value


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(UserError) as error:
        yours.gather(str(tmp_path / "nothere.txt"), None)
    assert one_line(error).startswith(f"--requirements {tmp_path}/nothere.txt: no such file")


def test_a_packages_own_dependencies_come_from_its_wheel(tmp_path):
    """Requires-Dist of the wheel, but its extras' and kindling (its own wheel on the hosts)."""
    project = tmp_path / "my-jobs"
    (project / "my_jobs").mkdir(parents=True)
    (project / "my_jobs" / "__init__.py").write_text("")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "my-jobs"\nversion = "0.1"\n'
        'dependencies = ["kindling>=0.1", "humanize==4.17.0", "tabulate; python_version < \'3\'"]\n'
        '[project.optional-dependencies]\nplots = ["seaborn"]\n')
    wheel = build_wheel(str(project), tmp_path / "dist", "my-jobs")
    wanted = yours.gather(None, wheel)
    assert wanted.extra == ("humanize==4.17.0", 'tabulate; python_version < "3"')
    assert wanted.origin == "the dependencies of my_jobs"
    assert yours.resolve(wanted, CONSTRAINTS, HOSTS).pins == {"humanize": "4.17.0"}
    both = yours.gather(str(TABULATED / "requirements.txt"), wheel)
    assert both.origin == "requirements.txt and the dependencies of my_jobs"
    assert yours.resolve(both, CONSTRAINTS, HOSTS).pins == {"humanize": "4.17.0",
                                                              "tabulate": "0.9.0"}


def test_the_wheelhouse_must_hold_the_locks_wheels(tmp_path):
    lock = yours.resolve(yours.gather(str(TABULATED / "requirements.txt"), None), CONSTRAINTS,
                         HOSTS)
    wheelhouse = tmp_path / "wheelhouse"
    downloaded = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                                 "-d", str(wheelhouse), "humanize==4.17.0"],
                                capture_output=True, text=True, timeout=120)
    assert downloaded.returncode == 0, downloaded.stderr
    with pytest.raises(UserError) as error:
        yours.check_wheelhouse(lock, wheelhouse, "fab wheelhouse --requirements requirements.txt")
    assert one_line(error) == (f"the wheelhouse {wheelhouse} has no wheel of tabulate==0.9.0 "
                               "(requirements.txt); rebuild it with `fab wheelhouse "
                               "--requirements requirements.txt`")
    downloaded = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                                 "-d", str(wheelhouse), "tabulate==0.9.0"],
                                capture_output=True, text=True, timeout=120)
    assert downloaded.returncode == 0, downloaded.stderr
    yours.check_wheelhouse(lock, wheelhouse, "unused")


def test_the_local_target_refuses_to_install_into_a_python_that_is_not_a_venv(tmp_path,
                                                                               monkeypatch):
    lock = yours.Lock(requirements_file(tmp_path, "kindling-absent-dist"),
                      "kindling-absent-dist==1.0\n")  # not installed here
    monkeypatch.setattr(sys, "prefix", sys.base_prefix)
    with pytest.raises(UserError) as error:
        yours.install_here(lock, CONSTRAINTS)
    assert f"{sys.executable} is not one; run fab from a venv" in one_line(error)


@pytest.fixture
def own_venv(tmp_path) -> Path:
    """A venv of the test's own that sees this one's packages: what the local target installs
    into is then the test's, not the suite's venv."""
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    [packages] = venv.glob("lib/python*/site-packages")
    (packages / "zz_parent.pth").write_text("import site; " + "; ".join(
        f"site.addsitedir({path!r})" for path in site.getsitepackages()) + "\n")
    return venv


def test_a_script_needing_a_package_gets_it_on_the_local_target_once(own_venv, tmp_path):
    """`fab run tabulated.py --requirements requirements.txt`: tabulate installed into the venv
    fab runs from (not there before), the script imports it; a second run installs nothing."""
    python = str(own_venv / "bin" / "python")
    code = shutil.copytree(TABULATED, tmp_path / "tabulated")
    env = os.environ | {"KINDLING_RUNS_DIR": str(tmp_path / "runs")}

    def fab_run() -> subprocess.CompletedProcess:
        return subprocess.run([python, "-m", "fabric", "run", str(code / "tabulated.py"),
                               "--roles", "worker=1", "--target", "local", "--requirements",
                               str(code / "requirements.txt"), "--job-args", "spark keras"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
    assert not list(own_venv.glob("lib/python*/site-packages/tabulate"))
    done = fab_run()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"requirements: tabulate==0.9.0 installed into {own_venv}" in done.stdout
    results = REPO / re.search(r"^results: (\S+)$", done.stdout, re.M).group(1)
    seen = json.loads((results / "table.json").read_text())
    assert seen["table"].splitlines()[-1].split() == ["keras", "5"]
    assert list(own_venv.glob("lib/python*/site-packages/tabulate"))
    again = fab_run()
    assert again.returncode == 0, again.stderr[-3000:]
    assert "requirements: requirements.txt already installed (skipped)" in again.stdout


def test_a_conflict_on_the_local_target_starts_nothing(tmp_path):
    (tmp_path / "requirements.txt").write_text("numpy==1.26.4\n")
    line = refused_before_anything_starts(
        ["run", str(TABULATED / "tabulated.py"), "--roles", "worker=1", "--target", "local",
         "--requirements", str(tmp_path / "requirements.txt")], tmp_path, dict(os.environ))
    assert "requirements.txt does not resolve against kindling's pins" in line, line
