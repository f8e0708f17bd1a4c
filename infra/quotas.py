"""The EC2 quotas a cluster needs, checked against the account's before anything is created.

EC2 counts running vCPUs per group of instance families, separately for on-demand and spot, and
Elastic IPs per region (default quotas: 5 vCPUs on-demand and spot in new accounts, 5 Elastic
IPs). Where the Service Quotas API does not answer (no permission, another partition), the check
is skipped with a warning: AWS still refuses what does not fit, only later.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from infra.config import ClusterConfigError


@dataclass(frozen=True)
class FamilyGroup:
    name: str
    pattern: str
    """Regex matching the family part (before the dot) of the instance types in the group."""
    on_demand_code: str
    spot_code: str


FAMILY_GROUPS = (
    FamilyGroup("Standard (A, C, D, H, I, M, R, T, Z)", r"(?!inf|hpc|dl|trn|mac)[acdhimrtz][a-z0-9-]*",
                "L-1216C47A", "L-34B43A08"),
    FamilyGroup("G and VT", r"(g|vt)\d[a-z0-9-]*", "L-DB2E81BA", "L-3819A6DF"),
    FamilyGroup("P", r"p\d[a-z0-9-]*", "L-417A185B", "L-7212CCBC"),
)
ELASTIC_IPS_CODE = "L-0263D0A3"


@dataclass(frozen=True)
class QuotaNeed:
    code: str
    what: str
    amount: int


def family_group(instance_type: str) -> Optional[FamilyGroup]:
    family = instance_type.split(".")[0]
    return next((g for g in FAMILY_GROUPS if re.fullmatch(g.pattern, family)), None)


def quota_needs(running_hosts: list[tuple[str, bool]], vcpus: dict[str, int],
                elastic_ips: int) -> list[QuotaNeed]:
    """What (instance type, spot) running hosts and the Elastic IPs need, one line per quota."""
    amounts: Counter[tuple[FamilyGroup, bool]] = Counter()
    for instance_type, spot in running_hosts:
        group = family_group(instance_type)
        if group is None:
            pulumi.log.warn(f"no quota check for {instance_type}: kindling knows the vCPU quotas of "
                            f"{', '.join(g.name for g in FAMILY_GROUPS)} instances only")
            continue
        amounts[group, spot] += vcpus[instance_type]
    needs = [QuotaNeed(ELASTIC_IPS_CODE, "Elastic IPs", elastic_ips)]
    for (group, spot), amount in amounts.items():
        needs.append(QuotaNeed(group.spot_code if spot else group.on_demand_code,
                               f"{'spot' if spot else 'on-demand'} vCPUs of {group.name} instances", amount))
    return needs


def account_quota(code: str) -> Optional[float]:
    """The account's EC2 quota in the stack's region, or None (with a warning) when the API does not answer."""
    try:
        return aws.servicequotas.get_service_quota(service_code="ec2", quota_code=code).value
    except Exception as error:  # noqa: BLE001 - any failed invoke (permissions, partition) only skips the check
        pulumi.log.warn(f"EC2 quota {code} not checked: the Service Quotas API did not answer ({error})")
        return None


def check_quotas(needs: list[QuotaNeed], region: str) -> None:
    """One error line naming every quota the cluster exceeds, and the command that raises it."""
    short = []
    for need in needs:
        value = account_quota(need.code)
        if value is not None and need.amount > value:
            short.append(f"{need.amount} {need.what} but quota {need.code} is {value:g}")
    if short:
        raise ClusterConfigError(
            f"the cluster needs {'; '.join(short)} in {region}: lower workerCount or the instance sizes, "
            f"or ask for more: `aws service-quotas request-service-quota-increase --service-code ec2 "
            f"--quota-code CODE --desired-value N --region {region}`")
