"""Idle auto-stop's rules (ops.agent.autostop): when the cluster stops, what counts as busy, a
silent host holding the stop back, a host whose master is gone, the clock from the host's boot,
and the master and a peer talking over a real HTTP endpoint, each running a real shutdown
command (a recording one)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time

import pytest

from ops.agent import autostop, install, spot
from ops.agent.autostop import Clock, Settings, Watcher, decide, decide_alone
from ops.remote import SPARK_STATE
from ops.services.spark import worker_pid_file
from ops.services.watcher import describe

MINUTE, HOUR = 60.0, 3600.0


def settings(tmp_path, **changes) -> Settings:
    return Settings(**{"host": "master", "master": "127.0.0.1", "runs": str(tmp_path / "runs"),
                       "state": str(tmp_path / "state"), "idle_minutes": 60.0, "interval": 30.0,
                       **changes})


@pytest.mark.parametrize("idle, max_hours, idle_for, up_for, stops, why", [
    (60, 0, 59 * MINUTE, 10 * HOUR, False, ""),
    (60, 0, 60 * MINUTE, 10 * HOUR, True, "idle for 60 min"),
    (0, 0, 99 * HOUR, 99 * HOUR, False, ""),                 # off
    (60, 8, 5 * MINUTE, 8 * HOUR, True, "up for 8 h"),       # the hard limit, however busy
    (60, 8, 60 * MINUTE, 2 * HOUR, True, "idle for 60 min"),
    (0, 8, 10 * HOUR, 7.9 * HOUR, False, ""),
])
def test_the_cluster_stops_at_the_first_limit_reached_counted_from_boot(
        tmp_path, idle, max_hours, idle_for, up_for, stops, why):
    reason, stop_at, silent = decide(Clock(up=up_for, last_active=up_for - idle_for),
                                     settings(tmp_path, idle_minutes=idle, max_hours=max_hours))
    assert bool(reason) == stops and reason.startswith(why) and silent == {}
    limits = [at for at in ((up_for - idle_for + idle * MINUTE) if idle else None,
                            (max_hours * HOUR) if max_hours else None) if at]
    assert stop_at == (min(limits) if limits else 0.0)


def test_a_silent_host_holds_the_idle_stop_back_until_it_has_stopped_itself():
    """Fail closed: a host not heard from for 3 intervals may be busy, so the idle cluster waits
    for it; once it has been silent longer than a host waits for its master (idleStopMinutes), it
    has stopped itself (or is gone), and the cluster stops. maxHours waits for nobody."""
    rules = Settings(host="master", master="m", runs="", state="", idle_minutes=60.0,
                     interval=30.0, max_hours=8.0, peers=("worker-0", "worker-1"))
    up = 2 * HOUR

    def stop(**heard_ago: float) -> tuple[str, dict]:
        clock = Clock(up=up, last_active=0.0, heard={p: up - ago for p, ago in heard_ago.items()})
        why, _, silent = decide(clock, rules)
        return why, silent

    assert stop(**{"worker-0": 10, "worker-1": 60}) == ("idle for 60 min (idleStopMinutes)", {})
    assert stop(**{"worker-0": 10, "worker-1": 90}) == ("", {"worker-1": 90})
    assert stop(**{"worker-0": 10, "worker-1": 60 * MINUTE + 90}) == ("", {
        "worker-1": 60 * MINUTE + 90})
    assert stop(**{"worker-0": 10, "worker-1": 60 * MINUTE + 91})[0].startswith("idle for")
    up = 8 * HOUR
    assert stop(**{"worker-0": 10, "worker-1": 90}) == ("up for 8 h (maxHours)", {"worker-1": 90})


def test_a_host_stops_when_told_when_its_master_is_gone_or_at_its_own_max_hours(tmp_path):
    worker = settings(tmp_path, host="worker-0", max_hours=8.0)
    assert decide_alone(HOUR, HOUR - 30, "", worker) == ""
    assert decide_alone(HOUR, HOUR - 30, "idle for 60 min", worker) == (
        "the master stopped the cluster: idle for 60 min")
    assert decide_alone(HOUR, 0.0, "", worker) == (
        "the master (127.0.0.1) did not answer for 60 min (idleStopMinutes)")
    assert decide_alone(8 * HOUR, 8 * HOUR, "", worker) == "up for 8 h (maxHours)"
    assert decide_alone(99 * HOUR, 0.0, "", settings(tmp_path, idle_minutes=0.0)) == ""


def test_the_clock_counts_from_the_hosts_init_not_the_machines_boot():
    """In a new PID namespace (as the tests' hosts are), the host booted when its init started,
    whatever /proc/uptime (the machine's kernel) says."""
    unshare = shutil.which("unshare")
    probe = [unshare or "unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
             "import time; time.sleep(1); from ops.agent import autostop; "
             "print(autostop.uptime(), autostop.boot_id())"]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.skip(f"a new PID namespace needs root: {done.stderr.strip()[-200:]}")
    host_up, host_boot = done.stdout.split()
    machine_up = float(open("/proc/uptime").read().split()[0])
    assert 1.0 <= float(host_up) < 30.0 and machine_up > float(host_up) + 30, (host_up, machine_up)
    assert host_boot != autostop.boot_id()
    assert host_boot.split("/")[0] == autostop.boot_id().split("/")[0]  # the same kernel


def test_a_restarted_watcher_keeps_the_idle_clock_of_this_boot_only(tmp_path):
    """A first start in a boot idles from then (a long-idle host armed late does not stop at
    once); a restart in the same boot keeps the last activity it noted."""
    rules = settings(tmp_path)
    first = Watcher(rules, clock=lambda: 100.0)
    first.times.last_active = 40.0
    first._write({"lastActive": 40.0})
    assert Watcher(rules, clock=lambda: 200.0).times.last_active == 40.0
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    (tmp_path / "state" / "status.json").write_text(json.dumps(status | {"boot": "before"}))
    assert Watcher(rules, clock=lambda: 200.0).times.last_active == 200.0  # its first start


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
        (run / "old-0.pid").write_text(str(live.pid))
        os.utime(run / "old-0.pid", (0, 0))  # written before this boot: not this boot's process
        assert autostop.live_processes(str(tmp_path / "runs")) == ["train-ps-1/chief-0"]
        assert autostop.local_activity(settings(tmp_path)) == [
            "master: job process train-ps-1/chief-0"]
    finally:
        live.kill()
        live.wait()
    assert autostop.live_processes(str(tmp_path / "runs")) == []


def test_a_notebook_kernel_running_a_cell_is_activity_an_idle_one_and_its_session_are_not(
        tmp_path, monkeypatch):
    """A real IPython kernel (jupyter_client) with the notebook's cell notes: busy while a cell
    blocks on a FIFO, idle once it returned; the notebook's idle Spark session (the master's
    /json/ as Spark 4.3 answers it, cut to the fields read) is no activity, a job's is."""
    manager = pytest.importorskip("jupyter_client.manager")
    kernels, fifo = tmp_path / "kernels", tmp_path / "release"
    kernels.mkdir()
    os.mkfifo(fifo)
    apps = {"activeapps": [{"id": "app-20261207105500-0000", "name": autostop.NOTEBOOK_APP,
                            "state": "RUNNING"}]}
    monkeypatch.setattr(autostop, "fetch_json", lambda url, body=None: apps)
    rules = settings(tmp_path, notebook_kernels=str(kernels), spark_master=True)
    kernel, client = manager.start_new_kernel(kernel_name="python3", startup_timeout=60,
                                              cwd=str(tmp_path))
    try:
        client.execute_interactive("from workloads.notebook import note_cells; "
                                   f"note_cells(get_ipython(), {str(kernels)!r})", timeout=30)
        assert autostop.local_activity(rules) == []
        pid = kernel.provisioner.pid
        request = client.execute(f"open({str(fifo)!r}).read()")
        busy = [f"master: notebook kernel {pid} running a cell"]
        wait_until(lambda: autostop.local_activity(rules) == busy, "the busy kernel", timeout=30)
        with open(fifo, "w") as release:
            release.write("done")
        reply = client.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == request
        assert reply["content"]["status"] == "ok"
        assert autostop.local_activity(rules) == []
        apps["activeapps"].append({"id": "app-20261207105600-0001", "name": "classify",
                                   "state": "RUNNING"})
        assert autostop.local_activity(rules) == ["master: Spark application "
                                                  "app-20261207105600-0001"]
    finally:
        client.stop_channels()
        kernel.shutdown_kernel(now=True)


def wait_until(condition, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.1)


def test_an_interactive_ssh_login_is_told_from_fabs_own_commands():
    assert autostop.LOGIN.match(b"sshd: ubuntu@pts/0\x00")
    assert autostop.LOGIN.match(b"sshd-session: ubuntu@pts/3\x00")
    assert not autostop.LOGIN.match(b"sshd: ubuntu@notty\x00")
    assert not autostop.LOGIN.match(b"sshd: /usr/sbin/sshd -D [listener]\x00")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_master_hears_a_busy_peer_then_tells_it_to_stop_and_both_shut_down(tmp_path):
    """Over the real endpoint: the peer's job keeps the cluster up; once idle, the master
    decides, tells the peer in its answer, and shuts down itself two intervals later; each runs
    its shutdown command (here one that records it) and notes it in status.json."""
    now = {"t": 1000.0}
    port = free_port()
    record = tmp_path / "shutdowns"

    def host_settings(name: str, **changes) -> Settings:
        return settings(tmp_path / name, host=name, idle_minutes=1.0, interval=6.0, port=port,
                        shutdown=("sh", "-c", f"echo {name} >> {record}"), **changes)

    master = Watcher(host_settings("master", peers=("worker-0",)), clock=lambda: now["t"])
    peer = Watcher(host_settings("worker-0"), clock=lambda: now["t"])
    server = autostop.serve_reports(master, "127.0.0.1")
    try:
        job = tmp_path / "worker-0" / "runs" / "run-1"
        job.mkdir(parents=True)
        (job / "worker-0.pid").write_text(str(os.getpid()))
        assert peer.peer_round() == "" and master.master_round() == ""
        status = json.loads((tmp_path / "master" / "state" / "status.json").read_text())
        assert status["active"] == ["worker-0: job process run-1/worker-0"]
        assert describe(status).startswith("auto-stop: busy (worker-0: job process run-1/worker-0)")
        (job / "worker-0.rc").write_text("0")  # the job ended at 1000
        now["t"] = 1059.0
        assert peer.peer_round() == "" and master.master_round() == ""
        now["t"] = 1060.0
        assert peer.peer_round() == "" and master.master_round() == ""  # decided, not yet due
        why = peer.peer_round()
        assert why == "the master stopped the cluster: idle for 1 min (idleStopMinutes)"
        assert peer.shut_down(why)
        now["t"] = 1072.0
        assert master.master_round() == "idle for 1 min (idleStopMinutes)"
        assert master.shut_down("idle for 1 min (idleStopMinutes)")
    finally:
        server.shutdown()
        server.server_close()
    assert record.read_text().split() == ["worker-0", "master"]
    status = json.loads((tmp_path / "master" / "state" / "status.json").read_text())
    assert status["shutdown"]["command"][0] == "sh" and status["shutdown"]["up"] == 1072.0
    assert describe(status).startswith("auto-stop: stopped the cluster at ")


def test_the_master_lists_what_keeps_the_cluster_busy_host_by_host_whatever_order_reports_came(
        tmp_path):
    """`fab status` shows the same list for the same cluster: the master's own activity, then the
    peers' by host name, not in the order their reports happened to arrive."""
    master = Watcher(settings(tmp_path, peers=("worker-0", "worker-1")), clock=lambda: 1000.0)
    master.report("worker-1", ["worker-1: job process run-1/worker-1"])
    master.report("worker-0", ["worker-0: job process run-1/worker-0"])
    master.master_round()
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["active"] == ["worker-0: job process run-1/worker-0",
                                "worker-1: job process run-1/worker-1"]


def test_fab_status_says_what_the_watcher_decided():
    def clock(since_boot: float) -> str:
        return time.strftime("%H:%M:%S", time.localtime(booted + since_boot))

    booted = 1_000_000.0
    status = {"checked": booted + 10 * HOUR, "up": 10 * HOUR, "lastActive": 10 * HOUR - 600,
              "active": [], "stopAt": 10 * HOUR + 3000, "silent": {},
              "idleStopMinutes": 60.0, "maxHours": 0.0}
    assert describe(status) == (f"auto-stop: idle since {clock(10 * HOUR - 600)}; the cluster "
                                f"stops in 50.0 min (at {clock(10 * HOUR + 3000)})")
    busy = status | {"active": ["worker-1: 1 SSH login(s)"], "maxHours": 12.0}
    assert describe(busy) == ("auto-stop: busy (worker-1: 1 SSH login(s)); the cluster stops "
                              f"after 60 idle minutes, or at {clock(12 * HOUR)} however busy "
                              "(maxHours 12)")
    held = describe(status | {"silent": {"worker-1": 95.2}})
    assert held.startswith("auto-stop: blocked: no answer from worker-1 (95 s); the cluster "
                           "does not stop while a host may be busy"), held
    stopped = status | {"shutdown": {"up": 10 * HOUR, "why": "idle for 60 min"}}
    assert describe(stopped) == (f"auto-stop: stopped the cluster at {clock(10 * HOUR)} "
                                 "(idle for 60 min)")
    assert describe(status | {"decision": "idle for 60 min"}) == (
        "auto-stop: stopping the cluster (idle for 60 min)")
    assert describe(status | {"stopAt": 0.0, "idleStopMinutes": 0.0}) == (
        "auto-stop: off (idleStopMinutes 0, no maxHours)")


def test_the_watcher_finds_the_spark_worker_where_spark_puts_its_pid():
    assert install.SPARK_WORKER_PID == worker_pid_file(SPARK_STATE, 1)


def test_systemctl_poweroff_never_runs_where_systemd_is_not_the_hosts_init(tmp_path):
    """The default shutdown, tried on a host whose init is not systemd (a new PID namespace, as
    the tests' hosts are: systemctl would reach this machine's systemd), is refused, never run."""
    code = ("from ops.agent.autostop import Settings, Watcher; "
            f"rules = Settings(host='master', master='m', runs='', state={str(tmp_path)!r}, "
            "idle_minutes=1.0); print(Watcher(rules, clock=lambda: 1.0).shut_down('test'))")
    done = subprocess.run([shutil.which("unshare") or "unshare", "--pid", "--fork", "--mount-proc",
                           sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:  # never try it outside a namespace: it might power this machine off
        pytest.skip(f"a new PID namespace needs root: {done.stderr.strip()[-200:]}")
    assert done.stdout.split()[-1] == "False", done.stdout
    assert "not shutting down (test): systemd is not this host's init" in done.stdout
    assert not (tmp_path / "status.json").exists()  # nothing noted as run


HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
THROWAWAY_HOST_TOOLS = ("unshare", "mount", "ip", "sudo", "visudo", "useradd", "setpriv", "flock",
                        "pkill")
SPARK_WORKER = ("import signal, sys, time; signal.signal(signal.SIGPWR, lambda *_: open("
                "sys.argv[1], 'w').write('decommissioning')); open(sys.argv[2], 'w').write('ready');"
                " time.sleep(60)")


def throwaway_host_script(record: str) -> str:
    """What runs as root on the throwaway host: the restart command twice, then what it shows."""
    runs, spark = f"{install.RUNS}/run-1", install.SPARK_WORKER_PID.rsplit("/pids/", 1)[0]
    as_watcher = f"setpriv --reuid={install.USER} --regid={install.USER} --init-groups"
    forbidden = ["/usr/bin/systemctl reboot", "/bin/sh -c id", "/usr/bin/id",
                 f"-u root {' '.join(spot.decommission_command(install.SPARK_WORKER_PID))}"]
    return f"""
wait_for() {{ timeout 20 sh -c "until $1; do sleep 0.05; done" || {{
    echo "timed out: $1"; cat {install.LOG}; exit 4; }}; }}
mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/log && ip link set lo up || exit 2
mkdir -p {runs}
sleep 60 & echo $! > {runs}/job-0.pid
sh -c {shlex.quote(install.restart_command())} || exit 3
sh -c {shlex.quote(install.restart_command())} || exit 3
pid=$(cat {install.PID})  # until setpriv execs the watcher, its argv names it too, as root
wait_for "tr '\\0' ' ' < /proc/$pid/cmdline | grep -q '^{install.PYTHON} -m ops.agent.autostop'"
echo "user $(id -u {install.USER}) $(grep ^Uid: /proc/$pid/status)"
echo "watchers $(pgrep -cf '^{install.PYTHON} -m ops.agent.autostop')"
stat -c 'sudoers %a %U' {install.SUDOERS}; stat -c 'state %U' {install.STATE}
wait_for "grep -qs 'job process run-1/job-0' {install.STATE}/status.json"
kill $(cat {runs}/job-0.pid)
wait_for "test -s {record}"
echo "shut down as $(cat {record})"
for command in {' '.join(shlex.quote(c) for c in forbidden)}; do
    {as_watcher} sudo -n $command > /dev/null 2>&1 && echo "sudo allowed: $command"
done
mkdir -p {spark}/pids && chown -R 65534 {spark}
setpriv --reuid=65534 --regid=65534 --clear-groups {install.PYTHON} -c {shlex.quote(SPARK_WORKER)} \\
    {spark}/signalled {spark}/ready & echo $! > {install.SPARK_WORKER_PID}
chown 65534 {install.SPARK_WORKER_PID} && wait_for "test -s {spark}/ready"
cd {install.HOME} && {as_watcher} {install.PYTHON} -c "from ops.agent import spot; print(\\
'decommissioned', spot.decommission_spark_worker('{install.SPARK_WORKER_PID}'))"
wait_for "test -s {spark}/signalled" && echo "worker $(cat {spark}/signalled)"
"""


def test_the_restart_command_runs_the_watcher_as_its_own_user_whose_sudo_runs_only_its_commands(
        tmp_path):
    """install.restart_command() as the user data and `fab deploy` run it (twice: armed, then
    upgraded) on a throwaway host without systemd: this machine's /etc copied, its own mount, PID
    and network namespaces. The watcher runs as its own user, not root; it still sees a job (a
    root process) and writes its state; once idle, its shutdown command runs as root through
    sudo, which runs nothing else for it; a spot notice's SIGPWR reaches the Spark worker as the
    worker's owner."""
    missing = [tool for tool in THROWAWAY_HOST_TOOLS if not shutil.which(tool, path=HOST_PATH)]
    if os.geteuid() != 0 or missing:
        pytest.skip(f"a throwaway host needs root and {' '.join(missing) or 'namespaces'}")
    record = f"{install.SRV}/powered-off"
    values = install.settings("master", "127.0.0.1", [], 0.01, 0, False) | {
        "shutdown": ["/bin/sh", "-c", f"id -u >> {record}"]}
    host = tmp_path / "host"
    host.mkdir()
    subprocess.run(["cp", "-a", "/etc", str(host / "etc")], check=True, timeout=60)
    for path, text in install.files(values).items():  # as the user data or fab writes them
        if path != install.UNIT_FILE:
            (host / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (host / path.lstrip("/")).write_text(text)
    (host / install.SRV.lstrip("/")).mkdir(parents=True, exist_ok=True)
    mounts = "".join(f"mount --bind {host}/{part} /{part} && " for part in ("etc", "opt", "srv"))
    done = subprocess.run(
        ["unshare", "--mount", "--pid", "--net", "--fork", "--mount-proc", "sh", "-c",
         mounts + "exec sh -c " + shlex.quote(throwaway_host_script(record))],
        capture_output=True, text=True, timeout=120, env={"PATH": HOST_PATH, "LANG": "C.UTF-8"})
    shown = done.stdout + done.stderr
    assert done.returncode == 0, shown
    user = re.search(r"^user (\d+) Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", done.stdout, re.M)
    assert user and user[1] != "0" and set(user.groups()[1:]) == {user[1]}, shown
    assert "watchers 1\n" in done.stdout, shown  # the upgrade stopped the one it replaced
    assert f"sudoers 440 root\nstate {install.USER}\n" in done.stdout, shown
    assert "shut down as 0\n" in done.stdout, shown  # as root, through sudo
    assert "sudo allowed" not in done.stdout, shown
    assert "decommissioned True\nworker decommissioning" in done.stdout, shown
