"""The deployer's IAM policy in docs/ec2.md grants what the program uses, on what it names, and nothing more.

Every resource type a mocked `pulumi up` registers and every invoke it calls (over scenarios that
take every branch of the program) is looked up in deployer_actions.py; each action it needs must be
allowed by the documented policy, evaluated with the resource's ARN and tags as AWS would, and not
denied. A type or invoke the table does not know fails, as does a granted action nothing needs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import pulumi
import pytest

from deployer_actions import INVOKE_ACTIONS, RESOURCE_ACTIONS, SPOT_ACTIONS
from infra.tags import CLUSTER_TAG
from infra_mocks import ACCOUNT, EXISTING_SUBNET, Deployment, Registered, deploy

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws.*")

DOC = Path(__file__).resolve().parents[2] / "docs" / "ec2.md"
SECTION = "## The deployer's IAM policy"
SPOT_ROLE = f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/spot.amazonaws.com/AWSServiceRoleForEC2Spot"
OWN_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBvLqvV6ZcKXrKUvFzHmsR3FSE3hhfi3mQIwVW0WeNk5 me@laptop",
           "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n-----END OPENSSH PRIVATE KEY-----\n")


def documented_policy() -> dict:
    """The first ```json block after the section heading."""
    text = DOC.read_text()
    assert SECTION in text, f"{DOC} has no {SECTION!r} section"
    block = re.search(r"```json\n(.*?)\n```", text[text.index(SECTION):], re.S)
    assert block, f"no ```json block under {SECTION!r}"
    return json.loads(block.group(1))


@dataclass(frozen=True)
class Request:
    """One API call as IAM sees it: the action, the resource ARN, and the context keys it carries."""
    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()
    why: str = ""


def _listed(value) -> list:
    return [value] if isinstance(value, str) else list(value)


def _condition_holds(condition: dict, context: dict[str, str]) -> bool:
    for operator, keys in condition.items():
        for key, wanted in keys.items():
            present = key in context
            if operator == "Null":
                holds = (not present) == (str(wanted).lower() == "true")
            elif operator in ("StringEquals", "StringLike"):
                match = (lambda v, w: v == w) if operator == "StringEquals" else fnmatchcase
                holds = present and any(match(context[key], w) for w in _listed(wanted))
            else:
                raise AssertionError(f"the test does not evaluate {operator}; teach it before using it")
            if not holds:
                return False
    return True


def _matches(statement: dict, request: Request) -> bool:
    context = dict(request.context)
    return (any(fnmatchcase(request.action.lower(), a.lower()) for a in _listed(statement["Action"]))
            and any(fnmatchcase(request.resource, r) for r in _listed(statement["Resource"]))
            and _condition_holds(statement.get("Condition", {}), context))


def allowed(policy: dict, request: Request) -> bool:
    """IAM's rule for one identity policy: some Allow matches and no Deny does."""
    statements = policy["Statement"]
    return (any(s["Effect"] == "Allow" and _matches(s, request) for s in statements)
            and not any(s["Effect"] == "Deny" and _matches(s, request) for s in statements))


def _ec2_arn(resource: Registered) -> str:
    return resource.outputs.get("arn") or f"arn:aws:ec2:us-east-1:{ACCOUNT}:{resource.type.split(':')[-1]}/{resource.id}"


def requests(deployment: Deployment) -> list[Request]:
    """What the deployer's credentials are asked for while the provider manages this deployment."""
    [bucket] = deployment.of_type("aws:s3/bucket:Bucket")
    [role] = deployment.of_type("aws:iam/role:Role")
    [profile] = deployment.of_type("aws:iam/instanceProfile:InstanceProfile")
    instances = {r.id: r for r in deployment.of_type("aws:ec2/instance:Instance")}
    out: list[Request] = []
    for resource in (r for r in deployment.resources if r.custom):
        assert resource.type in RESOURCE_ACTIONS, (
            f"the program creates {resource.type} ({resource.name}) but tests/infra/deployer_actions.py "
            "does not say which API calls it needs; add them there and to the policy in docs/ec2.md")
        target = instances.get(resource.inputs.get("instanceId"), resource)  # InstanceState acts on its instance
        tags = (target.inputs.get("tags") or {}).get(CLUSTER_TAG)
        context = ((f"aws:ResourceTag/{CLUSTER_TAG}", tags),) if tags else ()
        spot = SPOT_ACTIONS if resource.inputs.get("instanceMarketOptions") else ()
        for action in (*RESOURCE_ACTIONS[resource.type], *spot):
            arn = {"s3": f"arn:aws:s3:::{bucket.outputs['bucket']}",
                   "ec2": _ec2_arn(target)}.get(action.split(":")[0])
            if action.startswith("iam:"):
                arn = (SPOT_ROLE if action == "iam:CreateServiceLinkedRole"
                       else profile.outputs["arn"] if action.endswith("InstanceProfile")
                       else role.outputs["arn"])
            extra = (("iam:AWSServiceName", "spot.amazonaws.com"),) if action == "iam:CreateServiceLinkedRole" else ()
            out.append(Request(action, arn, context + extra, f"{resource.type} {resource.name}"))
        if RESOURCE_ACTIONS[resource.type] and resource.type.startswith("aws:ec2") and "tags" in resource.inputs:
            create = RESOURCE_ACTIONS[resource.type][0].split(":")[1]
            out.append(Request("ec2:CreateTags", _ec2_arn(resource), (("ec2:CreateAction", create),),
                               f"{resource.type} {resource.name}, tagged as it is created"))
            out.extend(Request(retag, _ec2_arn(resource), context, f"{resource.type} {resource.name}, tags changed")
                       for retag in ("ec2:CreateTags", "ec2:DeleteTags"))
    for token, args in deployment.invokes:
        assert token in INVOKE_ACTIONS, (
            f"the program calls {token} but tests/infra/deployer_actions.py does not say which API "
            "call that is; add it there and to the policy in docs/ec2.md")
        quota = f"arn:aws:servicequotas:us-east-1:{ACCOUNT}:ec2/{args.get('quotaCode', '')}"
        out.extend(Request(a, quota if a.startswith("servicequotas:") else "*", (), token)
                   for a in INVOKE_ACTIONS[token])
    return out


@pytest.fixture(scope="module")
def deployments() -> list[Deployment]:
    """Every branch: own network and a zone picked, generated key, spot workers, AMI lookup,
    quotas; then ps hosts, placement group, burstable types; then an existing subnet, pinned AMI,
    own key, on-demand workers, stopped."""
    return [deploy(),
            deploy(ps_count=1, placement_group=True, hdfs=True, master_instance_type="t3.large",
                   availability_zone="us-east-1c"),
            deploy(subnet_id=EXISTING_SUBNET["id"], ami="ami-0fedcba9876543210", spot_workers=False,
                   running=False, ssh_public_key=OWN_KEY[0], ssh_private_key=pulumi.Output.secret(OWN_KEY[1]))]


def test_the_documented_policy_grants_every_call_the_program_makes(deployments):
    policy = documented_policy()
    missing = sorted({f"{r.action} on {r.resource} ({r.why})" for d in deployments for r in requests(d)
                      if not allowed(policy, r)})
    assert not missing, "docs/ec2.md's deployer policy does not allow:\n" + "\n".join(missing)


def test_the_documented_policy_grants_nothing_the_program_does_not_use(deployments):
    needed = {r.action for d in deployments for r in requests(d)}
    policy = documented_policy()
    unused = [f"{s['Sid']}: {a}" for s in policy["Statement"] if s["Effect"] == "Allow"
              for a in _listed(s["Action"]) if not any(fnmatchcase(n.lower(), a.lower()) for n in needed)]
    assert not unused, unused
    assert {token for d in deployments for token, _ in d.invokes} == set(INVOKE_ACTIONS)
    assert {r.type for d in deployments for r in d.resources if r.custom} == set(RESOURCE_ACTIONS)


def test_the_policy_cannot_touch_what_kindling_did_not_make(deployments):
    """Wildcards only for reads; iam: and s3: never on '*'; stopping or deleting an EC2 resource
    without the cluster tag, and tagging one into reach, are refused."""
    policy = documented_policy()
    for statement in (s for s in policy["Statement"] if s["Effect"] == "Allow"):
        for action in _listed(statement["Action"]):
            assert "*" not in action or re.fullmatch(r"\w+:(Describe|Get|List)\w*\*", action), action
            assert not (action.startswith(("iam:", "s3:")) and "*" in _listed(statement["Resource"])), action
    foreign = f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0someoneelse0000"
    for action in ("ec2:TerminateInstances", "ec2:StopInstances", "ec2:DeleteVpc", "ec2:CreateTags"):
        assert not allowed(policy, Request(action, foreign)), action
        assert allowed(policy, Request(action, foreign, ((f"aws:ResourceTag/{CLUSTER_TAG}", "kindling-test"),)))
    other_role = f"arn:aws:iam::{ACCOUNT}:role/admin"
    assert not allowed(policy, Request("iam:PassRole", other_role))
    assert not allowed(policy, Request("s3:DeleteBucket", "arn:aws:s3:::someone-elses-bucket"))


def test_spot_may_create_only_ec2s_spot_service_linked_role():
    policy = documented_policy()
    for_spot = (("iam:AWSServiceName", "spot.amazonaws.com"),)
    assert allowed(policy, Request("iam:CreateServiceLinkedRole", SPOT_ROLE, for_spot))
    assert not allowed(policy, Request("iam:CreateServiceLinkedRole", SPOT_ROLE))  # no service named
    assert not allowed(policy, Request(
        "iam:CreateServiceLinkedRole", f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/rds.amazonaws.com/X",
        (("iam:AWSServiceName", "rds.amazonaws.com"),)))
