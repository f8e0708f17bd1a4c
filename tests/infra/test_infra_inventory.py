"""The stack outputs are the ops inventory: exact keys, a clean round trip, pinned host keys that
match what cloud-init installs."""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import subprocess

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from infra.cloud_init import HOST_KEY_FILE, USER_DATA_LIMIT
from infra_mocks import Deployment, MockedStack, deploy
from kindling import SCHEMA_KEYS, load_inventory, parse_inventory
from ops.agent import install

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws.*")

INSTANCE = "aws:ec2/instance:Instance"
ENI = "aws:ec2/networkInterface:NetworkInterface"
EIP = "aws:ec2/eip:Eip"
TLS_KEY = "tls:index/privateKey:PrivateKey"
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"


@pytest.fixture(scope="module")
def cluster() -> Deployment:
    return deploy(worker_count=3, ps_count=1)


def addresses_of(host) -> frozenset[str]:
    """Every address ops may reach a host on: the master from outside, the others via the master."""
    return frozenset(a for a in (host.publicIp, host.privateIp, host.hostname, host.publicDns) if a)


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


def test_only_the_master_has_a_public_address_in_the_inventory(cluster):
    """Workers and ps hosts have a public IPv4 for egress only: ops reaches them through the master."""
    inventory = parse_inventory(cluster.inventory)
    master_address = cluster.named(EIP, "kindling-master-eip")
    assert inventory.master.publicIp == master_address.outputs["publicIp"]
    assert inventory.master.publicDns == master_address.outputs["publicDns"]
    assert inventory.master.privateIp == cluster.named(ENI, "kindling-master-eni").outputs["privateIp"]
    for host in (*inventory.workers, *inventory.ps):
        instance = cluster.named(INSTANCE, f"kindling-{host.name}-instance")
        assert (host.publicIp, host.publicDns) == ("", "")
        assert host.privateIp == instance.inputs["privateIp"] == host.address
    for host in inventory.hosts:
        assert host.hostname == "ip-" + host.privateIp.replace(".", "-")
    assert len({h.privateIp for h in inventory.hosts}) == 5


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
        installed_public = config["ssh_keys"]["ed25519_public"]
        assert pinned[addresses_of(host)] == installed_public
        # The private key cloud-init installs is the pair of the pinned public key.
        private = serialization.load_ssh_private_key(config["ssh_keys"]["ed25519_private"].encode(), None)
        derived = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                    serialization.PublicFormat.OpenSSH).decode()
        assert derived == installed_public
        host_key = cluster.named(TLS_KEY, f"kindling-{host.name}-host-key")
        assert host_key.inputs["algorithm"] == "ED25519"
        assert host_key.outputs["publicKeyOpenssh"].strip() == installed_public
    assert len(set(pinned.values())) == 5, "every host has its own host key"
    assert len(addresses_of(inventory.master)) == 4 and {len(addresses_of(h)) for h in inventory.workers} == {2}


def test_user_data_is_small_cloud_config_with_packages_both_distributions_name(cluster):
    for instance in cluster.of_type(INSTANCE):
        config = user_data(instance)
        assert set(config) == {"hostname", "preserve_hostname", "ssh_deletekeys", "ssh_keys", "write_files",
                               "package_update", "packages", "runcmd"}
        assert len(instance.inputs["userData"].encode()) <= USER_DATA_LIMIT, instance.name
        assert config["ssh_deletekeys"] is True
        # Ubuntu 24.04 and Debian 13 both have these (OpenJDK 21 behind default-jre-headless).
        assert config["packages"] == ["python3-venv", "default-jre-headless"]


def test_sshd_offers_only_the_pinned_key_even_after_an_openssh_upgrade(cluster):
    """A drop-in naming the pinned key: once sshd_config names a HostKey, sshd loads no other key,
    whatever key files an openssh-server upgrade creates."""
    for instance in cluster.of_type(INSTANCE):
        [drop_in] = [f for f in user_data(instance)["write_files"] if f["path"].startswith("/etc/ssh/")]
        assert drop_in["path"].startswith("/etc/ssh/sshd_config.d/") and drop_in["path"].endswith(".conf")
        assert drop_in["content"].splitlines() == [f"HostKey {HOST_KEY_FILE}"]
        assert drop_in["permissions"] == "0644"


def test_every_host_boots_with_its_watcher_armed_knowing_its_master_and_limits():
    """No fab needed for auto-stop: the user data writes the watcher's code, its settings (the
    master's hostname; on the master, every other host; the config's limits; spot hosts watch for
    notices) and systemd unit, and starts it. Each host stops itself with an OS shutdown, which
    EC2 turns into a stop (on-demand) or a termination (one-time spot)."""
    deployment = deploy(worker_count=2, ps_count=1, idle_stop_minutes=45.0, max_hours=8.0)
    inventory = parse_inventory(deployment.inventory)
    by_hostname = {h.hostname: h for h in inventory.hosts}
    for instance in deployment.of_type(INSTANCE):
        config = user_data(instance)
        host = by_hostname[config["hostname"]]
        files = {f["path"]: f for f in config["write_files"]}
        for path, text in install.code().items():  # the code as it is in this checkout
            assert gzip.decompress(base64.b64decode(files[path]["content"])).decode() == text
            assert files[path]["encoding"] == "gz+b64"
        settings = json.loads(files[install.SETTINGS]["content"])
        assert settings["host"] == host.name and settings["master"] == inventory.master.hostname
        assert settings["peers"] == (sorted(h.name for h in inventory.hosts if h.name != "master")
                                     if host.name == "master" else [])
        assert (settings["idle_minutes"], settings["max_hours"]) == (45.0, 8.0)
        assert bool(settings["spot_notice"]) == host.spot
        assert settings["version"] == install.version(settings)
        assert "ExecStart=/usr/bin/python3 -m ops.agent.autostop " + install.SETTINGS in \
            files[install.UNIT_FILE]["content"]
        assert f"\nUser={install.USER}\n" in files[install.UNIT_FILE]["content"]  # not root
        rules = files[install.SUDOERS_RULES]["content"].splitlines()
        assert rules == [  # its sudo: exactly the shutdown as root, SIGPWR never as root
            f"{install.USER} ALL=(root) NOPASSWD: /usr/bin/systemctl poweroff",
            f"{install.USER} ALL=(ALL,!root) NOPASSWD: /usr/bin/pkill --signal PWR --pidfile "
            + install.SPARK_WORKER_PID]
        passes_visudo(files[install.SUDOERS_RULES]["content"])
        # runcmd creates the user, installs the rules once visudo passes them, starts the watcher
        assert config["runcmd"] == [["sh", "-c", install.restart_command()]]
        assert "useradd -rUM " in install.restart_command()
        assert f"cd {install.HOME} && " in install.restart_command()  # its rules there
        assert "visudo -cqf sudoers && " in install.restart_command()
        assert instance.inputs["instanceInitiatedShutdownBehavior"] == (
            "terminate" if host.spot else "stop"), instance.name
    assert any(h.spot for h in inventory.hosts) and not inventory.master.spot


def passes_visudo(rules: str) -> None:
    """sudo's own check of a sudoers file (skipped where sudo is not installed)."""
    visudo = shutil.which("visudo", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if visudo is None:
        return
    checked = subprocess.run([visudo, "-cqf", "-"], input=rules, capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_drop_in_names_the_file_cloud_init_writes_the_pinned_key_to():
    python = shutil.which("python3", path="/usr/bin")
    probe = subprocess.run([python or "python3", "-c", "from cloudinit.config.cc_ssh import CONFIG_KEY_TO_FILE; "
                            "print(CONFIG_KEY_TO_FILE['ed25519_private'][0])"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"cloud-init is not installed (apt-get install cloud-init): {probe.stderr.strip()[-200:]}")
    assert probe.stdout.strip() == HOST_KEY_FILE


def test_user_data_of_every_role_passes_cloud_inits_own_schema(cluster, tmp_path):
    """`cloud-init status` says degraded when its schema rejects the user data."""
    validator = shutil.which("cloud-init")
    if validator is None:
        pytest.skip("cloud-init is not installed (apt-get install cloud-init; .ci/run does)")
    roles = {}
    for instance in cluster.of_type(INSTANCE):
        roles.setdefault(instance.inputs["tags"]["kindling:role"], instance)
    assert set(roles) == {"master", "worker", "ps"}

    def validate(name: str, text: str) -> subprocess.CompletedProcess:
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        return subprocess.run([validator, "schema", "--config-file", str(path)],
                              capture_output=True, text=True, timeout=120)

    for role, instance in roles.items():
        result = validate(role, instance.inputs["userData"])
        assert result.returncode == 0 and "Valid" in result.stdout, f"{role}: {result.stdout}{result.stderr}"
    # The validator does reject what kindling used to send.
    assert validate("old", roles["worker"].inputs["userData"] + "ssh_genkeytypes: []\n").returncode != 0


def test_main_exports_the_inventory_from_stack_config():
    """infra/__main__.py as `pulumi up` runs it: config in, one export per schema key out."""
    stack = MockedStack("dev")
    stack.set_config({"aws:region": "us-west-2", "kindling:sshCidr": "203.0.113.7/32",
                      "kindling:workerCount": "3", "kindling:psCount": "1"})
    program = stack.run_main()
    assert tuple(program.inventory) == SCHEMA_KEYS
    assert program.secret_outputs == {"sshPrivateKey", "sparkSecret"}
    assert set(program.inventory["hourlyCostUsd"]) == {"running", "stopped"}
    inventory = parse_inventory(program.inventory)
    assert inventory.clusterName == "kindling-dev" and inventory.region == "us-west-2"
    assert (len(inventory.workers), len(inventory.ps)) == (3, 1)
    assert inventory.to_outputs() == program.inventory
    assert dict(inventory.hourlyCostUsd) == program.inventory["hourlyCostUsd"]


def test_spark_secret_is_generated_once_per_cluster_and_exported_only_as_a_secret(cluster):
    """spark.authenticate's shared secret: a RandomPassword kept in the stack's state (so every
    deploy agrees), letters and digits only (no quoting in a conf file), a secret output."""
    [password] = cluster.of_type(RANDOM_PASSWORD)
    assert password.inputs["special"] is False and password.inputs["length"] >= 32
    secret = cluster.inventory["sparkSecret"]
    assert secret == password.outputs["result"] and secret.isalnum()
    assert "sparkSecret" in cluster.secret_outputs
    assert parse_inventory(cluster.inventory).sparkSecret == secret
    assert secret not in repr(parse_inventory(cluster.inventory))
    other = deploy(cluster_name="kindling-other")
    assert other.inventory["sparkSecret"] != secret  # per cluster, not a constant
