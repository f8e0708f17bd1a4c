"""`fab` typed as a user types it, against a real 3-host cluster of sshd network namespaces.

The tests run in file order on one session cluster: bad input first (nothing may change on the
hosts), then the real install path from a wheelhouse, then runs on the deployed cluster, faults.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ops.inventory import known_hosts_line
from tests.accuracy_floors import ACCURACY_FLOORS

REPO = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")
WHEELHOUSE = Path("/var/cache/kindling/wheelhouse")
MNIST_FLAGS = ["--epochs", "2", "--input-mode", "tensorflow"]
TRAIN_PS_FLAGS = ["--epochs", "1", "--job-args", "--steps-per-epoch 40"]

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def env(tmp_path_factory, assets):
    runs = tmp_path_factory.mktemp("runs")
    return {"KINDLING_ASSETS": str(assets), "KINDLING_RUNS_DIR": str(runs),
            "KINDLING_CONNECT_DEADLINE": "8", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": str(tmp_path_factory.mktemp("home")), "LANG": "C.UTF-8"}


@pytest.fixture(scope="module")
def wheelhouse(env):
    """The wheels every host installs from (the hosts have no index): `fab wheelhouse`."""
    done = fab(env, "wheelhouse", "--folder", str(WHEELHOUSE), timeout=1800)
    assert done.returncode == 0, done.stderr
    return str(WHEELHOUSE)


def fab(env: dict, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([FAB, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def results_of(done: subprocess.CompletedProcess) -> Path:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("results: "), last
    return Path(REPO, last.removeprefix("results: "))


def job_processes(cluster, host: str) -> list[str]:
    """Command lines of kindling job processes on a host."""
    out = cluster.exec(host, "ps -eo args").stdout
    return [line for line in out.splitlines() if "workloads." in line or "pyspark.daemon" in line]


def test_bad_input_is_one_line_and_changes_nothing(netns_cluster, env, tmp_path):
    inventory = str(netns_cluster.inventory_path)
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
    assert "no such file" in one_error_line(fab(env, "deploy", "classify", "--target", inventory,
                                                "--data", str(tmp_path / "no-photos")))
    assert "run `fab deploy classify` first" in one_error_line(
        fab(env, "run", "classify", "--target", inventory))
    for host in netns_cluster.hosts:
        assert netns_cluster.exec(host, "test -e /opt/kindling").returncode != 0, host.name


def test_wrong_host_key_is_refused(netns_cluster, env, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    outputs = json.loads(netns_cluster.inventory_path.read_text())
    impostor = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    worker = outputs["workers"][0]
    lines = [line for line in outputs["knownHosts"].splitlines()
             if worker["publicIp"] not in line.split()[0].split(",")]
    outputs["knownHosts"] = "\n".join([*lines, known_hosts_line([worker["publicIp"]], impostor)])
    spoofed = tmp_path / "spoofed.json"
    spoofed.write_text(json.dumps(outputs))
    line = one_error_line(fab(env, "status", "--target", str(spoofed)))
    assert "worker-0" in line and "host key that differs" in line


def test_unreachable_host_then_real_install_and_train_mnist(netns_cluster, env, wheelhouse):
    inventory = str(netns_cluster.inventory_path)
    worker = netns_cluster.inventory.workers[1]
    netns_cluster.stop_sshd(worker)
    try:
        started = time.monotonic()
        line = one_error_line(fab(env, "deploy", "train-mnist", "--target", inventory,
                                  "--wheelhouse", wheelhouse, *MNIST_FLAGS))
        assert f"{worker.name} ({worker.address}) is unreachable" in line
        assert time.monotonic() - started < 60
        assert netns_cluster.exec("master", "test -e /opt/kindling").returncode != 0
    finally:
        netns_cluster.start_sshd(worker)

    started = time.monotonic()
    done = fab(env, "deploy", "train-mnist", "--target", inventory, "--wheelhouse", wheelhouse,
               *MNIST_FLAGS, timeout=1500)
    results = results_of(done)
    print(f"first deploy + train-mnist: {time.monotonic() - started:.1f}s; "
          + re.search(r"deploy took [\d.]+s", done.stdout).group(0))
    assert re.search(r"python deps +installed", done.stdout)
    accuracy = json.loads((results / "metrics.json").read_text())["accuracy"]
    print(f"train-mnist accuracy on 3 hosts: {accuracy:.4f}")
    assert accuracy >= ACCURACY_FLOORS["train-mnist"]
    for host in netns_cluster.inventory.workers:  # executors ran on both worker hosts
        assert list((results / "logs" / host.name).glob("executor-*.stderr")), host.name
    assert not list((results / "logs").glob("master/executor-*"))

    status = fab(env, "status", "--target", inventory)
    assert status.returncode == 0, status.stderr
    registered = re.search(r"2/2 workers: (.*)", status.stdout).group(1)
    assert sorted(registered.split(", ")) == sorted(w.privateIp for w in netns_cluster.inventory.workers)


def test_second_deploy_skips_every_install_step(netns_cluster, env, wheelhouse):
    inventory = str(netns_cluster.inventory_path)
    started = time.monotonic()
    done = fab(env, "deploy", "train-mnist", "--target", inventory, "--wheelhouse", wheelhouse,
               "--detach", *MNIST_FLAGS)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    steps = re.findall(r"^(\S+) +(folders|base packages|python deps|kindling wheel|data|"
                       r"spark master|spark worker) +(\S+)", done.stdout, re.M)
    assert len(steps) == 3 * 5 + 3, done.stdout
    assert all(status == "skipped" for _, _, status in steps), steps
    print(f"second deploy (everything skipped, detached launch): {took:.1f}s")
    stopped = fab(env, "stop", "--job", "train-mnist", "--target", inventory)
    assert stopped.returncode == 0, stopped.stderr
    again = fab(env, "stop", "--job", "train-mnist", "--target", inventory)
    assert again.returncode == 0, again.stderr
    time.sleep(3)
    for host in netns_cluster.hosts:
        assert not [p for p in job_processes(netns_cluster, host) if "train_mnist" in p], host.name


def test_run_classify(netns_cluster, env):
    done = fab(env, "run", "classify", "--target", str(netns_cluster.inventory_path))
    results = results_of(done)
    metrics = json.loads((results / "metrics.json").read_text())
    print(f"classify accuracy on 3 hosts: {metrics['accuracy']:.4f} ({metrics['counts']})")
    assert metrics["accuracy"] >= ACCURACY_FLOORS["classify"]
    assert (results / "predictions.csv").is_file()


def test_deploy_train_ps_puts_each_role_on_its_host(netns_cluster, env, wheelhouse):
    done = fab(env, "deploy", "train-ps", "--target", str(netns_cluster.inventory_path),
               "--wheelhouse", wheelhouse, "--detach", *TRAIN_PS_FLAGS)
    assert done.returncode == 0, done.stderr
    run_id = re.search(r"detached: (\S+)", done.stdout).group(1)
    expected = {"master": ["train_ps ps 0", "train_ps chief 0"],
                "worker-0": ["train_ps worker 0"], "worker-1": ["train_ps worker 1"]}
    for host, roles in expected.items():
        argv = " ".join(job_processes(netns_cluster, host))
        for role in roles:
            assert role in argv, (host, argv)
        others = {r for h, rs in expected.items() if h != host for r in rs}
        assert not any(r in argv for r in others), (host, argv)
    chief_rc = f"/srv/kindling/runs/{run_id}/chief-0.rc"
    deadline = time.monotonic() + 300
    while netns_cluster.exec("master", f"test -s {chief_rc}").returncode and time.monotonic() < deadline:
        time.sleep(2)
    assert netns_cluster.exec("master", f"cat {chief_rc}").stdout.strip() == "0"
    deadline = time.monotonic() + 60
    while any(job_processes(netns_cluster, h) for h in netns_cluster.hosts) and time.monotonic() < deadline:
        time.sleep(1)
    assert not any(job_processes(netns_cluster, h) for h in netns_cluster.hosts)


def test_exec_put_logs_and_ui(netns_cluster, env, tmp_path):
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


def test_killed_worker_fails_train_ps_fast_and_leaves_nothing(netns_cluster, env):
    run = subprocess.Popen([FAB, "run", "train-ps", "--target", str(netns_cluster.inventory_path),
                            "--epochs", "50"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while "train_ps chief 0" not in " ".join(job_processes(netns_cluster, "master")) \
                or "train_ps worker 1" not in " ".join(job_processes(netns_cluster, "worker-1")):
            assert time.monotonic() < deadline and run.poll() is None, run.stderr
            time.sleep(1)
        time.sleep(5)
        netns_cluster.exec("worker-1", "pkill -9 -f 'workloads[.]train_ps worker 1'", check=True)
        killed = time.monotonic()
        out, err = run.communicate(timeout=120)
    finally:
        run.kill()
    print(f"train-ps failed {time.monotonic() - killed:.1f}s after worker 1 was killed")
    assert time.monotonic() - killed < 60
    assert run.returncode == 2
    assert "worker 1 on worker-1" in err, err
    time.sleep(2)
    assert not any(job_processes(netns_cluster, h) for h in netns_cluster.hosts)
