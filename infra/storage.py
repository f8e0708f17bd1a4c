"""The cluster's S3 bucket for data, checkpoints and results: private, encrypted and versioned.

Versioning makes an overwrite or a delete (by a job, or by anyone holding a host's role
credentials, which may not delete versions) recoverable for NONCURRENT_DAYS; a lifecycle rule then
expires the old versions, so they do not pile up and bill forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from infra.tags import cluster_tags

NONCURRENT_DAYS = 30
"""How long an overwritten or deleted object stays recoverable."""
ABANDONED_UPLOAD_DAYS = 7
"""Multipart uploads a killed job left behind (S3A writes large files in parts) are billed until aborted."""


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
        versioning = aws.s3.BucketVersioning(
            f"{name}-versioning", bucket=bucket.id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
            opts=child)
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle", bucket=bucket.id, rules=[old_versions_rule()],
            # S3 applies the rule to versions only once versioning is on.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[versioning]))
        self.bucket_name = bucket.bucket
        self.arn = bucket.arn
        self.register_outputs({"bucket": bucket.bucket, "arn": bucket.arn})


def old_versions_rule() -> aws.s3.BucketLifecycleConfigurationRuleArgs:
    """The whole bucket (no filter): old versions expire NONCURRENT_DAYS after they were
    replaced, delete markers with no version left behind them go, abandoned uploads are aborted."""
    return aws.s3.BucketLifecycleConfigurationRuleArgs(
        id="expire-old-versions", status="Enabled",
        noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
            noncurrent_days=NONCURRENT_DAYS),
        expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(expired_object_delete_marker=True),
        abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
            days_after_initiation=ABANDONED_UPLOAD_DAYS))
