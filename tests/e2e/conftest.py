"""End-to-end fixtures: a real multi-host cluster whose hosts are network namespaces with sshd,
deployed once for every module that needs it, and the EC2 rehearsal's cluster.

Fixtures only set up (a fixture whose setup fails raises, naming what failed); what a test
checks, error cases included, is in the tests.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from e2e.fab_cli import FAB, MNIST_FLAGS, REPO, fab, fab_env
from netns_cluster import ClusterError, NetnsCluster, finish_removals, missing_prerequisites

SUBNET_ENV = "KINDLING_NETNS_SUBNET"
"""Pin the cluster's subnet (default: the first free 10.77.x.0/24, so concurrent runs never collide)."""


@pytest.fixture(scope="session")
def netns_cluster(tmp_path_factory):
    """master, worker-0, worker-1, each with its own sshd; torn down once the last test that uses it
has finished (else at session end), pass or fail.

    Addressed as on EC2 (one public address): the workers refuse SSH from this machine and
    have no publicIp, so every e2e test reaches them through the master."""
    reason = missing_prerequisites()
    if reason:
        pytest.skip(f"the netns test cluster needs {reason}")
    # a CI timeout sends SIGTERM: turn it into KeyboardInterrupt so pytest still runs teardowns
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with NetnsCluster(hosts=3, subnet=os.environ.get(SUBNET_ENV), gateway=True,
                      workdir=tmp_path_factory.mktemp("netns-cluster")) as cluster:
        cluster.files_in_background = True
        LIVE_CLUSTERS["netns_cluster"] = cluster
        try:
            yield cluster
        finally:
            LIVE_CLUSTERS.pop("netns_cluster", None)


LIVE_CLUSTERS: dict[str, NetnsCluster] = {}
"""Session cluster fixture name -> its cluster while it is up; taken down as soon as the last test
that uses it has finished (its daemons would only slow the rest of the suite on a small machine),
else at session end. Down is idempotent: the fixture's own teardown then finds nothing to do.
Their hosts' files (gigabytes of installed jobs) go in the background while later tests run;
the session waits for that at its end."""


def pytest_sessionfinish(session):
    try:
        finish_removals()
    except ClusterError as exc:
        session.config.get_terminal_writer().line(f"teardown: {exc}", red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    if not LIVE_CLUSTERS:
        return
    items = item.session.items
    later = items[items.index(item) + 1:] if item in items else []
    for name in [n for n in LIVE_CLUSTERS if n in item.fixturenames]:
        if not any(name in other.fixturenames for other in later):
            LIVE_CLUSTERS.pop(name).down()


MODULE_ORDER = ("test_netns_cluster", "test_fab_deploy", "test_fab_failures", "test_notebook",
                "test_fab_spot_autostop", "test_rehearsal_deploy", "test_rehearsal",
                "test_rehearsal_hdfs", "test_rehearsal_autostop")
"""The order of a cluster's life, whatever pytest's (alphabetical) one: the netns cluster's own
checks on the fresh hosts; the refused deploy before the first install, then that install
(`deployed`) and what it serves, the notebook while both workers are up (the spot tests take
one). The rehearsal's first deploy (HDFS and classify) races cloud-init, so it comes before the
checks that wait for the boot to end, then HDFS's own tests
on those hosts; the auto-stop rehearsal replaces the hosts, so it comes last."""


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.stem if item.path.parent.name == "e2e" else ""
        return MODULE_ORDER.index(name) if name in MODULE_ORDER else len(MODULE_ORDER)
    if any(item.path.parent.name == "e2e" for item in items):
        e2e = sorted((item for item in items if item.path.parent.name == "e2e"), key=rank)
        slots = iter(e2e)
        items[:] = [next(slots) if item.path.parent.name == "e2e" else item for item in items]


WHEELHOUSE = Path("/var/cache/kindling/wheelhouse")
"""Kept between runs, as the rehearsal's: the wheels every netns host installs from."""
WHEELHOUSE_REQUIREMENTS = Path(__file__).with_name("wheelhouse-requirements.txt")
"""What the e2e deploys install beside kindling's dependencies: in the wheelhouse too."""


@pytest.fixture(scope="session")
def env(tmp_path_factory, assets):
    """A user's shell for fab: offline assets, the runs folder and a home of the session's."""
    return fab_env(assets, tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="session")
def wheelhouse(env):
    """The wheels every host installs from (the hosts have no index): `fab wheelhouse`, with the
    requirements the tests' deploys add."""
    done = fab(env, "wheelhouse", "--folder", str(WHEELHOUSE), "--requirements",
               str(WHEELHOUSE_REQUIREMENTS), timeout=1800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return str(WHEELHOUSE)


@pytest.fixture(scope="session")
def deployed(netns_cluster, env, wheelhouse) -> subprocess.CompletedProcess:
    """The real first install on the session cluster, from the wheelhouse, and its train-mnist
    run (2 epochs, TFoS in tensorflow input mode): `fab deploy train-mnist` as typed. Every test
    that needs a deployed cluster asks for it; test_fab_deploy checks what it did."""
    started = time.monotonic()
    done = fab(env, "deploy", "train-mnist", "--target", str(netns_cluster.inventory_path),
               "--wheelhouse", wheelhouse, *MNIST_FLAGS, timeout=1500)
    print(f"first deploy + train-mnist: {time.monotonic() - started:.1f}s; "
          + (re.search(r"deploy took [\d.]+s", done.stdout) or re.search("", "")).group(0))
    if done.returncode:
        pytest.fail("the first deploy failed, so no test can use the deployed cluster: "
                    + done.stdout[-3000:] + done.stderr[-3000:], pytrace=False)
    return done


@pytest.fixture(scope="session")
def aws(netns_cluster):
    """moto on the bridge (hosts reach it): the cluster's S3, EC2 and instance metadata service."""
    from moto_endpoint import moto_server

    with moto_server(netns_cluster.bridge_address) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def bucket(aws, env, assets):
    """The cluster's store: moto's bucket cluster-photos, the photos in it under vehicles/; the
    inventory fields that name it, and a user's shell with credentials."""
    return cluster_bucket(aws, env, assets)


def cluster_bucket(endpoint: str, env: dict, assets: Path) -> dict:
    """moto's bucket cluster-photos at endpoint with the photos under vehicles/: the inventory
    fields naming it, and env with the credentials (bucket and rehearsal_bucket)."""
    from moto_endpoint import ACCESS_KEY, SECRET_KEY, upload_folder

    upload_folder(endpoint, "cluster-photos", "vehicles", assets / "datasets" / "buses-cars")
    return {"fields": {"s3Endpoint": endpoint, "bucket": "cluster-photos"}, "endpoint": endpoint,
            "user": env | {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}}


# -- the EC2 rehearsal: hosts booted from a fresh Debian image by infra's own user data -------------

REHEARSAL_SUBNET_ENV = "KINDLING_REHEARSAL_SUBNET"
"""Pin the rehearsal cluster's subnet (default: the first free 10.77.x.0/24)."""


@pytest.fixture(scope="session")
def rehearsal_cluster(rehearsal_wheelhouse, tmp_path_factory):
    """master, worker-0, worker-1 booting from the Debian image with the Pulumi program's user data:
    one cluster for every rehearsal test, booted once the wheelhouse is built.

    Handed over while cloud-init still runs in the background: `wait_ssh()` waits for sshd (users
    and the pinned host key in place), `wait_booted()` for `cloud-init status` done (packages
    installed). `inventory_path` is the stack outputs with the hosts' namespace addresses."""
    from rehearsal_cluster import RehearsalCluster, missing_prerequisites as rehearsal_missing

    reason = rehearsal_missing()
    if reason:
        pytest.skip(f"the rehearsal needs {reason}")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with RehearsalCluster(workers=2, subnet=os.environ.get(REHEARSAL_SUBNET_ENV),
                          workdir=tmp_path_factory.mktemp("rehearsal")) as cluster:
        cluster.files_in_background = True
        LIVE_CLUSTERS["rehearsal_cluster"] = cluster
        try:
            yield cluster
        finally:
            LIVE_CLUSTERS.pop("rehearsal_cluster", None)


@pytest.fixture(scope="session")
def rehearsal_env(tmp_path_factory, assets):
    """A user's shell for fab on the rehearsal (its own runs folder and home)."""
    return fab_env(assets, tmp_path_factory.mktemp("rehearsal-runs"),
                   tmp_path_factory.mktemp("rehearsal-home"))


@pytest.fixture(scope="session")
def rehearsal_bucket(rehearsal_cluster, rehearsal_env, assets):
    """As `bucket`, for the rehearsal's hosts: moto on their bridge."""
    from moto_endpoint import moto_server

    with moto_server(rehearsal_cluster.bridge_address) as endpoint:
        yield cluster_bucket(endpoint, rehearsal_env, assets)


class BackgroundDeploy:
    """The rehearsal's first deploy, run in a thread from the moment the hosts boot: as soon as
    every sshd answers, each host's cloud-init state is noted and `fab deploy` starts (racing
    cloud-init). result() waits for it: (cloud-init states at the start, the deploy, seconds)."""

    def __init__(self, cluster, env: dict, argv: list[str]):
        self._cluster, self._env, self._argv = cluster, env, argv
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._cancelled = False
        self._outcome: tuple | BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rehearsal-first-deploy",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._cluster.wait_ssh()
            states = {record["name"]: self._cluster.cloud_init_status(record["name"])["status"]
                      for record in self._cluster.state["hosts"]}
            with self._lock:
                if self._cancelled:
                    return
                started = time.monotonic()
                self._process = subprocess.Popen(
                    [FAB, *self._argv], cwd=REPO, env=self._env, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
            out, err = self._process.communicate(timeout=1800)
            self._outcome = (states, subprocess.CompletedProcess(
                self._process.args, self._process.returncode, out, err),
                time.monotonic() - started)
        except BaseException as exc:  # handed to whoever asks for the result
            self._outcome = exc

    def result(self) -> tuple[dict, subprocess.CompletedProcess, float]:
        self._thread.join()
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome

    def cancel(self) -> None:
        """Kill the deploy if it still runs (the session is ending) and wait for the thread."""
        with self._lock:
            self._cancelled = True
            if self._process and self._process.poll() is None:
                self._process.kill()
        self._thread.join(timeout=120)


@pytest.fixture(scope="session")
def rehearsal_first_deploy(rehearsal_cluster, rehearsal_env, rehearsal_wheelhouse,
                           tmp_path_factory):
    """`fab deploy classify` with `hdfs: true` on the rehearsal hosts, from the wheelhouse, started
    as soon as their sshd answers, while cloud-init still runs (installing, among others, the Java
    HDFS needs): a BackgroundDeploy. The first netns test starts it when the session has rehearsal
    tests (see rehearsal_alongside), so that it runs while the netns tests do."""
    inventory = tmp_path_factory.mktemp("rehearsal-hdfs") / "cluster.json"
    inventory.write_text(json.dumps(json.loads(rehearsal_cluster.inventory_path.read_text())
                                    | {"hdfs": True}))
    deploy = BackgroundDeploy(rehearsal_cluster, rehearsal_env,
                              ["deploy", "classify", "--target", str(inventory), "--wheelhouse",
                               str(rehearsal_wheelhouse)])
    try:
        yield deploy
    finally:
        deploy.cancel()


REHEARSAL_WHEELHOUSE = Path("/var/cache/kindling-rehearsal/wheelhouse")
"""Kept between runs: `fab wheelhouse` rebuilds it only when constraints or the hosts' Python change."""
REHEARSAL_PYTHON = "3.13:2.41"
"""Debian 13's python3 and glibc (test_rehearsal_deploy also has `fab wheelhouse` ask a host)."""


@pytest.fixture(scope="session")
def rehearsal_wheelhouse():
    """`fab wheelhouse` for the rehearsal hosts' CPython 3.13 (not this machine's 3.11), built before
    any host boots so that the first deploy can race cloud-init; the hosts' Debian image is built
    meanwhile (on a fresh machine both are downloads, from PyPI and from Debian)."""
    import os_image
    from rehearsal_cluster import missing_prerequisites as rehearsal_missing

    if rehearsal_missing():
        pytest.skip(f"the rehearsal needs {rehearsal_missing()}")
    with ThreadPoolExecutor(1) as builder:
        image = builder.submit(os_image.rootfs)
        done = subprocess.run([str(Path(sys.executable).parent / "fab"), "wheelhouse", "--folder",
                               str(REHEARSAL_WHEELHOUSE), "--python-version", REHEARSAL_PYTHON],
                              cwd=Path(__file__).resolve().parents[2], capture_output=True,
                              text=True, timeout=1800, stdin=subprocess.DEVNULL)
        image.result()
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout.strip())
    return REHEARSAL_WHEELHOUSE
