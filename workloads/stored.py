"""The cluster's storage as job processes without a JVM see it: TF nodes, train-ps' processes,
a driver's own Python. hdfs:// goes through WebHDFS (fsspec), s3:// through pyarrow's S3
client, both behind one pyarrow.fs interface; a plain path is the local disk.

Why not TensorFlow's own file systems: TF 2.21 opens neither scheme (its hdfs:// and s3:// moved
to tensorflow-io, which has no build for TF 2.21, and its HDFS needs libhdfs.so, which only
Hadoop's binary tarball ships). Spark reads the same URIs through Hadoop's FileSystem.

S3 settings come the standard AWS ways: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL for an
S3-compatible store, AWS_REGION, credentials from the environment or the instance role.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from kindling import UserError

WEBHDFS_PORT = 9870
"""The NameNode's HTTP port (Hadoop's default, and ops.hdfs')."""
LOCATION_EXAMPLES = "s3://bucket/prefix, hdfs:///path"
"""How the jobs' flag help shows a location in the cluster's storage."""
RUN_LOCATION_EXAMPLES = "s3://BUCKET/runs/<id>, hdfs:///kindling/runs/<id>"
"""...and a run's folder there."""
RUN_STORE_ENV = "KINDLING_RUN_STORE"
"""The run's folder in the cluster's storage (s3://BUCKET/runs/<id> or hdfs://NN/kindling/runs/<id>),
set by fab on a cluster that has one: results that executors write (a PipelineModel) and
checkpoints another host resumes from go there."""


def is_uri(value: str) -> bool:
    """A location in a file system (s3://bucket/prefix, hdfs:///path), not a path on a host."""
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", value))


def join(location: str, *parts: str) -> str:
    return "/".join([location.rstrip("/"), *parts])


def run_store() -> str:
    """This run's folder in the cluster's storage, "" when the target has none."""
    return os.environ.get(RUN_STORE_ENV, "")


def hdfs_user() -> str:
    """Who this process is to HDFS, as Hadoop's own clients decide: $HADOOP_USER_NAME, else
    the login user (HDFS checks permissions; without a user WebHDFS would act as nobody)."""
    return os.environ.get("HADOOP_USER_NAME") or getpass.getuser()


def filesystem(location: str):
    """(pyarrow FileSystem, path in it) of a URI or a local path."""
    from pyarrow import fs

    parsed = urlparse(location)
    if parsed.scheme in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        where = urlparse(endpoint) if endpoint else None
        s3 = fs.S3FileSystem(
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
            endpoint_override=where.netloc if where else None,
            scheme=where.scheme if where else "https", connect_timeout=10, request_timeout=60)
        return s3, f"{parsed.netloc}{parsed.path}".rstrip("/")
    if parsed.scheme == "hdfs":
        if not parsed.hostname:
            raise UserError(f"{location}: no NameNode in the URI; use hdfs://NAMENODE/path "
                            "(fab fills it in for hdfs:///path on a cluster)")
        from fsspec.implementations.webhdfs import WebHDFS

        webhdfs = WebHDFS(parsed.hostname, port=WEBHDFS_PORT, timeout=60, user=hdfs_user())
        return fs.PyFileSystem(fs.FSSpecHandler(webhdfs)), parsed.path.rstrip("/") or "/"
    if parsed.scheme:
        raise UserError(f"{location}: kindling reads s3:// and hdfs:// locations, or local paths")
    return fs.LocalFileSystem(), str(Path(location).expanduser().resolve())


def exists(location: str) -> bool:
    from pyarrow import fs

    filesystem_, path = filesystem(location)
    return filesystem_.get_file_info(path).type != fs.FileType.NotFound


def read_bytes(location: str) -> bytes:
    filesystem_, path = filesystem(location)
    try:
        with filesystem_.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise UserError(f"{location}: not found; fix the path or put the file there") from None


def fingerprint(location: str) -> list[tuple[str, int, float]]:
    """(name, size, modified) of every file below location: changes when its data does."""
    from pyarrow import fs

    filesystem_, path = filesystem(location)
    infos = filesystem_.get_file_info(fs.FileSelector(path, recursive=True))
    return sorted((info.path[len(path):], info.size or 0,
                   info.mtime.timestamp() if info.mtime else 0.0)
                  for info in infos if info.type == fs.FileType.File)


def copy(source: str, destination: str) -> None:
    """A file or a folder from one location to another (local path or URI), replacing it."""
    from pyarrow import fs

    source_fs, source_path = filesystem(source)
    destination_fs, destination_path = filesystem(destination)
    folder = source_fs.get_file_info(source_path).type == fs.FileType.Directory
    destination_fs.create_dir(destination_path if folder else destination_path.rsplit("/", 1)[0],
                              recursive=True)
    fs.copy_files(source_path, destination_path, source_filesystem=source_fs,
                  destination_filesystem=destination_fs)


def publish(source: str, location: str) -> None:
    """source copied to location (HDFS or local: a file system that renames) as a whole or not at
    all: into location.partial first, then renamed, so no reader takes a half-done copy."""
    from pyarrow import fs

    filesystem_, destination = filesystem(location)
    partial = destination + ".partial"
    kind = filesystem_.get_file_info(partial).type
    if kind == fs.FileType.Directory:
        filesystem_.delete_dir(partial)
    elif kind == fs.FileType.File:
        filesystem_.delete_file(partial)
    copy(source, location + ".partial")
    filesystem_.move(partial, destination)


def local_copy(location: str, folder: str) -> str:
    """A local path holding location: itself when it is local, else a copy below folder."""
    if not is_uri(location):
        return location
    target = Path(folder, location.rstrip("/").rsplit("/", 1)[-1])
    shutil.rmtree(target, ignore_errors=True)
    copy(location, str(target))
    return str(target)


def download(location: str) -> str:
    """location's file or folder in a fresh temporary folder (the caller removes it)."""
    return local_copy(location, tempfile.mkdtemp(prefix="kindling-"))
