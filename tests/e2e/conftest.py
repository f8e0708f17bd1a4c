"""End-to-end fixtures: a real multi-host cluster whose hosts are network namespaces with sshd."""

import os
import signal

import pytest

from netns_cluster import NetnsCluster, missing_prerequisites

SUBNET_ENV = "KINDLING_NETNS_SUBNET"
"""Pin the cluster's subnet (default: the first free 10.77.x.0/24, so concurrent runs never collide)."""


@pytest.fixture(scope="session")
def netns_cluster(tmp_path_factory):
    """master, worker-0, worker-1, each with its own sshd; torn down at session end, pass or fail."""
    reason = missing_prerequisites()
    if reason:
        pytest.skip(f"the netns test cluster needs {reason}")
    # a CI timeout sends SIGTERM: turn it into KeyboardInterrupt so pytest still runs teardowns
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with NetnsCluster(hosts=3, subnet=os.environ.get(SUBNET_ENV),
                      workdir=tmp_path_factory.mktemp("netns-cluster")) as cluster:
        yield cluster


# -- the EC2 rehearsal: hosts booted from a fresh Debian image by infra's own user data -------------

REHEARSAL_SUBNET_ENV = "KINDLING_REHEARSAL_SUBNET"
"""Pin the rehearsal cluster's subnet (default: the first free 10.77.x.0/24)."""


@pytest.fixture(scope="session")
def rehearsal_cluster(tmp_path_factory):
    """master, worker-0, worker-1 booting from the Debian image with the Pulumi program's user data.

    Handed over while cloud-init still runs in the background: `wait_ssh()` waits for sshd (users and
    the pinned host key in place), `wait_booted()` for `cloud-init status` done (packages installed).
    `inventory_path` is the stack outputs with the hosts' namespace addresses, ready for fab."""
    from rehearsal_cluster import RehearsalCluster, missing_prerequisites as rehearsal_missing

    reason = rehearsal_missing()
    if reason:
        pytest.skip(f"the rehearsal needs {reason}")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with RehearsalCluster(workers=2, subnet=os.environ.get(REHEARSAL_SUBNET_ENV),
                          workdir=tmp_path_factory.mktemp("rehearsal")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def rehearsal_wheelhouse():
    """Wheels for the rehearsal hosts' CPython 3.13 (pyspark's built here once), cached outside the repo."""
    from rehearsal_wheels import build_wheelhouse

    return build_wheelhouse()
