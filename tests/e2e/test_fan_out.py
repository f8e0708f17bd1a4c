"""The fan-out through the master at a real cluster's width: 24 workers reached only through one
master whose sshd keeps its defaults (MaxStartups 10:30:100: past 10 connections still
authenticating, it drops new ones at random), every worker copied to at once by OpenSSH scp,
as `fab deploy` ships the JVM jars."""

from __future__ import annotations

import hashlib
import os

import pytest

from netns_cluster import NetnsCluster, missing_prerequisites
from ops.services.wheels import push_files
from ops.targets import ClusterTarget

pytestmark = pytest.mark.netns

WORKERS = 24


@pytest.fixture(scope="module")
def wide_cluster(tmp_path_factory):
    """A master and 24 workers, each its own sshd; the workers refuse this machine (gateway)."""
    reason = missing_prerequisites()
    if reason:
        pytest.skip(f"the netns test cluster needs {reason}")
    with NetnsCluster(hosts=WORKERS + 1, subnet=os.environ.get("KINDLING_NETNS_WIDE_SUBNET"),
                      gateway=True, workdir=tmp_path_factory.mktemp("wide-cluster")) as cluster:
        yield cluster


def test_24_workers_get_their_jars_through_one_master_and_its_sshd_drops_nothing(
        wide_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    jars = []
    for index in range(3):
        jar = tmp_path / f"part-{index}.jar"
        jar.write_bytes(os.urandom(256 * 1024))
        jars.append(jar)
    digests = sorted(f"{hashlib.sha256(jar.read_bytes()).hexdigest()}  {jar.name}" for jar in jars)
    inventory = wide_cluster.inventory
    target = ClusterTarget(inventory)
    try:
        target.cluster.parallel(lambda host, cxn: push_files(
            cxn, host, inventory, jars, "jars-fan-out", "copying the jars"),
            inventory.workers)
    finally:
        target.cluster.close()

    for worker in inventory.workers:
        listing = wide_cluster.exec(worker, f"cd ~{inventory.sshUser}/jars-fan-out && sha256sum *.jar")
        assert sorted(listing.stdout.splitlines()) == digests, (worker.name, listing.stderr)
    log = wide_cluster.exec("master", "cat /etc/ssh/sshd.log").stdout
    assert log.count("Accepted publickey") >= WORKERS, log[-2000:]  # a copy's hop each
    assert "past MaxStartups" not in log, log[-2000:]
