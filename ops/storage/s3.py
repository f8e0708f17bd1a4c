"""The s3:// store: `--data s3://bucket/prefix` read by Spark itself through S3A.

S3A (hadoop-aws at the Hadoop version pyspark bundles, ops.jvm) goes on the driver's and the
executors' classpath, and `s3://` is mapped to it, as on EMR. Before anything starts, the control
machine checks the location with boto3 (credentials found the standard AWS ways, bucket there,
prefix not empty), so a typo costs one line, not a failed Spark job.

Where the store is: AWS S3 by default (on EC2, the hosts' instance role supplies credentials);
any S3-compatible store (MinIO, Ceph, moto) through the inventory's `s3Endpoint`, or
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL on the local target, as the AWS SDKs and CLI read them.
Only with such an endpoint does fab hand the control machine's credentials to the job (there
is no instance role); on AWS no key ever leaves this machine. They go into an AWS shared
credentials file on every host (0600, written through stdin), which every client of the run
reads natively: boto3 and pyarrow through AWS_SHARED_CREDENTIALS_FILE and AWS_PROFILE, S3A
through its ProfileAWSCredentialsProvider. The keys are never on a command line or in a
process's environment.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from kindling import KindlingError, UserError
from ops.cluster import console
from ops.storage import Access, Store

CHECK_TIMEOUT = 10
MARKER = "_COMPLETE"
"""Written after an upload: a later run finding it skips the upload."""
PROFILE = "kindling"
"""The profile of the run's credentials file (a user's own AWS_PROFILE does not apply there)."""
CREDENTIALS_FILE = "aws-credentials"


def local_endpoint() -> str:
    """The S3 endpoint the AWS SDKs would use on this machine ("" = AWS)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


@dataclass(frozen=True)
class ObjectStore(Store):
    """Where s3:// paths live, and how Spark reaches them."""
    endpoint: str = ""
    """"" for AWS S3; else the URL of an S3-compatible store."""
    region: str = ""
    jar_folder: Callable[[], str] = field(default=lambda: "", compare=False)
    """The folder of the S3A jars as the Spark driver and executors see it (resolved on use)."""
    secrets: str = ""
    """The private folder on the hosts where a run's credentials file goes."""

    schemes = ("s3", "s3a")
    jars = "s3a"
    keeps_results = True

    def client(self):
        """boto3's S3 client for this store, credentials found the standard AWS ways."""
        import boto3
        from botocore.config import Config

        session = boto3.Session()
        return session.client("s3", endpoint_url=self.endpoint or None,
                              region_name=self.region or session.region_name or "us-east-1",
                              config=Config(connect_timeout=CHECK_TIMEOUT,
                                            read_timeout=CHECK_TIMEOUT,
                                            retries={"max_attempts": 1}))

    def upload(self, folder: Path, bucket: str, prefix: str) -> int:
        """Every file below folder to s3://bucket/prefix/ (s3transfer's multipart uploads); the
        number of files."""
        client = self.client()
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        for file in files:
            client.upload_file(str(file), bucket, f"{prefix}/{file.relative_to(folder).as_posix()}")
        return len(files)

    def check(self, uri: str) -> None:
        """Refuse a location Spark could not read, naming the problem and the fix."""
        import botocore.exceptions as errors

        parsed = urlparse(uri)
        bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
        where = f" at {self.endpoint}" if self.endpoint else ""
        self.credentials(uri)
        try:
            listed = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"
                                            if prefix else "", MaxKeys=1)
        except errors.EndpointConnectionError:
            raise UserError(f"{uri}: cannot reach the S3 endpoint {self.endpoint or 'of AWS'}; fix "
                            "the inventory's s3Endpoint (or AWS_ENDPOINT_URL)") from None
        except errors.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket", "404"):
                raise UserError(f"{uri}: bucket {bucket!r} does not exist{where}; create it or "
                                "fix the bucket name (the cluster's is the stack output "
                                "`bucket`)") from None
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise UserError(f"{uri}: access denied{where} ({code}); use credentials that may "
                                f"list s3://{bucket}") from None
            raise UserError(f"{uri}: S3 refused the listing{where} ({code}: "
                            f"{exc.response.get('Error', {}).get('Message', '')})") from None
        if not listed.get("KeyCount"):
            raise UserError(f"{uri}: nothing is stored under this prefix{where}; upload the data "
                            f"there first (e.g. `aws s3 sync DIR {uri}`) or fix the path")

    @staticmethod
    def credentials(uri: str):
        """This machine's AWS credentials, or one line on how to give some."""
        import boto3

        credentials = boto3.Session().get_credentials()
        if credentials is None:
            raise UserError(f"{uri}: no AWS credentials on this machine; set AWS_PROFILE, run "
                            "`aws configure`, or export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        return credentials.get_frozen_credentials()

    def credentials_file(self, uri: str) -> str:
        """This machine's credentials as an AWS shared credentials file."""
        frozen = self.credentials(uri)
        lines = [f"[{PROFILE}]", f"aws_access_key_id = {frozen.access_key}",
                 f"aws_secret_access_key = {frozen.secret_key}"]
        if frozen.token:
            lines.append(f"aws_session_token = {frozen.token}")
        return "\n".join(lines) + "\n"

    def access(self, uris):
        """S3A on every classpath, s3:// mapped to it, the region; with an explicit endpoint,
        the endpoint and this machine's credentials in a private file on every host, named
        to the AWS SDKs (environment, also the executors') and to S3A (confs)."""
        classpath = f"{self.jar_folder()}/*"
        conf = {"spark.driver.extraClassPath": classpath,
                "spark.executor.extraClassPath": classpath,
                "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem"}
        env = {"AWS_REGION": self.region} if self.region else {}
        private = {}
        if self.endpoint:
            path = f"{self.secrets}/{CREDENTIALS_FILE}"
            private = {path: self.credentials_file(uris[0])}
            env = {"AWS_REGION": self.region or "us-east-1", "AWS_ENDPOINT_URL_S3": self.endpoint,
                   "AWS_SHARED_CREDENTIALS_FILE": path, "AWS_PROFILE": PROFILE}
            conf |= {"spark.hadoop.fs.s3a.endpoint": self.endpoint,
                     "spark.hadoop.fs.s3a.path.style.access": "true",
                     "spark.hadoop.fs.s3a.endpoint.region": env["AWS_REGION"],
                     "spark.hadoop.fs.s3a.connection.ssl.enabled":
                         str(self.endpoint.startswith("https:")).lower(),
                     "spark.hadoop.fs.s3a.aws.credentials.provider":
                         "org.apache.hadoop.fs.s3a.auth.ProfileAWSCredentialsProvider",
                     "spark.hadoop.fs.s3a.auth.profile.file": path,
                     "spark.hadoop.fs.s3a.auth.profile.name": PROFILE}
        conf |= {f"spark.executorEnv.{name}": value for name, value in env.items()}
        return Access(conf, env, private)

    def put(self, local: Path, folder: str) -> None:
        """local in the bucket as folder/<name>, then a marker: a later run finding the marker
        skips the upload."""
        import botocore.exceptions

        parsed = urlparse(folder)
        bucket, prefix = parsed.netloc, parsed.path.strip("/")
        self.credentials(folder)
        client = self.client()
        marker = f"{prefix}/{MARKER}"
        try:
            client.head_object(Bucket=bucket, Key=marker)
            console.print(f"data: {local.name} already in {folder}/{local.name}")
            return
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in ("404", "NoSuchKey"):
                raise UserError(f"{folder}: S3 refused to look for the data there ({code}); use "
                                f"credentials that may read and write s3://{bucket}") from None
        except botocore.exceptions.EndpointConnectionError:
            raise UserError(f"{folder}: cannot reach the S3 endpoint {self.endpoint or 'of AWS'}; "
                            "fix the inventory's s3Endpoint") from None
        started = time.monotonic()
        if local.is_dir():
            count = self.upload(local, bucket, f"{prefix}/{local.name}")
        else:
            client.upload_file(str(local), bucket, f"{prefix}/{local.name}")
            count = 1
        client.put_object(Bucket=bucket, Key=marker, Body=b"")
        console.print(f"data: {local.name} uploaded once to {folder}/{local.name} ({count} files, "
                      f"{time.monotonic() - started:.1f}s)")

    def keep(self, local_dir, location):
        import botocore.exceptions
        import boto3.exceptions

        parsed = urlparse(location)
        try:
            return self.upload(local_dir, parsed.netloc, parsed.path.strip("/"))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
                boto3.exceptions.S3UploadFailedError) as exc:
            raise KindlingError(str(exc)) from None
