"""`fab` typed as a user types it, against a real 3-host cluster of sshd network namespaces:
input checks, host keys and `fab ssh`, the first install and its train-mnist run, a second
deploy and `fab stop`, `fab exec`, `fab put` and `fab ui`. (A detached train-ps, its roles and
`fab logs`: test_fab_spot_autostop, whose auto-stop needs such a job anyway.)

The session cluster runs in gateway mode, as on EC2: only the master has a public address and
the workers refuse SSH from this machine, so ops reaches them through the master. Tests that
need a deployed cluster ask for the session's `deployed` fixture (the first, real install,
shared with the other test_fab_* modules), so any subset of them runs in any order; the tests
before it in this module see the cluster before any install when the whole module runs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from e2e.fab_cli import (FAB, MNIST_FLAGS, REPO, fab, host_state, job_processes, one_error_line,
                         processes_showing, results_of, wait_until)
from floors import ACCURACY_FLOOR
from kindling import known_hosts_line

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
SCRIPTS = REPO / "tests" / "data" / "scripts"

pytestmark = pytest.mark.netns


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
    no_secret = tmp_path / "no-secret.json"  # a stack from before Spark authenticated
    no_secret.write_text(json.dumps(json.loads(netns_cluster.inventory_path.read_text())
                                    | {"sparkSecret": None}))
    assert "has no sparkSecret, the secret Spark authenticates with" in one_error_line(
        fab(env, "deploy", "classify", "--target", str(no_secret)))
    conflict = tmp_path / "requirements.txt"  # resolved here, for the master's Python
    conflict.write_text("numpy==1.26.4\n")
    started = time.monotonic()
    assert re.search(r"requirements\.txt does not resolve against kindling's pins \(constraints"
                     r"\.txt\): Because you require numpy==1\.26\.4 and numpy==2", one_error_line(
        fab(env, "deploy", str(SCRIPTS / "tabulated" / "tabulated.py"), "--target", inventory,
            "--requirements", str(conflict))))
    print(f"a conflicting --requirements refused in {time.monotonic() - started:.1f}s")
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
    try:
        for host in ("master", worker.name):  # a wrong key on either hop ends the connection
            refused = openssh(env, spoofed_inventory(netns_cluster, tmp_path, host), worker.name,
                              "hostname")
            assert refused.returncode == 255 and worker.hostname not in refused.stdout
            assert "Host key verification failed" in refused.stderr, refused.stderr
    finally:  # the spoofed inventories rewrote the cluster's known_hosts: the real one restores it
        restored = openssh(env, netns_cluster.inventory_path, worker.name, "true")
    assert restored.returncode == 0, restored.stderr


def test_an_unreachable_worker_stops_the_deploy_before_any_host_changes(netns_cluster, env,
                                                                        wheelhouse):
    """worker-1's sshd is down: `fab deploy` names it within a minute and changes nothing (run
    before `deployed`, when the module runs whole: the first install is what it holds back)."""
    worker = netns_cluster.inventory.workers[1]
    before = host_state(netns_cluster)
    netns_cluster.stop_sshd(worker)
    try:
        started = time.monotonic()
        refused = fab(env, "deploy", "train-mnist", "--target", str(netns_cluster.inventory_path),
                      "--wheelhouse", wheelhouse, *MNIST_FLAGS)
        refused_after = time.monotonic() - started
        unchanged = host_state(netns_cluster) == before
    finally:
        netns_cluster.start_sshd(worker)
    line = one_error_line(refused)
    assert f"{worker.name} ({worker.address}, through the master) is unreachable" in line
    assert refused_after < 60 and unchanged


def test_the_first_install_trains_train_mnist_on_both_workers(netns_cluster, env, deployed):
    results = results_of(deployed)
    assert re.search(r"python deps +installed", deployed.stdout)
    accuracy = json.loads((results / "metrics.json").read_text())["accuracy"]
    print(f"train-mnist accuracy on 3 hosts: {accuracy:.4f}")
    assert accuracy >= ACCURACY_FLOOR["train-mnist"]
    # the terminal showed the chief's epochs as they ended, through the driver's stream
    assert re.findall(r"^\[driver\] epoch (\d)/2: loss [\d.]+, accuracy [\d.]+ \(",
                      deployed.stdout, re.MULTILINE) == ["1", "2"]
    for host in netns_cluster.inventory.workers:  # executors ran on both worker hosts
        assert list((results / "logs" / host.name).glob("executor-*.stderr")), host.name
    assert not list((results / "logs").glob("master/executor-*"))
    # TFoS logs every node's manager authkey: no file of the fetched run folder, nor the
    # terminal stream, holds one
    logs = [deployed.stdout, *(p.read_text(errors="replace") for p in results.rglob("*")
                               if p.is_file() and p.suffix in {".log", ".stderr", ".stdout", ".json", ""})]
    assert sum("'authkey': <redacted>" in log for log in logs) >= 2  # the driver's and a node's
    assert not [log for log in logs if re.search(r"authkey'?: b['\"]", log)]
    status = fab(env, "status", "--target", str(netns_cluster.inventory_path))
    assert status.returncode == 0, status.stderr
    registered = re.search(r"2/2 workers: (.*)", status.stdout).group(1)
    assert sorted(registered.split(", ")) == sorted(w.privateIp for w in netns_cluster.inventory.workers)


UNAUTHENTICATED = ("printf 'from pyspark.sql import SparkSession\\n"
                   "SparkSession.builder.getOrCreate().range(9).count()\\n' > /tmp/unauthenticated.py"
                   " && cd /tmp && export PYSPARK_PYTHON=/opt/kindling/venv/bin/python SPARK_HOME=$("
                   "/opt/kindling/venv/bin/python -c 'import os, pyspark; print(os.path.dirname("
                   "pyspark.__file__))') && (setsid /opt/kindling/venv/bin/spark-submit --master {url}"
                   " --name unauthenticated /tmp/unauthenticated.py > /tmp/unauthenticated.log 2>&1 &)")
"""A spark-submit on the master that does not have the cluster's secret (no SPARK_CONF_DIR)."""


def test_spark_refuses_an_application_without_the_cluster_secret(netns_cluster, deployed):
    """Master, workers and drivers authenticate with the inventory's sparkSecret (the first
    install's train-mnist ran with it), kept in a spark-defaults.conf only the SSH user reads and
    on no command line; a driver without it is refused by the master and never registered."""
    inventory = netns_cluster.inventory
    for host in (inventory.master, *inventory.workers):
        modes = netns_cluster.exec(host, "stat -c '%a %U' /opt/kindling/secrets/spark "
                                         "/opt/kindling/secrets/spark/spark-defaults.conf").stdout
        assert modes.split("\n")[:2] == [f"700 {inventory.sshUser}", f"600 {inventory.sshUser}"], \
            (host.name, modes)
    shown, commands = processes_showing(netns_cluster, [inventory.sparkSecret], ("cmdline",))
    assert not shown, shown
    assert any("deploy.worker.Worker" in c for c in commands["worker-0"]), commands["worker-0"]
    started = time.monotonic()
    netns_cluster.exec("master", UNAUTHENTICATED.format(url=inventory.sparkMasterUrl), check=True)
    try:
        log = wait_until(lambda: "Failed to connect to master" in (text := netns_cluster.exec(
            "master", "cat /tmp/unauthenticated.log").stdout) and text,
                         "the unauthenticated driver to be refused", timeout=90, interval=1)
        refused = time.monotonic() - started
        master = json.loads(netns_cluster.exec("master", "curl -s http://"
                                               f"{inventory.master.privateIp}:8080/json/").stdout)
    finally:
        netns_cluster.exec("master", "pkill -f '[u]nauthenticated.py'")
    assert "Expected SaslMessage" in log or "SASL" in log, log[-3000:]
    assert "unauthenticated" not in {app["name"] for key in ("activeapps", "completedapps")
                                     for app in master.get(key, [])}, master
    print(f"a driver without the secret was refused {refused:.1f}s after its spark-submit")


def test_run_before_deploy_names_the_missing_step(netns_cluster, env):
    """The master as before any deploy (its install stamps hidden, if it has any)."""
    netns_cluster.exec("master", "mv /opt/kindling/stamps /opt/kindling/stamps.off 2>/dev/null; true")
    try:
        line = one_error_line(fab(env, "run", "classify", "--target", str(netns_cluster.inventory_path)))
    finally:
        netns_cluster.exec("master", "[ ! -d /opt/kindling/stamps.off ] || "
                                     "mv /opt/kindling/stamps.off /opt/kindling/stamps")
    assert "kindling is not deployed on master" in line and "`fab deploy classify` first" in line


def test_second_deploy_skips_every_install_step_and_stop_ends_the_job(netns_cluster, env,
                                                                      wheelhouse, deployed):
    inventory = str(netns_cluster.inventory_path)
    started = time.monotonic()
    try:
        done = fab(env, "deploy", "train-mnist", "--target", inventory, "--wheelhouse", wheelhouse,
                   "--detach", *MNIST_FLAGS)
        took = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        steps = re.findall(r"^(\S+) +(cloud-init|folders|base packages|python deps|kindling wheel|"
                           r"data|spark secret|spark master|spark worker) +(\S+)", done.stdout, re.M)
        assert len(steps) == 3 * 6 + 3 + 3, done.stdout
        assert all(status == "skipped" for _, _, status in steps), steps
        print(f"second deploy (everything skipped, detached launch): {took:.1f}s")
        stopped = fab(env, "stop", "--job", "train-mnist", "--target", inventory)
        assert stopped.returncode == 0, stopped.stderr
        again = fab(env, "stop", "--job", "train-mnist", "--target", inventory)
        assert again.returncode == 0, again.stderr
        wait_until(lambda: not any("train_mnist" in p for h in netns_cluster.hosts
                                   for p in job_processes(netns_cluster, h)),
                   "train-mnist's processes to go after `fab stop`", timeout=30)
    finally:  # a failed check leaves no job for the next test
        fab(env, "stop", "--target", inventory)


def test_exec_put_and_ui(netns_cluster, env, tmp_path, deployed):
    """(`fab logs`: test_fab_spot_autostop, on its detached train-ps.)"""
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

    ui = subprocess.Popen([FAB, "ui", "--seconds", "20", "--target", inventory], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = re.search(r"Spark master UI: (\S+)", ui.stdout.readline()).group(1)

        def page() -> bytes | None:  # the tunnel needs a moment after the URL is printed
            try:
                return NO_PROXY.open(url + "json/", timeout=5).read()
            except OSError:
                assert ui.poll() is None, ui.stderr.read()
                return None
        assert json.loads(wait_until(page, "the Spark master UI through the tunnel", timeout=15,
                                     interval=0.5))["status"] == "ALIVE"
    finally:
        ui.terminate()
        ui.wait(timeout=30)


def test_a_job_from_a_package_of_its_own_is_installed_from_its_wheel_and_runs(
        netns_cluster, env, wheelhouse, deployed, install_packages):
    """tests/data/sample_jobs, installed on this machine outside kindling: before its deploy,
    `fab run echo` is one line; `fab deploy echo` installs its wheel and its own dependency
    (humanize, resolved against kindling's pins, from the wheelhouse) on every host (the rest is
    deployed already) and runs it on the master; `fab run echo` then runs it again."""
    inventory = str(netns_cluster.inventory_path)
    mine = env | {"PYTHONPATH": f"{install_packages('sample_jobs')}:{REPO}"}
    for host in netns_cluster.hosts:  # as before any deploy of the package
        netns_cluster.exec(host, "rm -f /opt/kindling/stamps/package-kindling-sample-jobs")
    line = one_error_line(fab(mine, "run", "echo", "--target", inventory))
    assert re.search(r"kindling or kindling-sample-jobs is not deployed on master, worker-0, "
                     r"worker-1; run `fab deploy echo` first", line), line

    done = fab(mine, "deploy", "echo", "--target", inventory, "--wheelhouse", wheelhouse,
               "--word", "hosts")
    results = results_of(done)
    for step in ("package wheel", "requirements"):  # requirements: its humanize
        steps = dict(re.findall(rf"^(\S+) +{step} +(\S+)", done.stdout, re.M))
        assert steps == {host.name: "installed" for host in netns_cluster.hosts}, done.stdout
    print(*re.findall(r"^\S+ +(?:requirements|wheelhouse) .*$|^deploy took .*$", done.stdout,
                      re.M), sep="\n")
    for host in netns_cluster.hosts:
        netns_cluster.exec(host, "/opt/kindling/venv/bin/python -c 'import humanize'", check=True)
    assert not re.search(r"kindling wheel +installed", done.stdout)
    assert json.loads((results / "metrics.json").read_text())["word"] == "hosts"
    again = results_of(fab(mine, "run", "echo", "--target", inventory, "--word", "again"))
    assert json.loads((again / "metrics.json").read_text())["word"] == "again"


def test_a_plain_multi_worker_keras_script_trains_on_the_worker_hosts(netns_cluster, env,
                                                                       wheelhouse, deployed,
                                                                       assets, tmp_path):
    """TensorFlow's multi-worker Keras tutorial in a folder of its own, no kindling import
    (tests/data/scripts/mwms): `fab deploy main.py --roles worker=2` ships the folder to every
    host by content hash (the rest is deployed already), starts a worker on each worker host with
    its TF_CONFIG, and tf.keras `model.fit` under MultiWorkerMirroredStrategy trains across the
    two; worker 0's files come back into runs/<id>/, worker 1's into runs/<id>/worker-1/."""
    code = shutil.copytree(SCRIPTS / "mwms", tmp_path / "mwms")
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(assets / "datasets" / "mnist" / name, code)
    started = time.monotonic()
    done = fab(env, "deploy", str(code / "main.py"), "--roles", "worker=2", "--target",
               str(netns_cluster.inventory_path), "--wheelhouse", wheelhouse, "--job-args", "5")
    took = time.monotonic() - started
    results = results_of(done)
    print(f"fab deploy main.py --roles worker=2 on the namespace hosts ({took:.1f}s):\n"
          + done.stdout)
    staged = dict(re.findall(r"^(\S+) +data +(\S+)", done.stdout, re.M))
    assert staged == {host.name: "installed" for host in netns_cluster.hosts}, done.stdout
    for label, host in (("worker 0", "worker-0"), ("worker 1", "worker-1")):
        assert re.search(rf"^\[{label}@{host}\] 5/5 - \d+s - loss: ", done.stdout, re.M), label
    for folder, index in ((results, 0), (results / "worker-1", 1)):
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["task"] == {"type": "worker", "index": index} and metrics["workers"] == 2
        assert (folder / "model.keras").is_file()
    assert (results / "logs" / "worker-1" / "worker-1.log").is_file()


def test_a_script_needing_a_package_kindling_does_not_install_gets_it_on_every_host(
        netns_cluster, env, wheelhouse, deployed, tmp_path):
    """tests/data/scripts/tabulated imports tabulate: `fab run --requirements` before its deploy
    is one line naming the hosts and the fix; `fab deploy --requirements` installs it on every
    host from the wheelhouse (the hosts have no route out) and a worker on each worker host
    prints its table; a second deploy skips it."""
    inventory = str(netns_cluster.inventory_path)
    code = shutil.copytree(SCRIPTS / "tabulated", tmp_path / "tabulated")
    argv = [str(code / "tabulated.py"), "--roles", "worker=2", "--target", inventory,
            "--requirements", str(code / "requirements.txt"), "--job-args", "spark keras"]
    line = one_error_line(fab(env, "run", *argv))
    assert line == (f"error: requirements.txt: not installed on master, worker-0, worker-1; run "
                    f"`fab deploy {code}/tabulated.py --requirements {code}/requirements.txt` "
                    "first"), line
    started = time.monotonic()
    for status in ("installed", "skipped"):
        done = fab(env, "deploy", *argv, "--wheelhouse", wheelhouse)
        results = results_of(done)
        steps = dict(re.findall(r"^(\S+) +requirements +(\S+)", done.stdout, re.M))
        assert steps == {host.name: status for host in netns_cluster.hosts}, done.stdout
        print(*re.findall(r"^\S+ +(?:requirements|wheelhouse) .*$|^deploy took .*$",
                          done.stdout, re.M), sep="\n")
        for label, host in (("worker 0", "worker-0"), ("worker 1", "worker-1")):
            assert re.search(rf"^\[{label}@{host}\] keras +5$", done.stdout, re.M), done.stdout
        assert json.loads((results / "table.json").read_text())["python"] == \
            "/opt/kindling/venv/bin/python"
    print(f"two deploys of tabulated.py --requirements: {time.monotonic() - started:.1f}s")
