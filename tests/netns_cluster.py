"""A real multi-host cluster on this machine: every host is a set of Linux namespaces with its own sshd.

Why: `fab deploy` / `fab run` drive a cluster over SSH; testing them needs real hosts that differ
the way EC2 instances do (own address, hostname, /opt, /srv, /tmp, home, processes) without a
cloud account. Each host here is

* a network namespace with a veth on a bridge in the root namespace (the bridge holds .1 of a
  private subnet, hosts .2, .3, ...; no default route, IP forwarding untouched: nothing leaves),
* UTS, mount and PID namespaces held open by a tiny init (pid 1 of the host) that reaps orphans,
  so daemons started over SSH behave as on a real host and die with it,
* private /etc/hosts, /etc/ssh, /home, /opt, /srv and /tmp (bind mounts of workdir/<host>/...),
* its own sshd (key-only, own ed25519 host key) listening on the host's address,
* an `ubuntu` user with passwordless sudo whose authorized key is the cluster key.

With `gateway=True` (`--gateway`) the hosts are addressed as on EC2 with one public address:
workers and ps hosts accept SSH from cluster members only (not from this machine, the bridge's
.1) and have publicIp "" in the inventory, so ops reaches them through the master.

`up()` writes the inventory JSON `pulumi stack output --json --show-secrets` would give for a
real cluster (kindling schema, region "local"), so fab needs no special case.

Every kernel object and file the cluster creates is named in a state file under /run before it is
created; `down()` (or `python tests/netns_cluster.py down` after a crash) removes whatever of it
exists. Needs root and the Debian/Ubuntu packages in APT_PACKAGES.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kindling import Host, Inventory, known_hosts_line, load_inventory, spark_master_url
from kindling import UserError
from ops.agent import install as watcher_install
from workloads.common import run_cli

STATE_DIR = Path("/run/kindling-netns")
SHARED_FILE = STATE_DIR / "shared.json"
AUTO_SUBNETS = ipaddress.ip_network("10.77.0.0/16")
SSH_PORT = 22
TOOLS = ("ip", "sshd", "ssh-keygen", "unshare", "nsenter", "mount", "useradd", "userdel", "usermod",
         "sudo", "getent")
APT_PACKAGES = "iproute2 openssh-server sudo util-linux mount passwd"
HOST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8"}
PRIVATE_PATHS = ("etc/hosts", "etc/ssh", "home", "opt", "srv", "tmp")
WAIT_SECONDS = 10.0
INIT_READY_SECONDS = 60.0
"""A Python starting on a machine busy with a dozen JVMs can take seconds."""

# pid 1 of a host's PID namespace: reaps every orphan (nohup'd daemons end up here), so a stopped
# process really disappears (no zombie answering `kill -0`). argv[1] marks it for teardown. It says
# "ready" once its imports are done: until then it reads files of this machine's root, which the
# rehearsal's hosts swap for their image (a pivot_root under a starting Python kills the host).
INIT_CODE = """
import os, time
os.write(1, b"ready\\n")
os.close(1)
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        time.sleep(0.2)
"""
INIT_MARKER = "kindling-netns-init"

TEST_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
"""JAVA_TOOL_OPTIONS of every JVM the tests start (Spark's and HDFS's, on this machine and, through
sshd's SetEnv, on the hosts): C1 only and a one-thread collector. The suite runs a dozen short-lived
JVMs at a time on 2 cores, where C2's compiler threads and G1's workers cost a third of the CPU of
the Spark tests; a real cluster keeps the JVM's defaults."""

SSHD_CONFIG = """\
# sshd of test host {hostname} ({address}), written by tests/netns_cluster.py
ListenAddress {address}
Port {port}
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile /etc/ssh/sshd.pid
AllowUsers {allow}
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
StrictModes yes
PrintMotd no
AcceptEnv LANG LC_*
SetEnv JAVA_TOOL_OPTIONS="{jvm_options}"
Subsystem sftp internal-sftp
"""


class ClusterError(UserError):
    """The cluster cannot be brought up or down; the message names the problem and the fix."""


def missing_prerequisites() -> str | None:
    """Why a netns cluster cannot run here (not root, a tool missing), or None when it can."""
    if os.geteuid() != 0:
        return "root (network namespaces, bridges and sshd need it; CI runs as root)"
    missing = [tool for tool in TOOLS if not _which(tool)]
    if missing:
        return f"{', '.join(missing)} (apt-get install {APT_PACKAGES})"
    return None


class NetnsCluster:
    """`hosts` = master + workers; `ps` extra parameter-server hosts; subnet None = first free
    10.77.x.0/24; workdir None = a new temporary folder (removed at down)."""

    def __init__(self, hosts: int = 3, ps: int = 0, subnet: str | None = None,
                 workdir: str | Path | None = None, inventory_path: str | Path | None = None,
                 name: str = "kindling-local", user: str = "ubuntu", gateway: bool = False):
        if hosts < 2:
            raise ClusterError(f"a cluster needs a master and at least one worker; got --hosts {hosts}, "
                               "pass --hosts 2 or more")
        if ps < 0:
            raise ClusterError(f"--ps must be 0 or more, got {ps}")
        self.names = ["master", *(f"worker-{i}" for i in range(hosts - 1)), *(f"ps-{i}" for i in range(ps))]
        self.subnet = _parse_subnet(subnet) if subnet else None
        self.workdir = Path(workdir).resolve() if workdir else None
        self._inventory_arg = Path(inventory_path).resolve() if inventory_path else None
        self.name = name
        self.user = user
        self.gateway = gateway
        self.state: dict = {}
        self._inits: list[subprocess.Popen] = []
        self.files_in_background = False
        """down() leaves the removal of the hosts' files to a background `rm` (finish_removals)."""

    # -- lifecycle -----------------------------------------------------------------------------

    def up(self) -> "NetnsCluster":
        reason = missing_prerequisites()
        if reason:
            raise ClusterError(f"the netns cluster needs {reason}")
        try:
            self._claim()
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        if self.state:
            teardown(self.state, self._inits, self.files_in_background)
            self.state = {}
            self._inits = []

    def __enter__(self) -> "NetnsCluster":
        return self.up()

    def __exit__(self, *exc_info) -> None:
        self.down()

    # -- what tests and fab need ---------------------------------------------------------------

    @property
    def inventory_path(self) -> Path:
        return Path(self.state["inventory"])

    @property
    def inventory(self) -> Inventory:
        return load_inventory(self.inventory_path)

    @property
    def bridge_address(self) -> str:
        """This machine's address on the hosts' bridge: where a test's own servers listen."""
        return self.state["gateway"].split("/")[0]

    @property
    def hosts(self) -> tuple[Host, ...]:
        return self.inventory.hosts

    def exec(self, host: str | Host, command: str | list[str], timeout: float = 60,
             check: bool = False) -> subprocess.CompletedProcess:
        """Run a command as root inside a host (all its namespaces), like `sudo` on that machine."""
        argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
        proc = subprocess.run(
            [_which("nsenter"), "--target", str(self._record(host)["init_pid"]), "--net", "--uts",
             "--mount", "--pid", "--wd=/", "--", *argv],
            capture_output=True, text=True, timeout=timeout, env=HOST_ENV)
        if check and proc.returncode:
            init = self._record(host)["init_pid"]
            gone = "" if _proc_stat(init) not in (None, "Z") else f"; the host's init ({init}) is gone"
            raise ClusterError(f"{' '.join(argv)} failed on {self._record(host)['name']} "
                               f"(exit {proc.returncode}): {proc.stderr.strip()}{gone}")
        return proc

    def stop_sshd(self, host: str | Host) -> None:
        """Stop the host's sshd (sessions already open keep running, as with `systemctl stop ssh`)."""
        record = self._record(host)
        pid_file = Path(record["dir"], "etc/ssh/sshd.pid")
        self.exec(host, "kill $(cat /etc/ssh/sshd.pid)", check=True)
        _wait_until(lambda: not pid_file.exists(), f"sshd of {record['name']} to stop")

    def start_sshd(self, host: str | Host) -> None:
        record = self._record(host)
        started = self.exec(host, [_which("sshd"), "-f", "/etc/ssh/sshd_config", "-E", "/etc/ssh/sshd.log"])
        log = Path(record["dir"], "etc/ssh/sshd.log")
        if started.returncode:
            raise ClusterError(f"sshd on {record['name']} did not start: {_tail(log)}")
        pid_file = Path(record["dir"], "etc/ssh/sshd.pid")
        _wait_until(lambda: pid_file.exists() and _port_open(record["address"], SSH_PORT),
                    f"sshd of {record['name']} on {record['address']}:{SSH_PORT} ({_tail(log)})")

    # -- building ------------------------------------------------------------------------------

    def _record(self, host: str | Host) -> dict:
        wanted = host.name if isinstance(host, Host) else host
        for record in self.state["hosts"]:
            if wanted in (record["name"], record["hostname"], record["address"]):
                return record
        raise ClusterError(f"no host {wanted!r} in this cluster; hosts are: "
                           f"{', '.join(r['name'] for r in self.state['hosts'])}")

    def _claim(self) -> None:
        """Pick the subnet and write the state file naming everything up() will create."""
        with _state_lock():
            taken = [_parse_subnet(s["subnet"]) for s in cluster_states()] + _routed_networks()
            candidates = [self.subnet] if self.subnet else AUTO_SUBNETS.subnets(new_prefix=24)
            subnet = next((c for c in candidates if not any(c.overlaps(t) for t in taken)), None)
            if subnet is None:
                raise ClusterError(f"subnet {self.subnet or AUTO_SUBNETS} is already in use on this machine "
                                   "(another cluster or a route); pass another --subnet or run "
                                   "`python tests/netns_cluster.py down`")
            self.state = self._plan(subnet)
            _save(self.state)
            _acquire_shared(self.user)

    def _plan(self, subnet: ipaddress.IPv4Network) -> dict:
        room = subnet.num_addresses - 3  # network, broadcast and the bridge's .1
        if room < len(self.names):
            raise ClusterError(f"subnet {subnet} has room for {max(room, 0)} hosts, "
                               f"{len(self.names)} asked; pass a larger --subnet")
        addresses = [subnet.network_address + i for i in range(1, len(self.names) + 2)]
        tag = f"{int(subnet.network_address):08x}"  # interface names must fit in 15 characters
        workdir = self.workdir or Path(tempfile.mkdtemp(prefix=f"kindling-netns-{tag}-"))
        created_workdir = self.workdir is None or not self.workdir.exists()
        workdir.mkdir(parents=True, exist_ok=True)
        if any(workdir.iterdir()) and self.workdir is not None:
            raise ClusterError(f"workdir {workdir} is not empty; pass a new or empty --workdir")
        hosts = [{"name": name, "hostname": f"ip-{str(address).replace('.', '-')}", "address": str(address),
                  "netns": f"kn{tag}-{name}", "veth": f"kv{tag}-{index}", "dir": str(workdir / name),
                  "init_pid": None}
                 for index, (name, address) in enumerate(zip(self.names, addresses[1:]), start=2)]
        return {"subnet": str(subnet), "user": self.user,
                "bridge": f"kb{tag}", "gateway": f"{addresses[0]}/{subnet.prefixlen}",
                "workdir": str(workdir), "created_workdir": created_workdir,
                "inventory": str(self._inventory_arg or workdir / "cluster.json"),
                "files": [str(workdir / n) for n in ("id_ed25519", "id_ed25519.pub", "known_hosts")],
                "hosts": hosts}

    def _build(self) -> None:
        state = self.state
        key = Path(state["workdir"], "id_ed25519")
        _keygen(key, f"{self.name}-{self.user}")
        for record in state["hosts"]:
            self._write_host_files(record, key.with_suffix(".pub").read_text())
        self._add_bridge()
        for record in state["hosts"]:
            self._start_host(record)
        self._check_bridge()
        self._write_inventory(key.read_text())

    def _add_bridge(self) -> None:
        """The bridge every host's veth joins; it holds the subnet's .1 (the control machine's side)."""
        _ip("link", "add", self.state["bridge"], "type", "bridge")
        _ip("addr", "add", self.state["gateway"], "dev", self.state["bridge"])
        _ip("link", "set", self.state["bridge"], "up")

    def _write_host_files(self, record: dict, authorized_key: str) -> None:
        root = Path(record["dir"])
        for path in PRIVATE_PATHS:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
        for path in ("opt", "srv", "home"):
            (root / path).mkdir(mode=0o755)
        (root / "tmp").mkdir()
        (root / "tmp").chmod(0o1777)
        etc_ssh = root / "etc/ssh"
        shutil.copytree("/etc/ssh", etc_ssh, ignore=shutil.ignore_patterns("ssh_host_*", "sshd_config*"))
        _keygen(etc_ssh / "ssh_host_ed25519_key", record["hostname"])
        (etc_ssh / "sshd_config").write_text(SSHD_CONFIG.format(
            hostname=record["hostname"], address=record["address"], port=SSH_PORT,
            allow=self._ssh_allowed(record), jvm_options=TEST_JVM_OPTIONS))
        (root / "etc/hosts").write_text(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            + "".join(f"{h['address']}\t{h['hostname']}\n" for h in self.state["hosts"]))
        home = root / "home" / self.user
        shutil.copytree("/etc/skel", home, symlinks=True)
        (home / ".ssh").mkdir(mode=0o700)
        (home / ".ssh/authorized_keys").write_text(authorized_key)
        (home / ".ssh/authorized_keys").chmod(0o600)
        uid, gid = _user_ids(self.user)
        for path in (home, *home.rglob("*")):
            os.lchown(path, uid, gid)

    def _start_host(self, record: dict) -> None:
        netns, veth = record["netns"], record["veth"]
        _ip("netns", "add", netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", veth, "master", self.state["bridge"], "up")
        prefix = ipaddress.ip_network(self.state["subnet"]).prefixlen
        _ip("-n", netns, "addr", "add", f"{record['address']}/{prefix}", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        self._start_init(record)

    def _start_init(self, record: dict) -> None:
        """Start the host's init (its PID, mount and UTS namespaces) in its network namespace."""
        netns = record["netns"]
        # --propagation slave, not private: unmounts in the root namespace (ip netns del of another
        # cluster's /run/netns/* entry) must reach this copy, or that network namespace never dies.
        init = subprocess.Popen(
            [_which("ip"), "netns", "exec", netns, _which("unshare"), "--uts", "--mount", "--propagation",
             "slave", "--pid", "--fork", "--kill-child", "--mount-proc", "--",
             sys.executable, "-I", "-S", "-c", INIT_CODE, INIT_MARKER, netns],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, env=HOST_ENV)
        self._inits.append(init)
        ready, _, _ = select.select([init.stdout], [], [], INIT_READY_SECONDS)
        if not ready:
            raise ClusterError(f"the init of {record['name']} did not start within {INIT_READY_SECONDS:.0f} s")
        if init.stdout.readline() != b"ready\n":
            init.wait(timeout=WAIT_SECONDS)
            raise ClusterError(f"the namespaces of {record['name']} could not be created: "
                               f"{init.stderr.read().decode().strip()}")
        init.stdout.close()
        record["init_pid"] = _children(init.pid)[0]  # unshare's one child: the ready init
        _save(self.state)
        self._prepare_host(record)

    def _prepare_host(self, record: dict) -> None:
        """Give the host, whose namespaces now exist, its files and its sshd."""
        mounts = [(Path(record["dir"], path), Path("/", path)) for path in PRIVATE_PATHS]
        # the mount that covers the workdir (/tmp for pytest's tmp_path) goes last, or it would hide
        # the sources of the others
        mounts.sort(key=lambda mount: Path(self.state["workdir"]).is_relative_to(mount[1]))
        script = "set -e\n" + f"echo {record['hostname']} > /proc/sys/kernel/hostname\n" + "".join(
            f"mount --bind '{source}' '{target}'\n" for source, target in mounts)
        self.exec(record["name"], script, check=True)
        self.start_sshd(record["name"])

    def _check_bridge(self) -> None:
        """Fail now, with the fix, when the root namespace's firewall drops bridged traffic."""
        master, *others = self.state["hosts"]
        for other in others:
            probe = self.exec(master["name"], ["bash", "-c", f"echo > /dev/tcp/{other['address']}/{SSH_PORT}"],
                              timeout=WAIT_SECONDS)
            if probe.returncode:
                raise ClusterError(
                    f"{master['name']} cannot reach {other['name']} over bridge {self.state['bridge']}; "
                    "bridged traffic is filtered (net.bridge.bridge-nf-call-iptables=1 with a FORWARD DROP "
                    f"policy, as Docker sets): allow it with `iptables -I FORWARD -i {self.state['bridge']} "
                    f"-o {self.state['bridge']} -j ACCEPT`")

    # -- gateway mode: only the master is reachable from this machine ---------------------------

    def _behind_master(self, record: dict) -> bool:
        return self.gateway and record is not self.state["hosts"][0]

    def _ssh_allowed(self, record: dict) -> str:
        """sshd's AllowUsers: the user from anywhere, or (behind the master) from members only,
        as a security group open to the cluster would; this machine's .1 is refused."""
        if not self._behind_master(record):
            return self.user
        return " ".join(f"{self.user}@{h['address']}" for h in self.state["hosts"])

    def _public_ip(self, record: dict) -> str:
        return "" if self._behind_master(record) else record["address"]

    def _write_inventory(self, private_key: str) -> None:
        hosts = []
        known_hosts = []
        for record in self.state["hosts"]:
            hosts.append(Host(name=record["name"], hostname=record["hostname"], privateIp=record["address"],
                              publicIp=self._public_ip(record), publicDns=""))
            host_key = Path(record["dir"], "etc/ssh/ssh_host_ed25519_key.pub").read_text()
            known_hosts.append(known_hosts_line([record["address"], record["hostname"]], host_key))
        workers = tuple(h for h in hosts if h.name.startswith("worker-"))
        inventory = Inventory(
            clusterName=self.name, region="local", sshUser=self.user, sshPrivateKey=private_key,
            knownHosts="\n".join(known_hosts) + "\n", master=hosts[0], workers=workers,
            ps=tuple(hosts[1 + len(workers):]), bucket="", sparkMasterUrl=spark_master_url(hosts[0].privateIp),
            sparkSecret=secrets.token_hex(24))  # as `pulumi up` makes one: a secret of the cluster's
        Path(self.state["workdir"], "known_hosts").write_text(inventory.knownHosts)
        path = self.inventory_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(inventory.to_outputs(), indent=2) + "\n")
        if load_inventory(path) != inventory:
            raise ClusterError(f"inventory {path} does not round-trip through kindling")


# -- teardown (also after a crash, from the state file alone) ----------------------------------

PENDING_REMOVALS: list[subprocess.Popen] = []
"""The `rm -rf` of torn-down clusters' files (teardown with files_in_background) still running."""


def teardown(state: dict, inits: list[subprocess.Popen] = (), files_in_background: bool = False) -> None:
    """Kill every process of every host, then delete namespaces, links, user and files.

    files_in_background: the files (gigabytes once a job's dependencies are installed) are
    removed by an `rm -rf` left running (see finish_removals), as nothing of the cluster uses
    them any more; everything else is gone when this returns."""
    for record in state["hosts"]:
        for pid in _netns_pids(record["netns"]):
            if _is_pid_namespace_init(pid):
                os.kill(pid, signal.SIGKILL)  # the kernel kills the rest of its PID namespace
    for record in state["hosts"]:
        _wait_until(lambda: not _kill_stragglers(record["netns"]), f"processes in {record['netns']} to die")
    for init in inits:
        init.wait(timeout=WAIT_SECONDS)
    for record in state["hosts"]:
        _ip("netns", "del", record["netns"], check=False)
        _ip("link", "del", record["veth"], check=False)
    _ip("link", "del", state["bridge"], check=False)
    leftovers = [name for name in _netns_names() if name in {h["netns"] for h in state["hosts"]}]
    if leftovers or _link_exists(state["bridge"]):
        raise ClusterError(f"teardown left {', '.join(leftovers) or state['bridge']} behind; "
                           "see `ip netns pids` and run `python tests/netns_cluster.py down` again")
    paths = [*(h["dir"] for h in state["hosts"]), *state["files"], state["inventory"]]
    if files_in_background:  # no mount is left in them: the hosts' mount namespaces are gone
        if state["created_workdir"]:
            paths.append(state["workdir"])
        paths = [path for path in paths if os.path.lexists(path)]
        if paths:
            PENDING_REMOVALS.append(subprocess.Popen(
                ["rm", "-rf", "--one-file-system", "--", *paths], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                start_new_session=True))  # finishes even if this process is interrupted
    else:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(path) if Path(path).is_dir() else os.unlink(path)
        if state["created_workdir"]:
            shutil.rmtree(state["workdir"], ignore_errors=True)
    with _state_lock():
        _state_path(state["subnet"]).unlink(missing_ok=True)
        _release_shared()


def finish_removals() -> None:
    """Wait for the background removals teardown started; fail naming what could not be removed."""
    failed = []
    while PENDING_REMOVALS:
        removal = PENDING_REMOVALS.pop()
        _, errors = removal.communicate()
        if removal.returncode:
            failed.append(errors.strip() or f"`{' '.join(removal.args)}` exited {removal.returncode}")
    if failed:
        raise ClusterError("removing torn-down clusters' files failed: " + " / ".join(failed))


def _kill_stragglers(netns: str) -> bool:
    """SIGKILL what else runs in the network namespace (e.g. `ip netns exec` shells); True while any
    lives. The unshare launcher is spared: it must live to reap the init, then exits by itself."""
    pids = _netns_pids(netns)
    for pid in pids:
        if not _is_launcher(pid, netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return any(_proc_stat(pid) not in (None, "Z") for pid in pids)


# -- state shared by every cluster on the machine: the user, sudoers, sshd's privsep dir ---------
# (and the watcher's user and sudoers rules: `fab deploy` adds them, in the /etc the hosts share)

# directories the first cluster may create: sshd's privilege separation dir, iproute2's netns
# mount point, util-linux mount's lock dir; the last cluster removes those that were absent
RUN_DIRS = ("/run/sshd", "/run/netns", "/run/mount")


def _acquire_shared(user: str) -> None:
    """Create what the cluster needs and the machine lacks; each change is recorded before it is
    made, so the last cluster to go (or `down` after a crash) undoes exactly that."""
    shared = json.loads(SHARED_FILE.read_text()) if SHARED_FILE.exists() else {
        "absent_dirs": [d for d in RUN_DIRS if not Path(d).exists()], "users": {},
        "watcher_absent": {"user": _getent("passwd", watcher_install.USER) is None,
                           "sudoers": not Path(watcher_install.SUDOERS).exists()}}
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    if user in shared["users"]:
        return
    entry = _getent("passwd", user)
    if entry and entry[5] != f"/home/{user}":
        raise ClusterError(f"user {user} exists with home {entry[5]}; the hosts give the SSH user a "
                           f"private /home/{user}: pass another --user")
    password = _getent("shadow", user)[1] if entry else None
    sudoers = Path(f"/etc/sudoers.d/kindling-netns-{user}")
    record = {"created": entry is None, "sudoers": None if sudoers.exists() else str(sudoers),
              # with UsePAM no, sshd refuses even key logins to a locked ('!') account: use '*'
              "password": password if password and (password.startswith("!") or password == "*LK*") else None}
    shared["users"][user] = record
    SHARED_FILE.write_text(json.dumps(shared))
    if record["created"]:
        _run(["useradd", "--user-group", "--no-create-home", "--home-dir", f"/home/{user}",
              "--shell", "/bin/bash", "--password", "*", user])
    elif record["password"]:
        _run(["usermod", "--password", "*", user])
    if record["sudoers"]:
        sudoers.write_text(f"{user} ALL=(ALL) NOPASSWD:ALL\n")
        sudoers.chmod(0o440)


def _release_shared() -> None:
    """Undo what _acquire_shared did, for users no remaining cluster uses (call under the lock)."""
    if not SHARED_FILE.exists():
        return
    shared = json.loads(SHARED_FILE.read_text())
    states = cluster_states()
    for user in [u for u in shared["users"] if all(s["user"] != u for s in states)]:
        record = shared["users"].pop(user)
        if record["sudoers"]:
            Path(record["sudoers"]).unlink(missing_ok=True)
        if record["created"] and _getent("passwd", user) is not None:
            _run(["userdel", user])
        elif record["password"]:
            _run(["usermod", "--password", record["password"], user])
    if states:
        SHARED_FILE.write_text(json.dumps(shared))
        return
    absent = shared.get("watcher_absent", {})
    if absent.get("sudoers"):
        Path(watcher_install.SUDOERS).unlink(missing_ok=True)
    if absent.get("user") and _getent("passwd", watcher_install.USER) is not None:
        _run(["userdel", watcher_install.USER], check=False)
    for directory in shared["absent_dirs"]:
        if directory == "/run/netns":
            _run(["umount", directory], check=False)  # iproute2 bind-mounts it onto itself
        with contextlib.suppress(OSError):
            Path(directory).rmdir()  # only if empty
    SHARED_FILE.unlink()


@contextlib.contextmanager
def _state_lock():
    """Serialise clusters' claims and releases (flock on the state dir, which down may remove)."""
    while True:
        STATE_DIR.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(STATE_DIR, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(STATE_DIR).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            STATE_DIR.rmdir()  # only when empty: no cluster left
        os.close(fd)


def cluster_states() -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(STATE_DIR.glob("cluster-*.json"))]


def _state_path(subnet: str) -> Path:
    return STATE_DIR / f"cluster-{str(subnet).replace('/', '_')}.json"


def _save(state: dict) -> None:
    path = _state_path(state["subnet"])
    path.with_suffix(".tmp").write_text(json.dumps(state, indent=1))
    path.with_suffix(".tmp").replace(path)


# -- small helpers -----------------------------------------------------------------------------

def _which(tool: str) -> str | None:
    return shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def _run(argv: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run([_which(argv[0]) or argv[0], *argv[1:]], capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode:
        raise ClusterError(f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run(["ip", *args], check=check)


def _keygen(path: Path, comment: str) -> None:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def _getent(database: str, key: str) -> list[str] | None:
    found = _run(["getent", database, key], check=False)
    return found.stdout.strip().split(":") if found.returncode == 0 else None


def _user_ids(user: str) -> tuple[int, int]:
    entry = _getent("passwd", user)
    return int(entry[2]), int(entry[3])


def _parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        subnet = ipaddress.IPv4Network(text)
    except ValueError as exc:
        raise ClusterError(f"--subnet {text!r} is not an IPv4 network ({exc}); pass e.g. 10.77.0.0/24") from None
    if not subnet.is_private:
        raise ClusterError(f"--subnet {text} is not a private network; pass one inside 10.0.0.0/8, "
                           "172.16.0.0/12 or 192.168.0.0/16")
    return subnet


def _routed_networks() -> list[ipaddress.IPv4Network]:
    """Networks the root namespace already routes (a cluster's subnet must not shadow them)."""
    routes = json.loads(_ip("-j", "-4", "route", "show").stdout or "[]")
    return [ipaddress.ip_network(r["dst"], strict=False) for r in routes if r["dst"] != "default"]


def _netns_names() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def _link_exists(name: str) -> bool:
    return _ip("link", "show", name, check=False).returncode == 0


def _proc_stat(pid: int) -> str | None:
    """The process state letter (Z = zombie), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, IndexError):
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def _netns_pids(netns: str) -> list[int]:
    listed = _ip("netns", "pids", netns, check=False)
    return [int(pid) for pid in listed.stdout.split()] if listed.returncode == 0 else []


def _is_pid_namespace_init(pid: int) -> bool:
    """pid 1 of a child PID namespace (NSpid lists its pid in each namespace, innermost last)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return line.split()[1:] != [str(pid)] and line.split()[-1] == "1"
    return False


def _is_launcher(pid: int, netns: str) -> bool:
    """The `unshare` that started the init of that host (its command line carries the marker)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return INIT_MARKER.encode() in argv and netns.encode() in argv and not _is_pid_namespace_init(pid)


def _port_open(address: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=1):
        return True
    return False


def _wait_until(condition, what: str, timeout: float = WAIT_SECONDS, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _tail(path: Path) -> str:
    return " / ".join(path.read_text().strip().splitlines()[-3:]) if path.exists() else "no log"


# -- command line ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A local multi-host test cluster of netns hosts with sshd.")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="create the hosts and write the inventory JSON")
    up.add_argument("--hosts", type=int, default=3, help="master + workers (default 3)")
    up.add_argument("--ps", type=int, default=0, help="extra parameter-server hosts (default 0)")
    up.add_argument("--subnet", help="private IPv4 subnet (default: first free 10.77.x.0/24)")
    up.add_argument("--workdir", help="folder for keys and the hosts' private files (default: new temp dir)")
    up.add_argument("--inventory", help="where to write the inventory JSON (default WORKDIR/cluster.json)")
    up.add_argument("--name", default="kindling-local", help="clusterName in the inventory")
    up.add_argument("--user", default="ubuntu", help="the SSH user, created if missing (default ubuntu)")
    up.add_argument("--gateway", action="store_true",
                    help="workers and ps hosts refuse SSH from this machine; ops goes through the master")
    down = commands.add_parser("down", help="remove a cluster (also after a crash)")
    which = down.add_mutually_exclusive_group()
    which.add_argument("--subnet", help="the cluster on this subnet")
    which.add_argument("--inventory", help="the cluster that wrote this inventory")
    which.add_argument("--all", action="store_true", help="every netns cluster on this machine")
    args = parser.parse_args(argv)
    if args.command == "up":
        _cli_up(args)
    else:
        _cli_down(args)


def _cli_up(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # killed mid-up: roll back like Ctrl-C
    started = time.monotonic()
    cluster = NetnsCluster(hosts=args.hosts, ps=args.ps, subnet=args.subnet, workdir=args.workdir,
                           inventory_path=args.inventory, name=args.name, user=args.user,
                           gateway=args.gateway).up()
    state = cluster.state
    print(f"cluster up in {time.monotonic() - started:.1f} s on {state['subnet']} (bridge {state['bridge']})")
    for record in state["hosts"]:
        print(f"  {record['name']:<10} {record['address']:<15} {record['hostname']}")
    print(f"inventory: {cluster.inventory_path}")
    print(f"ssh: ssh -i {state['workdir']}/id_ed25519 -o UserKnownHostsFile={state['workdir']}/known_hosts "
          f"{args.user}@{state['hosts'][0]['address']}")
    print(f"fab: fab status --target {cluster.inventory_path}")
    print(f"down: python tests/netns_cluster.py down --subnet {state['subnet']}")


def _cli_down(args: argparse.Namespace) -> None:
    with _state_lock():
        states = cluster_states()
    if args.subnet:
        wanted = str(_parse_subnet(args.subnet))
        states = [s for s in states if s["subnet"] == wanted]
    elif args.inventory:
        states = [s for s in states if s["inventory"] == str(Path(args.inventory).resolve())]
    elif len(states) > 1 and not args.all:
        raise ClusterError(f"{len(states)} clusters are up ({', '.join(s['subnet'] for s in states)}); "
                           "pass --subnet, --inventory or --all")
    if not states and (args.subnet or args.inventory):
        raise ClusterError(f"no netns cluster for {args.subnet or args.inventory} "
                           f"(state files live in {STATE_DIR})")
    if not states:
        print("no netns cluster is up")
    for state in states:
        started = time.monotonic()
        teardown(state)
        print(f"cluster {state['subnet']} down in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    run_cli(main)
