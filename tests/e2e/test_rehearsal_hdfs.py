"""`hdfs: true` on the rehearsal's fresh hosts, after their first deploy brought HDFS up (the
NameNode on the master, DataNodes on the workers) and classify read the photos from it
(test_rehearsal_deploy): local data uploaded into HDFS once, train-ps resuming from checkpoints
in moto's bucket, a host without Java, a lost DataNode and the next deploy restarting it.
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request

import pytest

from e2e.fab_cli import (TRAIN_PS_FLAGS, fab, host_state, one_error_line, results_of, wait_until)

pytestmark = pytest.mark.netns

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def cluster(rehearsal_cluster, rehearsal_first_deploy):
    """The rehearsal's hosts once their first deploy (HDFS and classify) has ended well."""
    _, done, _ = rehearsal_first_deploy.result()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return rehearsal_cluster


@pytest.fixture(scope="module")
def wheelhouse(rehearsal_wheelhouse) -> str:
    return str(rehearsal_wheelhouse)


@pytest.fixture(scope="module")
def hdfs_cluster(cluster, rehearsal_bucket, wheelhouse, tmp_path_factory, assets):
    """The rehearsal cluster with `hdfs: true` and the moto bucket in its inventory: `fab deploy
    train-ps` finds HDFS up, uploads the local MNIST folder into HDFS once, trains from there
    and keeps its checkpoints in the bucket; the photos put into HDFS as a user would, with
    `fab put` and `hdfs dfs`."""
    env = rehearsal_bucket["user"]
    inventory = tmp_path_factory.mktemp("hdfs") / "cluster.json"
    inventory.write_text(json.dumps(json.loads(cluster.inventory_path.read_text())
                                    | rehearsal_bucket["fields"] | {"hdfs": True}))
    target = ("--target", str(inventory))
    started = time.monotonic()
    mnist = tmp_path_factory.mktemp("fresh") / "mnist"  # content no host has seen yet
    shutil.copytree(assets / "datasets" / "mnist", mnist)
    (mnist / "README").write_text("MNIST for the HDFS e2e\n")
    done = fab(env, "deploy", "train-ps", *target, "--wheelhouse", wheelhouse, "--data",
               str(mnist), *TRAIN_PS_FLAGS)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    photos = tmp_path_factory.mktemp("photos") / "vehicles.tar"
    with tarfile.open(photos, "w") as tar:
        tar.add(assets / "datasets" / "buses-cars", arcname="vehicles",  # writable copies
                filter=lambda info: info.replace(mode=info.mode | 0o700, deep=False))
    assert fab(env, "put", str(photos), "/tmp/vehicles.tar", "--role", "master", *target).returncode == 0
    put = fab(env, "exec", "--role", "master", *target,
              "cd /tmp && tar -xf vehicles.tar && /opt/kindling/bin/hdfs dfs -mkdir -p /photos && "
              "/opt/kindling/bin/hdfs dfs -put -f vehicles /photos/ && rm -rf vehicles vehicles.tar")
    assert put.returncode == 0, put.stdout + put.stderr
    print(f"deploy with HDFS up (MNIST into HDFS, train-ps): {took:.1f}s\n"
          + "\n".join(line for line in done.stdout.splitlines() if "installing..." not in line))
    return {"target": target, "deploy": done, "mnist": mnist, "env": env}


def uploaded_mnist(hdfs_cluster) -> tuple[str, str]:
    """Where the fixture's deploy put the local MNIST folder in HDFS, and its content hash."""
    uploaded = re.search(r"data: mnist copied once into (hdfs:///kindling/data/(\w+)/mnist)",
                         hdfs_cluster["deploy"].stdout)
    assert uploaded, hdfs_cluster["deploy"].stdout
    return uploaded.group(1), uploaded.group(2)


def listening_addresses(cluster, host) -> dict[int, set[str]]:
    """Port -> the addresses a host listens on (IPv4-mapped IPv6 written as IPv4)."""
    bound: dict[int, set[str]] = {}
    for line in cluster.exec(host, "ss -ltnH").stdout.splitlines():
        address, _, port = line.split()[3].rpartition(":")
        bound.setdefault(int(port), set()).add(address.strip("[]").removeprefix("::ffff:"))
    return bound


def test_hdfs_namenode_on_the_master_datanodes_on_the_workers_private_addresses_only(
        cluster, hdfs_cluster):
    env = hdfs_cluster["env"]  # with the bucket's credentials
    target = hdfs_cluster["target"]
    assert "hdfs ready: 2 DataNodes live" in hdfs_cluster["deploy"].stdout
    for host, ports in [(cluster.inventory.master, (8020, 9870)),
                        *((worker, (9866, 9864, 9867)) for worker in cluster.inventory.workers)]:
        bound = listening_addresses(cluster, host)
        for port in ports:  # on the private address only
            assert bound.get(port) == {host.privateIp}, (host.name, port, bound)
    status = fab(env, "status", *target)
    assert status.returncode == 0, status.stderr
    assert re.search(r"hdfs: NameNode hdfs://\S+:8020 up, 2/2 DataNodes live, capacity [\d.]+ GB",
                     status.stdout), status.stdout

    missing = fab(env, "run", "classify", *target, "--data", "hdfs:///photos/nowhere")
    assert "no such path in the cluster's HDFS" in one_error_line(missing)
    no_hdfs = fab(env, "run", "classify", "--target", str(cluster.inventory_path),
                  "--data", "hdfs:///photos/vehicles")
    assert "runs no HDFS; `pulumi config set hdfs true`" in one_error_line(no_hdfs)
    # classify reading HDFS through Spark: the first deploy's (test_rehearsal_deploy)

    # permissions on: kindling's folder belongs to the jobs' user, and no other user (named, or
    # WebHDFS's anonymous one) may change it
    webhdfs = f"http://{cluster.inventory.master.privateIp}:9870/webhdfs/v1/kindling"
    status = answer_of(webhdfs + "?op=GETFILESTATUS")
    assert json.loads(status)["FileStatus"]["owner"] == cluster.inventory.sshUser, status
    for user in ("&user.name=mallory", ""):
        refused = answer_of(f"{webhdfs}/data/intruder?op=MKDIRS{user}", method="PUT")
        assert "AccessControlException" in refused and "Permission denied" in refused, refused


def answer_of(url: str, method: str = "GET") -> str:
    """The body of a WebHDFS answer, an error's too (from this machine, on the hosts' bridge)."""
    try:
        with NO_PROXY.open(urllib.request.Request(url, method=method), timeout=30) as answer:
            return answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.read().decode()


def test_hdfs_on_a_host_without_java_is_one_line_before_anything_changes(
        cluster, wheelhouse, hdfs_cluster):
    """worker-1 loses its `java` and its apt-get (bind mounts in its own mount namespace)."""
    env = hdfs_cluster["env"]  # with the bucket's credentials
    worker = "worker-1"
    java = cluster.exec(worker, "readlink -f $(command -v java)", check=True).stdout.strip()
    masked = [java, "/usr/bin/apt-get"]
    cluster.exec(worker, " && ".join(f"mount --bind /dev/null {path}" for path in masked),
                       check=True)
    try:
        before = host_state(cluster)
        line = one_error_line(fab(env, "deploy", "train-ps", *hdfs_cluster["target"],
                                  "--wheelhouse", wheelhouse, *TRAIN_PS_FLAGS))
        assert line.startswith(f"error: hdfs: true needs Java on every host, and {worker} has no "
                               "`java` and no apt-get"), line
        assert "pulumi config set hdfs false" in line
        assert host_state(cluster) == before
    finally:
        cluster.exec(worker, " ; ".join(f"umount {path}" for path in masked))
    assert cluster.exec(worker, "java -version").returncode == 0


def test_hdfs_holds_local_data_once_and_train_ps_resumes_from_it_on_another_host(
        cluster, hdfs_cluster):
    """The fixture's train-ps read MNIST from HDFS (uploaded once, no worker got a copy) and
    left its checkpoints in the bucket, s3://cluster-photos/runs/<id>; a sync run, whose chief
    is on worker-0 instead of the master, resumes from them at epoch 2."""
    env = hdfs_cluster["env"]  # with the bucket's credentials
    target, first = hdfs_cluster["target"], hdfs_cluster["deploy"]
    mnist, digest = uploaded_mnist(hdfs_cluster)
    for worker in cluster.inventory.workers:  # the hosts' copies are named by the same hash
        assert cluster.exec(worker, f"test -e /srv/kindling/data/{digest}").returncode == 1
    run_id = results_of(first).name
    before = json.loads((results_of(first) / "metrics.json").read_text())
    assert before["epochs_this_run"] == 1
    resumed = fab(env, "run", "train-ps", *target, "--epochs", "2", "--data",
                  str(hdfs_cluster["mnist"]), "--job-args",
                  f"--steps-per-epoch 40 --strategy sync --resume s3://cluster-photos/runs/{run_id}")
    assert f"data: mnist already in {mnist}" in resumed.stdout, resumed.stdout
    metrics = json.loads((results_of(resumed) / "metrics.json").read_text())
    assert metrics["history"]["first_epoch"] == 2 and metrics["epochs_this_run"] == 1, metrics
    assert metrics["strategy"] == "sync" and (results_of(resumed) / "logs" / "worker-0"
                                              / "worker-0.log").is_file()
    # a fresh model's first epoch starts from chance; a resumed one from the trained weights
    assert metrics["history"]["loss"][0] < 0.8 * before["history"]["loss"][0], (metrics, before)
    no_checkpoints = fab(env, "run", "train-ps", *target, "--job-args",
                         "--resume s3://cluster-photos/runs/no-such-run")
    assert "nothing is stored under this prefix" in one_error_line(no_checkpoints)


def test_hdfs_a_killed_datanode_is_named_and_the_next_deploy_restarts_it_for_train_mnist(
        cluster, wheelhouse, hdfs_cluster):
    """worker-1's DataNode is killed: `fab status` names it; the next deploy (train-mnist reading
    the MNIST folder the fixture put into HDFS) starts it again without reformatting the
    NameNode, and train-mnist writes its TFRecord shards into HDFS."""
    env = hdfs_cluster["env"]  # with the bucket's credentials
    target = hdfs_cluster["target"]
    mnist, _ = uploaded_mnist(hdfs_cluster)
    version = cluster.exec("master", "grep -E 'clusterID|namespaceID' "
                                           "/srv/kindling/hdfs/name/current/VERSION").stdout
    assert "clusterID=kindling-" in version
    worker = cluster.inventory.workers[1]
    cluster.exec(worker, "kill $(cat /srv/kindling/hdfs/datanode.pid)")
    named = f"DataNode down on {worker.name} ({worker.privateIp})"
    started = time.monotonic()
    wait_until(lambda: named in fab(env, "status", *target).stdout,
               f"`fab status` to name {worker.name}'s DataNode", timeout=120, interval=3)
    named_after = time.monotonic() - started
    again = fab(env, "deploy", "train-mnist", *target, "--wheelhouse", wheelhouse, "--data", mnist,
                "--input-mode", "tensorflow", "--epochs", "1", "--job-args", "--steps 20")
    print(f"`fab status` named the killed DataNode after {named_after:.1f}s; the deploy that "
          f"restarted it and ran train-mnist from HDFS took {time.monotonic() - started - named_after:.1f}s")
    assert re.search(rf"^{worker.name} +hdfs datanode +installed", again.stdout, re.M), \
        again.stdout[-3000:] + again.stderr[-3000:]
    assert re.search(r"^master +hdfs namenode +skipped", again.stdout, re.M), again.stdout
    assert "2 TFRecord shards written to hdfs://" in again.stdout, again.stdout
    assert json.loads((results_of(again) / "metrics.json").read_text())["steps"] == 20
    assert cluster.exec("master", "grep -E 'clusterID|namespaceID' "
                                        "/srv/kindling/hdfs/name/current/VERSION").stdout == version
    shards = fab(env, "exec", "--role", "master", *target,
                 f"/opt/kindling/bin/hdfs dfs -ls -R {mnist}_tfrecords")
    assert shards.stdout.count(".tfrecord") == 2, shards.stdout + shards.stderr
    listing = fab(env, "exec", "--role", "master", *target,
                  "/opt/kindling/bin/hdfs dfs -ls /photos/vehicles")
    assert "/photos/vehicles/buses" in listing.stdout, listing.stdout + listing.stderr
    assert "2/2 DataNodes live" in fab(env, "status", *target).stdout
