"""Every resource and property that matters, per role, from a mocked `pulumi up` (no CLI, no AWS)."""

from __future__ import annotations

import json

import pulumi
import pytest

from infra_mocks import AMI_ID, AMI_NAME, GET_AMI, Deployment, deploy

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws.*")

INSTANCE = "aws:ec2/instance:Instance"
INSTANCE_STATE = "aws:ec2transitgateway/instanceState:InstanceState"
ENI = "aws:ec2/networkInterface:NetworkInterface"
EIP = "aws:ec2/eip:Eip"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
VPC = "aws:ec2/vpc:Vpc"
SUBNET = "aws:ec2/subnet:Subnet"
GATEWAY = "aws:ec2/internetGateway:InternetGateway"
ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"
ROUTE_ASSOCIATION = "aws:ec2/routeTableAssociation:RouteTableAssociation"
BUCKET = "aws:s3/bucket:Bucket"
PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
ENCRYPTION = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
INSTANCE_PROFILE = "aws:iam/instanceProfile:InstanceProfile"
KEY_PAIR = "aws:ec2/keyPair:KeyPair"
TLS_KEY = "tls:index/privateKey:PrivateKey"
PLACEMENT_GROUP = "aws:ec2/placementGroup:PlacementGroup"
# Types whose AWS API takes no tags; everything else must carry the cluster tags.
UNTAGGABLE = {ROUTE_ASSOCIATION, PUBLIC_ACCESS_BLOCK, ENCRYPTION, ROLE_POLICY, INSTANCE_STATE, TLS_KEY}


def by_role(deployment: Deployment) -> dict[str, list]:
    roles: dict[str, list] = {}
    for instance in deployment.of_type(INSTANCE):
        roles.setdefault(instance.inputs["tags"]["kindling:role"], []).append(instance)
    return roles


@pytest.fixture(scope="module")
def cluster() -> Deployment:
    """3 spot workers, 2 dedicated ps hosts of their own type, placement group, HDFS flag."""
    return deploy(worker_count=3, ps_count=2, worker_instance_type="c7i.2xlarge",
                  ps_instance_type="r7i.large", spot_max_price="0.25", placement_group=True, hdfs=True)


@pytest.fixture(scope="module")
def defaults() -> Deployment:
    return deploy()


OWN_PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBvLqvV6ZcKXrKUvFzHmsR3FSE3hhfi3mQIwVW0WeNk5 me@laptop"
OWN_PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n-----END OPENSSH PRIVATE KEY-----\n"


@pytest.fixture(scope="module")
def variant() -> Deployment:
    """Every other switch flipped at once: stopped, on-demand, pinned AMI, own key, own AZ..."""
    return deploy(ps_count=1, master_instance_type="m7i.2xlarge", spot_workers=False,
                  ami="ami-0fedcba9876543210", ssh_cidr="198.51.100.23", root_volume_gib=120,
                  availability_zone="us-east-1b", running=False, ssh_public_key=OWN_PUBLIC_KEY,
                  ssh_private_key=pulumi.Output.secret(OWN_PRIVATE_KEY))


def test_instance_count_and_type_per_role(cluster, defaults):
    roles = by_role(cluster)
    assert {role: len(hosts) for role, hosts in roles.items()} == {"master": 1, "worker": 3, "ps": 2}
    assert [i.inputs["instanceType"] for i in roles["master"]] == ["m7i.large"]
    assert {i.inputs["instanceType"] for i in roles["worker"]} == {"c7i.2xlarge"}
    assert {i.inputs["instanceType"] for i in roles["ps"]} == {"r7i.large"}
    default_roles = by_role(defaults)
    assert {role: len(hosts) for role, hosts in default_roles.items()} == {"master": 1, "worker": 2}
    assert {i.inputs["instanceType"] for i in default_roles["worker"]} == {"m7i.xlarge"}


def test_ps_hosts_default_to_the_master_instance_type(variant):
    roles = by_role(variant)
    assert [i.inputs["instanceType"] for i in roles["ps"]] == ["m7i.2xlarge"]


def test_spot_only_on_workers_persistent_and_stoppable(cluster):
    roles = by_role(cluster)
    for worker in roles["worker"]:
        market = worker.inputs["instanceMarketOptions"]
        assert market["marketType"] == "spot"
        assert market["spotOptions"] == {"spotInstanceType": "persistent",
                                         "instanceInterruptionBehavior": "stop", "maxPrice": "0.25"}
    for host in roles["master"] + roles["ps"]:
        assert "instanceMarketOptions" not in host.inputs, host.name


def test_on_demand_workers_when_spot_is_off(variant):
    instances = variant.of_type(INSTANCE)
    assert len(instances) == 4
    assert all("instanceMarketOptions" not in i.inputs for i in instances)


def test_ami_is_the_latest_canonical_ubuntu_2404_and_later_images_leave_hosts_alone(defaults):
    assert len(defaults.invokes) == 1
    token, args = defaults.invokes[0]
    assert token == GET_AMI
    assert args["owners"] == ["099720109477"]
    assert args["mostRecent"] is True
    filters = {f["name"]: f["values"] for f in args["filters"]}
    assert filters["name"] == ["ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"]
    assert filters["architecture"] == ["x86_64"]
    assert AMI_NAME.startswith(filters["name"][0].rstrip("*"))
    for instance in defaults.of_type(INSTANCE):
        assert instance.inputs["ami"] == AMI_ID
        assert instance.ignore_changes == ("ami",)


def test_pinned_ami_skips_the_lookup_and_applies_to_hosts(variant):
    assert variant.invokes == []
    for instance in variant.of_type(INSTANCE):
        assert instance.inputs["ami"] == "ami-0fedcba9876543210"
        assert instance.ignore_changes == ()


def test_firewall_opens_only_ssh_from_ssh_cidr_to_the_internet(cluster):
    [group] = cluster.of_type(SECURITY_GROUP)
    sg_id = group.id
    assert sg_id.startswith("sg-")
    ingress = cluster.of_type(INGRESS)
    assert len(ingress) == 2
    internet = [rule for rule in ingress if "cidrIpv4" in rule.inputs or "cidrIpv6" in rule.inputs]
    assert len(internet) == 1
    ssh = internet[0].inputs
    assert (ssh["ipProtocol"], ssh["fromPort"], ssh["toPort"], ssh["cidrIpv4"]) == ("tcp", 22, 22, "203.0.113.7/32")
    [members] = [rule.inputs for rule in ingress if "referencedSecurityGroupId" in rule.inputs]
    assert members["referencedSecurityGroupId"] == sg_id and members["ipProtocol"] == "-1"
    [egress] = cluster.of_type(EGRESS)
    assert (egress.inputs["ipProtocol"], egress.inputs["cidrIpv4"]) == ("-1", "0.0.0.0/0")
    assert {rule.inputs["securityGroupId"] for rule in ingress + [egress]} == {sg_id}
    assert "ingress" not in group.inputs and "egress" not in group.inputs  # no inline rules
    for interface in cluster.of_type(ENI):
        assert interface.inputs["securityGroups"] == [sg_id]


def test_ssh_cidr_is_normalised_before_it_reaches_the_rule(variant):
    [ssh] = [r for r in variant.of_type(INGRESS) if "cidrIpv4" in r.inputs]
    assert ssh.inputs["cidrIpv4"] == "198.51.100.23/32"


def test_every_instance_requires_imdsv2_and_encrypted_gp3_root(cluster):
    instances = cluster.of_type(INSTANCE)
    assert len(instances) == 6
    for instance in instances:
        assert instance.inputs["metadataOptions"]["httpTokens"] == "required"
        assert instance.inputs["metadataOptions"]["httpEndpoint"] == "enabled"
        root = instance.inputs["rootBlockDevice"]
        assert (root["volumeType"], root["encrypted"], root["volumeSize"]) == ("gp3", True, 40)
        assert root["deleteOnTermination"] is True


def test_root_volume_size_comes_from_config(variant):
    assert {i.inputs["rootBlockDevice"]["volumeSize"] for i in variant.of_type(INSTANCE)} == {120}


def test_everything_taggable_is_tagged_with_cluster_and_name(cluster):
    tagged = [r for r in cluster.resources if r.custom and r.type not in UNTAGGABLE]
    assert len(tagged) > 30
    for resource in tagged:
        tags = resource.inputs.get("tags")
        assert tags and tags["kindling:cluster"] == "kindling-test", resource.name
        assert tags["Name"].startswith("kindling-test-"), resource.name


def test_hosts_carry_role_and_hdfs_tags_on_instance_volume_interface_and_address(cluster, defaults):
    for instance in cluster.of_type(INSTANCE):
        assert instance.inputs["volumeTags"] == instance.inputs["tags"]
        host = instance.name.removeprefix("kindling-").removesuffix("-instance")
        assert instance.inputs["tags"]["Name"] == f"kindling-test-{host}"
        assert instance.inputs["tags"]["kindling:role"] == host.split("-")[0]
        assert instance.inputs["tags"]["kindling:hdfs"] == "true"
        for type_, suffix in ((ENI, "eni"), (EIP, "eip")):
            assert cluster.named(type_, f"kindling-{host}-{suffix}").inputs["tags"] == instance.inputs["tags"]
    assert {i.inputs["tags"]["kindling:hdfs"] for i in defaults.of_type(INSTANCE)} == {"false"}


def test_bucket_is_private_and_encrypted(cluster):
    [bucket] = cluster.of_type(BUCKET)
    assert bucket.inputs["bucketPrefix"] == "kindling-test-data-"
    assert "forceDestroy" not in bucket.inputs or bucket.inputs["forceDestroy"] is False
    [block] = cluster.of_type(PUBLIC_ACCESS_BLOCK)
    assert block.inputs == {"bucket": bucket.outputs["bucket"], "blockPublicAcls": True,
                            "blockPublicPolicy": True, "ignorePublicAcls": True,
                            "restrictPublicBuckets": True}
    [encryption] = cluster.of_type(ENCRYPTION)
    assert encryption.inputs["bucket"] == bucket.outputs["bucket"]
    [rule] = encryption.inputs["rules"]
    assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"


def test_instance_role_may_use_only_the_cluster_bucket(cluster):
    [bucket] = cluster.of_type(BUCKET)
    arn = bucket.outputs["arn"]
    [role] = cluster.of_type(ROLE)
    trust = json.loads(role.inputs["assumeRolePolicy"])
    assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "ec2.amazonaws.com"}]
    [policy] = cluster.of_type(ROLE_POLICY)
    assert policy.inputs["role"] == role.id
    statements = json.loads(policy.inputs["policy"])["Statement"]
    assert {s["Resource"] for s in statements} == {arn, f"{arn}/*"}
    assert all(s["Effect"] == "Allow" for s in statements)
    actions = [a for s in statements for a in s["Action"]]
    assert all(a.startswith("s3:") and "*" not in a for a in actions)
    assert {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= set(actions)
    [profile] = cluster.of_type(INSTANCE_PROFILE)
    assert profile.inputs["role"] == role.outputs["name"]
    assert {i.inputs["iamInstanceProfile"] for i in cluster.of_type(INSTANCE)} == {profile.outputs["name"]}


def test_own_network_vpc_subnet_gateway_and_default_route(defaults):
    [vpc] = defaults.of_type(VPC)
    assert vpc.inputs["cidrBlock"] == "10.42.0.0/16"
    assert vpc.inputs["enableDnsHostnames"] is True and vpc.inputs["enableDnsSupport"] is True
    vpc_id = defaults.of_type(SECURITY_GROUP)[0].inputs["vpcId"]
    assert vpc_id.startswith("vpc-")
    [subnet] = defaults.of_type(SUBNET)
    assert subnet.inputs["vpcId"] == vpc_id and subnet.inputs["cidrBlock"] == "10.42.0.0/20"
    [gateway] = defaults.of_type(GATEWAY)
    assert gateway.inputs["vpcId"] == vpc_id
    [table] = defaults.of_type(ROUTE_TABLE)
    [route] = table.inputs["routes"]
    assert route["cidrBlock"] == "0.0.0.0/0" and route["gatewayId"].startswith("igw-")
    [association] = defaults.of_type(ROUTE_ASSOCIATION)
    assert association.inputs["routeTableId"].startswith("rtb-")
    subnet_id = association.inputs["subnetId"]
    assert {i.inputs["subnetId"] for i in defaults.of_type(ENI)} == {subnet_id}
    # Addresses and interfaces wait for the gateway and the route: cloud-init needs the internet.
    for resource in defaults.of_type(EIP) + defaults.of_type(ENI):
        assert {gateway.urn, association.urn} <= resource.dependencies, resource.name


def test_availability_zone_is_passed_to_the_subnet(variant):
    [subnet] = variant.of_type(SUBNET)
    assert subnet.inputs["availabilityZone"] == "us-east-1b"


def test_existing_vpc_and_subnet_create_no_network():
    existing = deploy(vpc_id="vpc-0123456789abcdef0", subnet_id="subnet-0123456789abcdef0")
    for type_ in (VPC, SUBNET, GATEWAY, ROUTE_TABLE, ROUTE_ASSOCIATION):
        assert existing.of_type(type_) == [], type_
    [group] = existing.of_type(SECURITY_GROUP)
    assert group.inputs["vpcId"] == "vpc-0123456789abcdef0"
    interfaces = existing.of_type(ENI)
    assert len(interfaces) == 3
    assert {i.inputs["subnetId"] for i in interfaces} == {"subnet-0123456789abcdef0"}
    assert len(existing.inventory["workers"]) == 2


def test_each_host_boots_on_its_interface_with_its_elastic_ip(cluster):
    for instance in cluster.of_type(INSTANCE):
        host = instance.name.removesuffix("-instance")
        interface = cluster.named(ENI, f"{host}-eni")
        address = cluster.named(EIP, f"{host}-eip")
        assert instance.inputs["primaryNetworkInterface"] == {"networkInterfaceId": interface.id}
        assert address.inputs["networkInterface"] == interface.id
        assert address.inputs["domain"] == "vpc"
        assert address.urn in instance.dependencies
        assert "subnetId" not in instance.inputs and "associatePublicIpAddress" not in instance.inputs


@pytest.mark.parametrize("scenario, state", [("defaults", "running"), ("variant", "stopped")])
def test_running_flag_sets_instance_state(scenario, state, request):
    deployment = request.getfixturevalue(scenario)
    instances = deployment.of_type(INSTANCE)
    states = deployment.of_type(INSTANCE_STATE)
    assert len(states) == len(instances) >= 3
    assert {s.inputs["state"] for s in states} == {state}
    assert sorted(s.inputs["instanceId"] for s in states) == sorted(i.id for i in instances)
    assert all(i.id.startswith("i-") for i in instances)


def test_running_flag_is_not_an_instance_input(defaults):
    """Stopping must not change any instance input, or pulumi would replace/modify the hosts."""
    running, stopped = defaults, deploy(running=False)

    def comparable(deployment):
        return sorted((i.name, {k: v for k, v in i.inputs.items() if k not in ("userData", "keyName",
                       "primaryNetworkInterface", "iamInstanceProfile")}) for i in deployment.of_type(INSTANCE))
    assert comparable(running) == comparable(stopped)


def test_placement_group_is_optional_and_holds_every_host(cluster, defaults):
    [group] = cluster.of_type(PLACEMENT_GROUP)
    assert group.inputs["strategy"] == "cluster"
    assert {i.inputs["placementGroup"] for i in cluster.of_type(INSTANCE)} == {group.outputs["name"]}
    assert defaults.of_type(PLACEMENT_GROUP) == []
    assert all("placementGroup" not in i.inputs for i in defaults.of_type(INSTANCE))


def test_generated_login_key_is_ed25519_registered_and_secret(defaults):
    [login] = [k for k in defaults.of_type(TLS_KEY) if k.name == "kindling-login-generated"]
    assert login.inputs["algorithm"] == "ED25519"
    [pair] = defaults.of_type(KEY_PAIR)
    assert pair.inputs["publicKey"] == login.outputs["publicKeyOpenssh"]
    assert pair.inputs["keyNamePrefix"] == "kindling-test-"
    assert defaults.inventory["sshPrivateKey"] == login.outputs["privateKeyOpenssh"]
    assert defaults.secret_outputs == {"sshPrivateKey"}
    assert {i.inputs["keyName"] for i in defaults.of_type(INSTANCE)} == {pair.outputs["keyName"]}


def test_own_login_key_is_registered_and_its_private_half_exported_as_secret(variant):
    assert [k.name for k in variant.of_type(TLS_KEY) if "login" in k.name] == []
    [pair] = variant.of_type(KEY_PAIR)
    assert pair.inputs["publicKey"] == OWN_PUBLIC_KEY
    assert variant.inventory["sshPrivateKey"] == OWN_PRIVATE_KEY
    assert variant.secret_outputs == {"sshPrivateKey"}
