"""The hosts' watcher on a deployed netns cluster: auto-stop (each host's shutdown recorded)
around a detached train-ps (its roles and `fab logs` checked on the way), and spot interruption
notices (a fake instance metadata service gives one mid-job), with the cluster's data and runs
in moto's bucket.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from e2e.fab_cli import (FAB, REPO, fab, fail_mid_run, holds_throughout, job_processes, new_log,
                         no_job_left, one_error_line, processes_showing, record_shutdowns,
                         remove_watchers, results_of, run_folders, shutdown_recorded, wait_until,
                         watcher_uids)
from floors import ACCURACY_FLOOR
from imds_server import fake_imds
from moto_endpoint import SECRET_KEY, client

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

pytestmark = pytest.mark.netns


def staged_photos(cluster) -> dict[str, str]:
    """Host -> the photos fab has copied there (by earlier runs of local folders)."""
    return {host.name: cluster.exec(host, "find /srv/kindling/data -name '*.jp*g' | sort").stdout
            for host in cluster.hosts}


TRAIN_PS_ROLES = {"master": ["train_ps ps 0", "train_ps chief 0"],
                  "worker-0": ["train_ps worker 0"], "worker-1": ["train_ps worker 1"]}


def test_detached_train_ps_roles_and_logs_and_auto_stop_never_during_a_job_or_an_ssh_login(
        netns_cluster, env, wheelhouse, deployed, tmp_path):
    """The inventory names EC2 instances (so the hosts stop themselves) with idleStopMinutes
    scaled down to 6 s; no user data booted these hosts, so `fab deploy` installs the watcher,
    keeping the shutdown command the test gave each host (it records). `fab deploy train-ps
    --detach` puts each role on its host and `fab logs` shows every host's log once it is done;
    the hosts shut down once the cluster is idle, not while train-ps runs, not while someone is
    logged in."""
    outputs = json.loads(netns_cluster.inventory_path.read_text())
    for entry in [outputs["master"], *outputs["workers"]]:
        entry["instanceId"] = f"i-netns-{entry['name']}"
    inventory = tmp_path / "cluster.json"
    inventory.write_text(json.dumps(outputs | {"idleStopMinutes": 0.1, "hourlyCostUsd": {
        "running": 0.5, "stopped": 0.01}}))
    target = ("--target", str(inventory))
    record_shutdowns(netns_cluster)

    def shut_down() -> list[str]:
        return [h.name for h in netns_cluster.hosts if shutdown_recorded(netns_cluster, h)]
    try:
        job = fab(env, "deploy", "train-ps", *target, "--wheelhouse", wheelhouse, "--detach",
                  "--epochs", "1", "--job-args", "--steps-per-epoch 120")
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        argvs = {host.name: " ".join(job_processes(netns_cluster, host))
                 for host in netns_cluster.hosts}
        assert "auto-stop: the cluster stops after 0.1 idle minutes" in job.stdout, job.stdout
        for host in netns_cluster.hosts:  # installed by fab as its own user's, not root's
            user, running_as = watcher_uids(netns_cluster, host)
            assert user != "0" and running_as == [user] * 4, (host.name, user, running_as)
        started = time.monotonic()
        busy = " ".join(fab(env, "status", *target).stdout.split())  # unwrapped
        for host, roles in TRAIN_PS_ROLES.items():  # each role on its host, and only there
            for role in roles:
                assert role in argvs[host], (host, argvs[host])
            others = {r for h, rs in TRAIN_PS_ROLES.items() if h != host for r in rs}
            assert not any(r in argvs[host] for r in others), (host, argvs[host])
        assert re.search(r"auto-stop: busy \(master: job process train-ps-\S+/chief-0; .*"
                         r"worker-1: job process train-ps-\S+/worker-1\)", busy), busy
        cost = re.search(r"cost: \$0\.5000/h running \(\$0\.0100/h stopped\); up ([\d.]+) h "
                         r"since it last started: \$([\d.]+)", busy)
        assert cost and abs(float(cost.group(2)) - 0.5 * float(cost.group(1))) < 0.01, busy

        login = subprocess.Popen(["script", "-qfec", f"{FAB} ssh --target {inventory}",
                                  "/dev/null"], env=env, stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def ended_never_stopped() -> bool:  # checked at every poll while the job runs
                assert not shut_down(), "a host shut down while train-ps ran"
                return no_job_left(netns_cluster)
            wait_until(ended_never_stopped, "train-ps to end", timeout=300)
            ended = time.monotonic()
            # idle for 6 s (+1 s between checks) would have stopped the cluster during the job
            assert ended - started > 9, f"train-ps took {ended - started:.0f}s: too short to tell"
            wait_until(lambda: "SSH login" in fab(env, "status", *target).stdout,
                       "the master's watcher to see the login", timeout=60)
            # idleStopMinutes (6 s) and then some: a stop would have come within the window
            holds_throughout(lambda: not shut_down(),
                             "no host shutting down while someone is logged in", seconds=9)
        finally:
            login.terminate()
            login.wait(timeout=30)
        logged_out = time.monotonic()
        run_id = re.search(r"detached: (\S+)", job.stdout).group(1)
        chief_rc = netns_cluster.exec("master", f"cat /srv/kindling/runs/{run_id}/chief-0.rc")
        assert chief_rc.stdout.strip() == "0", (chief_rc.stdout, chief_rc.stderr)
        logs = fab(env, "logs", "--job", "train-ps", *target)
        assert logs.returncode == 0, logs.stderr
        assert "chief-0.log" in logs.stdout and "worker-1.log" in logs.stdout
        wait_until(lambda: len(shut_down()) == 3, "every host to shut down once the login ended",
                   timeout=60, interval=0.5)
        delay = time.monotonic() - logged_out
        status = fab(env, "status", *target)
        assert "auto-stop: stopped the cluster at " in status.stdout, status.stdout
    finally:
        fab(env, "stop", *target)
        remove_watchers(netns_cluster)
    print(f"auto-stop: every host shut down {delay:.1f}s after the login ended "
          "(idleStopMinutes 0.1 = 6 s, checked every 1 s)")


def driver_executors(master_ip: str) -> list[dict]:
    """The running Spark application's executors, from its driver's REST API ([] if none)."""
    api = f"http://{master_ip}:4040/api/v1/applications"
    try:
        app = json.load(NO_PROXY.open(api, timeout=5))[0]["id"]
        return json.load(NO_PROXY.open(f"{api}/{app}/executors", timeout=5))
    except (OSError, ValueError, IndexError, KeyError):
        return []


def busy_executor_on(master_ip: str, host_ip: str) -> bool:
    return any(e["hostPort"].startswith(host_ip + ":") and e["activeTasks"] > 0
               for e in driver_executors(master_ip))


def log_times(text: str, pattern: str) -> list[float]:
    """Epoch seconds of the Spark log lines (yy/mm/dd HH:MM:SS ...) matching pattern."""
    return [time.mktime(time.strptime(line[:17], "%y/%m/%d %H:%M:%S"))
            for line in text.splitlines() if re.search(pattern, line)]


@pytest.fixture(scope="module")
def spot(netns_cluster, env, deployed, bucket, tmp_path_factory):
    """The session cluster keeping its data and runs in moto's bucket, with worker-1 a spot
    instance whose notices come from a fake metadata service on the bridge: its inventory, the
    metadata service, and a user's shell with the bucket's credentials. Afterwards no notice and
    no watcher are left."""
    spot_host, other = netns_cluster.inventory.workers[1], netns_cluster.inventory.workers[0]
    with fake_imds(netns_cluster.bridge_address) as imds:
        outputs = json.loads(netns_cluster.inventory_path.read_text())
        for entry in outputs["workers"]:
            entry["spot"] = entry["name"] == spot_host.name
        inventory = tmp_path_factory.mktemp("spot") / "cluster.json"
        inventory.write_text(json.dumps(outputs | bucket["fields"] | {"imdsEndpoint": imds.endpoint}))
        try:
            yield SimpleNamespace(imds=imds, target=("--target", str(inventory)), host=spot_host,
                                  other=other, user=bucket["user"], endpoint=bucket["endpoint"])
        finally:
            imds.clear(spot_host.privateIp)
            fab(env, "stop", "--target", str(netns_cluster.inventory_path))
            remove_watchers(netns_cluster)


def test_spot_notice_fails_train_ps_at_once_and_the_next_run_resumes_from_the_bucket(
        netns_cluster, wheelhouse, spot):
    """A notice for worker-1 mid-job: train-ps fails at once naming worker-1, leaving no process,
    and the next `fab run train-ps` resumes from its last checkpoint in the bucket."""
    user, target, imds, host = spot.user, spot.target, spot.imds, spot.host
    try:
        before = run_folders(netns_cluster, "train-ps")
        code, err, seconds = fail_mid_run(
            netns_cluster, user, ["deploy", "train-ps", "--wheelhouse", wheelhouse, "--epochs",
                                  "30", "--job-args", "--steps-per-epoch 20"],
            lambda: "epoch 2/30" in new_log(netns_cluster, "train-ps", "chief-0", before),
            lambda: imds.notify(host.privateIp), Path(target[1]))
        print(f"train-ps failed {seconds:.1f}s after worker-1's spot notice (polled every "
              "5 s): " + err.strip()[-400:])
        line = err.strip().splitlines()[-1]
        assert code == 1 and f"worker 1 on {host.name} ({host.privateIp}) exited" in line, err
        assert f"{host.name} ({host.privateIp}) got a spot interruption notice: EC2 will " \
               "terminate it at 2026-12-06T18:00:00Z" in line, line
        assert "`fab run train-ps` resumes from the last checkpoint" in line, line
        assert no_job_left(netns_cluster)
        status = fab(user, "status", *target).stdout
        assert f"spot: {host.name} ({host.privateIp}) got a spot interruption" in status, status
    finally:
        imds.clear(host.privateIp)  # `pulumi up` replaced the instance
    wait_until(lambda: "spot:" not in fab(user, "status", *target).stdout,
               "the watcher to drop the notice", timeout=30, interval=2)
    interrupted = Path(REPO, re.search(r"logs in (\S+)", line).group(1))
    state = client(spot.endpoint).get_object(  # the last epoch the chief saved (ckpt-<epoch>)
        Bucket="cluster-photos", Key=f"runs/{interrupted.name}/checkpoints/checkpoint")
    reached = int(re.search(rb'model_checkpoint_path: "ckpt-(\d+)"',
                            state["Body"].read()).group(1))
    resumed = fab(user, "run", "train-ps", *target, "--epochs", str(reached + 2),
                  "--job-args", "--steps-per-epoch 20")
    history = json.loads((results_of(resumed) / "metrics.json").read_text())["history"]
    assert (f"resuming {interrupted.name} (stopped by a spot interruption on worker-1) "
            f"from its last checkpoint: --resume s3://cluster-photos/runs/"
            f"{interrupted.name}") in " ".join(resumed.stdout.split()), resumed.stdout
    assert history["first_epoch"] == reached + 1 and len(history["loss"]) == 2, history


def test_classify_from_s3_finishes_on_worker_0_after_worker_1_is_decommissioned_and_taken(
        netns_cluster, env, wheelhouse, spot):
    """classify reads the photos from s3:// through S3A on the executors (fab copies none);
    mid-run a notice makes Spark decommission worker-1's worker (no new tasks; its executor
    leaves), EC2 then takes the host (its Spark processes killed), and classify finishes on
    worker-0, saving its model into the run's folder in the bucket, where the fetched results
    land too."""
    user, target, imds, host, endpoint = spot.user, spot.target, spot.imds, spot.host, spot.endpoint
    master_ip = netns_cluster.inventory.master.privateIp
    missing = fab(user, "run", "classify", *target, "--data", "s3://no-such-bucket/vehicles")
    assert "bucket 'no-such-bucket' does not exist at " + endpoint in one_error_line(missing)
    plain = ("--target", str(netns_cluster.inventory_path))
    try:
        photos = staged_photos(netns_cluster)
        classify = subprocess.Popen(
            [FAB, "deploy", "classify", *target, "--wheelhouse", wheelhouse, "--data",
             "s3://cluster-photos/vehicles"], cwd=REPO, env=user, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        try:
            wait_until(lambda: classify.poll() is not None
                       or busy_executor_on(master_ip, host.privateIp),
                       "classify's tasks on worker-1", timeout=240, interval=0.5)
            scan_started = time.monotonic()
            shown, commands = processes_showing(netns_cluster, [SECRET_KEY])
            shown_spark, _ = processes_showing(netns_cluster, [netns_cluster.inventory.sparkSecret],
                                               ("cmdline",))
            scanned = time.monotonic() - scan_started
            imds.notify(host.privateIp)
            noticed = time.time()
            wait_until(lambda: classify.poll() is not None or netns_cluster.exec(
                host, "pgrep -f '[C]oarseGrainedExecutorBackend'").returncode,
                       "worker-1's executor to finish decommissioning", timeout=150)
            decommissioned = time.time() - noticed
            netns_cluster.exec(host, "pkill -9 -f '[o]rg.apache.spark'")  # EC2 takes it
            out, err = classify.communicate(timeout=300)
        finally:
            classify.kill()
            classify.communicate()
        photos_after = staged_photos(netns_cluster)
    finally:  # `pulumi up` replaces the host: no notice, no watcher. Its Spark worker comes back
        # with the next deploy that wants Spark, as after a real replacement (test_fab_failures).
        imds.clear(host.privateIp)
        remove_watchers(netns_cluster)
        fab(env, "stop", *plain)

    results = results_of(subprocess.CompletedProcess(classify.args, classify.returncode, out, err))
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["classes"] == ["buses", "cars"]
    assert metrics["accuracy"] >= ACCURACY_FLOOR["classify"], metrics
    assert photos_after == photos  # read where they are stored
    kept = client(endpoint).list_objects_v2(Bucket="cluster-photos", Prefix=f"runs/{results.name}/")
    kept = {item["Key"].split("/", 2)[2] for item in kept.get("Contents", [])}
    local = {p.relative_to(results).as_posix() for p in results.rglob("*") if p.is_file()}
    model = {key for key in kept if key.startswith("model/")}  # written there by the executors
    assert "metrics.json" in kept and kept - model == local, (kept - model) ^ local
    assert "model/metadata/_SUCCESS" in model and any("stages/1_" in key for key in model), model
    assert metrics["model_location"] == f"s3://cluster-photos/runs/{results.name}/model"
    assert f"results also in s3://cluster-photos/runs/{results.name}/" in out
    for each in netns_cluster.hosts:
        check = netns_cluster.exec(each, "cd /opt/kindling/jars/s3a && sha256sum -c --quiet SHA256SUMS")
        assert check.returncode == 0, (each, check.stdout, check.stderr)
    assert SECRET_KEY not in out + err
    # the endpoint's keys were in no command line or environment on any host during the run
    # (only in the 0600 credentials file the clients read), nor the Spark secret on a command line
    assert any("workloads/classify/main.py" in c for c in commands["master"]), commands["master"]
    assert all(any("CoarseGrainedExecutorBackend" in c for c in commands[w.name])
               for w in netns_cluster.inventory.workers), commands
    assert not shown and not shown_spark, shown + shown_spark
    print(f"no secret in the {sum(map(len, commands.values()))} command lines and environments "
          f"of the hosts' processes during classify from s3:// (scan: {scanned:.2f}s)")
    for each in netns_cluster.hosts:
        modes = netns_cluster.exec(each, "stat -c '%a' /opt/kindling/secrets/aws-credentials").stdout
        assert modes.strip() == "600", (each, modes)

    assert f"note: {host.name} ({host.privateIp}) got a spot interruption notice" in out
    logs = {name: "".join(p.read_text(errors="replace") for p in
                          (results / "logs" / name).glob("executor-*.stderr"))
            for name in (host.name, spot.other.name)}
    assert log_times(logs[host.name], "Decommission executor"), logs[host.name][-2000:]
    after = [t for t in log_times(logs[spot.other.name], "Finished task") if t >= noticed - 1]
    assert after, "no task finished on worker-0 after the notice"
    print(f"classify from s3://: worker-1's executor left {decommissioned:.1f}s after its spot "
          f"notice; worker-0 then finished {len(after)} tasks; accuracy "
          f"{metrics['accuracy']:.3f}; timings {metrics['timings_s']}")
