"""The stack outputs are the ops inventory: exact keys, a clean round trip, pinned host keys that
match what cloud-init installs."""

from __future__ import annotations

import json

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from infra_mocks import Deployment, MockedStack, deploy
from kindling import SCHEMA_KEYS, load_inventory, parse_inventory

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws.*")

INSTANCE = "aws:ec2/instance:Instance"
ENI = "aws:ec2/networkInterface:NetworkInterface"
EIP = "aws:ec2/eip:Eip"
TLS_KEY = "tls:index/privateKey:PrivateKey"


@pytest.fixture(scope="module")
def cluster() -> Deployment:
    return deploy(worker_count=3, ps_count=1)


def user_data(instance) -> dict:
    text = instance.inputs["userData"]
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def test_outputs_are_exactly_the_inventory_schema(cluster):
    assert tuple(cluster.inventory) == SCHEMA_KEYS


def test_inventory_round_trips_through_ops(cluster, tmp_path):
    inventory = parse_inventory(cluster.inventory, source="stack outputs")
    assert inventory.to_outputs() == cluster.inventory
    assert [h.name for h in inventory.hosts] == ["master", "worker-0", "worker-1", "worker-2", "ps-0"]
    assert inventory.region == "us-east-1" and inventory.sshUser == "ubuntu"
    assert inventory.bucket.startswith("kindling-test-data-")
    assert inventory.sparkMasterUrl == f"spark://{inventory.master.privateIp}:7077"
    # What `pulumi stack output --json --show-secrets > cluster.json` writes, read as fab does.
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(cluster.inventory, indent=2))
    assert load_inventory(path) == inventory


def test_hosts_have_distinct_addresses_from_their_interface_and_elastic_ip(cluster):
    inventory = parse_inventory(cluster.inventory)
    for host in inventory.hosts:
        interface = cluster.named(ENI, f"kindling-{host.name}-eni")
        address = cluster.named(EIP, f"kindling-{host.name}-eip")
        assert host.privateIp == interface.outputs["privateIp"]
        assert host.publicIp == address.outputs["publicIp"]
        assert host.publicDns == address.outputs["publicDns"]
        assert host.hostname == "ip-" + host.privateIp.replace(".", "-")
    assert len({h.publicIp for h in inventory.hosts}) == len({h.privateIp for h in inventory.hosts}) == 5


def test_known_hosts_pin_the_key_cloud_init_installs_on_each_host(cluster):
    inventory = parse_inventory(cluster.inventory)
    pinned = {}
    for line in inventory.knownHosts.splitlines():
        addresses, key_type, key = line.split()
        pinned[frozenset(addresses.split(","))] = f"{key_type} {key}"
    assert len(pinned) == len(inventory.hosts)
    hosts_by_name = {h.hostname: h for h in inventory.hosts}
    instances = cluster.of_type(INSTANCE)
    assert len(instances) == 5
    for instance in instances:
        config = user_data(instance)
        host = hosts_by_name[config["hostname"]]
        assert host.name == instance.name.removeprefix("kindling-").removesuffix("-instance")
        addresses = frozenset({host.publicIp, host.privateIp, host.hostname, host.publicDns})
        installed_public = config["ssh_keys"]["ed25519_public"]
        assert pinned[addresses] == installed_public
        # The private key cloud-init installs is the pair of the pinned public key.
        private = serialization.load_ssh_private_key(config["ssh_keys"]["ed25519_private"].encode(), None)
        derived = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                    serialization.PublicFormat.OpenSSH).decode()
        assert derived == installed_public
        host_key = cluster.named(TLS_KEY, f"kindling-{host.name}-host-key")
        assert host_key.inputs["algorithm"] == "ED25519"
        assert host_key.outputs["publicKeyOpenssh"].strip() == installed_public
    assert len(set(pinned.values())) == 5, "every host has its own host key"


def test_user_data_is_small_idempotent_cloud_config(cluster):
    for instance in cluster.of_type(INSTANCE):
        config = user_data(instance)
        assert set(config) == {"hostname", "preserve_hostname", "ssh_deletekeys", "ssh_genkeytypes",
                               "ssh_keys", "package_update", "packages"}
        assert config["ssh_deletekeys"] is True and config["ssh_genkeytypes"] == []
        assert config["packages"] == ["python3-venv", "openjdk-17-jre-headless"]
        assert "runcmd" not in config and "bootcmd" not in config
        assert instance.inputs["userDataReplaceOnChange"] is True


def test_main_exports_the_inventory_from_stack_config():
    """infra/__main__.py as `pulumi up` runs it: config in, one export per schema key out."""
    stack = MockedStack("dev")
    stack.set_config({"aws:region": "eu-west-1", "kindling:sshCidr": "203.0.113.7/32",
                      "kindling:workerCount": "3", "kindling:psCount": "1"})
    program = stack.run_main()
    assert tuple(program.inventory) == SCHEMA_KEYS
    assert program.secret_outputs == {"sshPrivateKey"}
    inventory = parse_inventory(program.inventory)
    assert inventory.clusterName == "kindling-dev" and inventory.region == "eu-west-1"
    assert (len(inventory.workers), len(inventory.ps)) == (3, 1)
