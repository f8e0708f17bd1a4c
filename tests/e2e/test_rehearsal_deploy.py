"""`fab` on the EC2 rehearsal's hosts: fresh Debian 13 (Python 3.13, OpenJDK 21, no route out)
booted by infra's own user data. The first deploy starts while cloud-init still installs the
base packages and must wait for it; then the flows users type.

Own cluster (module scope), so the race happens whatever ran before.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from e2e.fab_cli import fab, fab_env, job_processes, one_error_line, results_of
from floors import ACCURACY_FLOOR
from rehearsal_cluster import RehearsalCluster, missing_prerequisites

pytestmark = pytest.mark.netns
MNIST_FLAGS = ["--epochs", "2", "--input-mode", "tensorflow"]
TRAIN_PS_FLAGS = ["--epochs", "1", "--job-args", "--steps-per-epoch 40"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, assets):
    return fab_env(assets, tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def hosts(rehearsal_wheelhouse, tmp_path_factory):
    """Three fresh hosts, handed over as soon as sshd answers (cloud-init still at work)."""
    reason = missing_prerequisites()
    if reason:
        pytest.skip(f"the rehearsal needs {reason}")
    with RehearsalCluster(workers=2, subnet=os.environ.get("KINDLING_REHEARSAL_SUBNET"),
                          workdir=tmp_path_factory.mktemp("rehearsal-deploy")) as cluster:
        cluster.wait_ssh(timeout=300)
        yield cluster


@pytest.fixture(scope="module")
def first_deploy(hosts, env, rehearsal_wheelhouse):
    """`fab deploy train-mnist` from the wheelhouse, started while cloud-init is still running."""
    states = {record["name"]: hosts.cloud_init_status(record["name"])["status"]
              for record in hosts.state["hosts"]}
    started = time.monotonic()
    done = fab(env, "deploy", "train-mnist", "--target", str(hosts.inventory_path),
               "--wheelhouse", str(rehearsal_wheelhouse), *MNIST_FLAGS, timeout=1800)
    took = time.monotonic() - started
    print(f"rehearsal first deploy + train-mnist: {took:.1f}s; cloud-init at start: {states}; "
          + (re.search(r"deploy took [\d.]+s", done.stdout) or re.search("", "")).group(0))
    return states, done


def test_rehearsal_first_deploy_waits_for_cloud_init_and_trains(first_deploy, hosts):
    states, done = first_deploy
    assert "running" in states.values(), f"cloud-init had finished before the deploy: {states}"
    results = results_of(done)
    assert re.search(r"^master +cloud-init +", done.stdout, re.M), done.stdout
    accuracy = json.loads((results / "metrics.json").read_text())["accuracy"]
    print(f"train-mnist on the rehearsal hosts: accuracy {accuracy:.4f}")
    assert accuracy >= ACCURACY_FLOOR["train-mnist"]
    for name in ("master", "worker-0", "worker-1"):
        assert hosts.cloud_init_status(name)["status"] == "done", hosts.boot_log(name)
        venv = hosts.exec(name, "/opt/kindling/venv/bin/python -V").stdout.strip()
        assert venv.startswith("Python 3.13."), (name, venv)


def test_rehearsal_wheelhouse_asks_the_master_for_its_python(first_deploy, hosts, env,
                                                              rehearsal_wheelhouse):
    done = fab(env, "wheelhouse", "--folder", str(rehearsal_wheelhouse), "--target",
               str(hosts.inventory_path))
    assert done.returncode == 0, done.stderr
    assert re.search(r"\(\d+ wheels for CPython 3\.13, glibc 2\.\d+", done.stdout), done.stdout


def test_rehearsal_a_new_host_without_pypi_or_wheelhouse_is_one_line_naming_it(first_deploy, hosts,
                                                                              env, rehearsal_wheelhouse):
    """worker-1 as after a resize (no venv yet); the deploy forgets --wheelhouse."""
    hosts.exec("worker-1", "rm -rf /opt/kindling/venv /opt/kindling/stamps/python-deps", check=True)
    started = time.monotonic()
    line = one_error_line(fab(env, "deploy", "train-mnist", "--target", str(hosts.inventory_path),
                              *MNIST_FLAGS), code=1)
    assert re.fullmatch(r"error: worker-1 \(worker\): installing the job dependencies failed: "
                        r".*; the host cannot install from PyPI; build a wheelhouse .*"
                        r"`fab wheelhouse --target TARGET`.*", line), line
    assert time.monotonic() - started < 120
    again = fab(env, "deploy", "train-mnist", "--target", str(hosts.inventory_path), "--wheelhouse",
                str(rehearsal_wheelhouse), "--detach", *MNIST_FLAGS)
    assert again.returncode == 0 and re.search(r"^worker-1 +python deps +installed", again.stdout, re.M), \
        again.stdout[-2000:] + again.stderr[-2000:]
    assert fab(env, "stop", "--target", str(hosts.inventory_path)).returncode == 0


def test_rehearsal_hdfs_on_the_fresh_hosts_holds_the_photos_classify_reads(
        first_deploy, hosts, env, rehearsal_wheelhouse, tmp_path):
    """`hdfs: true` on the fresh Debian hosts (their Java from the user data, the jars from this
    machine): the NameNode and both DataNodes come up, the local photos go into HDFS once and
    classify's executors read them there."""
    inventory = tmp_path / "cluster.json"
    inventory.write_text(json.dumps(json.loads(hosts.inventory_path.read_text()) | {"hdfs": True}))
    started = time.monotonic()
    done = fab(env, "deploy", "classify", "--target", str(inventory), "--wheelhouse",
               str(rehearsal_wheelhouse))
    results = results_of(done)
    print(f"rehearsal deploy with HDFS + classify: {time.monotonic() - started:.1f}s")
    assert "hdfs ready: 2 DataNodes live" in done.stdout, done.stdout
    assert re.search(r"data: buses-cars copied once into hdfs:///kindling/data/\w+/buses-cars",
                     done.stdout), done.stdout
    metrics = json.loads((results / "metrics.json").read_text())
    print(f"classify on the rehearsal hosts from HDFS: accuracy {metrics['accuracy']:.4f}")
    assert metrics["accuracy"] >= ACCURACY_FLOOR["classify"]
    assert metrics["model_location"].startswith("hdfs://") and "/kindling/runs/classify-" in \
        metrics["model_location"], metrics


def test_rehearsal_train_ps_roles_status_logs_and_a_second_deploy(first_deploy, hosts, env,
                                                                  rehearsal_wheelhouse):
    inventory = str(hosts.inventory_path)
    started = time.monotonic()
    done = fab(env, "deploy", "train-ps", "--target", inventory, "--wheelhouse",
               str(rehearsal_wheelhouse), "--detach", *TRAIN_PS_FLAGS)
    print(f"rehearsal second deploy (train-ps, detached): {time.monotonic() - started:.1f}s")
    assert done.returncode == 0, done.stderr
    steps = re.findall(r"^(\S+) +(cloud-init|folders|base packages|python deps|kindling wheel|"
                       r"data) +(\S+)", done.stdout, re.M)
    assert len(steps) == 3 * 6 and all(s == "skipped" for _, _, s in steps), done.stdout
    expected = {"master": ["train_ps ps 0", "train_ps chief 0"],
                "worker-0": ["train_ps worker 0"], "worker-1": ["train_ps worker 1"]}
    for host, roles in expected.items():
        argv = " ".join(job_processes(hosts, host))
        assert all(role in argv for role in roles), (host, argv)
    status = fab(env, "status", "--target", inventory)
    assert status.returncode == 0, status.stderr
    assert re.search(r"^master .*train-ps-\S+/chief-0", status.stdout, re.M), status.stdout
    assert "spark: master spark://" in status.stdout and "2/2 workers" in status.stdout
    deadline = time.monotonic() + 300
    while any(job_processes(hosts, h) for h in expected) and time.monotonic() < deadline:
        time.sleep(2)
    logs = fab(env, "logs", "--job", "train-ps", "--target", inventory)
    assert logs.returncode == 0, logs.stderr
    assert "chief-0.log" in logs.stdout and "test accuracy" in logs.stdout
