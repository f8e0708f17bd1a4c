"""The instance role: hosts reach the cluster bucket (and only it) without any stored AWS keys.

It has no EC2 action: idle auto-stop is an OS shutdown on each host (ops/agent/autostop.py), which
EC2 turns into a stop or, for a one-time spot host, a termination (infra/host.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from infra.tags import cluster_tags

EC2_TRUST_POLICY = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
})
# What Spark's S3A connector and the jobs need: list the bucket, read/write/delete its objects.
BUCKET_ACTIONS = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
OBJECT_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                  "s3:ListMultipartUploadParts"]


def bucket_policy(bucket_arn: str, s3_endpoint_id: Optional[str] = None) -> str:
    """An IAM policy allowing only the cluster bucket (ARN) and its objects (ARN/*); with the
    cluster's S3 gateway endpoint, S3 is denied to these credentials anywhere else.

    aws:SourceVpce is in a request's context only when it comes through a VPC endpoint, and a
    negated condition on a missing key is true: credentials taken off a host (to a laptop, another
    VPC, another region) get nothing. No s3:DeleteObjectVersion: on the versioned bucket a delete
    by the role leaves the old version, recoverable until the lifecycle rule expires it.
    """
    statements = [
        {"Sid": "ClusterBucket", "Effect": "Allow", "Action": BUCKET_ACTIONS, "Resource": bucket_arn},
        {"Sid": "ClusterObjects", "Effect": "Allow", "Action": OBJECT_ACTIONS, "Resource": f"{bucket_arn}/*"},
    ]
    if s3_endpoint_id:
        statements.append({"Sid": "OnlyThroughTheClusterEndpoint", "Effect": "Deny", "Action": "s3:*",
                           "Resource": "*",
                           "Condition": {"StringNotEquals": {"aws:SourceVpce": s3_endpoint_id}}})
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def role_path(cluster_name: str) -> str:
    """Every cluster's role and instance profile live under /kindling/<cluster>/, so the
    deployer's iam: permissions (docs/ec2.md) can be scoped to role/kindling/*."""
    return f"/kindling/{cluster_name}/"


@dataclass(frozen=True)
class InstanceRoleArgs:
    cluster_name: str
    bucket_arn: pulumi.Input[str]
    s3_endpoint_id: Optional[pulumi.Input[str]] = None
    """The cluster VPC's S3 gateway endpoint: the only way the role reaches S3 (None: any way)."""


class InstanceRole(pulumi.ComponentResource):
    instance_profile_name: pulumi.Output[str]

    def __init__(self, name: str, args: InstanceRoleArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("kindling:infra:InstanceRole", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        path = role_path(args.cluster_name)
        role = aws.iam.Role(f"{name}", path=path, assume_role_policy=EC2_TRUST_POLICY,
                            description=f"kindling cluster {args.cluster_name}: its data bucket only",
                            tags=cluster_tags(args.cluster_name, "role"), opts=child)
        policy = pulumi.Output.all(args.bucket_arn, args.s3_endpoint_id).apply(lambda v: bucket_policy(*v))
        aws.iam.RolePolicy(f"{name}-bucket", role=role.id, policy=policy, opts=child)
        profile = aws.iam.InstanceProfile(f"{name}-profile", path=path, role=role.name,
                                          tags=cluster_tags(args.cluster_name, "profile"), opts=child)
        self.instance_profile_name = profile.name
        self.register_outputs({"instanceProfile": profile.name})
