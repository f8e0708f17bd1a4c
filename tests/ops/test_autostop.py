"""Idle auto-stop's rules (ops.agent.autostop): when the cluster stops, what counts as busy, and the
activity a host reports to the master's watcher, with real processes and a real HTTP endpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from ops.agent import autostop
from ops.agent.autostop import Settings, decide, describe


def settings(tmp_path, **changes) -> Settings:
    return Settings(**{"host": "master", "address": "127.0.0.1", "runs": str(tmp_path / "runs"),
                       "state": str(tmp_path / "state"), "idle_minutes": 60.0, **changes})


@pytest.mark.parametrize("idle, max_hours, idle_for, up_for, stops, why", [
    (60, 0, 59 * 60, 10 * 3600, False, ""),
    (60, 0, 60 * 60, 10 * 3600, True, "idle for 60 min"),
    (0, 0, 99 * 3600, 99 * 3600, False, ""),                 # off
    (60, 8, 5 * 60, 8 * 3600, True, "up for 8 h"),           # the hard limit, however busy
    (60, 8, 60 * 60, 2 * 3600, True, "idle for 60 min"),
    (0, 8, 10 * 3600, 7.9 * 3600, False, ""),
])
def test_the_cluster_stops_at_the_first_limit_reached(tmp_path, idle, max_hours, idle_for,
                                                      up_for, stops, why):
    now = 1_000_000.0
    reason, stop_at = decide(now, now - up_for, now - idle_for,
                             settings(tmp_path, idle_minutes=idle, max_hours=max_hours))
    assert bool(reason) == stops and reason.startswith(why)
    if idle or max_hours:
        limits = [t for t in ((now - idle_for + idle * 60) if idle else None,
                              (now - up_for + max_hours * 3600) if max_hours else None) if t]
        assert stop_at == min(limits)
    else:
        assert stop_at == 0.0


def test_a_live_job_process_is_activity_an_ended_one_is_not(tmp_path):
    run = tmp_path / "runs" / "train-ps-1"
    run.mkdir(parents=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ended = subprocess.run([sys.executable, "-c", "pass"])
    try:
        (run / "chief-0.pid").write_text(str(live.pid))
        (run / "worker-0.pid").write_text("999999999")      # no such process
        (run / "ps-0.pid").write_text(str(live.pid))
        (run / "ps-0.rc").write_text(str(ended.returncode))  # it ended: its pid may be reused
        assert autostop.live_processes(str(tmp_path / "runs")) == ["train-ps-1/chief-0"]
        host = settings(tmp_path)
        assert autostop.local_activity(host) == ["master: job process train-ps-1/chief-0"]
        server = autostop.serve_activity(host)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{autostop.PORT}/activity",
                                        timeout=5) as answer:
                assert json.load(answer) == {"host": "master",
                                             "active": ["master: job process train-ps-1/chief-0"]}
            peers = settings(tmp_path, runs=str(tmp_path / "none"), peers=("127.0.0.1",))
            assert autostop.cluster_activity(peers) == ["master: job process train-ps-1/chief-0"]
        finally:
            server.shutdown()
            server.server_close()
    finally:
        live.kill()
        live.wait()
    assert autostop.live_processes(str(tmp_path / "runs")) == []


def test_an_interactive_ssh_login_is_told_from_fabs_own_commands():
    assert autostop.LOGIN.match(b"sshd: ubuntu@pts/0\x00")
    assert autostop.LOGIN.match(b"sshd-session: ubuntu@pts/3\x00")
    assert not autostop.LOGIN.match(b"sshd: ubuntu@notty\x00")
    assert not autostop.LOGIN.match(b"sshd: /usr/sbin/sshd -D [listener]\x00")


def test_fab_status_says_what_the_watcher_decided():
    def clock(seconds: float) -> str:
        return time.strftime("%H:%M:%S", time.localtime(seconds))

    hour = 3600.0
    status = {"checked": 10 * hour, "started": 9 * hour, "lastActive": 10 * hour - 600,
              "active": [], "stopAt": 10 * hour + 3000, "stopped": False,
              "idleStopMinutes": 60.0, "maxHours": 0.0}
    assert describe(status) == (f"auto-stop: idle since {clock(10 * hour - 600)}; the cluster "
                                f"stops in 50.0 min (at {clock(10 * hour + 3000)})")
    busy = status | {"active": ["worker-1: 1 SSH login(s)"], "maxHours": 8.0}
    assert describe(busy) == ("auto-stop: busy (worker-1: 1 SSH login(s)); the cluster stops "
                              f"after 60 idle minutes, or at {clock(17 * hour)} however busy "
                              "(maxHours 8)")
    assert describe(status | {"stopped": True}) == (
        f"auto-stop: stopped the cluster (idle since {clock(10 * hour - 600)})")
    assert describe(status | {"stopAt": 0.0, "idleStopMinutes": 0.0}) == (
        "auto-stop: off (idleStopMinutes 0, no maxHours)")
