"""Before anything is created: the zone, the subnet and its addresses, the hourly cost, the quotas.

Each refusal is one line naming the problem and the fix, raised before the first registration.
"""

from __future__ import annotations

import pytest

from infra.addresses import MAX_PS_HOSTS, host_addresses
from infra.config import ClusterConfigError
from infra.prices import PRICES_AS_OF, on_demand_price
from infra_mocks import (EXISTING_SUBNET, GET_INSTANCE_TYPE, GET_OFFERINGS, GET_QUOTA, NEW_ACCOUNT_QUOTAS, QUOTAS, LOCAL_ZONES, ZONE_FAMILIES, AwsMocks, MockedStack,
                         cluster_args, deploy)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws.*")

SUBNET = "aws:ec2/subnet:Subnet"
DEFAULT_WORKER = cluster_args().worker_instance_type
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"


def refused(mocks: AwsMocks | None = None, **overrides) -> str:
    """The one-line error of a mocked `pulumi up`, after checking nothing was registered."""
    stack = MockedStack(mocks=mocks)
    with pytest.raises(ClusterConfigError) as error:
        stack.deploy(cluster_args(**overrides))
    assert stack.mocks.registered == [], "refused after resources were registered"
    assert "\n" not in str(error.value)
    return str(error.value)


def offers(zone: str, instance_type: str) -> bool:
    return instance_type.split(".")[0] in ZONE_FAMILIES[zone]


@pytest.mark.parametrize("overrides", [{}, {"ps_count": 1, "ps_instance_type": "r7i.large"}])
def test_the_zone_is_the_first_that_offers_every_instance_type(overrides):
    deployment = deploy(**overrides)
    [subnet] = deployment.of_type(SUBNET)
    zone = subnet.inputs["availabilityZone"]
    types = {i.inputs["instanceType"] for i in deployment.of_type("aws:ec2/instance:Instance")}
    assert all(offers(zone, t) for t in types) and zone not in LOCAL_ZONES
    # the Local Zone offers them all and sorts first: never picked
    assert not any(all(offers(z, t) for t in types) for z in ZONE_FAMILIES
                   if z < zone and z not in LOCAL_ZONES)
    # A zone offered later (or withdrawn) must not move the subnet, and every host with it.
    assert "availabilityZone" in subnet.ignore_changes
    [(_, lookup)] = [(t, a) for t, a in deployment.invokes if t == GET_OFFERINGS]
    assert lookup["locationType"] == "availability-zone"


def test_no_zone_offering_every_type_is_one_line_naming_where_each_is_offered():
    message = refused(worker_instance_type="x2idn.xlarge", master_instance_type="c7i.large")
    assert "no availability zone of this region offers all of c7i.large, x2idn.xlarge" in message
    assert "c7i.large in us-east-1a, us-east-1b, us-east-1c; x2idn.xlarge in us-east-1d" in message


def test_a_chosen_zone_that_lacks_a_type_is_refused():
    message = refused(availability_zone="us-east-1a")
    assert "availabilityZone us-east-1a does not offer m7i.large:" in message
    assert "pulumi config rm availabilityZone" in message


def test_an_existing_subnet_brings_its_vpc_and_a_vpc_id_must_match_it():
    deployment = deploy(subnet_id=EXISTING_SUBNET["id"], vpc_id=EXISTING_SUBNET["vpcId"])
    assert {g.inputs["vpcId"] for g in deployment.of_type(SECURITY_GROUP)} == {EXISTING_SUBNET["vpcId"]}
    message = refused(subnet_id=EXISTING_SUBNET["id"], vpc_id="vpc-0fffffffffffffff0")
    assert f"subnetId {EXISTING_SUBNET['id']} is in {EXISTING_SUBNET['vpcId']}, not in vpcId vpc-0fffffffffffffff0" \
        in message and "pulumi config rm vpcId" in message


def test_an_existing_subnet_in_a_zone_lacking_a_type_is_refused():
    assert not offers(EXISTING_SUBNET["availabilityZone"], "x2idn.large")
    message = refused(subnet_id=EXISTING_SUBNET["id"], worker_instance_type="x2idn.large")
    assert f"is in {EXISTING_SUBNET['availabilityZone']}, which does not offer x2idn.large" in message


def test_a_subnet_too_small_for_the_workers_names_its_room():
    # A /24 holds 223 workers: the last one at .254, below the address AWS keeps (.255).
    fits = host_addresses(EXISTING_SUBNET["cidrBlock"], 223, MAX_PS_HOSTS)
    assert fits["worker-222"].endswith(".254") and len(set(fits.values())) == 1 + 223 + MAX_PS_HOSTS
    message = refused(roomy(), subnet_id=EXISTING_SUBNET["id"], worker_count=224)
    assert f"subnet {EXISTING_SUBNET['cidrBlock']} holds at most 223 workers" in message
    assert "lower workerCount, or use a larger subnet" in message


def roomy() -> AwsMocks:
    return AwsMocks(quotas={**QUOTAS, "L-34B43A08": 4096.0})


def hourly(**overrides) -> dict[str, float]:
    """The hourly cost a mocked `pulumi up` exports, after checking preview logs the same figures."""
    stack = MockedStack()
    stack.set_config({"aws:region": "us-east-1", "kindling:sshCidr": "203.0.113.7/32",
                      **{f"kindling:{key}": str(value) for key, value in overrides.items()}})
    program = stack.run_main()
    figures = program.inventory["hourlyCostUsd"]
    [line] = [m for level, m in program.logs if level == "info" and "/h running" in m]
    assert f"${figures['running']:.4f}/h running" in line and f"${figures['stopped']:.4f}/h stopped" in line
    assert f"prices of {PRICES_AS_OF} (infra/prices.py)" in line
    return figures


def test_the_hourly_cost_grows_by_one_worker_and_stopped_costs_only_disks_and_the_elastic_ip():
    two, three = hourly(workerCount=2), hourly(workerCount=3)
    # One more spot worker: at most its price cap (the on-demand price), its disk, its public IPv4.
    disk = 40 * 0.08 / 730
    assert three["running"] - two["running"] == pytest.approx(on_demand_price("us-east-1", DEFAULT_WORKER) + disk + 0.005,
                                                              abs=2e-4)
    # Stopped spot workers do not exist: the stopped figure is the master's disk and Elastic IP.
    assert two["stopped"] == three["stopped"] == pytest.approx(disk + 0.005, abs=1e-4)
    assert two["running"] > two["stopped"]


def test_a_spot_price_cap_is_what_a_spot_worker_is_counted_at():
    uncapped, capped = hourly(), hourly(spotMaxPrice="0.05")
    assert uncapped["running"] - capped["running"] == \
        pytest.approx(2 * (on_demand_price("us-east-1", DEFAULT_WORKER) - 0.05), abs=2e-4)


def test_on_demand_workers_keep_their_disks_when_stopped():
    spot, on_demand = hourly(workerCount=2), hourly(workerCount=2, spotWorkers="false")
    assert on_demand["stopped"] - spot["stopped"] == pytest.approx(2 * 40 * 0.08 / 730, abs=1e-4)


def test_a_region_without_prices_says_so_and_exports_no_figure():
    stack = MockedStack()
    stack.set_config({"aws:region": "ap-south-2", "kindling:sshCidr": "203.0.113.7/32"})
    program = stack.run_main()
    assert program.inventory["hourlyCostUsd"] is None
    assert any("no cost shown: infra/prices.py has no ap-south-2 price" in m for _, m in program.logs)


def test_quotas_that_do_not_fit_are_one_line_naming_each_and_the_fix():
    message = refused(worker_count=20, worker_instance_type="m7i.xlarge")  # 80 spot vCPUs, quota 64
    assert "the cluster needs 80 spot vCPUs of Standard (A, C, D, H, I, M, R, T, Z) instances " \
           "but quota L-34B43A08 is 64 in us-east-1" in message
    assert "request-service-quota-increase" in message
    message = refused(AwsMocks(quotas={**QUOTAS, "L-0263D0A3": 0.0}))
    assert "1 Elastic IPs but quota L-0263D0A3 is 0" in message


def test_the_default_cluster_fits_a_new_accounts_quotas():
    """The README's first `pulumi up` in a new account: the program's own quota check (every quota
    it needs looked up and compared, none skipped) lets the defaults through; the previous default
    (m7i.xlarge workers: 8 spot vCPUs) did not, so the check does bite at these quotas."""
    deployment = deploy(AwsMocks(quotas=NEW_ACCOUNT_QUOTAS))
    asked = {args["quotaCode"] for token, args in deployment.invokes if token == GET_QUOTA}
    assert asked == set(NEW_ACCOUNT_QUOTAS)
    assert not [m for level, m in deployment.logs if level == "warning"]
    assert len(deployment.inventory["workers"]) == cluster_args().worker_count
    message = refused(AwsMocks(quotas=NEW_ACCOUNT_QUOTAS), worker_instance_type="m7i.xlarge")
    assert "8 spot vCPUs of Standard (A, C, D, H, I, M, R, T, Z) instances but quota L-34B43A08 is 5" in message


def test_a_quota_the_api_does_not_answer_is_a_warning_not_a_failure():
    deployment = deploy(AwsMocks(unanswered=frozenset({"L-34B43A08"})), worker_count=20)
    warnings = [m for level, m in deployment.logs if level == "warning"]
    assert any("EC2 quota L-34B43A08 not checked" in m for m in warnings), deployment.logs
    assert len(deployment.inventory["workers"]) == 20


def test_a_stopped_cluster_needs_no_vcpus():
    """Quotas count running vCPUs: a stopped cluster of 20 workers fits where a running one does not."""
    stopped = deploy(worker_count=20, running=False)
    assert len(stopped.inventory["workers"]) == 20
    assert [t for t, _ in stopped.invokes if t == GET_INSTANCE_TYPE] == []
