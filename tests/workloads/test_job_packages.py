"""One package per job: each declares its JOB in workloads/<job>/job.py, without TensorFlow or
Spark, named by an entry point of the kindling.jobs group in kindling's pyproject.toml (as any
package declares its jobs), and runs as its declared module (a .py file, what spark-submit and
fab start) and as `python -m workloads.<job>`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from workloads.jobs import ENTRY_POINTS, JOBS, module_file

REPO = Path(__file__).resolve().parents[2]
DECLARED = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"][ENTRY_POINTS]
JOB_PACKAGES = ("train_ps", "train_mnist", "classify")
HEAVY = ("tensorflow", "keras", "pyspark", "tensorflowonspark", "numpy", "pyarrow", "PIL")


def modules_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter holds after running code."""
    done = subprocess.run([sys.executable, "-c", f"{code}\nimport sys, json\n"
                           "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("code", [
    "from workloads.jobs import JOBS; list(JOBS.values())",
    *(f"from workloads.{package}.job import JOB; from workloads.jobs import JOBS; "
      f"assert JOBS[JOB.name] is JOB" for package in JOB_PACKAGES),
])
def test_the_declarations_load_in_any_order_without_tensorflow_or_spark(code):
    assert not modules_after(code) & set(HEAVY)


def test_jobs_are_collected_from_their_packages():
    assert list(JOBS) == sorted(DECLARED) == ["classify", "train-mnist", "train-ps"]
    for package in JOB_PACKAGES:
        job = __import__(f"workloads.{package}.job", fromlist=["JOB"]).JOB
        assert JOBS[job.name] is job and JOBS.package(job.name) == "kindling"
        assert DECLARED[job.name] == f"workloads.{package}.job:JOB"
        # a Spark job's driver is a file spark-submit runs; train-ps' processes `python -m` it
        assert job.module == f"workloads.{package}" + ("" if package == "train_ps" else ".main")
        assert Path(module_file(job.module)).parent == REPO / "workloads" / package


@pytest.mark.parametrize("package", JOB_PACKAGES)
def test_python_m_the_package_runs_the_declared_module(package):
    helps = [subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
             for module in (f"workloads.{package}", f"workloads.{package}.main")]
    assert [done.returncode for done in helps] == [0, 0], helps[0].stderr + helps[1].stderr
    assert helps[0].stdout == helps[1].stdout and "--output" in helps[0].stdout



def test_installed_from_its_wheel_kindling_declares_its_jobs_by_its_metadata(tmp_path):
    """As on the hosts: no checkout, kindling's wheel installed; its entry points come from the
    wheel's metadata (in a checkout, from its pyproject.toml, whatever the venv's metadata says),
    and the wheel holds the `sparkdl` import name."""
    from ops.deploy import project_wheel

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--target", str(site), str(project_wheel())], check=True, timeout=300)
    code = ("from workloads.jobs import JOBS, CHECKOUT; import importlib.util; "
            "print(CHECKOUT, *[f'{name}={JOBS.package(name)}' for name in JOBS], "
            "importlib.util.find_spec('sparkdl').origin)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=os.environ | {"PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(site), "classify=kindling", "train-mnist=kindling",
                                   "train-ps=kindling", str(site / "sparkdl" / "__init__.py")]
