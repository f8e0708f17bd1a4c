"""Getting a job's local data to a cluster: an SFTP push to every host vs one upload into HDFS.

On a fresh 3-host netns cluster addressed as on EC2 (the workers only through the master),
deployed once with `hdfs: true`, for the buses-cars photos and a generated folder of random
(incompressible) bytes, side by side in one run:

- push: what fab does on a cluster without shared storage (ops.storage.staging.stage: a tarball
  uploaded to every host and unpacked there);
- HDFS: what it does on a cluster with HDFS (ops.storage.hdfs: one upload to the master,
  `hdfs dfs -put` into HDFS, which the jobs then read through Spark or WebHDFS).

Each is timed on a fresh copy (a new content hash, so nothing is skipped), then again unchanged
(the content-addressed skip). Needs root (network namespaces) and the wheelhouse the e2e tests
build:

    sudo .venv/bin/python benchmarks/staging_time.py [--megabytes 500]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from e2e.fab_cli import fab, fab_env  # noqa: E402  (test helpers, not the product)
from netns_cluster import NetnsCluster  # noqa: E402

from kindling import load_inventory  # noqa: E402
from ops.storage.staging import remote_path, stage  # noqa: E402
from ops.targets import ClusterTarget  # noqa: E402

WHEELHOUSE = Path("/var/cache/kindling/wheelhouse")
ASSETS = Path(os.environ.get("KINDLING_ASSETS") or REPO.parent / "shared").resolve()


def generated(folder: Path, megabytes: int) -> Path:
    """`megabytes` of random bytes in 10 MB files."""
    folder.mkdir(parents=True)
    for index in range(max(1, megabytes // 10)):
        (folder / f"part-{index:04d}.bin").write_bytes(os.urandom(10 << 20))
    return folder


def fresh_copy(folder: Path, where: Path, salt: str) -> Path:
    """folder's files plus one salt file: the same bytes to move, a content hash never seen."""
    copy = where / salt / folder.name
    shutil.copytree(folder, copy)
    (copy / "salt").write_text(salt)
    return copy


def timed(action) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=500, help="size of the generated folder")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="kindling-staging-"))
    env = fab_env(ASSETS, scratch / "runs", scratch / "home")
    folders = [ASSETS / "datasets" / "buses-cars", generated(scratch / "generated", args.megabytes)]
    rows = []
    with NetnsCluster(hosts=3, gateway=True, workdir=scratch / "cluster") as cluster:
        inventory = scratch / "cluster.json"
        inventory.write_text(json.dumps(json.loads(cluster.inventory_path.read_text())
                                        | {"hdfs": True}))
        done = fab(env, "deploy", "train-ps", "--target", str(inventory), "--wheelhouse",
                   str(WHEELHOUSE), "--detach", "--epochs", "1", timeout=1800)
        if done.returncode:
            sys.exit(f"deploy failed: {done.stderr.strip()[-600:]}")
        fab(env, "stop", "--target", str(inventory))
        os.environ.update(env)
        with ClusterTarget(load_inventory(str(inventory))) as target:
            for folder in folders:
                size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
                pushed = fresh_copy(folder, scratch, "push")
                stored = fresh_copy(folder, scratch, "hdfs")
                staged = {pushed.resolve(): remote_path(pushed.resolve())}
                push = [timed(lambda: stage(target.cluster, staged)) for _ in range(2)]
                into_hdfs = [timed(lambda: target.storage.put(stored.resolve()))
                             for _ in range(2)]
                rows.append((folder.name, size, push, into_hdfs))
                print(f"{folder.name} ({size:.0f} MB): push to 3 hosts {push[0]:.1f}s, into HDFS "
                      f"once {into_hdfs[0]:.1f}s; unchanged: {push[1]:.1f}s vs {into_hdfs[1]:.1f}s",
                      flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"\n{'data':<12} {'MB':>6}  {'push, 3 hosts':>14}  {'into HDFS':>10}  "
          f"{'ratio':>6}  {'unchanged: push':>16}  {'HDFS':>6}")
    for name, size, push, into_hdfs in rows:
        print(f"{name:<12} {size:>6.0f}  {push[0]:>13.1f}s  {into_hdfs[0]:>9.1f}s  "
              f"{push[0] / into_hdfs[0]:>5.2f}x  {push[1]:>15.1f}s  {into_hdfs[1]:>5.1f}s")


if __name__ == "__main__":
    main()
