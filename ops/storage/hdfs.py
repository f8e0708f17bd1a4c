"""The hdfs:// store: the cluster's own HDFS (ops.services.hdfs runs it), read by Spark with the
HDFS client pyspark ships, and by the jobs' own Python over WebHDFS (workloads.stored).

On a cluster, `hdfs:///path` means the cluster's NameNode: checked over WebHDFS from the master
(the NameNode listens on its private address only) and spelt out for the processes that reach
HDFS without Hadoop's configuration. The local target has no HDFS of its own: a location there
names its NameNode (hdfs://NAMENODE:8020/path) and is checked from this machine.
"""

from __future__ import annotations

import shlex
import time
from typing import Callable
from urllib.parse import quote, urlparse

from fabric import Connection

from kindling import Host, UserError
from ops.cluster import console
from ops.remote import BIN, COMMAND_TIMEOUT, PYTHON, fetch_json, ok, sh
from ops.services.hdfs import NAMENODE_HTTP_PORT, namenode_info
from ops.storage import Access, Store
from ops.storage.staging import TRANSFER_TIMEOUT, push_path, remote_path, staged_check
from workloads import stored


class HdfsStore(Store):
    """HDFS, reached from here (the local target) or through the cluster's master."""

    schemes = ("hdfs",)

    def __init__(self, default_fs: str = "", master: Host | None = None,
                 connect: Callable[[], Connection] | None = None, cluster: str = ""):
        self.default_fs = default_fs
        """hdfs://NAMENODE:8020 of the cluster's HDFS ("": none)."""
        self.master = master
        self.connect = connect
        self.cluster = cluster

    def check(self, uri):
        if self.master is None:
            return self.check_from_here(uri)
        if not self.default_fs:
            raise UserError(f"{uri}: cluster {self.cluster!r} runs no HDFS; `pulumi config set "
                            "hdfs true`, `pulumi up`, then `fab deploy`")
        cxn = self.connect()
        if namenode_info(cxn, self.master) is None:
            raise UserError(f"{uri}: the HDFS NameNode on {self.master.name} is not running; "
                            "`fab deploy JOB` starts it")
        path = urlparse(uri).path or "/"
        if not self.exists(cxn, path):
            raise UserError(f"{uri}: no such path in the cluster's HDFS; put the data there "
                            f"first (`fab exec --role master '{BIN}/hdfs dfs -put DIR "
                            f"{path}'`) or fix the path")

    @staticmethod
    def check_from_here(uri: str) -> None:
        """A location naming its NameNode: checked over WebHDFS from here, read by pyspark's
        own HDFS client."""
        if not urlparse(uri).hostname:
            raise UserError(f"{uri}: the local target has no HDFS of its own; name the "
                            "NameNode (hdfs://NAMENODE:8020/path), run on a cluster with "
                            "`hdfs: true`, or pass a local folder")
        if not stored.exists(uri):
            raise UserError(f"{uri}: no such path in that HDFS; put the data there first "
                            "(`hdfs dfs -put DIR PATH`) or fix the path")

    def exists(self, cxn: Connection, path: str) -> bool:
        url = (f"http://{self.master.privateIp}:{NAMENODE_HTTP_PORT}/webhdfs/v1{quote(path)}"
               "?op=GETFILESTATUS")
        return fetch_json(cxn, url) is not None

    def on_hosts(self, uri):
        parsed = urlparse(uri)
        if parsed.netloc or not self.default_fs:
            return uri
        return self.default_fs + parsed.path

    def access(self, uris):
        return Access({"spark.hadoop.fs.defaultFS": self.default_fs} if self.default_fs else {}, {})

    def put(self, local, folder):
        """local in HDFS as folder/<name>: pushed to the master (once), then written into HDFS
        from there over WebHDFS, whole or not at all (workloads.stored.publish)."""
        cxn = self.connect()
        path = urlparse(folder).path
        if self.exists(cxn, f"{path}/{local.name}"):
            console.print(f"data: {local.name} already in hdfs://{path}/{local.name}")
            return
        started = time.monotonic()
        remote = remote_path(local)
        if not ok(cxn, staged_check(remote), timeout=COMMAND_TIMEOUT):
            push_path(cxn, local, remote)
        publish = "import sys; from workloads import stored; stored.publish(*sys.argv[1:])"
        sh(cxn, shlex.join([PYTHON, "-c", publish, remote, f"{folder}/{local.name}"]),
           timeout=TRANSFER_TIMEOUT, what=f"copying {local.name} into HDFS")
        console.print(f"data: {local.name} copied once into hdfs://{path}/{local.name} "
                      f"({time.monotonic() - started:.1f}s)")

