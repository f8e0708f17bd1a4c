"""Shared fixtures: where the offline data and weights live (../shared beside the repo, or
$KINDLING_ASSETS), so no test hard-codes a machine path; and the storage servers the storage
tests share (one HDFS, one moto S3 per session)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = REPO / "tests" / "data"
ASSETS = Path(os.environ.get("KINDLING_ASSETS") or REPO.parent / "shared").resolve()


def pytest_configure(config) -> None:
    """Every JVM the tests start here gets the tests' JVM options (netns_cluster.TEST_JVM_OPTIONS;
    the hosts' sshd sets them for what runs there)."""
    from netns_cluster import TEST_JVM_OPTIONS

    os.environ.setdefault("JAVA_TOOL_OPTIONS", TEST_JVM_OPTIONS)


@pytest.fixture(scope="session")
def hdfs_root(tmp_path_factory):
    """A real NameNode + DataNode on 127.0.0.1 (tests/hdfs_server.py); its hdfs://... root."""
    from hdfs_server import local_hdfs

    with local_hdfs(tmp_path_factory.mktemp("hdfs")) as root:
        yield root


@pytest.fixture(scope="session")
def s3_root():
    """moto's S3 on 127.0.0.1 with an empty bucket, reached the standard AWS ways (the
    environment's endpoint and credentials); its s3://... root."""
    from moto_endpoint import ACCESS_KEY, SECRET_KEY, client, moto_server

    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
                                            "AWS_SECRET_ACCESS_KEY", "AWS_REGION")}
    with moto_server("127.0.0.1") as endpoint:
        os.environ.update(AWS_ENDPOINT_URL_S3=endpoint, AWS_ACCESS_KEY_ID=ACCESS_KEY,
                          AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_REGION="us-east-1")
        client(endpoint).create_bucket(Bucket="kindling-data")
        yield "s3://kindling-data"
    for name, value in saved.items():
        os.environ.pop(name, None) if value is None else os.environ.update({name: value})


@pytest.fixture(scope="session")
def assets() -> Path:
    """The folder laid out like ../shared: datasets/mnist, datasets/buses-cars, models/."""
    if not (ASSETS / "datasets").is_dir():
        pytest.fail(f"offline assets not found at {ASSETS}; set KINDLING_ASSETS to the shared folder")
    return ASSETS


@pytest.fixture(scope="session")
def install_packages(tmp_path_factory):
    """(names of packages in tests/data) -> a folder they are installed in, by pip, as a user
    installs a package (`pip install --target`): real distributions with their entry points,
    seen by whatever puts the folder on its PYTHONPATH."""
    made: dict[tuple[str, ...], Path] = {}

    def install(*names: str) -> Path:
        if names not in made:
            root = tmp_path_factory.mktemp("packages")
            # built from copies: setuptools writes build/ and *.egg-info beside the sources
            sources = [str(shutil.copytree(PACKAGES / name, root / "src" / name)) for name in names]
            done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                                   "--no-build-isolation", "--no-index", "--target",
                                   str(root / "site"), *sources],
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr
            made[names] = root / "site"
        return made[names]
    return install


def pytest_collection_modifyitems(items) -> None:
    """A test that needs the HDFS server (a JVM NameNode and DataNode) is slow, whatever its
    module: the fast tier (`-m "not slow and not netns"`) starts no JVM. Then the longest
    units first, as a scheduler packs jobs (with `-n`, workers take units in this order): the
    multi-host ones, then those with the most slow tests, then the rest (the fast tier's) as
    collected."""
    for item in items:
        if "hdfs_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    slow = Counter(suite_unit(item.nodeid) for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: (not item.get_closest_marker("netns"), -slow[suite_unit(item.nodeid)]))


NETNS_UNIT = "tests/e2e: the netns cluster"
REHEARSAL_UNIT = "tests/e2e: the rehearsal cluster"
LOCAL_TARGET_UNIT = "tests/ops: the project's local target"
LOCAL_TARGET_MODULES = ("tests/ops/test_scripts.py", "tests/ops/test_requirements.py",
                        "tests/ops/test_own_jobs.py", "tests/ops/test_storage.py",
                        "tests/ops/test_targets.py", "tests/ops/test_notebook_local.py")
"""Modules whose fab runs use this checkout's local target: one Spark in .kindling/local, which
tests on two workers would start, stop and log into at once."""
LATER_UNITS_NICENESS = 10
"""The CPU weight of the other units (the rehearsal's too) against the netns chain's, the
longest: about 1 to 10 (for processes of the same session: sched_autogroup shares the CPU
between sessions first)."""


def suite_unit(nodeid: str) -> str:
    """The unit a test runs in with `-n`: its module, or the shared thing its tests use."""
    module = nodeid.split("::", 1)[0]
    if module.startswith("tests/e2e/test_rehearsal"):
        return REHEARSAL_UNIT
    if module.startswith("tests/e2e/") and module != "tests/e2e/test_fan_out.py":
        return NETNS_UNIT
    if module in LOCAL_TARGET_MODULES:
        return LOCAL_TARGET_UNIT
    return module


def pytest_xdist_auto_num_workers(config) -> int | None:
    """`-n auto` with the multi-host chains (root): a worker per core plus one. The chains spend
    much of their time waiting (downloads on a fresh machine, SSH, hosts booting, polls), and
    the extra worker, at a lower priority, fills that time with the other modules."""
    from netns_cluster import missing_prerequisites

    return None if missing_prerequisites() else (os.cpu_count() or 1) + 1


def pytest_xdist_make_scheduler(config, log):
    """With `-n` (pytest-xdist): a module's tests stay on one worker (its fixtures start once);
    the netns cluster's tests and the rehearsal's, which share their clusters, are one unit each;
    units go out in collection order, so these two, the longest, start at once on two workers.
    (A scheduler, not `xdist_group` marks: with pytest 9.2, xdist 3.8's loadgroup ignores
    them, pytest-dev/pytest-xdist#1386.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ClusterScopes(LoadScopeScheduling):
        """A worker gets its next unit while its last two tests run (pytest runs a test once it
        knows the next one). From the head of the queue, that committed a long unit to a worker
        still busy for minutes (the local target's 200 s waited behind the netns chain's last
        test while the other workers sat idle): a worker still in a long unit gets the queue's
        last unit (the fast tier's modules, seconds), and the head only when that is all it has
        left."""

        def __init__(self, config, log=None):
            super().__init__(config, log)
            self.spacers: set[str] = set()

        def _split_scope(self, nodeid: str) -> str:
            return suite_unit(nodeid)

        def _assign_work_unit(self, node) -> None:
            pending = {scope for scope, tests in self.assigned_work.get(node, {}).items()
                       if not all(tests.values())}
            if pending - self.spacers and len(self.workqueue) > 1:
                self.workqueue.move_to_end(next(reversed(self.workqueue)), last=False)
                self.spacers.add(next(iter(self.workqueue)))
            super()._assign_work_unit(node)

    config.option.loadscopereorder = False
    return ClusterScopes(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    """With `-n`, the longest chain first: a worker running any other unit runs it (and what its
    fixtures start) at a lower CPU priority, so the netns chain is not slowed down by work that
    can wait; the CPU is never idle while there is work (needs root to raise it back: as
    non-root the netns tests skip anyway)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        wanted = 0 if suite_unit(item.nodeid) == NETNS_UNIT else LATER_UNITS_NICENESS
        if os.getpriority(os.PRIO_PROCESS, 0) != wanted:
            with contextlib.suppress(PermissionError):
                os.setpriority(os.PRIO_PROCESS, 0, wanted)


def pytest_terminal_summary(terminalreporter) -> None:
    """One closing line when multi-host tests were skipped: easy to miss in a long -ra list."""
    skipped = [report for report in terminalreporter.stats.get("skipped", [])
               if "netns" in report.keywords]
    if skipped:
        reasons = sorted({str(report.longrepr[-1]).removeprefix("Skipped: ") for report in skipped
                          if isinstance(report.longrepr, tuple)})
        terminalreporter.write_line(f"{len(skipped)} multi-host tests did not run: "
                                    f"{'; '.join(reasons)}", yellow=True, bold=True)
