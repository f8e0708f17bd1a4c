"""Every resource and property that matters, per role, from a mocked `pulumi up` (no CLI, no AWS)."""

from __future__ import annotations

import ipaddress
import json

import pulumi
import pytest

from infra.addresses import MASTER_OFFSET, PS_OFFSET, WORKER_OFFSET
from infra_mocks import AMI_ID, AMI_NAME, EXISTING_SUBNET, GET_AMI, QUOTAS, AwsMocks, Deployment, deploy

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
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
UNTAGGABLE = {ROUTE_ASSOCIATION, PUBLIC_ACCESS_BLOCK, ENCRYPTION, ROLE_POLICY, INSTANCE_STATE, TLS_KEY,
              RANDOM_PASSWORD}


def host_of(instance) -> str:
    """worker-0 for kindling-worker-0-instance."""
    return instance.name.removeprefix("kindling-").removesuffix("-instance")


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


def test_burstable_hosts_launch_with_standard_credits_others_have_no_credit_setting(defaults):
    """t3 and friends launch in unlimited mode unless told: billed beyond the hourly cost shown."""
    burstable = deploy(master_instance_type="t3.large", worker_instance_type="t3.xlarge")
    for instance in burstable.of_type(INSTANCE):
        assert instance.inputs["creditSpecification"] == {"cpuCredits": "standard"}, instance.name
    for instance in defaults.of_type(INSTANCE):  # m7i: not burstable
        assert "creditSpecification" not in instance.inputs, instance.name


def test_ps_hosts_default_to_the_master_instance_type(variant):
    roles = by_role(variant)
    assert [i.inputs["instanceType"] for i in roles["ps"]] == ["m7i.2xlarge"]


def test_spot_only_on_workers_one_time_so_no_request_outlives_its_instance(cluster):
    """A persistent request survives the instance's deletion (terraform-provider-aws#38142) and would
    start an untracked instance; a one-time request (interruption: terminate) closes with it."""
    roles = by_role(cluster)
    for worker in roles["worker"]:
        market = worker.inputs["instanceMarketOptions"]
        assert market["marketType"] == "spot"
        assert market["spotOptions"] == {"spotInstanceType": "one-time",
                                         "instanceInterruptionBehavior": "terminate", "maxPrice": "0.25"}
    for host in roles["master"] + roles["ps"]:
        assert "instanceMarketOptions" not in host.inputs, host.name


def test_spot_workers_are_replaced_not_modified_when_their_type_changes(cluster, variant):
    """EC2 cannot change a stopped spot instance's type; the provider would stop it and leave it stopped."""
    roles = by_role(cluster)
    for worker in roles["worker"]:
        assert "instanceType" in worker.replace_on_changes, worker.name
    for host in roles["master"] + roles["ps"] + by_role(variant)["worker"]:
        assert "instanceType" not in host.replace_on_changes, host.name  # on-demand: resized in place


def test_on_demand_workers_when_spot_is_off(variant):
    instances = variant.of_type(INSTANCE)
    assert len(instances) == 4
    assert all("instanceMarketOptions" not in i.inputs for i in instances)


def test_ami_is_the_latest_canonical_ubuntu_2404_and_later_images_leave_hosts_alone(defaults):
    lookups = [args for token, args in defaults.invokes if token == GET_AMI]
    assert len(lookups) == 1
    [args] = lookups
    assert args["owners"] == ["099720109477"]
    assert args["mostRecent"] is True
    filters = {f["name"]: f["values"] for f in args["filters"]}
    assert filters["name"] == ["ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"]
    assert filters["architecture"] == ["x86_64"]
    assert AMI_NAME.startswith(filters["name"][0].rstrip("*"))
    for instance in defaults.of_type(INSTANCE):
        assert instance.inputs["ami"] == AMI_ID
        assert "ami" in instance.ignore_changes


def test_pinned_ami_skips_the_lookup_and_applies_to_hosts(variant):
    assert [token for token, _ in variant.invokes if token == GET_AMI] == []
    for instance in variant.of_type(INSTANCE):
        assert instance.inputs["ami"] == "ami-0fedcba9876543210"
        assert "ami" not in instance.ignore_changes


def security_groups(instance, deployment: Deployment) -> list[str]:
    """The groups of the instance's primary interface, whoever owns it (instance or separate ENI)."""
    if "primaryNetworkInterface" in instance.inputs:
        interface_id = instance.inputs["primaryNetworkInterface"]["networkInterfaceId"]
        [interface] = [i for i in deployment.of_type(ENI) if i.id == interface_id]
        return interface.inputs["securityGroups"]
    return instance.inputs["vpcSecurityGroupIds"]


def test_firewall_opens_ssh_from_ssh_cidr_on_the_master_only(cluster):
    ingress = cluster.of_type(INGRESS)
    internet = [rule for rule in ingress if "cidrIpv4" in rule.inputs or "cidrIpv6" in rule.inputs]
    assert len(internet) == 1
    ssh = internet[0].inputs
    assert (ssh["ipProtocol"], ssh["fromPort"], ssh["toPort"], ssh["cidrIpv4"]) == ("tcp", 22, 22, "203.0.113.7/32")
    [members] = [rule.inputs for rule in ingress if "referencedSecurityGroupId" in rule.inputs]
    assert members["referencedSecurityGroupId"] == members["securityGroupId"] and members["ipProtocol"] == "-1"
    assert len(ingress) == 2
    [egress] = cluster.of_type(EGRESS)
    assert (egress.inputs["ipProtocol"], egress.inputs["cidrIpv4"]) == ("-1", "0.0.0.0/0")
    assert egress.inputs["securityGroupId"] == members["securityGroupId"]
    groups = cluster.of_type(SECURITY_GROUP)
    assert all("ingress" not in g.inputs and "egress" not in g.inputs for g in groups)  # no inline rules
    for instance in cluster.of_type(INSTANCE):
        attached = security_groups(instance, cluster)
        assert members["securityGroupId"] in attached, instance.name
        # Port 22 of workers and ps hosts is open to cluster members only.
        assert (ssh["securityGroupId"] in attached) == (host_of(instance) == "master"), instance.name
    assert len(groups) == 2 and ssh["securityGroupId"] != members["securityGroupId"]


def test_hosts_boot_only_after_the_rules_and_the_internet_route(cluster, defaults):
    """The provider strips AWS's default egress rule: a host booting before ours exists has no apt."""
    for deployment in (cluster, defaults):
        members_rules = {r.urn for r in deployment.of_type(INGRESS) + deployment.of_type(EGRESS)
                         if "cidrIpv4" not in r.inputs or r.type == EGRESS}
        [ssh_rule] = [r.urn for r in deployment.of_type(INGRESS) if "cidrIpv4" in r.inputs]
        route = {r.urn for r in deployment.of_type(GATEWAY) + deployment.of_type(ROUTE_ASSOCIATION)}
        assert len(members_rules) == 2 and len(route) == 2
        for instance in deployment.of_type(INSTANCE):
            assert members_rules | route <= instance.dependencies, instance.name
            assert (ssh_rule in instance.dependencies) == (host_of(instance) == "master"), instance.name


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
    assert {INSTANCE, ENI, EIP, SECURITY_GROUP, INGRESS, EGRESS, VPC, SUBNET, BUCKET} <= {r.type for r in tagged}
    for resource in tagged:
        tags = resource.inputs.get("tags")
        assert tags and tags["kindling:cluster"] == "kindling-test", resource.name
        assert tags["Name"].startswith("kindling-test-"), resource.name


def test_hosts_carry_role_and_hdfs_tags_on_instance_volume_interface_and_address(cluster, defaults):
    for instance in cluster.of_type(INSTANCE):
        assert instance.inputs["volumeTags"] == instance.inputs["tags"]
        host = host_of(instance)
        assert instance.inputs["tags"]["Name"] == f"kindling-test-{host}"
        assert instance.inputs["tags"]["kindling:role"] == host.split("-")[0]
        assert instance.inputs["tags"]["kindling:hdfs"] == "true"
    master = cluster.named(INSTANCE, "kindling-master-instance")
    for type_, suffix in ((ENI, "eni"), (EIP, "eip")):
        assert cluster.named(type_, f"kindling-master-{suffix}").inputs["tags"] == master.inputs["tags"]
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
    [policy] = [p for p in cluster.of_type(ROLE_POLICY) if p.name.endswith("-bucket")]
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


@pytest.mark.parametrize("deployment, spot", [("cluster", True), ("variant", False)])
def test_auto_stop_may_only_stop_the_clusters_instances_and_end_its_spot_ones(deployment, spot,
                                                                              request):
    """The hosts' one EC2 permission: StopInstances on instances tagged with their cluster;
    with spot workers (EC2 cannot stop one-time spot), TerminateInstances on the spot ones only.
    Every instance carries the tags those conditions test."""
    deployment = request.getfixturevalue(deployment)
    [role] = deployment.of_type(ROLE)
    [policy] = [p for p in deployment.of_type(ROLE_POLICY) if p.name.endswith("-autostop")]
    assert policy.inputs["role"] == role.id
    statements = json.loads(policy.inputs["policy"])["Statement"]
    cluster_name = role.inputs["tags"]["kindling:cluster"]
    by_action = {action: s for s in statements for action in s["Action"]}
    assert set(by_action) == ({"ec2:StopInstances", "ec2:TerminateInstances"} if spot
                              else {"ec2:StopInstances"})
    for action, statement in by_action.items():
        assert statement["Effect"] == "Allow"
        assert statement["Resource"].startswith("arn:aws:ec2:") and \
            statement["Resource"].endswith(":instance/*")
        condition = statement["Condition"]["StringEquals"]
        assert condition["aws:ResourceTag/kindling:cluster"] == cluster_name
        assert (condition.get("aws:ResourceTag/kindling:market") == "spot") == (
            action == "ec2:TerminateInstances")
    for instance in deployment.of_type(INSTANCE):
        tags = instance.inputs["tags"]
        assert tags["kindling:cluster"] == cluster_name
        is_spot = bool(instance.inputs.get("instanceMarketOptions"))
        assert tags["kindling:market"] == ("spot" if is_spot else "on-demand"), instance.name
        assert is_spot == (spot and tags["kindling:role"] == "worker")


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
    hosts = defaults.of_type(ENI) + [i for i in defaults.of_type(INSTANCE) if "subnetId" in i.inputs]
    assert len(hosts) == 3 and {h.inputs["subnetId"] for h in hosts} == {subnet_id}
    # The Elastic IP and the master's interface wait for the gateway and the route.
    for resource in defaults.of_type(EIP) + defaults.of_type(ENI):
        assert {gateway.urn, association.urn} <= resource.dependencies, resource.name


def test_availability_zone_is_passed_to_the_subnet(variant):
    [subnet] = variant.of_type(SUBNET)
    assert subnet.inputs["availabilityZone"] == "us-east-1b"
    assert "availabilityZone" not in subnet.ignore_changes  # asked for: moving it is the user's call


def test_existing_subnet_creates_no_network_and_brings_its_vpc_and_addresses():
    existing = deploy(subnet_id=EXISTING_SUBNET["id"])
    for type_ in (VPC, SUBNET, GATEWAY, ROUTE_TABLE, ROUTE_ASSOCIATION):
        assert existing.of_type(type_) == [], type_
    assert {g.inputs["vpcId"] for g in existing.of_type(SECURITY_GROUP)} == {EXISTING_SUBNET["vpcId"]}
    hosts = existing.of_type(ENI) + [i for i in existing.of_type(INSTANCE) if "subnetId" in i.inputs]
    assert len(hosts) == 3 and {h.inputs["subnetId"] for h in hosts} == {EXISTING_SUBNET["id"]}
    subnet = ipaddress.ip_network(EXISTING_SUBNET["cidrBlock"])
    inventory = existing.inventory
    assert {ipaddress.ip_address(h["privateIp"]) in subnet
            for h in [inventory["master"], *inventory["workers"]]} == {True}


def planned_address(host: str, cidr: str) -> str:
    """The address plan's rule, restated: master .10, ps-i .16+i, worker-i .32+i."""
    role, _, index = host.partition("-")
    offset = {"master": MASTER_OFFSET, "ps": PS_OFFSET, "worker": WORKER_OFFSET}[role] + int(index or 0)
    return str(ipaddress.ip_network(cidr).network_address + offset)


def test_hosts_own_fixed_addresses_and_are_deleted_before_being_replaced(cluster):
    """A replacement must not need what only one instance can hold (its address, the master's
    interface) while the old one exists, and must come back under the same name, address and key."""
    master_interface = cluster.named(ENI, "kindling-master-eni")
    for instance in cluster.of_type(INSTANCE):
        host = host_of(instance)
        assert instance.delete_before_replace is True, instance.name
        if host == "master":
            assert instance.inputs["primaryNetworkInterface"] == {"networkInterfaceId": master_interface.id}
            private_ip = master_interface.inputs["privateIps"][0]
        else:
            private_ip = instance.inputs["privateIp"]
            assert instance.inputs["associatePublicIpAddress"] is True  # egress only: see the firewall
            assert "primaryNetworkInterface" not in instance.inputs
        assert private_ip == planned_address(host, "10.42.0.0/20")
        # The host key is its own resource, with no input that a replacement changes.
        assert cluster.named(TLS_KEY, f"kindling-{host}-host-key").inputs == {"algorithm": "ED25519"}


def test_only_the_master_has_an_elastic_ip_on_its_own_interface(cluster):
    [address] = cluster.of_type(EIP)
    [interface] = cluster.of_type(ENI)
    assert address.name == "kindling-master-eip" and interface.name == "kindling-master-eni"
    assert address.inputs["networkInterface"] == interface.id and address.inputs["domain"] == "vpc"
    # The master boots with its public address already there: cloud-init's apt needs it.
    assert address.urn in cluster.named(INSTANCE, "kindling-master-instance").dependencies


def test_a_100_worker_cluster_needs_one_elastic_ip_and_grows_by_a_host_key_and_an_instance_per_worker():
    def roomy() -> AwsMocks:
        return AwsMocks(quotas={**QUOTAS, "L-34B43A08": 512.0})  # 400 spot vCPUs fit
    big, small = deploy(roomy(), worker_count=100), deploy(roomy(), worker_count=2)
    assert len(big.of_type(EIP)) == 1
    assert len(big.inventory["workers"]) == 100
    per_worker = {r.type for r in big.resources if r.name.startswith("kindling-worker-99")}
    assert per_worker == {"kindling:infra:ClusterHost", TLS_KEY, INSTANCE}
    assert len(big.resources) - len(small.resources) == 98 * len(per_worker)
    addresses = [w["privateIp"] for w in big.inventory["workers"]]
    assert len(set(addresses)) == 100


def test_user_data_changes_leave_running_hosts_alone(cluster):
    """cloud-init reads user data at first boot only: a newer template must neither stop/start nor
    replace a host (a replacement keeps the recorded text, whose name and key are still right)."""
    for instance in cluster.of_type(INSTANCE):
        assert "userData" in instance.ignore_changes, instance.name
        assert not instance.inputs.get("userDataReplaceOnChange"), instance.name


@pytest.mark.parametrize("scenario, state", [("defaults", "running"), ("variant", "stopped")])
def test_running_flag_sets_the_state_of_on_demand_hosts(scenario, state, request):
    deployment = request.getfixturevalue(scenario)
    on_demand = [i for i in deployment.of_type(INSTANCE) if "instanceMarketOptions" not in i.inputs]
    states = deployment.of_type(INSTANCE_STATE)
    assert len(states) == len(on_demand) >= 1
    assert {s.inputs["state"] for s in states} == {state}
    assert sorted(s.inputs["instanceId"] for s in states) == sorted(i.id for i in on_demand)
    assert all(i.id.startswith("i-") for i in on_demand)


def test_stopping_removes_spot_workers_which_ec2_cannot_stop_and_keeps_the_inventory(defaults):
    """One-time spot instances cannot be stopped; `running=false` deletes them (disks too) and
    `running=true` brings them back under the same names, addresses and host keys."""
    stopped = deploy(running=False)
    assert {host_of(i) for i in stopped.of_type(INSTANCE)} == {"master"}
    assert {host_of(i) for i in defaults.of_type(INSTANCE)} == {"master", "worker-0", "worker-1"}
    assert [w["privateIp"] for w in stopped.inventory["workers"]] == \
        [w["privateIp"] for w in defaults.inventory["workers"]]
    assert len(stopped.of_type(TLS_KEY)) == len(defaults.of_type(TLS_KEY))


def test_running_flag_is_not_an_instance_input(variant):
    """Stopping must not change any instance input, or pulumi would replace/modify the hosts.
    (Ids the mocks hand out in registration order are left out.)"""
    stopped, running = variant, deploy(ps_count=1, master_instance_type="m7i.2xlarge", spot_workers=False,
                                       ami="ami-0fedcba9876543210", ssh_cidr="198.51.100.23",
                                       root_volume_gib=120, availability_zone="us-east-1b", running=True)

    def comparable(deployment):
        return sorted((i.name, {k: v for k, v in i.inputs.items() if k not in ("userData", "keyName",
                       "primaryNetworkInterface", "iamInstanceProfile", "vpcSecurityGroupIds", "subnetId")})
                      for i in deployment.of_type(INSTANCE))
    assert len(comparable(running)) == 4
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
    assert defaults.secret_outputs == {"sshPrivateKey", "sparkSecret"}
    assert {i.inputs["keyName"] for i in defaults.of_type(INSTANCE)} == {pair.outputs["keyName"]}


def test_own_login_key_is_registered_and_its_private_half_exported_as_secret(variant):
    assert [k.name for k in variant.of_type(TLS_KEY) if "login" in k.name] == []
    [pair] = variant.of_type(KEY_PAIR)
    assert pair.inputs["publicKey"] == OWN_PUBLIC_KEY
    assert variant.inventory["sshPrivateKey"] == OWN_PRIVATE_KEY
    assert variant.secret_outputs == {"sshPrivateKey", "sparkSecret"}
