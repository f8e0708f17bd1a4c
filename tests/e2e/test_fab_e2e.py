"""`fab` typed as a user types it, against a real 3-host cluster of sshd network namespaces.

The session cluster runs in gateway mode, as on EC2: only the master has a public address and
the workers refuse SSH from this machine, so ops reaches them through the master. Tests that
need a deployed cluster ask for the `deployed` fixture (the first, real install), so any subset
of them runs in any order.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

from e2e.fab_cli import FAB, REPO, fab, fab_env, job_processes, one_error_line, results_of
from floors import ACCURACY_FLOOR
from kindling import known_hosts_line
from imds_server import fake_imds
from moto_endpoint import ACCESS_KEY, SECRET_KEY, client, moto_server, upload_folder

WHEELHOUSE = Path("/var/cache/kindling/wheelhouse")
MNIST_FLAGS = ["--epochs", "2", "--input-mode", "tensorflow"]
TRAIN_PS_FLAGS = ["--epochs", "1", "--job-args", "--steps-per-epoch 40"]
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def env(tmp_path_factory, assets):
    return fab_env(assets, tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def wheelhouse(env):
    """The wheels every host installs from (the hosts have no index): `fab wheelhouse`."""
    done = fab(env, "wheelhouse", "--folder", str(WHEELHOUSE), timeout=1800)
    assert done.returncode == 0, done.stderr
    return str(WHEELHOUSE)


def wait_until(condition, what: str, timeout: float = 60, interval: float = 1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(interval)


def run_folders(cluster, job: str) -> set[str]:
    """The master's run folders of job."""
    return set(cluster.exec("master", f"ls -d /srv/kindling/runs/{job}-*/ 2>/dev/null").stdout.split())


def new_log(cluster, job: str, process: str, before: set[str]) -> str:
    """The log of `process` in a run folder of job made after `before` was listed ("" if none)."""
    new = sorted(run_folders(cluster, job) - before)
    return cluster.exec("master", f"cat {new[-1]}{process}.log 2>/dev/null").stdout if new else ""


def host_state(cluster) -> dict[str, str]:
    """What a deploy would change on each host: kindling's folders, as a listing."""
    return {host.name: cluster.exec(host, "ls -R /opt/kindling /srv/kindling 2>/dev/null").stdout
            for host in cluster.hosts}


@pytest.fixture(scope="module")
def deployed(netns_cluster, env, wheelhouse):
    """An unreachable worker stops the deploy before any host changes; then the real first
    install from the wheelhouse and a train-mnist run."""
    inventory = str(netns_cluster.inventory_path)
    worker = netns_cluster.inventory.workers[1]
    before = host_state(netns_cluster)
    netns_cluster.stop_sshd(worker)
    try:
        started = time.monotonic()
        refused = fab(env, "deploy", "train-mnist", "--target", inventory, "--wheelhouse",
                      wheelhouse, *MNIST_FLAGS)
        refused_after = time.monotonic() - started
        unchanged = host_state(netns_cluster) == before
    finally:
        netns_cluster.start_sshd(worker)
    started = time.monotonic()
    done = fab(env, "deploy", "train-mnist", "--target", inventory, "--wheelhouse", wheelhouse,
               *MNIST_FLAGS, timeout=1500)
    print(f"first deploy + train-mnist: {time.monotonic() - started:.1f}s; "
          + (re.search(r"deploy took [\d.]+s", done.stdout) or re.search("", "")).group(0))
    return {"refused": refused, "refused_after": refused_after, "unchanged": unchanged,
            "worker": worker, "done": done}


def test_bad_input_is_one_line_and_changes_nothing(netns_cluster, env, tmp_path):
    inventory = str(netns_cluster.inventory_path)
    before = host_state(netns_cluster)
    assert "unknown job 'nope'" in one_error_line(fab(env, "deploy", "nope", "--target", inventory))
    assert "not found" in one_error_line(fab(env, "deploy", "classify", "--target",
                                             str(tmp_path / "absent.json")))
    malformed = tmp_path / "malformed.json"
    malformed.write_text('{"clusterName": ')
    assert "not valid JSON" in one_error_line(fab(env, "deploy", "classify", "--target",
                                                  str(malformed)))
    no_workers = tmp_path / "no-workers.json"
    no_workers.write_text(json.dumps(json.loads(netns_cluster.inventory_path.read_text())
                                     | {"workers": []}))
    assert "'workers' is empty" in one_error_line(fab(env, "deploy", "classify", "--target",
                                                      str(no_workers)))
    assert "data folder not found" in one_error_line(fab(env, "deploy", "classify", "--target",
                                                         inventory, "--data",
                                                         str(tmp_path / "no-photos")))
    assert "--epochs must be at least 1" in one_error_line(fab(env, "run", "train-mnist",
                                                               "--target", inventory,
                                                               "--epochs", "-1"))
    assert host_state(netns_cluster) == before


def spoofed_inventory(netns_cluster, tmp_path, host: str) -> Path:
    """The inventory with another key pinned for host: a swapped or spoofed machine."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    outputs = json.loads(netns_cluster.inventory_path.read_text())
    impostor = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    address = netns_cluster.inventory.host(host).address
    lines = [line for line in outputs["knownHosts"].splitlines()
             if address not in line.split()[0].split(",")]
    outputs["knownHosts"] = "\n".join([*lines, known_hosts_line([address], impostor)])
    spoofed = tmp_path / f"spoofed-{host}.json"
    spoofed.write_text(json.dumps(outputs))
    return spoofed


@pytest.mark.parametrize("host", ["master", "worker-0"])
def test_wrong_host_key_is_refused(netns_cluster, env, tmp_path, host):
    spoofed = spoofed_inventory(netns_cluster, tmp_path, host)
    line = one_error_line(fab(env, "status", "--target", str(spoofed)))
    assert host in line and "host key that differs" in line


def openssh(env: dict, inventory: Path, host: str, *command: str) -> subprocess.CompletedProcess:
    """`ssh -F <fab's ssh_config> HOST COMMAND`, the argv `fab ssh --host HOST` execs."""
    from kindling import load_inventory
    from ops.ssh import ssh_command

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(Path(env["HOME"], ".cache")))
        argv = ssh_command(load_inventory(inventory), load_inventory(inventory).host(host))
    return subprocess.run([*argv, *command], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=env)


def test_fab_ssh_goes_through_the_master_with_both_keys_pinned(netns_cluster, env, tmp_path):
    worker = netns_cluster.inventory.workers[0]
    done = openssh(env, netns_cluster.inventory_path, worker.name, "hostname")
    assert (done.returncode, done.stdout.strip()) == (0, worker.hostname), done.stderr
    typed = subprocess.run([FAB, "ssh", "--host", worker.name, "--target",
                            str(netns_cluster.inventory_path)], cwd=REPO, env=env, input="hostname\n",
                           capture_output=True, text=True, timeout=60)
    assert typed.returncode == 0 and typed.stdout.strip() == worker.hostname, typed.stderr
    for host in ("master", worker.name):  # a wrong key on either hop ends the connection
        refused = openssh(env, spoofed_inventory(netns_cluster, tmp_path, host), worker.name,
                          "hostname")
        assert refused.returncode == 255 and worker.hostname not in refused.stdout
        assert "Host key verification failed" in refused.stderr, refused.stderr
    # the spoofed inventories rewrote the cluster's known_hosts: the real one restores it
    assert openssh(env, netns_cluster.inventory_path, worker.name, "true").returncode == 0


def test_unreachable_host_then_real_install_and_train_mnist(netns_cluster, env, deployed):
    worker = deployed["worker"]
    line = one_error_line(deployed["refused"])
    assert f"{worker.name} ({worker.address}, through the master) is unreachable" in line
    assert deployed["refused_after"] < 60 and deployed["unchanged"]
    done = deployed["done"]
    results = results_of(done)
    assert re.search(r"python deps +installed", done.stdout)
    accuracy = json.loads((results / "metrics.json").read_text())["accuracy"]
    print(f"train-mnist accuracy on 3 hosts: {accuracy:.4f}")
    assert accuracy >= ACCURACY_FLOOR["train-mnist"]
    for host in netns_cluster.inventory.workers:  # executors ran on both worker hosts
        assert list((results / "logs" / host.name).glob("executor-*.stderr")), host.name
    assert not list((results / "logs").glob("master/executor-*"))
    # TFoS logs every node's manager authkey: no file of the fetched run folder, nor the
    # terminal stream, holds one
    logs = [done.stdout, *(p.read_text(errors="replace") for p in results.rglob("*")
                           if p.is_file() and p.suffix in {".log", ".stderr", ".stdout", ".json", ""})]
    assert sum("'authkey': <redacted>" in log for log in logs) >= 2  # the driver's and a node's
    assert not [log for log in logs if re.search(r"authkey'?: b['\"]", log)]
    status = fab(env, "status", "--target", str(netns_cluster.inventory_path))
    assert status.returncode == 0, status.stderr
    registered = re.search(r"2/2 workers: (.*)", status.stdout).group(1)
    assert sorted(registered.split(", ")) == sorted(w.privateIp for w in netns_cluster.inventory.workers)


def test_run_before_deploy_names_the_missing_step(netns_cluster, env):
    """The master as before any deploy (its install stamps hidden, if it has any)."""
    netns_cluster.exec("master", "mv /opt/kindling/stamps /opt/kindling/stamps.off 2>/dev/null; true")
    try:
        line = one_error_line(fab(env, "run", "classify", "--target", str(netns_cluster.inventory_path)))
    finally:
        netns_cluster.exec("master", "[ ! -d /opt/kindling/stamps.off ] || "
                                     "mv /opt/kindling/stamps.off /opt/kindling/stamps")
    assert "kindling is not deployed on master" in line and "`fab deploy classify` first" in line


def test_second_deploy_skips_every_install_step(netns_cluster, env, wheelhouse, deployed):
    inventory = str(netns_cluster.inventory_path)
    started = time.monotonic()
    done = fab(env, "deploy", "train-mnist", "--target", inventory, "--wheelhouse", wheelhouse,
               "--detach", *MNIST_FLAGS)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    steps = re.findall(r"^(\S+) +(cloud-init|folders|base packages|python deps|kindling wheel|"
                       r"data|spark master|spark worker) +(\S+)", done.stdout, re.M)
    assert len(steps) == 3 * 6 + 3, done.stdout
    assert all(status == "skipped" for _, _, status in steps), steps
    print(f"second deploy (everything skipped, detached launch): {took:.1f}s")
    stopped = fab(env, "stop", "--job", "train-mnist", "--target", inventory)
    assert stopped.returncode == 0, stopped.stderr
    again = fab(env, "stop", "--job", "train-mnist", "--target", inventory)
    assert again.returncode == 0, again.stderr
    wait_until(lambda: not any("train_mnist" in p for h in netns_cluster.hosts
                               for p in job_processes(netns_cluster, h)),
               "train-mnist's processes to go after `fab stop`", timeout=30)


def staged_photos(cluster) -> dict[str, str]:
    """Host -> the photos fab has copied there (by earlier runs of local folders)."""
    return {host.name: cluster.exec(host, "find /srv/kindling/data -name '*.jp*g' | sort").stdout
            for host in cluster.hosts}


@pytest.fixture(scope="module")
def bucket(netns_cluster, env, assets):
    """A moto S3 server on the bridge as the cluster's store, the photos in its bucket under
    vehicles/: the inventory fields that name it, and a user's shell with credentials."""
    with moto_server(netns_cluster.bridge_address) as endpoint:
        upload_folder(endpoint, "cluster-photos", "vehicles", assets / "datasets" / "buses-cars")
        yield {"fields": {"s3Endpoint": endpoint, "bucket": "cluster-photos"}, "endpoint": endpoint,
               "user": env | {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}}


def instance_states(ec2, ids: dict[str, str]) -> dict[str, str]:
    found = ec2.describe_instances(InstanceIds=list(ids.values()))["Reservations"]
    states = {i["InstanceId"]: i["State"]["Name"] for r in found for i in r["Instances"]}
    return {name: states[instance] for name, instance in ids.items()}


def test_auto_stop_stops_the_idle_cluster_but_never_during_a_job_or_an_ssh_login(
        netns_cluster, env, wheelhouse, deployed, tmp_path):
    """moto on the bridge stands for EC2 and the hosts' metadata service (the instance role's
    credentials); idleStopMinutes scaled down to 6 s. The master's watcher stops every instance
    once the cluster is idle, not while train-ps runs on it, not while someone is logged in."""
    with moto_server(netns_cluster.bridge_address) as endpoint:
        ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        image = ec2.describe_images()["Images"][0]["ImageId"]
        ids = {host.name: ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)
               ["Instances"][0]["InstanceId"] for host in netns_cluster.hosts}
        outputs = json.loads(netns_cluster.inventory_path.read_text())
        for entry in [outputs["master"], *outputs["workers"]]:
            entry["instanceId"] = ids[entry["name"]]
        inventory = tmp_path / "cluster.json"
        inventory.write_text(json.dumps(outputs | {"region": "us-east-1", "idleStopMinutes": 0.1,
                                                   "ec2Endpoint": endpoint,
                                                   "imdsEndpoint": endpoint,
                                                   "hourlyCostUsd": {"running": 0.5,
                                                                     "stopped": 0.01}}))
        target = ("--target", str(inventory))
        try:
            job = fab(env, "deploy", "train-ps", *target, "--wheelhouse", wheelhouse, "--detach",
                      "--epochs", "1", "--job-args", "--steps-per-epoch 250")
            assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
            assert "auto-stop: the cluster stops after 0.1 idle minutes" in job.stdout, job.stdout
            started = time.monotonic()
            busy = " ".join(fab(env, "status", *target).stdout.split())  # unwrapped
            assert re.search(r"auto-stop: busy \(master: job process train-ps-\S+/chief-0; .*"
                             r"worker-1: job process train-ps-\S+/worker-1\)", busy), busy
            cost = re.search(r"cost: \$0\.5000/h running \(\$0\.0100/h stopped\); up ([\d.]+) h "
                             r"since it last started: \$([\d.]+)", busy)
            assert cost and float(cost.group(1)) < 0.05, busy  # the watcher started just now
            wait_until(lambda: not any(job_processes(netns_cluster, h) for h in netns_cluster.hosts),
                       "train-ps to end", timeout=300)
            ended = time.monotonic()
            # idle for 6 s (+1 s between checks) would have stopped the cluster during the job
            assert ended - started > 9, f"train-ps took {ended - started:.0f}s: too short to tell"
            assert set(instance_states(ec2, ids).values()) == {"running"}
            wait_until(lambda: set(instance_states(ec2, ids).values()) == {"stopped"},
                       "the idle cluster to be stopped", timeout=60, interval=0.5)
            delay = time.monotonic() - ended
            status = fab(env, "status", *target)
            assert "auto-stop: stopped the cluster (idle since" in status.stdout, status.stdout

            ec2.start_instances(InstanceIds=list(ids.values()))  # as `pulumi up` would
            login = subprocess.Popen(["script", "-qfec", f"{FAB} ssh --target {inventory}",
                                      "/dev/null"], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_until(lambda: "SSH login" in fab(env, "status", *target).stdout,
                           "the master's watcher to see the login", timeout=60)
                time.sleep(9)  # idleStopMinutes and then some: a stop would have come by now
                assert set(instance_states(ec2, ids).values()) == {"running"}
            finally:
                login.terminate()
                login.wait(timeout=30)
            wait_until(lambda: set(instance_states(ec2, ids).values()) == {"stopped"},
                       "the cluster to be stopped once the login ended", timeout=60, interval=0.5)
        finally:
            for host in netns_cluster.hosts:
                netns_cluster.exec(host, "pkill -f '[o]ps.autostop'; rm -f /opt/kindling/stamps/autostop")
    print(f"auto-stop: the cluster was stopped {delay:.1f}s after train-ps ended "
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


def test_spot_notice_train_ps_fails_fast_and_resumes_classify_from_s3_finishes_without_the_host(
        netns_cluster, env, wheelhouse, deployed, bucket, tmp_path):
    """The cluster keeps its data and runs in the moto bucket, and worker-1 is a spot instance:
    a fake metadata service on the bridge gives it EC2's two-minute notice mid-job.

    train-ps fails at once naming worker-1, leaving no process, and the next `fab run train-ps`
    resumes from its last checkpoint in the bucket. classify reads the photos from s3:// through
    S3A on the executors (fab copies none); mid-run Spark decommissions worker-1's worker (no new
    tasks; its executor leaves), EC2 then takes the host (its Spark processes killed), and
    classify finishes on worker-0, saving its model into the run's folder in the bucket, where
    the fetched results land too."""
    endpoint, user = bucket["endpoint"], bucket["user"]
    spot, other = netns_cluster.inventory.workers[1], netns_cluster.inventory.workers[0]
    master_ip = netns_cluster.inventory.master.privateIp
    with fake_imds(netns_cluster.bridge_address) as imds:
        outputs = json.loads(netns_cluster.inventory_path.read_text())
        for entry in outputs["workers"]:
            entry["spot"] = entry["name"] == spot.name
        inventory = tmp_path / "cluster.json"
        inventory.write_text(json.dumps(outputs | bucket["fields"] | {"imdsEndpoint": imds.endpoint}))
        target = ("--target", str(inventory))
        missing = fab(user, "run", "classify", *target, "--data", "s3://no-such-bucket/vehicles")
        assert "bucket 'no-such-bucket' does not exist at " + endpoint in one_error_line(missing)
        try:
            before = run_folders(netns_cluster, "train-ps")
            code, err, seconds = fail_mid_run(
                netns_cluster, user, ["deploy", "train-ps", "--wheelhouse", wheelhouse, "--epochs",
                                      "30", "--job-args", "--steps-per-epoch 20"],
                lambda: "epoch 2/30" in new_log(netns_cluster, "train-ps", "chief-0", before),
                lambda: imds.notify(spot.privateIp), inventory)
            print(f"train-ps failed {seconds:.1f}s after worker-1's spot notice (polled every "
                  "5 s): " + err.strip()[-400:])
            line = err.strip().splitlines()[-1]
            assert code == 1 and f"worker 1 on {spot.name} ({spot.privateIp}) exited" in line, err
            assert f"{spot.name} ({spot.privateIp}) got a spot interruption notice: EC2 will " \
                   "terminate it at 2026-12-06T18:00:00Z" in line, line
            assert "`fab run train-ps` resumes from the last checkpoint" in line, line
            assert not any(job_processes(netns_cluster, h) for h in netns_cluster.hosts)
            status = fab(user, "status", *target).stdout
            assert f"spot: {spot.name} ({spot.privateIp}) got a spot interruption" in status, status

            imds.clear(spot.privateIp)  # `pulumi up` replaced the instance
            wait_until(lambda: "spot:" not in fab(user, "status", *target).stdout,
                       "the watcher to drop the notice", timeout=30, interval=2)
            interrupted = Path(REPO, re.search(r"logs in (\S+)", line).group(1))
            state = client(endpoint).get_object(  # the last epoch the chief saved (ckpt-<epoch>)
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

            photos = staged_photos(netns_cluster)
            classify = subprocess.Popen(
                [FAB, "deploy", "classify", *target, "--wheelhouse", wheelhouse, "--data",
                 "s3://cluster-photos/vehicles"], cwd=REPO, env=user, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
            try:
                wait_until(lambda: classify.poll() is not None
                           or busy_executor_on(master_ip, spot.privateIp),
                           "classify's tasks on worker-1", timeout=240, interval=0.5)
                imds.notify(spot.privateIp)
                noticed = time.time()
                wait_until(lambda: classify.poll() is not None or netns_cluster.exec(
                    spot, "pgrep -f '[C]oarseGrainedExecutorBackend'").returncode,
                           "worker-1's executor to finish decommissioning", timeout=150)
                decommissioned = time.time() - noticed
                netns_cluster.exec(spot, "pkill -9 -f '[o]rg.apache.spark'")  # EC2 takes it
                out, err = classify.communicate(timeout=300)
            finally:
                classify.kill()
            photos_after = staged_photos(netns_cluster)
        finally:
            imds.clear(spot.privateIp)
            for host in netns_cluster.hosts:
                netns_cluster.exec(host, "pkill -f '[o]ps.autostop'; rm -f /opt/kindling/stamps/"
                                         "autostop /srv/kindling/autostop/spot-notice.json")
            restored = fab(env, "deploy", "classify", "--target", str(netns_cluster.inventory_path),
                           "--wheelhouse", wheelhouse, "--detach")
            fab(env, "stop", "--job", "classify", "--target", str(netns_cluster.inventory_path))
    assert restored.returncode == 0, restored.stdout[-2000:] + restored.stderr[-2000:]

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
    for host in netns_cluster.hosts:
        check = netns_cluster.exec(host, "cd /opt/kindling/jars/s3a && sha256sum -c --quiet SHA256SUMS")
        assert check.returncode == 0, (host, check.stdout, check.stderr)
    assert SECRET_KEY not in out + err

    assert f"note: {spot.name} ({spot.privateIp}) got a spot interruption notice" in out
    logs = {host: "".join(p.read_text(errors="replace") for p in
                          (results / "logs" / host).glob("executor-*.stderr"))
            for host in (spot.name, other.name)}
    assert log_times(logs[spot.name], "Decommission executor"), logs[spot.name][-2000:]
    after = [t for t in log_times(logs[other.name], "Finished task") if t >= noticed - 1]
    assert after, "no task finished on worker-0 after the notice"
    print(f"classify from s3://: worker-1's executor left {decommissioned:.1f}s after its spot "
          f"notice; worker-0 then finished {len(after)} tasks; accuracy "
          f"{metrics['accuracy']:.3f}; timings {metrics['timings_s']}")


@pytest.fixture(scope="module")
def train_ps_run(netns_cluster, env, wheelhouse, deployed):
    """`fab deploy train-ps --detach`: the argv on each host while it runs, then its exit code."""
    done = fab(env, "deploy", "train-ps", "--target", str(netns_cluster.inventory_path),
               "--wheelhouse", wheelhouse, "--detach", *TRAIN_PS_FLAGS)
    assert done.returncode == 0, done.stderr
    run_id = re.search(r"detached: (\S+)", done.stdout).group(1)
    argvs = {host.name: " ".join(job_processes(netns_cluster, host)) for host in netns_cluster.hosts}
    chief_rc = f"/srv/kindling/runs/{run_id}/chief-0.rc"
    wait_until(lambda: netns_cluster.exec("master", f"test -s {chief_rc}").returncode == 0,
               "the chief to finish", timeout=300, interval=2)
    wait_until(lambda: not any(job_processes(netns_cluster, h) for h in netns_cluster.hosts),
               "every train-ps process to end")
    return argvs, netns_cluster.exec("master", f"cat {chief_rc}").stdout.strip()


def test_deploy_train_ps_puts_each_role_on_its_host(train_ps_run):
    argvs, chief_rc = train_ps_run
    expected = {"master": ["train_ps ps 0", "train_ps chief 0"],
                "worker-0": ["train_ps worker 0"], "worker-1": ["train_ps worker 1"]}
    for host, roles in expected.items():
        for role in roles:
            assert role in argvs[host], (host, argvs[host])
        others = {r for h, rs in expected.items() if h != host for r in rs}
        assert not any(r in argvs[host] for r in others), (host, argvs[host])
    assert chief_rc == "0"


def test_exec_put_logs_and_ui(netns_cluster, env, tmp_path, train_ps_run):
    inventory = str(netns_cluster.inventory_path)
    done = fab(env, "exec", "hostname", "--role", "workers", "--target", inventory)
    assert done.returncode == 0, done.stderr
    for worker in netns_cluster.inventory.workers:
        assert f"[{worker.name}] {worker.hostname}" in done.stdout
    assert "[master]" not in done.stdout

    note = tmp_path / "note.txt"
    note.write_text("kindling\n")
    assert fab(env, "put", str(note), "/tmp/note.txt", "--target", inventory).returncode == 0
    for host in netns_cluster.hosts:
        assert netns_cluster.exec(host, "cat /tmp/note.txt").stdout == "kindling\n", host.name

    logs = fab(env, "logs", "--job", "train-ps", "--target", inventory)
    assert logs.returncode == 0, logs.stderr
    assert "chief-0.log" in logs.stdout and "worker-1.log" in logs.stdout

    ui = subprocess.Popen([FAB, "ui", "--seconds", "20", "--target", inventory], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = re.search(r"Spark master UI: (\S+)", ui.stdout.readline()).group(1)
        deadline = time.monotonic() + 15
        while True:  # the tunnel needs a moment after the URL is printed
            try:
                page = NO_PROXY.open(url + "json/", timeout=5).read()
                break
            except OSError:
                assert time.monotonic() < deadline, ui.stderr.read() if ui.poll() is not None else ""
                time.sleep(0.5)
        assert json.loads(page)["status"] == "ALIVE"
    finally:
        ui.terminate()
        ui.wait(timeout=30)


def fail_mid_run(cluster, env, fab_args: list[str], under_way, interrupt,
                 inventory: Path | None = None) -> tuple[int, str, float]:
    """`fab ...` in the background; once under_way() says so, interrupt(). Its exit code,
    stderr, and the seconds from the interruption to its end."""
    target = ["--target", str(inventory or cluster.inventory_path)]
    run = subprocess.Popen([FAB, *fab_args, *target], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: run.poll() is not None or under_way(), "the run to get under way",
                   timeout=240, interval=1)
        assert run.poll() is None, run.stderr.read()
        interrupt()
        interrupted = time.monotonic()
        _, err = run.communicate(timeout=180)
        return run.returncode, err, time.monotonic() - interrupted
    finally:
        run.kill()
        fab(env, "stop", *target)  # whatever is left


def test_a_dead_spark_worker_is_named_before_launch_and_deploy_restarts_it(netns_cluster, env,
                                                                         deployed, wheelhouse):
    """worker-1's Spark worker daemon dies (sshd alive): `fab run` names it before starting
    anything, and `fab deploy` brings it back."""
    inventory = str(netns_cluster.inventory_path)
    worker = netns_cluster.inventory.workers[1]
    netns_cluster.exec(worker.name, "pkill -9 -f '[o]rg.apache.spark.deploy.worker.Worker'",
                       check=True)
    wait_until(lambda: "1/2 workers" in fab(env, "status", "--target", inventory).stdout,
               "the master to see worker-1's worker gone", timeout=90, interval=2)
    started = time.monotonic()
    line = one_error_line(fab(env, "run", "classify", "--target", inventory), code=1)
    assert f"the Spark worker on {worker.name} ({worker.privateIp}) is " in line, line
    assert "`fab deploy classify` restarts it" in line and time.monotonic() - started < 60
    assert not any(job_processes(netns_cluster, h) for h in netns_cluster.hosts)
    done = fab(env, "deploy", "classify", "--target", inventory, "--wheelhouse", wheelhouse,
               "--detach")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert re.search(rf"^{worker.name} +spark worker +started", done.stdout, re.M), done.stdout
    assert fab(env, "stop", "--job", "classify", "--target", inventory).returncode == 0
    assert "2/2 workers" in fab(env, "status", "--target", inventory).stdout


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


@pytest.fixture(scope="module")
def hdfs_cluster(netns_cluster, bucket, wheelhouse, deployed, tmp_path_factory, assets):
    """The session cluster with `hdfs: true` and the moto bucket in its inventory: `fab deploy
    train-ps` brings up the NameNode and the DataNodes, uploads the local MNIST folder into HDFS
    once, trains from there and keeps its checkpoints in the bucket; the photos put into HDFS
    as a user would, with `fab put` and `hdfs dfs`."""
    env = bucket["user"]
    inventory = tmp_path_factory.mktemp("hdfs") / "cluster.json"
    inventory.write_text(json.dumps(json.loads(netns_cluster.inventory_path.read_text())
                                    | bucket["fields"] | {"hdfs": True}))
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
    print(f"deploy with HDFS (jars, NameNode, DataNodes, MNIST into HDFS, train-ps): {took:.1f}s\n"
          + "\n".join(line for line in done.stdout.splitlines() if "installing..." not in line))
    return {"target": target, "deploy": done, "mnist": mnist, "env": env}


def listening_addresses(cluster, host) -> dict[int, set[str]]:
    """Port -> the addresses a host listens on (IPv4-mapped IPv6 written as IPv4)."""
    bound: dict[int, set[str]] = {}
    for line in cluster.exec(host, "ss -ltnH").stdout.splitlines():
        address, _, port = line.split()[3].rpartition(":")
        bound.setdefault(int(port), set()).add(address.strip("[]").removeprefix("::ffff:"))
    return bound


def test_hdfs_namenode_on_the_master_datanodes_on_the_workers_private_addresses_only(
        netns_cluster, hdfs_cluster):
    env = hdfs_cluster["env"]  # with the bucket's credentials
    target = hdfs_cluster["target"]
    assert "hdfs ready: 2 DataNodes live" in hdfs_cluster["deploy"].stdout
    for host, ports in [(netns_cluster.inventory.master, (8020, 9870)),
                        *((worker, (9866, 9864, 9867)) for worker in netns_cluster.inventory.workers)]:
        bound = listening_addresses(netns_cluster, host)
        for port in ports:  # on the private address only
            assert bound.get(port) == {host.privateIp}, (host.name, port, bound)
    status = fab(env, "status", *target)
    assert status.returncode == 0, status.stderr
    assert re.search(r"hdfs: NameNode hdfs://\S+:8020 up, 2/2 DataNodes live, capacity [\d.]+ GB",
                     status.stdout), status.stdout

    missing = fab(env, "run", "classify", *target, "--data", "hdfs:///photos/nowhere")
    assert "no such path in the cluster's HDFS" in one_error_line(missing)
    no_hdfs = fab(env, "run", "classify", "--target", str(netns_cluster.inventory_path),
                  "--data", "hdfs:///photos/vehicles")
    assert "runs no HDFS; `pulumi config set hdfs true`" in one_error_line(no_hdfs)
    # classify reading HDFS through Spark: the rehearsal's HDFS test (fresh hosts)


def test_hdfs_on_a_host_without_java_is_one_line_before_anything_changes(
        netns_cluster, wheelhouse, hdfs_cluster):
    """worker-1 loses its `java` and its apt-get (bind mounts in its own mount namespace)."""
    env = hdfs_cluster["env"]  # with the bucket's credentials
    worker = "worker-1"
    java = netns_cluster.exec(worker, "readlink -f $(command -v java)", check=True).stdout.strip()
    masked = [java, "/usr/bin/apt-get"]
    netns_cluster.exec(worker, " && ".join(f"mount --bind /dev/null {path}" for path in masked),
                       check=True)
    try:
        before = host_state(netns_cluster)
        line = one_error_line(fab(env, "deploy", "train-ps", *hdfs_cluster["target"],
                                  "--wheelhouse", wheelhouse, *TRAIN_PS_FLAGS))
        assert line.startswith(f"error: hdfs: true needs Java on every host, and {worker} has no "
                               "`java` and no apt-get"), line
        assert "pulumi config set hdfs false" in line
        assert host_state(netns_cluster) == before
    finally:
        netns_cluster.exec(worker, " ; ".join(f"umount {path}" for path in masked))
    assert netns_cluster.exec(worker, "java -version").returncode == 0


def test_hdfs_holds_local_data_once_and_train_ps_resumes_from_it_on_another_host(
        netns_cluster, wheelhouse, hdfs_cluster):
    """The fixture's train-ps read MNIST from HDFS (uploaded once, no worker got a copy) and
    left its checkpoints in the bucket, s3://cluster-photos/runs/<id>; a sync run, whose chief
    is on worker-0 instead of the master, resumes from them at epoch 2."""
    env = hdfs_cluster["env"]  # with the bucket's credentials
    target, first = hdfs_cluster["target"], hdfs_cluster["deploy"]
    uploaded = re.search(r"data: mnist copied once into (hdfs:///kindling/data/(\w+)/mnist)",
                         first.stdout)
    mnist, digest = uploaded.groups()
    for worker in netns_cluster.inventory.workers:  # the hosts' copies are named by the same hash
        assert netns_cluster.exec(worker, f"test -e /srv/kindling/data/{digest}").returncode == 1
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

    mnist_run = fab(env, "deploy", "train-mnist", *target, "--wheelhouse", wheelhouse, "--data",
                    mnist, "--input-mode", "tensorflow", "--epochs", "1", "--job-args", "--steps 20")
    assert "2 TFRecord shards written to hdfs://" in mnist_run.stdout, mnist_run.stdout
    assert json.loads((results_of(mnist_run) / "metrics.json").read_text())["steps"] == 20
    shards = fab(env, "exec", "--role", "master", *target,
                 f"/opt/kindling/bin/hdfs dfs -ls -R {mnist}_tfrecords")
    assert shards.stdout.count(".tfrecord") == 2, shards.stdout + shards.stderr


def test_hdfs_a_killed_datanode_is_named_and_a_second_deploy_restarts_it_without_reformatting(
        netns_cluster, wheelhouse, hdfs_cluster):
    env = hdfs_cluster["env"]  # with the bucket's credentials
    target = hdfs_cluster["target"]
    version = netns_cluster.exec("master", "grep -E 'clusterID|namespaceID' "
                                           "/srv/kindling/hdfs/name/current/VERSION").stdout
    assert "clusterID=kindling-" in version
    worker = netns_cluster.inventory.workers[1]
    netns_cluster.exec(worker, "kill $(cat /srv/kindling/hdfs/datanode.pid)")
    named = f"DataNode down on {worker.name} ({worker.privateIp})"
    wait_until(lambda: named in fab(env, "status", *target).stdout,
               f"`fab status` to name {worker.name}'s DataNode", timeout=120, interval=3)
    again = fab(env, "deploy", "train-ps", *target, "--wheelhouse", wheelhouse, "--detach",
                *TRAIN_PS_FLAGS)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert fab(env, "stop", "--job", "train-ps", *target).returncode == 0
    assert re.search(rf"^{worker.name} +hdfs datanode +installed", again.stdout, re.M), again.stdout
    assert re.search(r"^master +hdfs namenode +skipped", again.stdout, re.M), again.stdout
    assert netns_cluster.exec("master", "grep -E 'clusterID|namespaceID' "
                                        "/srv/kindling/hdfs/name/current/VERSION").stdout == version
    listing = fab(env, "exec", "--role", "master", *target,
                  "/opt/kindling/bin/hdfs dfs -ls /photos/vehicles")
    assert "/photos/vehicles/buses" in listing.stdout, listing.stdout + listing.stderr
    assert "2/2 DataNodes live" in fab(env, "status", *target).stdout
