"""`fab deploy` wall time on fresh netns clusters of different sizes, first and second deploy.

Needs root (the hosts are network namespaces, tests/netns_cluster.py) and a wheelhouse
(`fab wheelhouse --folder DIR`): the hosts install the pinned job dependencies from it, as an
air-gapped cluster would. Prints one row per cluster size, measured side by side in one run:

    sudo .venv/bin/python benchmarks/deploy_time.py --wheelhouse /var/cache/kindling/wheelhouse
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from netns_cluster import NetnsCluster  # noqa: E402  (a test helper, not part of the product)

FAB = str(Path(sys.executable).parent / "fab")


def deploy_seconds(inventory: Path, wheelhouse: str, env: dict) -> float:
    """`fab deploy train-ps --detach`: the install steps, then a detached launch; 'deploy took'."""
    done = subprocess.run([FAB, "deploy", "train-ps", "--target", str(inventory), "--wheelhouse",
                           wheelhouse, "--detach", "--epochs", "1",
                           "--job-args", "--steps-per-epoch 5"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        sys.exit(f"deploy failed: {done.stderr.strip()}")
    return float(re.search(r"deploy took ([\d.]+)s", done.stdout).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheelhouse", required=True)
    parser.add_argument("--sizes", default="2,3", help="hosts per cluster (master + workers)")
    args = parser.parse_args()
    env = {**os.environ, "KINDLING_RUNS_DIR": tempfile.mkdtemp(prefix="kindling-bench-runs-")}
    print(f"{'hosts':>5}  {'first deploy':>12}  {'second deploy':>13}")
    for size in map(int, args.sizes.split(",")):
        with NetnsCluster(hosts=size, workdir=tempfile.mkdtemp(prefix="kindling-bench-")) as cluster:
            first = deploy_seconds(cluster.inventory_path, args.wheelhouse, env)
            second = deploy_seconds(cluster.inventory_path, args.wheelhouse, env)
        print(f"{size:>5}  {first:>11.1f}s  {second:>12.1f}s", flush=True)


if __name__ == "__main__":
    main()
