"""One package per job: each declares its JOB in workloads/<job>/job.py, without TensorFlow or
Spark, and runs as its declared module (a .py file, what spark-submit and fab start) and as
`python -m workloads.<job>`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from workloads.jobs import JOB_PACKAGES, JOBS, module_file

REPO = Path(__file__).resolve().parents[2]
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
    assert list(JOBS) == ["train-ps", "train-mnist", "classify"]
    for package in JOB_PACKAGES:
        job = __import__(f"workloads.{package}.job", fromlist=["JOB"]).JOB
        assert JOBS[job.name] is job
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

