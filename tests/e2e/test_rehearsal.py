"""The EC2 rehearsal's hosts: a fresh Debian booted by infra's own user data through real cloud-init.

One chain, no step replaced: the Pulumi program (mocked `pulumi up`) renders the user data and the
stack outputs; cloud-init applies the user data in each host (hostname, pinned ED25519 host key,
packages through the apt proxy); ops connects with the stack outputs as its inventory.

The session's one rehearsal cluster: after test_rehearsal_deploy (whose first deploy races
cloud-init) when both run, and what cloud-init did still holds on the deployed hosts.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from ops.remote import sh
from ops.ssh import connect

pytestmark = pytest.mark.netns
HOSTS = ["master", "worker-0", "worker-1"]


@pytest.fixture(scope="module")
def booted(rehearsal_cluster):
    """Every host's final `cloud-init status` (waits for the background boot)."""
    rehearsal_cluster.wait_ssh()
    return rehearsal_cluster.wait_booted()


@pytest.fixture
def ops_cache(tmp_path, monkeypatch):
    """ops keeps the key and known_hosts under $XDG_CACHE_HOME: a test's own folder, not root's home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))


def user_data(cluster, name: str) -> dict:
    return yaml.safe_load(cluster.stack.user_data[name])


@pytest.mark.parametrize("name", HOSTS)
def test_rehearsal_cloud_init_applies_the_user_data(rehearsal_cluster, booted, name):
    status = booted[name]
    assert (status["status"], status.get("extended_status"), status.get("errors")) == ("done", "done", []), \
        f"{name}: {status.get('recoverable_errors')} / {rehearsal_cluster.boot_log(name)}"
    assert rehearsal_cluster.exec(name, "hostname").stdout.strip() == user_data(rehearsal_cluster, name)["hostname"]
    python = rehearsal_cluster.exec(name, ["python3", "-V"]).stdout.strip()
    assert python.startswith("Python 3.13."), python


@pytest.mark.parametrize("name", HOSTS)
def test_rehearsal_sshd_offers_only_the_pinned_key(rehearsal_cluster, booted, name):
    host = rehearsal_cluster.inventory.host(name)
    scanned = subprocess.run(["ssh-keyscan", "-T", "10", host.address], capture_output=True, text=True, timeout=60)
    offered = {" ".join(line.split()[1:3]) for line in scanned.stdout.splitlines() if not line.startswith("#")}
    pinned = user_data(rehearsal_cluster, name)["ssh_keys"]["ed25519_public"]
    assert offered == {" ".join(pinned.split()[:2])}
    known = [line for line in rehearsal_cluster.inventory.knownHosts.splitlines()
             if host.address in line.split()[0].split(",")]
    assert [" ".join(line.split()[1:3]) for line in known] == [" ".join(pinned.split()[:2])]


@pytest.mark.parametrize("name", HOSTS)
def test_rehearsal_ops_connects_with_the_stack_outputs(rehearsal_cluster, booted, ops_cache, name):
    """ops reaches each host as on EC2: inventory key, pinned host key; Java came from the user data."""
    host = rehearsal_cluster.inventory.host(name)
    with connect(rehearsal_cluster.inventory, host) as cxn:
        assert sh(cxn, "hostname") == host.hostname
        assert sh(cxn, "whoami") == rehearsal_cluster.inventory.sshUser
        assert sh(cxn, "sudo -n echo root") == "root"
        assert "openjdk" in sh(cxn, "java -version 2>&1").lower()
        assert sh(cxn, "python3 -V").startswith("Python 3.13.")
        routes = sh(cxn, "ip -4 route").splitlines()
        assert [r.split()[0] for r in routes] == [rehearsal_cluster.state["subnet"]]

def test_rehearsal_packages_came_through_the_proxy(rehearsal_cluster, booted):
    """Each host fetched its Java from the apt proxy on the bridge (its only way out)."""
    log = Path(rehearsal_cluster.state["workdir"], "apt-proxy", "logs", "apt-cacher.log").read_text()
    for record in rehearsal_cluster.state["hosts"]:
        fetched = [line for line in log.splitlines() if f"|{record['address']}|" in line and ".deb" in line]
        assert any("openjdk-" in line for line in fetched), f"{record['name']} fetched no JDK through the proxy"
