"""A deployed netns cluster losing a part: `fab` names the host and the part, and a deploy brings
it back. (The refused deploy of an unreachable worker is in test_fab_deploy, before the first
install; a spot host taken mid-job in test_fab_spot_autostop; a lost DataNode in test_rehearsal_hdfs.)
"""

from __future__ import annotations

import re
import time

import pytest

from e2e.fab_cli import (fab, fail_mid_run, new_log, no_job_left, one_error_line, run_folders,
                         wait_until)

pytestmark = pytest.mark.netns


def test_a_dead_spark_worker_is_named_before_launch_and_deploy_restarts_it(netns_cluster, env,
                                                                         deployed, wheelhouse):
    """worker-1's Spark worker daemon dies (sshd alive): `fab run` names it before starting
    anything, and `fab deploy` brings it back."""
    inventory = str(netns_cluster.inventory_path)
    worker = netns_cluster.inventory.workers[1]
    netns_cluster.exec(worker.name, "pkill -9 -f '[o]rg.apache.spark.deploy.worker.Worker'",
                       check=True)
    try:
        wait_until(lambda: "1/2 workers" in fab(env, "status", "--target", inventory).stdout,
                   "the master to see worker-1's worker gone", timeout=90, interval=2)
        started = time.monotonic()
        line = one_error_line(fab(env, "run", "classify", "--target", inventory), code=1)
        assert f"the Spark worker on {worker.name} ({worker.privateIp}) is " in line, line
        assert "`fab deploy classify` restarts it" in line and time.monotonic() - started < 60
        assert no_job_left(netns_cluster)
        done = fab(env, "deploy", "classify", "--target", inventory, "--wheelhouse", wheelhouse,
                   "--detach")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert re.search(rf"^{worker.name} +spark worker +started", done.stdout, re.M), done.stdout
        assert fab(env, "stop", "--job", "classify", "--target", inventory).returncode == 0
        assert "2/2 workers" in fab(env, "status", "--target", inventory).stdout
    finally:  # whatever failed, the next test finds no job and both Spark workers
        fab(env, "stop", "--target", inventory)
        if "2/2 workers" not in fab(env, "status", "--target", inventory).stdout:
            fab(env, "deploy", "classify", "--target", inventory, "--wheelhouse", wheelhouse,
                "--detach")
            fab(env, "stop", "--target", inventory)


def test_killed_python_workers_fail_train_mnist_naming_their_host(netns_cluster, env, deployed):
    """kill -9 of worker-1's Python workers (its TF node) mid-training: the job ends at once and
    the error names worker-1, not worker-0 whose node only lost its peer."""
    before = run_folders(netns_cluster, "train-mnist")
    code, err, seconds = fail_mid_run(
        netns_cluster, env, ["run", "train-mnist", "--epochs", "30", "--input-mode", "tensorflow"],
        lambda: "All TFSparkNodes started" in new_log(netns_cluster, "train-mnist", "driver", before),
        lambda: netns_cluster.exec("worker-1", "pkill -9 -f '[p]ython.* -m pyspark[.]daemon'",
                                   check=True))  # the JVMs stay
    print(f"train-mnist failed {seconds:.1f}s after worker-1's Python was killed: {err.strip()[-300:]}")
    assert code == 1, err
    assert "died on worker-1" in err and "on worker-0" not in err, err
