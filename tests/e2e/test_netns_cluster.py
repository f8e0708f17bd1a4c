"""The netns test cluster behaves like separate SSH hosts, and leaves nothing behind when it goes."""

import io
import json
import subprocess
import sys
import time
import uuid
from itertools import permutations
from pathlib import Path

import paramiko
import pytest

import netns_cluster
from netns_cluster import NetnsCluster, missing_prerequisites
from kindling import HOST_KEYS, SCHEMA_KEYS, load_inventory

pytestmark = pytest.mark.netns
needs_root = pytest.mark.skipif(missing_prerequisites() is not None,
                                reason=f"the netns test cluster needs {missing_prerequisites()}")
PROBE_USER = "kindling-probe"


def connect(inventory, host, known_hosts=None, direct=False) -> paramiko.SSHClient:
    """SSH in as fab would: key from the inventory, host keys pinned from knownHosts, never learned;
    a host without publicIp through the master (unless direct)."""
    sock = None
    if not host.publicIp and not direct:
        jump = connect(inventory, inventory.master, known_hosts)
        sock = jump.get_transport().open_channel("direct-tcpip", (host.address, 22), ("", 0), timeout=5)
    client = paramiko.SSHClient()
    for line in (known_hosts if known_hosts is not None else inventory.knownHosts).splitlines():
        entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
        for name in entry.hostnames:
            client.get_host_keys().add(name, entry.key.get_name(), entry.key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(host.address, username=inventory.sshUser, timeout=5, banner_timeout=5, auth_timeout=5,
                   pkey=paramiko.Ed25519Key.from_private_key(io.StringIO(inventory.sshPrivateKey)),
                   look_for_keys=False, allow_agent=False, sock=sock)
    return client


def run(client: paramiko.SSHClient, command: str) -> tuple[int, str]:
    _, stdout, _ = client.exec_command(command, timeout=10)
    status = stdout.channel.recv_exit_status()
    return status, stdout.read().decode().strip()


@pytest.fixture(scope="module")
def ssh(netns_cluster):
    clients = {host.name: connect(netns_cluster.inventory, host) for host in netns_cluster.hosts}
    yield clients
    for client in clients.values():
        client.close()


def test_inventory_has_exactly_the_stack_output_schema(netns_cluster):
    data = json.loads(netns_cluster.inventory_path.read_text())
    inventory = load_inventory(netns_cluster.inventory_path)
    assert set(data) == set(SCHEMA_KEYS)
    assert (data["region"], data["sshUser"], data["bucket"], data["ps"]) == ("local", "ubuntu", "", [])
    assert [h.name for h in inventory.hosts] == ["master", "worker-0", "worker-1"]
    for host in [data["master"], *data["workers"]]:
        assert set(host) == set(HOST_KEYS) and host["publicDns"] == ""
    assert data["master"]["publicIp"] == data["master"]["privateIp"]  # one public address
    assert [w["publicIp"] for w in data["workers"]] == ["", ""]  # workers: through the master
    assert data["sparkMasterUrl"] == f"spark://{inventory.master.privateIp}:7077"
    pinned = {line.split()[0]: line.split()[1] for line in inventory.knownHosts.splitlines()}
    assert set(pinned) == {f"{h.privateIp},{h.hostname}" for h in inventory.hosts}
    assert set(pinned.values()) == {"ssh-ed25519"}


@pytest.mark.parametrize("name", ["master", "worker-0", "worker-1"])
def test_each_host_is_its_own_machine(netns_cluster, ssh, name):
    host = netns_cluster.inventory.host(name)
    client = ssh[name]
    assert run(client, "whoami") == (0, "ubuntu")
    assert run(client, "hostname") == (0, host.hostname)
    assert run(client, "python3 -c 'import socket;print(socket.gethostbyname(socket.gethostname()))'") == (
        0, host.privateIp)
    assert run(client, "sudo -n true")[0] == 0
    status, routes = run(client, "sudo -n ip -4 route")
    assert status == 0 and routes.splitlines() == [
        f"{netns_cluster.state['subnet']} dev eth0 proto kernel scope link src {host.privateIp}"]
    unreachable = "python3 -c 'import socket;socket.create_connection((\"198.51.100.1\", 9), timeout=2)' 2>&1"
    assert "Network is unreachable" in run(client, unreachable)[1]


def test_opt_srv_tmp_and_home_are_private_to_each_host(ssh):
    token = f"probe-{uuid.uuid4().hex[:8]}"
    paths = [f"/opt/{token}", f"/srv/{token}", f"/tmp/{token}", f"/home/ubuntu/{token}"]
    write = f"sudo -n touch {paths[0]} {paths[1]} && touch {paths[2]} {paths[3]}"
    assert run(ssh["master"], write)[0] == 0
    try:
        assert run(ssh["master"], f"ls {' '.join(paths)}")[0] == 0
        for other in ("worker-0", "worker-1"):
            assert run(ssh[other], f"ls -d {' '.join(paths)} 2>/dev/null") == (2, "")
        assert not any(Path(path).exists() for path in paths)  # nor on this machine
    finally:
        run(ssh["master"], f"sudo -n rm -f {' '.join(paths)}")


def test_hosts_reach_each_other_over_the_bridge(netns_cluster, ssh):
    for source, target in permutations(netns_cluster.hosts, 2):
        probe = f"bash -c 'echo > /dev/tcp/{target.privateIp}/22'"
        assert run(ssh[source.name], probe)[0] == 0, f"{source.name} cannot reach {target.name}"


def test_workers_refuse_ssh_from_this_machine_but_not_from_the_master(netns_cluster, ssh):
    inventory = netns_cluster.inventory
    for worker in inventory.workers:
        with pytest.raises(paramiko.AuthenticationException):
            connect(inventory, worker, direct=True)
        assert run(ssh[worker.name], "hostname") == (0, worker.hostname)  # through the master
    assert run(ssh["master"], "hostname") == (0, inventory.master.hostname)  # master: directly
    log = netns_cluster.exec("worker-0", "cat /etc/ssh/sshd.log").stdout
    gateway_address = netns_cluster.state["gateway"].split("/")[0]
    assert f"from {gateway_address} not allowed because not listed in AllowUsers" in log


def test_wrong_or_unknown_host_key_is_refused(netns_cluster):
    inventory = netns_cluster.inventory
    lines = inventory.knownHosts.splitlines()
    master_address = lines[0].split()[0]
    swapped = "\n".join([f"{master_address} {' '.join(lines[1].split()[1:])}", *lines[1:]])
    with pytest.raises(paramiko.BadHostKeyException):
        connect(inventory, inventory.master, known_hosts=swapped)
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        connect(inventory, inventory.master, known_hosts="\n".join(lines[1:]))


def test_stopped_sshd_makes_the_host_unreachable_until_started(netns_cluster, ssh):
    inventory = netns_cluster.inventory
    host = inventory.host("worker-1")
    netns_cluster.stop_sshd("worker-1")
    try:
        with pytest.raises(paramiko.ChannelException):  # the master cannot reach its port 22
            connect(inventory, host)
        assert run(ssh["worker-1"], "hostname") == (0, host.hostname)  # open sessions survive
    finally:
        netns_cluster.start_sshd("worker-1")
    client = connect(inventory, host)  # same pinned host key after the restart
    assert run(client, "hostname") == (0, host.hostname)
    client.close()


def running(argv_prefix: list[str]) -> list[int]:
    """Pids on this machine whose command line starts with argv_prefix."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().split(b"\0")[:len(argv_prefix)] == [a.encode() for a in argv_prefix]:
                pids.append(int(cmdline.parent.name))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return pids


def start_daemons(inventory, host, token: str) -> list[int]:
    """Start a user and a root daemon on the host, as Spark/TF launches do; their pids here."""
    client = connect(inventory, host)
    detach = "setsid nohup sleep {} >/dev/null 2>&1 </dev/null &"
    run(client, f"{detach.format(token)} sudo -n {detach.format(token)}")
    client.close()
    deadline = time.monotonic() + 5
    while len(pids := running(["sleep", token])) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(pids) == 2, f"expected the two daemons on {host.name}, found {pids}"
    return pids


def system(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def assert_nothing_left(state: dict, pids: list[int], user_kept: bool) -> None:
    netns = system("ip", "netns", "list").stdout
    links = system("ip", "-o", "link").stdout
    for record in state["hosts"]:
        assert record["netns"] not in netns
        assert f" {record['veth']}@" not in links
    assert f" {state['bridge']}:" not in links
    left = [pid for pid in pids + [h["init_pid"] for h in state["hosts"]] if Path(f"/proc/{pid}").exists()]
    assert not left, f"processes of the hosts survived down: {left}"
    assert not Path(state["inventory"]).exists() and not Path(state["hosts"][0]["dir"]).exists()
    assert all(s["subnet"] != state["subnet"] for s in netns_cluster.cluster_states())
    assert (system("getent", "passwd", state["user"]).returncode == 0) == user_kept
    assert not Path(f"/etc/sudoers.d/kindling-netns-{state['user']}").exists()


@needs_root
def test_cli_down_after_up_exited_removes_everything(tmp_path):
    script = Path(netns_cluster.__file__)
    inventory_path = tmp_path / "cluster.json"
    up = subprocess.run([sys.executable, script, "up", "--hosts", "2", "--user", PROBE_USER,
                         "--inventory", inventory_path], capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    state = next(s for s in netns_cluster.cluster_states() if s["inventory"] == str(inventory_path))
    try:
        inventory = load_inventory(inventory_path)
        pids = start_daemons(inventory, inventory.workers[0], "3141.5926")
    finally:  # the CLI process that made the cluster is gone: only the state file knows it
        down = subprocess.run([sys.executable, script, "down", "--inventory", inventory_path],
                              capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert_nothing_left(state, pids, user_kept=False)


@needs_root
def test_a_failing_body_still_tears_down_and_an_existing_locked_user_is_restored(tmp_path):
    subprocess.run(["useradd", "--user-group", "--no-create-home", PROBE_USER], check=True)
    try:
        with pytest.raises(RuntimeError, match="the test body failed"):
            with NetnsCluster(hosts=2, user=PROBE_USER, workdir=tmp_path / "cluster") as cluster:
                state = dict(cluster.state)
                pids = start_daemons(cluster.inventory, cluster.inventory.master, "2718.2818")
                raise RuntimeError("the test body failed")
        assert_nothing_left(state, pids, user_kept=True)
        assert system("getent", "shadow", PROBE_USER).stdout.split(":")[1] == "!"  # locked again, as we found it
    finally:
        subprocess.run(["userdel", PROBE_USER], check=False)


def test_bad_input_is_one_error_line():
    script = Path(netns_cluster.__file__)
    bad = subprocess.run([sys.executable, script, "up", "--hosts", "1"], capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: a cluster needs a master and at least one worker; got --hosts 1, pass --hosts 2 or more"]
