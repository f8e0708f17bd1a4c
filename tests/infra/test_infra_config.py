"""Stack config: defaults, every key, and one clear line (problem + fix) for each mistake."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pulumi
import pytest
import yaml

from infra.config import CONFIG_KEYS, ClusterConfigError, SparkClusterArgs, load_config
from infra_mocks import MockedStack

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws.*")

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = {"aws:region": "us-east-1", "kindling:sshCidr": "203.0.113.7/32"}
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBvLqvV6ZcKXrKUvFzHmsR3FSE3hhfi3mQIwVW0WeNk5 me@laptop"
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n-----END OPENSSH PRIVATE KEY-----\n"


def resolved(output: pulumi.Output) -> tuple[object, bool]:
    """(value, is_secret) of an Output, as the engine would see it."""
    seen = {}

    @pulumi.runtime.test
    def program():
        secret = pulumi.Output.from_input(asyncio.ensure_future(output.is_secret()))
        return pulumi.Output.all(output, secret).apply(lambda v: seen.update(value=v[0], secret=v[1]))
    program()
    return seen["value"], seen["secret"]


def loaded(config: dict, stack: str = "test", secret_keys=()) -> SparkClusterArgs:
    """load_config() for a stack whose `pulumi config` is MINIMAL updated with config (None unsets)."""
    values = {key: value for key, value in {**MINIMAL, **config}.items() if value is not None}
    MockedStack(stack).set_config(values, secret_keys)
    return load_config()


def test_minimal_config_gives_the_documented_defaults():
    assert loaded({}) == SparkClusterArgs(cluster_name="kindling-test", region="us-east-1",
                                          ssh_cidr="203.0.113.7/32")
    args = loaded({}, stack="dev")
    assert (args.cluster_name, args.worker_count, args.ps_count, args.spot_workers, args.running) == \
        ("kindling-dev", 2, 0, True, True)
    assert (args.master_instance_type, args.worker_instance_type, args.ps_type) == \
        ("m7i.large", "m7i.large", "m7i.large")


def test_every_config_key_reaches_its_field():
    config = {
        "kindling:clusterName": "spark-lab", "kindling:allowSshFromAnywhere": "true",
        "kindling:sshCidr": "0.0.0.0/0", "kindling:masterInstanceType": "m7i.2xlarge",
        "kindling:workerInstanceType": "c7i.4xlarge", "kindling:psInstanceType": "r7i.large",
        "kindling:workerCount": "5", "kindling:psCount": "2", "kindling:spotWorkers": "true",
        "kindling:spotMaxPrice": "0.31", "kindling:rootVolumeSize": "100",
        "kindling:ami": "ami-0123456789abcdef0", "kindling:placementGroup": "true",
        "kindling:hdfs": "true", "kindling:running": "false", "kindling:vpcId": "vpc-0123456789abcdef0",
        "kindling:idleStopMinutes": "45", "kindling:maxHours": "8.5",
        "kindling:subnetId": "subnet-0123456789abcdef0", "kindling:sshPublicKey": PUBLIC_KEY,
        "kindling:sshPrivateKey": PRIVATE_KEY,
    }
    assert {key.split(":")[1] for key in config} | {"availabilityZone"} == set(CONFIG_KEYS)
    args = loaded(config, secret_keys=["kindling:sshPrivateKey"])
    expected = SparkClusterArgs(
        cluster_name="spark-lab", region="us-east-1", ssh_cidr="0.0.0.0/0", allow_ssh_from_anywhere=True,
        master_instance_type="m7i.2xlarge", worker_instance_type="c7i.4xlarge", ps_instance_type="r7i.large",
        worker_count=5, ps_count=2, spot_workers=True, spot_max_price="0.31", root_volume_gib=100,
        ami="ami-0123456789abcdef0", placement_group=True, hdfs=True, running=False,
        idle_stop_minutes=45.0, max_hours=8.5, vpc_id="vpc-0123456789abcdef0", subnet_id="subnet-0123456789abcdef0", ssh_public_key=PUBLIC_KEY,
        ssh_private_key=PRIVATE_KEY)
    assert {**vars(args), "ssh_private_key": PRIVATE_KEY} == vars(expected)
    # Read with get_secret: the private key stays a secret all the way to the sshPrivateKey output.
    assert resolved(args.ssh_private_key) == (PRIVATE_KEY, True)
    assert loaded({"kindling:availabilityZone": "us-east-1c"}).availability_zone == "us-east-1c"


@pytest.mark.parametrize("config, problem, fix", [
    ({"kindling:sshCidr": None}, "sshCidr is not set", "pulumi config set sshCidr 203.0.113.7/32"),
    ({"kindling:idleStopMinutes": "-1"}, "idleStopMinutes is -1", "pulumi config set idleStopMinutes 60"),
    ({"kindling:maxHours": "-2"}, "maxHours is -2", "pulumi config set maxHours 8"),
    ({"kindling:sshCidr": "0.0.0.0/0"}, "opens SSH to the whole internet",
     "pulumi config set allowSshFromAnywhere true"),
    ({"kindling:sshCidr": "0.0.0.0/1"}, "opens SSH to 2,147,483,648 addresses (wider than /8)",
     "pulumi config set allowSshFromAnywhere true"),
    ({"kindling:sshCidr": "128.0.0.0/7"}, "(wider than /8)", "pulumi config set sshCidr"),
    ({"kindling:sshCidr": "my-laptop"}, "sshCidr 'my-laptop' is not a CIDR", "pulumi config set sshCidr"),
    ({"kindling:sshCidr": "2001:db8::/64"}, "is IPv6 but the cluster network is IPv4 only",
     "pulumi config set sshCidr"),
    ({"aws:region": None}, "aws:region is not set", "pulumi config set aws:region us-east-1"),
    ({"kindling:clusterName": "Kindling_Dev"}, "clusterName 'Kindling_Dev' must be 3-30 lowercase",
     "pulumi config set clusterName"),
    ({"kindling:workerCount": "0"}, "workerCount is 0", "pulumi config set workerCount 2"),
    ({"kindling:psCount": "-1"}, "psCount is -1", "pulumi config set psCount 0"),
    ({"kindling:psCount": "17"}, "psCount is 17; use 0 (parameter servers run on the master) up to 16",
     "pulumi config set psCount 0"),
    ({"kindling:rootVolumeSize": "8"}, "rootVolumeSize is 8 GiB", "pulumi config set rootVolumeSize 40"),
    ({"kindling:rootVolumeSize": "20000"}, "rootVolumeSize is 20000 GiB", "pulumi config set rootVolumeSize"),
    ({"kindling:workerInstanceType": "m7i-large"}, "workerInstanceType 'm7i-large' is not an EC2 instance type",
     "pulumi config set workerInstanceType"),
    ({"kindling:masterInstanceType": "big"}, "masterInstanceType 'big' is not an EC2 instance type",
     "pulumi config set masterInstanceType"),
    ({"kindling:spotMaxPrice": "cheap"}, "spotMaxPrice 'cheap' is not a price", "pulumi config set spotMaxPrice"),
    ({"kindling:spotMaxPrice": "-0.1"}, "spotMaxPrice '-0.1' is not a price", "pulumi config rm spotMaxPrice"),
    ({"kindling:spotMaxPrice": "0.1", "kindling:spotWorkers": "false"}, "spotWorkers is false",
     "pulumi config rm spotMaxPrice"),
    ({"kindling:ami": "ubuntu"}, "ami 'ubuntu' is not an AMI id", "pulumi config rm ami"),
    ({"kindling:vpcId": "vpc-0123456789abcdef0"}, "vpcId is set without subnetId", "pulumi config set subnetId"),
    ({"kindling:vpcId": "vpc_1", "kindling:subnetId": "subnet-0123456789abcdef0"}, "vpcId 'vpc_1' is not a VPC id",
     "pulumi config set vpcId"),
    ({"kindling:vpcId": "vpc-0123456789abcdef0", "kindling:subnetId": "sn-1"}, "subnetId 'sn-1' is not a subnet id",
     "pulumi config set subnetId"),
    ({"kindling:vpcId": "vpc-0123456789abcdef0", "kindling:subnetId": "subnet-0123456789abcdef0",
      "kindling:availabilityZone": "us-east-1a"}, "availabilityZone applies only", "pulumi config rm availabilityZone"),
    ({"kindling:sshPublicKey": PUBLIC_KEY}, "set both sshPublicKey and sshPrivateKey",
     "pulumi config set --secret sshPrivateKey"),
    ({"kindling:sshPrivateKey": PRIVATE_KEY}, "set both sshPublicKey and sshPrivateKey",
     "pulumi config set sshPublicKey"),
    ({"kindling:sshPublicKey": "AAAA me", "kindling:sshPrivateKey": PRIVATE_KEY},
     "sshPublicKey is not an OpenSSH public key line", "pulumi config set sshPublicKey"),
    # EC2's key import takes RSA and ED25519 only: an ECDSA key would fail at KeyPair creation.
    ({"kindling:sshPublicKey": "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY= me@laptop",
      "kindling:sshPrivateKey": PRIVATE_KEY},
     "sshPublicKey is a ecdsa-sha2-nistp256 key, which EC2 cannot import (RSA and ED25519 only)",
     "ssh-keygen -t ed25519"),
])
def test_each_config_mistake_is_one_line_naming_problem_and_fix(config, problem, fix):
    with pytest.raises(ClusterConfigError) as error:
        loaded(config, secret_keys=["kindling:sshPrivateKey"])
    message = str(error.value)
    assert isinstance(error.value, pulumi.RunError)  # pulumi prints it as one line, no traceback
    assert "\n" not in message
    assert problem in message
    assert fix in message


def test_a_stack_name_that_cannot_name_a_cluster_asks_for_cluster_name():
    with pytest.raises(ClusterConfigError, match="clusterName 'kindling-My_Stack'.*pulumi config set clusterName"):
        loaded({}, stack="My_Stack")


def test_a_value_of_the_wrong_type_is_pulumis_own_one_line_error():
    with pytest.raises(pulumi.RunError, match="kindling:workerCount.*two"):
        loaded({"kindling:workerCount": "two"})


def test_ssh_from_anywhere_needs_the_explicit_opt_in():
    assert loaded({"kindling:sshCidr": "0.0.0.0/0", "kindling:allowSshFromAnywhere": "true"}).ssh_cidr == "0.0.0.0/0"
    assert loaded({"kindling:sshCidr": "0.0.0.0/1", "kindling:allowSshFromAnywhere": "true"}).ssh_cidr == "0.0.0.0/1"
    assert loaded({"kindling:sshCidr": "10.0.0.0/8"}).ssh_cidr == "10.0.0.0/8"  # a private range


def test_a_config_error_stops_the_program_before_any_resource():
    stack = MockedStack()
    stack.set_config({"aws:region": "us-east-1"})
    with pytest.raises(ClusterConfigError, match="sshCidr is not set"):
        stack.run_main()
    assert stack.mocks.registered == []


def test_args_built_directly_are_validated_too():
    with pytest.raises(ClusterConfigError, match="workerCount is 0"):
        SparkClusterArgs(cluster_name="kindling-test", region="us-east-1", ssh_cidr="203.0.113.7/32",
                         worker_count=0)


def test_pulumi_project_runs_infra_in_the_repo_virtualenv():
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == "kindling"
    assert project["runtime"] == {"name": "python", "options": {"virtualenv": ".venv"}}
    assert project["main"] == "infra/"
    assert (ROOT / project["main"] / "__main__.py").is_file()
    assert project["options"] == {"refresh": "always"}  # auto-stopped or spot-taken hosts are seen


def test_example_stack_config_documents_every_key_and_loads():
    text = (ROOT / "Pulumi.example.yaml").read_text()
    documented = {line.strip().lstrip("#").split(":")[1].strip()
                  for line in text.splitlines() if line.strip().lstrip("# ").startswith("kindling:")}
    assert documented == set(CONFIG_KEYS)
    active = yaml.safe_load(text)["config"]
    assert active == MINIMAL
    MockedStack("dev").set_config({key: str(value) for key, value in active.items()})
    assert load_config().cluster_name == "kindling-dev"
