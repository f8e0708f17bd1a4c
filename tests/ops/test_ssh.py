"""Addressing through the master: who jumps, the ssh_config `fab ssh` uses (checked by OpenSSH
itself), and one shared gateway connection opened once before the fan-out."""

from __future__ import annotations

import shutil
import stat
import subprocess
import time

import pytest

from kindling import UserError, known_hosts_line, parse_inventory
from ops import ssh
from ops.cluster import Cluster
from ops.ssh import HostUnreachable, credentials_dir, jump_host, ssh_command

from test_inventory import openssh_keypair


def outputs(workers: int = 3, master_public: str = "3.4.5.6") -> dict:
    private, public = openssh_keypair()
    master = {"name": "master", "hostname": "ip-10-0-1-4", "publicIp": master_public,
              "privateIp": "10.0.1.4", "publicDns": ""}
    hosts = [master, *({"name": f"worker-{i}", "hostname": f"ip-10-0-1-{10 + i}", "publicIp": "",
                        "privateIp": f"10.0.1.{10 + i}", "publicDns": ""} for i in range(workers))]
    return {"clusterName": "gw", "region": "us-east-1", "sshUser": "ubuntu",
            "sshPrivateKey": private, "bucket": "", "sparkMasterUrl": "", "ps": [],
            "knownHosts": "\n".join(known_hosts_line([h["publicIp"], h["privateIp"], h["hostname"]],
                                                     public) for h in hosts),
            "master": hosts[0], "workers": hosts[1:]}


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_hosts_without_public_address_jump_through_the_master():
    inventory = parse_inventory(outputs())
    assert jump_host(inventory, inventory.master) is None
    assert all(jump_host(inventory, w) == inventory.master for w in inventory.workers)
    inside = parse_inventory(outputs(master_public=""))  # ops runs inside the network
    assert not any(jump_host(inside, h) for h in inside.hosts)


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_fab_ssh_reads_one_private_config_pinned_on_both_hops():
    inventory = parse_inventory(outputs())
    argv = ssh_command(inventory, inventory.host("worker-1"))
    folder = credentials_dir(inventory)
    assert argv == ["ssh", "-F", str(folder / "ssh_config"), "worker-1"]
    assert stat.S_IMODE((folder / "ssh_config").stat().st_mode) == 0o600

    def resolved(name: str) -> dict[str, str]:  # what OpenSSH itself makes of the file
        out = subprocess.run(["ssh", "-G", "-F", argv[2], name], capture_output=True, text=True,
                             check=True, timeout=10).stdout
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    for name, address, jump in [("master", "3.4.5.6", None), ("worker-1", "10.0.1.11", "master")]:
        options = resolved(name)
        assert (options["hostname"], options["user"]) == (address, "ubuntu")
        assert options.get("proxyjump") == jump
        assert options["userknownhostsfile"] == str(folder / "known_hosts")
        assert options["globalknownhostsfile"] == "/dev/null"
        assert options["stricthostkeychecking"] == "true"
        assert options["identitiesonly"] == "yes"
        assert options["identityfile"] == str(folder / "id_cluster")


class FakeConnection:
    def __init__(self, name: str, gateway):
        self.name, self.gateway = name, gateway

    def close(self) -> None:
        pass


def test_one_gateway_is_opened_once_before_hosts_connect_through_it(monkeypatch):
    inventory = parse_inventory(outputs(workers=20))
    calls: list[tuple[str, object]] = []

    def connect(inv, host, gateway=None):
        time.sleep(0.2 if host.name == "master" else 0.01)  # 20 threads arrive while it opens
        calls.append((host.name, gateway))
        return FakeConnection(host.name, gateway)

    monkeypatch.setattr(ssh, "connect", connect)
    with Cluster(inventory, ssh.Connector()) as cluster:
        names = cluster.parallel(lambda host, cxn: cxn.name)
    assert names == {h.name: h.name for h in inventory.hosts}
    assert [name for name, _ in calls].count("master") == 1
    gateways = {name: gateway for name, gateway in calls}
    assert gateways["master"] is None
    assert {g.name for n, g in gateways.items() if n != "master"} == {"master"}


def test_an_unreachable_master_is_one_line_and_tried_once(monkeypatch):
    inventory = parse_inventory(outputs(workers=8))
    tried: list[str] = []

    def connect(inv, host, gateway=None):
        tried.append(host.name)
        raise HostUnreachable(f"{host.name} ({host.address}) is unreachable over SSH after 1s")

    monkeypatch.setattr(ssh, "connect", connect)
    with Cluster(inventory, ssh.Connector()) as cluster, pytest.raises(UserError) as error:
        cluster.connect_all()
    assert str(error.value) == "master (3.4.5.6) is unreachable over SSH after 1s"
    assert tried == ["master"]
    with Cluster(inventory, ssh.Connector()) as cluster, pytest.raises(UserError) as error:
        cluster.parallel(lambda host, cxn: None)  # without connect_all: still one attempt
    assert str(error.value) == "master (3.4.5.6) is unreachable over SSH after 1s"
    assert tried == ["master", "master"]


def test_hosts_behind_the_master_close_before_it(monkeypatch):
    inventory = parse_inventory(outputs(workers=3))
    closed: list[str] = []
    monkeypatch.setattr(FakeConnection, "close", lambda self: closed.append(self.name))
    monkeypatch.setattr(ssh, "connect",
                        lambda inv, host, gateway=None: FakeConnection(host.name, gateway))
    with Cluster(inventory, ssh.Connector()) as cluster:
        cluster.connect_all()
    assert closed[-1] == "master" and sorted(closed) == sorted(h.name for h in inventory.hosts)
