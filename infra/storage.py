"""The cluster's S3 bucket for data, checkpoints and results: private and encrypted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from infra.tags import cluster_tags


@dataclass(frozen=True)
class DataBucketArgs:
    cluster_name: str


class DataBucket(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    arn: pulumi.Output[str]

    def __init__(self, name: str, args: DataBucketArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("kindling:infra:DataBucket", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # No force_destroy: `pulumi destroy` refuses to delete results; empty the bucket first.
        bucket = aws.s3.Bucket(f"{name}", bucket_prefix=f"{args.cluster_name}-data-",
                               tags=cluster_tags(args.cluster_name, "data"), opts=child)
        aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access-block", bucket=bucket.id, block_public_acls=True,
            block_public_policy=True, ignore_public_acls=True, restrict_public_buckets=True, opts=child)
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption", bucket=bucket.id,
            rules=[aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                apply_server_side_encryption_by_default=aws.s3.
                BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                    sse_algorithm="AES256"))],
            opts=child)
        self.bucket_name = bucket.bucket
        self.arn = bucket.arn
        self.register_outputs({"bucket": bucket.bucket, "arn": bucket.arn})
