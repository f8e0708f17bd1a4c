"""AWS's control plane for the tests, and only that: moto's server (S3 for the storage tests, EC2
and the instance metadata service for auto-stop), on the address the tests choose (127.0.0.1
for the local target; the bridge's address, which namespace hosts can reach)."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path

ACCESS_KEY = "kindling"
SECRET_KEY = "kindling-secret"


@contextmanager
def moto_server(address: str):
    """A moto server on address (a free port): S3, EC2 and the instance metadata service at one
    endpoint URL, which it yields."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind((address, 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address=address, port=port, verbose=False)
    server.start()
    try:
        yield f"http://{address}:{port}"
    finally:
        server.stop()


def client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)


def upload_folder(endpoint: str, bucket: str, prefix: str, folder: Path) -> int:
    """Every file below folder to s3://bucket/prefix/ (bucket created); the number of files."""
    s3 = client(endpoint)
    s3.create_bucket(Bucket=bucket)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for file in files:
        s3.upload_file(str(file), bucket, f"{prefix}/{file.relative_to(folder)}")
    return len(files)
