"""`fab` as a user types it, for the end-to-end tests: run it, read its one error line or results."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ops import jvm
from ops.agent import install

REPO = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")
MNIST_FLAGS = ("--epochs", "2", "--input-mode", "tensorflow")
"""train-mnist as the e2e deploys it: TFoS feeding itself (tensorflow input mode), 2 epochs."""
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
TRAIN_PS_FLAGS = ("--epochs", "1", "--job-args", "--steps-per-epoch 40")


def fab_env(assets: Path, runs: Path, home: Path) -> dict[str, str]:
    """The environment of a user's shell: offline assets, a runs folder and a home of the test's
    (the JVM jars resolved once per machine are shared, as the wheelhouse is)."""
    return {"KINDLING_ASSETS": str(assets), "KINDLING_RUNS_DIR": str(runs),
            "KINDLING_CONNECT_DEADLINE": "8", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": str(home), "LANG": "C.UTF-8",
            "XDG_CACHE_HOME": str(jvm.cache_root().parents[1])}


def fab(env: dict, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([FAB, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_error_line(done: subprocess.CompletedProcess, code: int = 2) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == code, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def results_of(done: subprocess.CompletedProcess) -> Path:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("results: "), last
    return Path(REPO, last.removeprefix("results: "))


def job_processes(cluster, host: str) -> list[str]:
    """Command lines of kindling job processes on a host."""
    out = cluster.exec(host, "ps -eo args").stdout
    return [line for line in out.splitlines() if "workloads." in line or "pyspark.daemon" in line]


def wait_until(condition, what: str, timeout: float = 60, interval: float = 1):
    """Poll condition until it is true (returned); fail naming `what` once timeout has passed."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(interval)
    return result


def holds_throughout(condition, what: str, seconds: float, interval: float = 0.5) -> int:
    """Poll condition for `seconds`, asserting at every poll that it still holds (no fixed sleep
    that would look only at the end); the number of polls."""
    started = time.monotonic()
    polls = 0
    while True:
        assert condition(), f"{what} stopped holding after {time.monotonic() - started:.1f}s"
        polls += 1
        if time.monotonic() - started >= seconds:
            return polls
        time.sleep(interval)


def run_folders(cluster, job: str) -> set[str]:
    """The master's run folders of job."""
    return set(cluster.exec("master", f"ls -d /srv/kindling/runs/{job}-*/ 2>/dev/null").stdout.split())


def new_log(cluster, job: str, process: str, before: set[str]) -> str:
    """The log of `process` in a run folder of job made after `before` was listed ("" if none)."""
    new = sorted(run_folders(cluster, job) - before)
    return cluster.exec("master", f"cat {new[-1]}{process}.log 2>/dev/null").stdout if new else ""


def host_state(cluster) -> dict[str, str]:
    """What a deploy would change on each host: kindling's folders, as a listing."""
    return {host.name: cluster.exec(host, "ls -R /opt/kindling /srv/kindling 2>/dev/null").stdout
            for host in cluster.hosts}


def no_job_left(cluster) -> bool:
    return not any(job_processes(cluster, host) for host in cluster.hosts)


def fail_mid_run(cluster, env, fab_args: list[str], under_way, interrupt,
                 inventory: Path | None = None) -> tuple[int, str, float]:
    """`fab ...` in the background; once under_way() says so, interrupt(). Its exit code,
    stderr, and the seconds from the interruption to its end. Whatever is left is stopped."""
    target = ["--target", str(inventory or cluster.inventory_path)]
    run = subprocess.Popen([FAB, *fab_args, *target], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: run.poll() is not None or under_way(), "the run to get under way",
                   timeout=240, interval=1)
        assert run.poll() is None, run.stderr.read()
        interrupt()
        interrupted = time.monotonic()
        _, err = run.communicate(timeout=180)
        return run.returncode, err, time.monotonic() - interrupted
    finally:
        run.kill()
        run.communicate()
        fab(env, "stop", *target)


WATCHER_PROCESS = r"[o]ps[.](agent[.])?autostop"
"""`pkill -f` pattern of the hosts' watcher (ops.agent.autostop; ops.autostop before)."""


SHUTDOWN_RECORD = "/srv/kindling/autostop/powered-off"


def record_shutdowns(cluster) -> None:
    """Give each host's watcher, before fab installs it, a shutdown command that records (the
    hosts share this machine's kernel), as the rehearsal's user data does; fab keeps it."""
    command = ["/bin/sh", "-c", f"date +%s.%N >> {SHUTDOWN_RECORD}"]
    for host in cluster.hosts:
        cluster.exec(host, f"mkdir -p /opt/kindling/agent && echo '{json.dumps({'shutdown': command})}'"
                           " > /opt/kindling/agent/autostop.json", check=True)


def shutdown_recorded(cluster, host) -> bool:
    return cluster.exec(host, ["test", "-s", SHUTDOWN_RECORD]).returncode == 0


def watcher_uids(cluster, host) -> tuple[str, list[str]]:
    """The uid of the watcher's own user on host, and the real, effective, saved and filesystem
    uids of its watcher process (the detached one: these hosts run no systemd)."""
    shown = cluster.exec(host, f"id -u {install.USER} && grep '^Uid:' /proc/$(cat {install.PID})"
                               "/status", check=True).stdout.split()
    return shown[0], shown[2:]


def remove_watchers(cluster) -> None:
    """Undo a deploy that started the hosts' watcher (auto-stop, spot notices) with a test's
    endpoints: its process, settings, any notice and shutdown it recorded."""
    for host in cluster.hosts:
        cluster.exec(host, f"pkill -f '{WATCHER_PROCESS}'; rm -f /opt/kindling/agent/autostop.json "
                           f"/srv/kindling/autostop/spot-notice.json {SHUTDOWN_RECORD}")


def processes_showing(cluster, needles: list[str], parts: tuple[str, ...] = ("cmdline", "environ")
                      ) -> tuple[list[str], dict[str, list[str]]]:
    """Every process of the cluster's hosts whose command line or environment (parts) holds one
    of needles, as `host pid part: command`; and each host's command lines, to show what was
    read. Read from this machine's /proc, where root sees every host's processes (each host's
    are those in its PID namespace): no needle is ever on a command line of the scan."""
    hosts = {os.readlink(f"/proc/{record['init_pid']}/ns/pid"): record["name"]
             for record in cluster.state["hosts"]}
    found, commands = [], {name: [] for name in hosts.values()}
    for proc in Path("/proc").iterdir():
        try:
            host = proc.name.isdigit() and hosts.get(os.readlink(proc / "ns" / "pid"))
            if not host:
                continue
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            commands[host].append(command)
            for part in parts:
                text = (proc / part).read_bytes()
                found += [f"{host} {proc.name} {part}: {command[:120]}"
                          for needle in needles if needle.encode() in text]
        except OSError:  # ended meanwhile
            continue
    return found, commands


def serving(env: dict, *argv: str) -> tuple[subprocess.Popen, str]:
    """`fab ARGV` in a session of its own (as a terminal's foreground job), and the first URL it
    prints, once it answers (through the tunnel, for a cluster)."""
    fab = subprocess.Popen([FAB, *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                           start_new_session=True)
    said = []
    for line in fab.stdout:  # progress lines first (the notebook's install on the master)
        said.append(line)
        found = re.search(r"(http://127\.0\.0\.1:\d+/)\S*", line)
        if found:
            break
    else:
        fab.wait(timeout=30)
        raise AssertionError(f"fab {argv[0]} printed no URL: {''.join(said)}{fab.stderr.read()}")

    def answers() -> bool:
        try:
            NO_PROXY.open(found.group(1), timeout=5).close()
            return True
        except OSError:
            assert fab.poll() is None, fab.stderr.read()
            return False
    wait_until(answers, f"{found.group(1)} to answer", timeout=30, interval=0.5)
    return fab, found.group(0)


def end_as_a_person(fab: subprocess.Popen, how: str) -> None:
    """Ctrl-C or a closed terminal (SIGINT, SIGHUP to the foreground group) or `kill` (SIGTERM to
    fab); fab then exits by itself."""
    if how == "kill":
        fab.send_signal(signal.SIGTERM)
    else:
        os.killpg(fab.pid, {"ctrl-c": signal.SIGINT, "hangup": signal.SIGHUP}[how])
    try:
        fab.wait(timeout=60)
    finally:
        if fab.poll() is None:
            os.killpg(fab.pid, signal.SIGKILL)
            fab.wait()
