"""The cluster's storage behind one seam: every storage scheme kindling reads is a `Store`
here (s3:// in ops.storage.s3, hdfs:// in ops.storage.hdfs); copies of local data on every host
are ops.storage.staging. Nothing outside this package (and workloads.stored, the jobs' side)
branches on a scheme.

A `Store` checks a location from the control machine before anything starts, puts a local
folder there once (content-addressed), and says how Spark (confs, jars) and the job's own
processes (environment, private files such as credentials) reach it. A target's `Storage` is
its stores plus its root: where the cluster keeps uploaded data and runs ("" when it has no
storage of its own).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

from kindling import KindlingError, UserError
from ops.cluster import console
from ops.storage.staging import content_digest
from workloads import stored

DATA = "data"
"""Below the storage root: data uploaded from the control machine, by content hash."""
RUNS = "runs"
"""Below the storage root: each run's folder (results, checkpoints), where it outlives the cluster."""


class Access(NamedTuple):
    """What lets a run's processes reach its storage. Confs and environment are listed in
    /proc on the hosts (spark-submit's argv, the processes' environment): never a secret there;
    a secret goes into a private file the confs and environment name."""
    conf: dict[str, str]
    """spark-submit confs."""
    env: dict[str, str]
    """The job processes' environment."""
    private: dict[str, str] = {}
    """Path on every host -> its text, written readable by the SSH user only before the run."""

    def __or__(self, other: "Access") -> "Access":
        return Access(self.conf | other.conf, self.env | other.env, self.private | other.private)


class Store:
    """One kind of storage location."""

    schemes: tuple[str, ...] = ()
    jars = ""
    """The JVM jars (an ops.jvm feature) Spark needs on every host to read it ("": none)."""
    keeps_results = False
    """Fetched results are copied here too, when it is the cluster's root."""

    def handles(self, uri: str) -> bool:
        return urlparse(uri).scheme in self.schemes

    def check(self, uri: str) -> None:
        """Refuse a location the job could not read: one UserError naming the problem and fix."""
        raise NotImplementedError

    def put(self, local: Path, folder: str) -> None:
        """local (file or folder) into folder/<its name>, once: skipped when already there."""
        raise NotImplementedError

    def on_hosts(self, uri: str) -> str:
        """uri as the job's processes must be given it."""
        return uri

    def access(self, uris: list[str]) -> Access:
        """What reaches uris."""
        return Access({}, {})

    def keep(self, local_dir: Path, location: str) -> int:
        """Copy a results folder to location; the number of files."""
        raise NotImplementedError


class Storage:
    """A target's stores; root is where its runs are kept, data_root where local data goes."""

    def __init__(self, stores: tuple[Store, ...], root: str = "", data_root: str = ""):
        self.stores = stores
        self.root = root
        self.data_root = data_root or root

    def store(self, uri: str) -> Store:
        found = next((store for store in self.stores if store.handles(uri)), None)
        if found is None:
            raise UserError(f"{uri}: kindling reads s3:// (or s3a://) and hdfs:// locations; "
                            "pass one, or a local folder (copied to the hosts)")
        return found

    def check(self, uris: list[str]) -> None:
        """Every location readable, checked from here: before anything starts on a host."""
        for uri in uris:
            self.store(uri).check(uri)

    def put(self, local: Path) -> str:
        """A local file or folder in the cluster's storage, uploaded once at a content-addressed
        location (data/<hash>/<name> below data_root); its location."""
        folder = stored.join(self.data_root, DATA, content_digest(local))
        self.store(folder).put(local, folder)
        return f"{folder}/{local.name}"

    def run_location(self, run_id: str) -> str:
        """The run's folder in the cluster's storage ("" when it has none)."""
        return stored.join(self.root, RUNS, run_id) if self.root else ""

    def access(self, uris: list[str], run_store: str) -> Access:
        """What lets the job's processes read uris and write the run's folder in the cluster's
        storage."""
        access = Access({}, {stored.RUN_STORE_ENV: run_store} if run_store else {})
        for store in self.stores:
            mine = [uri for uri in [*uris, run_store] if uri and store.handles(uri)]
            if mine:
                access |= store.access(mine)
        return access

    def jars(self, uris: list[str]) -> set[str]:
        """The JVM jar features Spark needs on the hosts to read uris."""
        return {self.store(uri).jars for uri in uris if self.store(uri).jars}

    def keep(self, local_dir: Path, run_id: str) -> None:
        """The fetched results also in the cluster's storage, where they outlive the cluster;
        a failed copy is a warning (the results are here)."""
        if not self.root or not self.store(self.root).keeps_results:
            return
        where = self.run_location(run_id) + "/"
        try:
            count = self.store(self.root).keep(local_dir, where.rstrip("/"))
        except KindlingError as exc:
            print(f"warning: results not copied to {where} ({exc}); they are in "
                  f"{os.path.relpath(local_dir)}", file=sys.stderr)
            return
        console.print(f"results also in {where} ({count} files)")


def for_cluster(inventory, connect_master) -> Storage:
    """A cluster's storage: S3 (its bucket, or any the user names) and its HDFS when it runs one.
    Runs are kept in the bucket, where they outlive the cluster, else in HDFS; local data goes
    into HDFS when the cluster runs it (the hosts read it there, close by), else the bucket."""
    from ops.remote import SECRETS, jar_folder
    from ops.services.hdfs import default_fs
    from ops.storage.hdfs import HdfsStore
    from ops.storage.s3 import ObjectStore

    hdfs_root = default_fs(inventory.master.privateIp) if inventory.hdfs else ""
    kindling_in_hdfs = stored.join(hdfs_root, "kindling") if hdfs_root else ""
    s3 = ObjectStore(inventory.s3Endpoint, inventory.region, lambda: jar_folder("s3a"), SECRETS)
    hdfs = HdfsStore(hdfs_root, inventory.master, connect_master, inventory.clusterName)
    bucket = f"s3://{inventory.bucket}" if inventory.bucket else ""
    return Storage((s3, hdfs), bucket or kindling_in_hdfs, kindling_in_hdfs or bucket)


def for_local() -> Storage:
    """This machine's view: S3 at the endpoint the AWS SDKs would use, an HDFS named by its
    NameNode; no storage of its own (results stay in runs/)."""
    from ops import jvm
    from ops.local import STATE_DIR, local_spark_home
    from ops.storage.hdfs import HdfsStore
    from ops.storage.s3 import ObjectStore, local_endpoint

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION", "")
    s3 = ObjectStore(local_endpoint(), region,
                     lambda: str(jvm.resolve("s3a", Path(local_spark_home()))),
                     str((STATE_DIR / "secrets").resolve()))
    return Storage((s3, HdfsStore()))
