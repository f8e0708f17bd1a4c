"""SSH to cluster hosts with Fabric: the inventory's user and key, host keys pinned, retries.

Fabric accepts any host key by default (AutoAddPolicy). kindling loads the inventory's
known_hosts and rejects every other key, so a swapped or spoofed host is refused.
"""

from __future__ import annotations

import io
import os
import socket
import time
from pathlib import Path

import paramiko
from fabric import Connection

from kindling import Host, Inventory
from kindling import UserError

CONNECT_TIMEOUT = 10
"""Seconds for one TCP/SSH handshake."""
CONNECT_DEADLINE_ENV = "KINDLING_CONNECT_DEADLINE"
CONNECT_DEADLINE = 120
"""Seconds to keep retrying (with backoff) while instances boot; $KINDLING_CONNECT_DEADLINE."""


class HostUnreachable(UserError):
    """A host did not answer SSH within the deadline, or presented the wrong host key."""


def credentials_dir(inventory: Inventory) -> Path:
    """~/.cache/kindling/<cluster>/ holding the private key (0600) and known_hosts."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kindling"
    folder = root / inventory.clusterName
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    _write_private(folder / "id_cluster", inventory.sshPrivateKey.rstrip("\n") + "\n")
    _write_private(folder / "known_hosts", inventory.knownHosts.rstrip("\n") + "\n")
    return folder


def _write_private(path: Path, text: str) -> None:
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


def connect(inventory: Inventory, host: Host) -> Connection:
    """An open Fabric Connection to host with its key pinned; retries with backoff until deadline."""
    deadline = float(os.environ.get(CONNECT_DEADLINE_ENV) or CONNECT_DEADLINE)
    folder = credentials_dir(inventory)
    cxn = Connection(host.address, user=inventory.sshUser, connect_timeout=CONNECT_TIMEOUT,
                     connect_kwargs={"pkey": _private_key(inventory.sshPrivateKey),
                                     "allow_agent": False, "look_for_keys": False,
                                     "banner_timeout": CONNECT_TIMEOUT,
                                     "auth_timeout": CONNECT_TIMEOUT})
    cxn.client.load_host_keys(str(folder / "known_hosts"))
    cxn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    give_up = time.monotonic() + deadline
    delay = 1.0
    while True:
        try:
            cxn.open()
            return cxn
        except paramiko.BadHostKeyException:
            raise HostUnreachable(f"{host.name} ({host.address}) presented a host key that differs "
                                  "from the inventory's knownHosts: refusing to connect; if the "
                                  "host was rebuilt, refresh the inventory (pulumi stack output)") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostUnreachable(f"{host.name} ({host.address}) has no pinned host key in the "
                                      "inventory's knownHosts: refusing to connect") from None
            reason = str(exc) or type(exc).__name__
        except (OSError, socket.timeout, EOFError) as exc:
            reason = str(exc) or type(exc).__name__
        if time.monotonic() + delay > give_up:
            raise HostUnreachable(f"{host.name} ({host.address}) is unreachable over SSH after "
                                  f"{deadline:.0f}s ({reason}); check the host is running and "
                                  "that port 22 is open to you, then retry")
        time.sleep(delay)
        delay = min(delay * 2, 8.0)


def ssh_command(inventory: Inventory, host: Host) -> list[str]:
    """The OpenSSH client argv for an interactive shell on host, with the same pinning."""
    folder = credentials_dir(inventory)
    return ["ssh", "-i", str(folder / "id_cluster"),
            "-o", f"UserKnownHostsFile={folder / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes",
            f"{inventory.sshUser}@{host.address}"]
