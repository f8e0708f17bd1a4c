"""Auto-stop as the user data arms it, with no `fab deploy`: the rehearsal's hosts booted again as
new instances of a stack with idleStopMinutes scaled down (ids the inventory does not know, as
after a replacement), each stopping itself with its shutdown command (recorded: the hosts share
this machine's kernel), and a host that stops answering holding the cluster's stop back.

The session's rehearsal cluster, last: the replacement ends the daemons earlier tests started.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import replace

import pytest

from e2e.fab_cli import fab, wait_until, watcher_uids
from ops.agent import install
from rehearsal_cluster import POWEROFF_RECORD, SHUTDOWN, render_stack

pytestmark = pytest.mark.netns

IDLE_MINUTES = 0.2
"""12 s: the watchers report and decide every 1.2 s; a host silent for 3.6 s holds the stop
back until it has been silent for 12 + 3.6 s."""
JOB = "/srv/kindling/runs/rehearsal-autostop/job-0.pid"


def status(cluster, host: str) -> dict:
    text = cluster.exec(host, f"cat {install.STATE}/status.json 2>/dev/null").stdout
    return json.loads(text) if text.strip() else {}


def powered_off(cluster, host: str) -> bool:
    return cluster.exec(host, ["test", "-s", POWEROFF_RECORD]).returncode == 0


def test_rehearsal_the_idle_cluster_stops_itself_and_a_silent_host_holds_it_back(
        rehearsal_cluster, rehearsal_env):
    cluster = rehearsal_cluster
    cluster.wait_booted()
    stack = render_stack(workers=2, idle_stop_minutes=IDLE_MINUTES)
    stack = replace(stack, instance_ids={name: f"i-{secrets.token_hex(8)}"
                                         for name in stack.instance_ids})
    started, replaced = time.monotonic(), time.time()
    cluster.replace_hosts(stack)
    # a job on the master from its first moment: the cluster stays busy until the test ends it
    cluster.exec("master", f"mkdir -p {JOB.rsplit('/', 1)[0]} && (setsid sleep 600 "
                           f"> /dev/null 2>&1 < /dev/null & echo $! > {JOB})", check=True)
    hosts = [record["name"] for record in cluster.state["hosts"]]
    workers = [name for name in hosts if name != "master"]

    def fresh(host: str) -> dict:
        """The host's status once this boot's watcher wrote it: the disks are kept, so until
        then status.json is the old boot's."""
        shown = status(cluster, host)
        return shown if shown.get("checked", 0) > replaced else {}

    wait_until(lambda: all(fresh(w).get("answered") for w in workers)
               and "job process" in " ".join(fresh("master").get("active", [])),
               "every host's watcher, started by cloud-init, to report to the master's",
               timeout=240, interval=0.5)
    booted = time.monotonic() - started
    for name in hosts:  # armed by the user data, as rendered for this stack
        settings = json.loads(cluster.exec(name, f"cat {install.SETTINGS}").stdout)
        assert settings["idle_minutes"] == IDLE_MINUTES and settings["host"] == name
        assert settings.pop("shutdown") == SHUTDOWN  # the tests' one change
        assert settings["version"] == install.version(settings)
        user, running_as = watcher_uids(cluster, name)  # not root: its own user's
        assert user != "0" and running_as == [user] * 4, (name, user, running_as)

    cluster.exec("master", f"kill $(cat {JOB})", check=True)  # the job ends: the cluster is idle
    wait_until(lambda: (lambda s: s["up"] - s["lastActive"] >= 6 and not s["active"])(
        status(cluster, "master")), "the cluster to be idle for half its idle time",
        timeout=60, interval=0.3)
    cluster.exec("worker-0", f"kill -STOP $(cat {install.PID})", check=True)
    try:
        wait_until(lambda: "worker-0" in status(cluster, "master")["silent"],
                   "the master to miss worker-0's reports", timeout=30, interval=0.3)
        shown = " ".join(fab(rehearsal_env, "status", "--target",
                             str(cluster.inventory_path)).stdout.split())
        assert "auto-stop: blocked: no answer from worker-0 (" in shown, shown
        held = wait_until(lambda: (lambda s: s if s["up"] >= s["stopAt"] + 1.2 else None)(
            status(cluster, "master")), "the idle deadline to pass", timeout=60, interval=0.3)
        assert list(held["silent"]) == ["worker-0"] and not held["decision"], held
        assert not any(powered_off(cluster, h) for h in hosts)
    finally:
        cluster.exec("worker-0", f"kill -CONT $(cat {install.PID})")
    resumed = status(cluster, "master")["up"]
    wait_until(lambda: all(powered_off(cluster, name) for name in hosts),
               "every host to run its shutdown command", timeout=60, interval=0.5)
    stopped = time.monotonic()
    records = {name: status(cluster, name)["shutdown"] for name in hosts}
    assert records["master"]["why"] == "idle for 0.2 min (idleStopMinutes)", records
    assert records["master"]["up"] > resumed  # not before worker-0 answered again
    for name in workers:
        assert records[name]["why"] == "the master stopped the cluster: " + records["master"][
            "why"], records
        assert records[name]["at"] < records["master"]["at"], records  # the master last
    print(f"auto-stop rehearsal: hosts replaced and watchers reporting after {booted:.1f}s; "
          f"the cluster stopped {stopped - started - booted:.1f}s later (12 s idle time, "
          "worker-0 silent for part of it); "
          f"the whole test {time.monotonic() - started:.1f}s")
