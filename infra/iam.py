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


def bucket_policy(bucket_arn: str) -> str:
    """An IAM policy allowing only the cluster bucket (ARN) and its objects (ARN/*)."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": BUCKET_ACTIONS, "Resource": bucket_arn},
            {"Effect": "Allow", "Action": OBJECT_ACTIONS, "Resource": f"{bucket_arn}/*"},
        ],
    })


@dataclass(frozen=True)
class InstanceRoleArgs:
    cluster_name: str
    bucket_arn: pulumi.Input[str]


class InstanceRole(pulumi.ComponentResource):
    instance_profile_name: pulumi.Output[str]

    def __init__(self, name: str, args: InstanceRoleArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("kindling:infra:InstanceRole", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(f"{name}", assume_role_policy=EC2_TRUST_POLICY,
                            description=f"kindling cluster {args.cluster_name}: its data bucket only",
                            tags=cluster_tags(args.cluster_name, "role"), opts=child)
        aws.iam.RolePolicy(f"{name}-bucket", role=role.id,
                           policy=pulumi.Output.from_input(args.bucket_arn).apply(bucket_policy), opts=child)
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name,
                                          tags=cluster_tags(args.cluster_name, "profile"), opts=child)
        self.instance_profile_name = profile.name
        self.register_outputs({"instanceProfile": profile.name})
