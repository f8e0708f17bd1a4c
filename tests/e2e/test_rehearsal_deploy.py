"""`fab` on the EC2 rehearsal's hosts: fresh Debian 13 (Python 3.13, OpenJDK 21, no route out)
booted by infra's own user data. The first deploy (classify with `hdfs: true`, reading the
photos it puts into HDFS) starts while cloud-init still installs the base packages, Java among
them, and must wait for it; then the flows users type.

The session's one rehearsal cluster, handed over while cloud-init still runs: this module runs
before test_rehearsal.py (tests/e2e/conftest.py orders them), whose checks of the boot then hold
on the same, deployed hosts. train-mnist's run to its accuracy floor is test_fab_deploy's (same
job and flags, three hosts); here it is installed and launched.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from e2e.fab_cli import (MNIST_FLAGS, TRAIN_PS_FLAGS, fab, job_processes, one_error_line,
                         results_of, wait_until)
from floors import ACCURACY_FLOOR

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def hosts(rehearsal_cluster):
    """The session's rehearsal hosts (three fresh Debian hosts)."""
    return rehearsal_cluster


@pytest.fixture(scope="module")
def env(rehearsal_env):
    return rehearsal_env


@pytest.fixture(scope="module")
def first_deploy(rehearsal_first_deploy):
    """`fab deploy classify` with `hdfs: true`, from the wheelhouse, started while cloud-init was
    still running (in the background since the hosts booted): cloud-init's state on each host
    at the start, and the deploy."""
    states, done, took = rehearsal_first_deploy.result()
    print(f"rehearsal first deploy with HDFS + classify: {took:.1f}s; cloud-init at start: "
          f"{states}; " + (re.search(r"deploy took [\d.]+s", done.stdout) or re.search("", "")).group(0))
    return states, done


def test_rehearsal_first_deploy_waits_for_cloud_init(first_deploy, hosts):
    states, done = first_deploy
    assert "running" in states.values(), f"cloud-init had finished before the deploy: {states}"
    results_of(done)
    assert re.search(r"^master +cloud-init +", done.stdout, re.M), done.stdout
    # the user data armed each host's watcher with the settings the inventory gives: no upgrade
    watcher = re.findall(r"^(\S+) +watcher +(\S+)", done.stdout, re.M)
    assert sorted(watcher) == [(n, "skipped") for n in ("master", "worker-0", "worker-1")], \
        done.stdout
    for name in ("master", "worker-0", "worker-1"):
        assert hosts.cloud_init_status(name)["status"] == "done", hosts.boot_log(name)
        venv = hosts.exec(name, "/opt/kindling/venv/bin/python -V").stdout.strip()
        assert venv.startswith("Python 3.13."), (name, venv)


def test_rehearsal_hdfs_on_the_fresh_hosts_holds_the_photos_classify_reads(first_deploy):
    """`hdfs: true` on the fresh Debian hosts (their Java from the user data, the jars from this
    machine): the NameNode and both DataNodes come up, the local photos go into HDFS once and
    classify's executors read them there."""
    _, done = first_deploy
    results = results_of(done)
    assert "hdfs ready: 2 DataNodes live" in done.stdout, done.stdout
    assert re.search(r"data: buses-cars copied once into hdfs:///kindling/data/\w+/buses-cars",
                     done.stdout), done.stdout
    metrics = json.loads((results / "metrics.json").read_text())
    print(f"classify on the rehearsal hosts from HDFS: accuracy {metrics['accuracy']:.4f}")
    assert metrics["accuracy"] >= ACCURACY_FLOOR["classify"]
    assert metrics["model_location"].startswith("hdfs://") and "/kindling/runs/classify-" in \
        metrics["model_location"], metrics


def test_rehearsal_wheelhouse_asks_the_master_for_its_python(first_deploy, hosts, env,
                                                              rehearsal_wheelhouse):
    done = fab(env, "wheelhouse", "--folder", str(rehearsal_wheelhouse), "--target",
               str(hosts.inventory_path))
    assert done.returncode == 0, done.stderr
    assert re.search(r"\(\d+ wheels for CPython 3\.13, glibc 2\.\d+", done.stdout), done.stdout


def test_rehearsal_a_new_host_without_pypi_or_wheelhouse_is_one_line_naming_it(first_deploy, hosts,
                                                                              env, rehearsal_wheelhouse):
    """worker-1 as after a resize (no venv yet); the deploy forgets --wheelhouse. With it, the
    deploy installs worker-1's job dependencies and launches train-mnist (detached: its run to
    the accuracy floor is test_fab_deploy's, same job and flags on three hosts)."""
    inventory = str(hosts.inventory_path)
    hosts.exec("worker-1", "rm -rf /opt/kindling/venv /opt/kindling/stamps/python-deps", check=True)
    started = time.monotonic()
    line = one_error_line(fab(env, "deploy", "train-mnist", "--target", inventory, *MNIST_FLAGS),
                          code=1)
    assert re.fullmatch(r"error: worker-1 \(worker\): installing the job dependencies failed: "
                        r".*; the host cannot install from PyPI; build a wheelhouse .*"
                        r"`fab wheelhouse --target TARGET`.*", line), line
    assert time.monotonic() - started < 120
    try:
        again = fab(env, "deploy", "train-mnist", "--target", inventory, "--wheelhouse",
                    str(rehearsal_wheelhouse), "--detach", *MNIST_FLAGS)
        assert again.returncode == 0 and re.search(r"^worker-1 +python deps +installed",
                                                   again.stdout, re.M), \
            again.stdout[-2000:] + again.stderr[-2000:]
    finally:
        stopped = fab(env, "stop", "--target", inventory)
    assert stopped.returncode == 0, stopped.stderr


def test_rehearsal_train_ps_roles_status_logs_and_a_second_deploy(first_deploy, hosts, env,
                                                                  rehearsal_wheelhouse):
    inventory = str(hosts.inventory_path)
    started = time.monotonic()
    expected = {"master": ["train_ps ps 0", "train_ps chief 0"],
                "worker-0": ["train_ps worker 0"], "worker-1": ["train_ps worker 1"]}
    try:
        done = fab(env, "deploy", "train-ps", "--target", inventory, "--wheelhouse",
                   str(rehearsal_wheelhouse), "--detach", *TRAIN_PS_FLAGS)
        print(f"rehearsal second deploy (train-ps, detached): {time.monotonic() - started:.1f}s")
        assert done.returncode == 0, done.stderr
        steps = re.findall(r"^(\S+) +(cloud-init|folders|base packages|python deps|kindling wheel|"
                           r"data) +(\S+)", done.stdout, re.M)
        assert len(steps) == 3 * 6 and all(s == "skipped" for _, _, s in steps), done.stdout
        for host, roles in expected.items():
            argv = " ".join(job_processes(hosts, host))
            assert all(role in argv for role in roles), (host, argv)
        status = fab(env, "status", "--target", inventory)
        assert status.returncode == 0, status.stderr
        assert re.search(r"^master .*train-ps-\S+/chief-0", status.stdout, re.M), status.stdout
        assert "spark: master spark://" in status.stdout and "2/2 workers" in status.stdout
        wait_until(lambda: not any(job_processes(hosts, h) for h in expected),
                   "train-ps to end on the rehearsal hosts", timeout=300, interval=2)
    finally:  # a failed check leaves no job running
        fab(env, "stop", "--target", inventory)
    logs = fab(env, "logs", "--job", "train-ps", "--target", inventory)
    assert logs.returncode == 0, logs.stderr
    assert "chief-0.log" in logs.stdout and "test accuracy" in logs.stdout
