"""Jobs from a package of one's own: tests/data/sample_jobs, installed by pip outside kindling's
tree, declares `echo` through the kindling.jobs entry point; the real fab CLI lists it with its
package, offers its flag and runs it on the local target; its wheel for the hosts is built from
where pip installed it from, and the deploy step installs it into a venv. tests/data/broken_jobs
declares jobs every wrong way: each is one line naming the package and the fix, and the other
jobs still work."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from test_stores import ThisMachine  # a host whose commands and copies run here

REPO = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")
BROKEN = "kindling-broken-jobs"


def fab(site: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The fab CLI as a user types it, with the installed packages on its path."""
    environ = os.environ | (env or {}) | {"PYTHONPATH": f"{site}{os.pathsep}{REPO}"}
    return subprocess.run([FAB, *args], cwd=REPO, env=environ, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def sample(install_packages) -> Path:
    return install_packages("sample_jobs")


@pytest.fixture(scope="module")
def broken(install_packages) -> Path:
    return install_packages("sample_jobs", "broken_jobs")


def test_fab_jobs_lists_a_packages_job_with_its_package(sample):
    done = fab(sample, "jobs")
    assert done.returncode == 0, done.stderr
    rows = [line.split(None, 2) for line in done.stdout.splitlines()]
    assert [row[:2] for row in rows] == [["classify", "kindling"], ["train-mnist", "kindling"],
                                         ["train-ps", "kindling"], ["echo", "kindling-sample-jobs"]]
    assert rows[-1][2] == "says a word and keeps it in its metrics"


def test_its_flags_are_fab_options(sample):
    done = fab(sample, "--help", "run")
    assert done.returncode == 0, done.stderr
    assert re.search(r"--word=STRING\s+echo: the word to say", done.stdout), done.stdout


def test_fab_run_runs_it_on_the_local_target(sample, tmp_path):
    done = fab(sample, "run", "echo", "--target", "local", "--word", "kindling",
               env={"KINDLING_RUNS_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "accuracy: 1.0000" in done.stdout
    results = REPO / re.search(r"^results: (\S+)$", done.stdout, re.M).group(1)
    assert results.resolve().parent == tmp_path
    assert json.loads((results / "metrics.json").read_text())["word"] == "kindling"
    assert (results / "echo-0.log").read_text().strip() == "kindling"


def test_each_broken_entry_point_is_one_line_and_the_others_are_listed(broken):
    done = fab(broken, "jobs")
    assert done.returncode == 2
    assert [line.split()[0] for line in done.stdout.splitlines()] == [
        "classify", "train-mnist", "train-ps"]  # echo is declared twice: neither is chosen
    errors = done.stderr.splitlines()
    assert "Traceback" not in done.stderr and len(errors) == 5, done.stderr
    assert all(line.startswith("error: ") and BROKEN in line for line in errors), errors
    expected = [
        r"job 'missing' of package kindling-broken-jobs: broken_jobs\.nowhere:JOB does not load "
        r"\(ModuleNotFoundError: .*\); fix its entry point .*, then reinstall the package",
        r"job 'not-a-job' of package kindling-broken-jobs: .* is a str, not a workloads\.jobs\.Job",
        r"job 'misnamed' .* is the job 'echo'; name the entry point after its job",
        r"job 'echo' is declared by kindling-broken-jobs \(broken_jobs\.jobs:ECHO\) and by "
        r"kindling-sample-jobs \(sample_jobs\.job:JOB\); uninstall one of them",
        r"job 'timed' .*: its flag --timeout is also an option of fab deploy\|run; rename the flag, "
        r"or declare it with fab=False",
    ]
    for pattern in expected:
        assert [line for line in errors if re.search(pattern, line)], (pattern, errors)


@pytest.mark.parametrize("name, says", [("missing", "does not load"),
                                        ("echo", "and by kindling-sample-jobs")])
def test_running_a_broken_job_is_its_line(broken, name, says):
    done = fab(broken, "run", name, "--target", "local")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()] and says in done.stderr, done.stderr
    assert BROKEN in done.stderr and "Traceback" not in done.stderr


def test_the_other_jobs_still_work_beside_a_broken_one(broken):
    done = fab(broken, "run", "train-ps", "--target", "local", "--epochs", "0")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --epochs must be at least 1, got 0"  # train-ps' own check


def test_the_hosts_get_the_packages_wheel_built_from_its_source_once(sample, tmp_path,
                                                                      monkeypatch):
    """What `fab deploy echo` ships beside kindling's wheel: the distribution that declares echo,
    as a wheel built from the folder pip installed it from, rebuilt when a file there changes."""
    from ops import deploy
    from ops.services.host import PackageWheel, package_stamp
    from workloads.jobs import Jobs

    monkeypatch.syspath_prepend(str(sample))
    monkeypatch.setattr(deploy, "JOBS", Jobs())  # collected anew, the package on the path
    monkeypatch.setattr(deploy, "WHEELS", tmp_path)
    echo = deploy.JOBS["echo"]
    wheel = deploy.package_wheel(echo)
    assert wheel.name == "kindling_sample_jobs-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as built:
        assert "sample_jobs/job.py" in built.namelist()
        entry_points = built.read("kindling_sample_jobs-1.0.0.dist-info/entry_points.txt").decode()
    assert "echo = sample_jobs.job:JOB" in entry_points
    built_at = wheel.stat().st_mtime_ns
    assert deploy.package_wheel(echo) == wheel and wheel.stat().st_mtime_ns == built_at

    source = Path(json.loads(deploy.JOBS.declared("echo").distribution.read_text(
        "direct_url.json"))["url"].removeprefix("file://"))
    (source / "sample_jobs" / "job.py").write_text((source / "sample_jobs" / "job.py").read_text()
                                                   + "\n# changed\n")
    assert deploy.package_wheel(echo).parent != wheel.parent
    # the step that installs it and `fab run`'s deployed check agree on its stamp
    assert PackageWheel().stamp(wheel) == package_stamp("kindling-sample-jobs")
    assert deploy.package_wheel(deploy.JOBS["classify"]) is None  # in kindling's own wheel


def test_a_package_installed_from_a_wheel_ships_that_wheel(install_packages, tmp_path):
    from importlib.metadata import distributions

    from ops.deploy import build_wheel, installed_from

    wheel = build_wheel(str(install_packages("sample_jobs").parent / "src" / "sample_jobs"),
                        tmp_path / "built", "kindling-sample-jobs")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--target", str(tmp_path / "site"), str(wheel)], check=True, timeout=120)
    [dist] = distributions(path=[str(tmp_path / "site")])
    assert installed_from(dist)[0] == str(wheel)


def test_the_package_wheel_step_installs_it_into_the_hosts_venv_once(install_packages, tmp_path,
                                                                      monkeypatch):
    """The deploy step, run here against a venv of its own as the hosts' venv: the package's
    entry point is then in that venv's metadata, and the stamp is the one `fab run` checks."""
    from ops import remote
    from ops.deploy import build_wheel
    from ops.services import host as basics
    from ops.services.base import DeployContext

    venv = tmp_path / "venv"  # the base Python's pip, as the hosts' venv has its own
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(venv)], check=True, timeout=60)
    monkeypatch.setattr(basics, "PYTHON", str(venv / "bin" / "python"))
    monkeypatch.setattr(basics, "HOME", str(tmp_path))
    monkeypatch.setattr(remote, "STAMPS", str(tmp_path / "stamps"))
    source = install_packages("sample_jobs").parent / "src" / "sample_jobs"
    wheel = build_wheel(str(source), tmp_path / "dist" / "kindling-sample-jobs-0123",
                        "kindling-sample-jobs")
    ctx = DeployContext(None, Path(), None, package_wheel=wheel)
    step, cxn = basics.PackageWheel(), ThisMachine()
    assert not step.is_current(cxn, None, ctx)
    step.install(cxn, None, ctx)
    assert step.is_current(cxn, None, ctx)
    assert remote.read_stamp(cxn, basics.package_stamp("kindling-sample-jobs")) == \
        "kindling-sample-jobs-0123"
    declared = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "from importlib.metadata import entry_points; "
         "print(entry_points(group='kindling.jobs')['echo'].value)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert declared.stdout.strip() == "sample_jobs.job:JOB", declared.stderr
    assert not basics.PackageWheel().is_current(cxn, None, replace(
        ctx, package_wheel=tmp_path / "dist" / "kindling-sample-jobs-4567" / wheel.name))
