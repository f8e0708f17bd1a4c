"""`fab status` and `fab exec hostname` on 48 netns hosts vs 2, through the master: wall time
and this machine's CPU time (the fab process's user+sys), one run each, and their ratios.

Needs root (the hosts are network namespaces, tests/netns_cluster.py). Workers refuse SSH from
this machine (`--gateway`), so ops reaches them through the master, as on EC2 with one public
address; `--direct` measures hosts that each have their own address instead:

    sudo .venv/bin/python benchmarks/fanout.py [--sizes 2,48] [--direct]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout, as fab gets it by PYTHONPATH

from netns_cluster import NetnsCluster  # noqa: E402  (a test helper, not part of the product)

FAB = str(Path(sys.executable).parent / "fab")
COMMANDS = (("status",), ("exec", "hostname"))
GOAL = 3.0


def timed_fab(args: tuple[str, ...], inventory: Path, env: dict) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user+sys of fab and its children) of one fab command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run([FAB, *args, "--target", str(inventory)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"fab {' '.join(args)} failed: {done.stderr.strip()}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2,48", help="hosts per cluster, smallest first")
    parser.add_argument("--direct", action="store_true", help="every host has its own address")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "HOME": tempfile.mkdtemp(prefix="kindling-bench-home-")}  # fresh credentials cache
    sizes = [int(s) for s in args.sizes.split(",")]
    figures: dict[int, dict[str, tuple[float, float]]] = {}
    addressing = "direct" if args.direct else "through the master"
    print(f"{'hosts':>5}  {'command':<13} {'wall':>7} {'CPU':>7}   ({addressing})")
    for size in sizes:
        with NetnsCluster(hosts=size, gateway=not args.direct,
                          workdir=tempfile.mkdtemp(prefix="kindling-bench-")) as cluster:
            figures[size] = {}
            for command in COMMANDS:
                name = " ".join(command)
                wall, cpu = figures[size][name] = timed_fab(command, cluster.inventory_path, env)
                print(f"{size:>5}  {name:<13} {wall:>6.2f}s {cpu:>6.2f}s", flush=True)
    small, large = sizes[0], sizes[-1]
    for name in figures[large]:
        (wall_s, cpu_s), (wall_l, cpu_l) = figures[small][name], figures[large][name]
        print(f"{name}: {large} vs {small} hosts: wall {wall_l / wall_s:.1f}x, "
              f"CPU {cpu_l / cpu_s:.1f}x (goal: <= {GOAL:g}x)")


if __name__ == "__main__":
    main()
