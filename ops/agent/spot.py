"""Spot interruptions: what a spot host's watcher does when EC2 takes the instance back.

EC2 gives a spot instance two minutes' notice in its metadata service: `spot/instance-action`
answers 404 until then, and then the action and its time. The watcher polls it (IMDSv2: a
session token first, as the launch template requires) and, on a notice:

- writes the notice file, which a job's TensorFlow processes on the host watch
  (`KINDLING_SPOT_NOTICE`): a TF job fails at once naming this host instead of hanging on a peer
  that vanishes two minutes later;
- sends SIGPWR to the Spark worker, Spark's own graceful decommissioning: the master gives this
  worker no new executors, the drivers no new tasks; running tasks finish and cached and
  shuffle blocks move to other executors, so a Spark job finishes on the other workers.

The file mirrors the metadata service: it goes when the notice does (a replaced host). Standard
library only.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

IMDS = "http://169.254.169.254"
NOTICE_PATH = "/latest/meta-data/spot/instance-action"
TOKEN_TTL_SECONDS = 300
POLL_SECONDS = 5.0
"""How often AWS suggests checking for the two-minute notice."""
TIMEOUT = 2.0


def instance_action(imds: str = "") -> dict | None:
    """The instance's spot interruption notice ({"action": "terminate", "time": "...Z"}), or
    None while there is none. Raises OSError when the metadata service does not answer."""
    base = (imds or IMDS).rstrip("/")
    token_request = urllib.request.Request(
        f"{base}/latest/api/token", method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)})
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with no_proxy.open(token_request, timeout=TIMEOUT) as answer:
        token = answer.read().decode()
    notice_request = urllib.request.Request(f"{base}{NOTICE_PATH}",
                                            headers={"X-aws-ec2-metadata-token": token})
    try:
        with no_proxy.open(notice_request, timeout=TIMEOUT) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def as_user(argv: list[str], user: str = "root") -> list[str]:
    """argv run as user: through sudo (the watcher's rules: ops.agent.install) unless root."""
    return list(argv) if os.geteuid() == 0 else ["sudo", "-n", "-u", user, "--", *argv]


def decommission_command(pid_file: str) -> list[str]:
    """SIGPWR to the process whose pid the file holds (pkill reads the file)."""
    return ["/usr/bin/pkill", "--signal", "PWR", "--pidfile", pid_file]


def decommission_spark_worker(pid_file: str) -> bool:
    """SIGPWR to the Spark worker whose pid the file holds, as the file's owner (never root: the
    watcher's sudoers rules); False when it is not running."""
    try:
        owner = Path(pid_file).stat().st_uid
        done = subprocess.run(as_user(decommission_command(pid_file), f"#{owner}"),
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def watch(host: str, address: str, notice_file: str, spark_worker_pid: str, imds: str = "",
          interval: float = POLL_SECONDS) -> None:
    """Poll for a notice forever; act on it once (notice file, Spark decommission). A notice
    file from before this watcher started goes: the metadata service says whether it holds."""
    notice_path = Path(notice_file)
    notice_path.unlink(missing_ok=True)
    acted = False
    while True:
        try:
            action = instance_action(imds)
        except (OSError, ValueError) as exc:
            print(f"{time.strftime('%H:%M:%S')} metadata service: {exc}; trying again", flush=True)
            time.sleep(interval)
            continue
        if action and not acted:
            notice = {"host": host, "address": address, "noticed": time.time(), **action}
            notice_path.with_suffix(".tmp").write_text(json.dumps(notice))
            notice_path.with_suffix(".tmp").replace(notice_path)
            decommissioned = decommission_spark_worker(spark_worker_pid)
            print(f"{time.strftime('%H:%M:%S')} spot interruption notice ({action}); "
                  + ("decommissioning the Spark worker" if decommissioned
                     else "no Spark worker running"), flush=True)
            acted = True
        elif not action and acted:
            notice_path.unlink(missing_ok=True)
            acted = False
        time.sleep(interval)

