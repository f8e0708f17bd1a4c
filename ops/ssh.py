"""SSH to cluster hosts with Fabric: the inventory's user and key, host keys pinned, retries.

Fabric accepts any host key by default (AutoAddPolicy). kindling loads the inventory's
known_hosts and rejects every other key on every connection, the gateway included, so a
swapped or spoofed host is refused.

Addressing: a host whose publicIp is "" is reached through the master (which has one) as an
SSH jump host, on its privateIp: Fabric's `gateway=`, and `ProxyJump` for OpenSSH. So a cluster
of any size needs one public address, and workers' port 22 need only be open to members.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import socket
import threading
import time
from pathlib import Path

import paramiko
from fabric import Connection

from kindling import Host, Inventory, UserError

CONNECT_TIMEOUT = 10
"""Seconds for one TCP/SSH handshake."""
CONNECT_DEADLINE_ENV = "KINDLING_CONNECT_DEADLINE"
CONNECT_DEADLINE = 120
"""Seconds to keep retrying (with backoff) while instances boot; $KINDLING_CONNECT_DEADLINE."""


# paramiko logs each refused gateway channel at ERROR, which Python prints to stderr when the
# app configures no logging; connect() reports the outcome as one line naming the host
logging.getLogger("paramiko").addHandler(logging.NullHandler())


class HostUnreachable(UserError):
    """A host did not answer SSH within the deadline, or presented the wrong host key."""


def credentials_dir(inventory: Inventory) -> Path:
    """~/.cache/kindling/<cluster>/ holding the private key, known_hosts and ssh_config (0600)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kindling"
    folder = root / inventory.clusterName
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    write_private_file(folder / "id_cluster", inventory.sshPrivateKey.rstrip("\n") + "\n")
    write_private_file(folder / "known_hosts", inventory.knownHosts.rstrip("\n") + "\n")
    write_private_file(folder / "ssh_config", ssh_config(inventory, folder))
    return folder


def jump_host(inventory: Inventory, host: Host) -> Host | None:
    """The master when host has no public address and the master has one; else None (direct)."""
    if host.publicIp or host == inventory.master or not inventory.master.publicIp:
        return None
    return inventory.master


def ssh_config(inventory: Inventory, folder: Path) -> str:
    """An OpenSSH client config with one `Host NAME` entry per host, pinned like connect().

    A file, not -o flags: `ssh -J` applies -o options to the last hop only, so the jump to
    the master would fall back to ~/.ssh/known_hosts; ProxyJump passes -F on to that hop.
    """
    def quoted(path: Path) -> str:
        return '"' + str(path).replace("%", "%%") + '"'

    entries = [f"# kindling cluster {inventory.clusterName}: `ssh -F <this file> HOST`, "
               "written by fab from the inventory"]
    for host in inventory.hosts:
        via = jump_host(inventory, host)
        entries.append("\n".join([
            f"Host {host.name}",
            f"  HostName {host.address}",
            f"  User {inventory.sshUser}",
            f"  IdentityFile {quoted(folder / 'id_cluster')}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {quoted(folder / 'known_hosts')}",
            "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes",
            "  UpdateHostKeys no",
            f"  ConnectTimeout {CONNECT_TIMEOUT}",
            *([f"  ProxyJump {via.name}"] if via else [])]))
    return "\n\n".join(entries) + "\n"


def write_private_file(path: Path, text: str) -> None:
    """Write a file readable by its owner only (created 0600, never world-readable)."""
    if path.exists() and path.read_text() == text:
        os.chmod(path, 0o600)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _private_key(text: str) -> paramiko.PKey:
    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise UserError("inventory field 'sshPrivateKey' is not a readable ed25519/ecdsa/rsa private key")


@functools.lru_cache(maxsize=4)
def _pinned_keys(known_hosts: str) -> paramiko.HostKeys:
    """knownHosts parsed once per process: parsing it per connection costs N x N lines."""
    keys = paramiko.HostKeys()
    for line in known_hosts.splitlines():
        entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
        for name in entry.hostnames if entry else ():
            keys.add(name, entry.key.get_name(), entry.key)
    return keys


def connect(inventory: Inventory, host: Host, gateway: Connection | None = None) -> Connection:
    """An open Fabric Connection to host with its key pinned; retries with backoff until deadline.

    gateway: the open Connection to jump_host(inventory, host), shared by every host behind
    it (one transport to the master, channels multiplexed on it); None = direct.
    """
    deadline = float(os.environ.get(CONNECT_DEADLINE_ENV) or CONNECT_DEADLINE)
    cxn = Connection(host.address, user=inventory.sshUser, connect_timeout=CONNECT_TIMEOUT,
                     gateway=gateway or False,
                     connect_kwargs={"pkey": _private_key(inventory.sshPrivateKey),
                                     "allow_agent": False, "look_for_keys": False,
                                     "banner_timeout": CONNECT_TIMEOUT,
                                     "auth_timeout": CONNECT_TIMEOUT})
    for key_type, key in (_pinned_keys(inventory.knownHosts).lookup(host.address) or {}).items():
        cxn.client.get_host_keys().add(host.address, key_type, key)  # this host's pin only
    cxn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    where = f"{host.name} ({host.address}{', through the master' if gateway else ''})"
    give_up = time.monotonic() + deadline
    delay = 1.0
    while True:
        try:
            cxn.open()
            # a channel to a host that drops packets would otherwise wait for paramiko's hour
            cxn.transport.channel_timeout = CONNECT_TIMEOUT
            return cxn
        except paramiko.BadHostKeyException:
            raise HostUnreachable(f"{where} presented a host key that differs "
                                  "from the inventory's knownHosts: refusing to connect; if the "
                                  "host was rebuilt, refresh the inventory (pulumi stack output)") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostUnreachable(f"{where} has no pinned host key in the "
                                      "inventory's knownHosts: refusing to connect") from None
            reason = str(exc) or type(exc).__name__
        except (OSError, socket.timeout, EOFError) as exc:
            reason = str(exc) or type(exc).__name__
        if time.monotonic() + delay > give_up:
            reachable = "open to the master" if gateway else "open to you"
            raise HostUnreachable(f"{where} is unreachable over SSH after "
                                  f"{deadline:.0f}s ({reason}); check the host is running and "
                                  f"that port 22 is {reachable}, then retry")
        time.sleep(delay)
        delay = min(delay * 2, 8.0)


class Connector:
    """Opens each host's connection for ops.cluster.Cluster: direct, or through the master.

    Hosts behind the master share ONE connection to it (one transport, a channel per host),
    opened by one thread while the others wait: N threads opening one gateway lazily at once
    each start a handshake on it, and most fail. A master that failed is not tried again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._master: Connection | None = None
        self._master_error: BaseException | None = None

    def __call__(self, inventory: Inventory, host: Host) -> Connection:
        if host.name == inventory.master.name:
            return self.master(inventory)
        gateway = self.master(inventory) if jump_host(inventory, host) else None
        return connect(inventory, host, gateway)

    def master(self, inventory: Inventory) -> Connection:
        with self._lock:
            if self._master_error is not None:
                raise self._master_error
            if self._master is None:
                try:
                    self._master = connect(inventory, inventory.master)
                except BaseException as exc:
                    self._master_error = exc
                    raise
            return self._master


def ssh_command(inventory: Inventory, host: Host) -> list[str]:
    """The OpenSSH client argv for an interactive shell on host, pinned on every hop."""
    return ["ssh", "-F", str(credentials_dir(inventory) / "ssh_config"), host.name]


def tunnel_command(inventory: Inventory, host: Host, forwards: list[tuple[int, int]]) -> list[str]:
    """The OpenSSH argv of a tunnel (no command) from 127.0.0.1:local to host's private address
    :remote, for each (local, remote) port pair, pinned as ssh_command; it fails rather than
    run without a forward."""
    ssh, *rest = ssh_command(inventory, host)
    pairs = [a for local, remote in forwards
             for a in ("-L", f"127.0.0.1:{local}:{host.privateIp}:{remote}")]
    return [ssh, "-N", "-o", "ExitOnForwardFailure=yes", *pairs, *rest]
