"""End-to-end fixtures: a real multi-host cluster whose hosts are network namespaces with sshd."""

import os
import signal

import pytest

from netns_cluster import NetnsCluster, missing_prerequisites

SUBNET_ENV = "KINDLING_NETNS_SUBNET"
"""Pin the cluster's subnet (default: the first free 10.77.x.0/24, so concurrent runs never collide)."""


@pytest.fixture(scope="session")
def netns_cluster(tmp_path_factory):
    """master, worker-0, worker-1, each with its own sshd; torn down at session end, pass or fail.

    Addressed as on EC2 (one public address): the workers refuse SSH from this machine and
    have no publicIp, so every e2e test reaches them through the master."""
    reason = missing_prerequisites()
    if reason:
        pytest.skip(f"the netns test cluster needs {reason}")
    # a CI timeout sends SIGTERM: turn it into KeyboardInterrupt so pytest still runs teardowns
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with NetnsCluster(hosts=3, subnet=os.environ.get(SUBNET_ENV), gateway=True,
                      workdir=tmp_path_factory.mktemp("netns-cluster")) as cluster:
        yield cluster
