"""From fresh hosts to a running job: `fab deploy train-ps --detach` on fresh rehearsal hosts.

The hosts are the EC2 rehearsal's (tests/rehearsal_cluster.py): fresh Debian 13 booted by infra's
own user data, no route out, so they install from a wheelhouse (built here for their Python once,
cached, as `fab wheelhouse` does). The clock starts when every sshd answers (cloud-init still at
work, as right after `pulumi up`) and stops when the job runs detached. Each checkout given is
measured on its own fresh cluster of each size, side by side in one run, first and second deploy,
with the slowest host's seconds per deploy step (the `fab deploy` progress lines).

Needs root (network namespaces):

    sudo .venv/bin/python benchmarks/deploy_time.py --sizes 3,10 --checkout /path/to/old/kindling

Goals (issue 14): P8 first deploy on 3 fresh hosts <= 60 s; P9 from `pulumi up` done to a job
running on 10 fresh hosts <= 180 s.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from rehearsal_cluster import RehearsalCluster  # noqa: E402  (test helpers, not the product)

FAB = str(Path(sys.executable).parent / "fab")
GOALS = {3: ("P8", 60.0), 10: ("P9", 180.0)}
STEP = re.compile(r"^(\S+) +(.+?) +(installed|started|skipped \(\w+\)) +([\d.]+)s$", re.M)


def deploy(checkout: Path, inventory: Path, wheelhouse: Path, env: dict) -> tuple[float, dict]:
    """Wall seconds of `fab deploy train-ps --detach` from checkout, and step -> slowest host's s."""
    started = time.monotonic()
    done = subprocess.run([FAB, "deploy", "train-ps", "--target", str(inventory), "--wheelhouse",
                           str(wheelhouse), "--detach", "--epochs", "1",
                           "--job-args", "--steps-per-epoch 5"],
                          cwd=checkout, env=env, capture_output=True, text=True, timeout=1800,
                          stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    if done.returncode:
        sys.exit(f"deploy from {checkout} failed: {done.stderr.strip()[-600:]}")
    steps: dict[str, float] = defaultdict(float)
    for _, step, _, took in STEP.findall(done.stdout):
        steps[step] = max(steps[step], float(took))
    subprocess.run([FAB, "stop", "--target", str(inventory)], cwd=checkout, env=env,
                   capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    return seconds, steps


def wheelhouse_for(python: str, folder: Path) -> Path:
    done = subprocess.run([FAB, "wheelhouse", "--folder", str(folder), "--python-version", python],
                          cwd=REPO, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        sys.exit(f"fab wheelhouse failed: {done.stderr.strip()}")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="3,10", help="hosts per cluster (master + workers)")
    parser.add_argument("--checkout", action="append", type=Path, default=[],
                        help="another kindling checkout to measure side by side (e.g. before a change)")
    parser.add_argument("--wheelhouse", type=Path,
                        default=Path("/var/cache/kindling-rehearsal/wheelhouse"))
    parser.add_argument("--python-version", default="3.13:2.41", help="the rehearsal hosts' Python")
    args = parser.parse_args()
    wheelhouse = wheelhouse_for(args.python_version, args.wheelhouse)
    env = {**os.environ, "KINDLING_RUNS_DIR": tempfile.mkdtemp(prefix="kindling-bench-runs-")}
    rows = []
    for size in map(int, args.sizes.split(",")):
        for checkout in [*args.checkout, REPO]:
            with RehearsalCluster(workers=size - 1,
                                  workdir=tempfile.mkdtemp(prefix="kindling-bench-")) as cluster:
                booted = time.monotonic()
                cluster.wait_ssh(timeout=600)
                ssh_after = time.monotonic() - booted
                first, steps = deploy(checkout, cluster.inventory_path, wheelhouse, env)
                second, _ = deploy(checkout, cluster.inventory_path, wheelhouse, env)
            rows.append((size, checkout, ssh_after, first, second))
            goal = GOALS.get(size)
            print(f"{size} hosts, {checkout}: sshd after {ssh_after:.1f}s; first deploy to a running "
                  f"job {first:.1f}s" + (f" (goal {goal[0]}: <= {goal[1]:.0f}s)" if goal else "")
                  + f"; second {second:.1f}s", flush=True)
            print("  slowest host per step (first deploy): " +
                  ", ".join(f"{step} {took:.1f}s" for step, took in steps.items()), flush=True)
    print(f"\n{'hosts':>5}  {'checkout':<40} {'sshd':>6}  {'first':>7}  {'second':>7}")
    for size, checkout, ssh_after, first, second in rows:
        print(f"{size:>5}  {str(checkout):<40} {ssh_after:>5.1f}s  {first:>6.1f}s  {second:>6.1f}s")


if __name__ == "__main__":
    main()
