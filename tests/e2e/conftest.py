"""End-to-end fixtures: a real multi-host cluster whose hosts are network namespaces with sshd."""

import os
import signal
import subprocess
import sys
from pathlib import Path

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


REHEARSAL_WHEELHOUSE = Path("/var/cache/kindling-rehearsal/wheelhouse")
"""Kept between runs: `fab wheelhouse` rebuilds it only when constraints or the hosts' Python change."""
REHEARSAL_PYTHON = "3.13:2.41"
"""Debian 13's python3 and glibc (test_rehearsal_deploy also has `fab wheelhouse` ask a host)."""


@pytest.fixture(scope="session")
def rehearsal_wheelhouse():
    """`fab wheelhouse` for the rehearsal hosts' CPython 3.13 (not this machine's 3.11), built before
    any host boots so that the first deploy can race cloud-init."""
    done = subprocess.run([str(Path(sys.executable).parent / "fab"), "wheelhouse", "--folder",
                           str(REHEARSAL_WHEELHOUSE), "--python-version", REHEARSAL_PYTHON],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                          timeout=1800, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout.strip())
    return REHEARSAL_WHEELHOUSE
