"""The one parallel runner: hosts, a context per host (local or SSH), work on every host at once.

Like Flintrock's core: every host works at once (one thread each); an expected failure on one
host is reported as one line naming that host and its role, after the others have finished
their step. Anything else is a bug and propagates with its traceback.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import paramiko
from invoke import Context
from rich.console import Console

from kindling import Host, HostError, Inventory, KindlingError, UserError

T = TypeVar("T")
console = Console(highlight=False)
LOST_CONNECTION = (paramiko.SSHException, EOFError, ConnectionError)
"""How a host that went away mid-command shows (EC2 took a spot instance back): that host's
failure, named like any other, not a bug."""


class Cluster:
    """An inventory's hosts, each reached through a context opened on first use."""

    def __init__(self, inventory: Inventory, connect: Callable[[Inventory, Host], Context]):
        self.inventory = inventory
        self._connect = connect
        self._connections: dict[str, Context] = {}

    @property
    def hosts(self) -> tuple[Host, ...]:
        """Every host once, master first."""
        return tuple({h.name: h for h in self.inventory.hosts}.values())

    def role(self, host: Host) -> str:
        if host.name == self.inventory.master.name:
            return "master"
        return "ps" if host in self.inventory.ps else "worker"

    def connection(self, host: Host) -> Context:
        """The host's context; it carries `where` (host name, role) for error messages."""
        if host.name not in self._connections:
            cxn = self._connect(self.inventory, host)
            cxn.where = (host.name, self.role(host))
            self._connections[host.name] = cxn
        return self._connections[host.name]

    def connect_all(self) -> None:
        """The master first (hosts without a public address are reached through it), then every
        other host at once, so an unreachable one is named before work begins."""
        self.connection(self.inventory.master)
        self.parallel(lambda host, cxn: None)

    def parallel(self, work: Callable[[Host, Context], T],
                 hosts: tuple[Host, ...] | None = None) -> dict[str, T]:
        """work(host, context) on each host in its own thread.

        Expected failures (KindlingError) are collected into one HostError-style line; any
        other exception is a bug and is re-raised as is, once every host has finished."""
        hosts = tuple({h.name: h for h in hosts or self.hosts}.values())

        def one(host: Host) -> T:
            try:
                return work(host, self.connection(host))
            except LOST_CONNECTION as exc:
                raise HostError(host.name, self.role(host), "ssh", "lost the connection "
                                f"({type(exc).__name__}: {exc})") from exc

        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            futures = {host.name: pool.submit(one, host) for host in hosts}
        failures: list[KindlingError] = []
        results: dict[str, T] = {}
        for host in hosts:
            exc = futures[host.name].exception()
            if exc is None:
                results[host.name] = futures[host.name].result()
            elif isinstance(exc, KindlingError):
                failures.append(exc)
            else:
                raise exc
        if failures:
            message = "; ".join(dict.fromkeys(str(e) for e in failures))
            raise (UserError if all(isinstance(e, UserError) for e in failures)
                   else KindlingError)(message)
        return results

    def close(self) -> None:
        """Newest first: hosts behind the master before the master, whose transport they use."""
        for cxn in reversed(list(self._connections.values())):
            close = getattr(cxn, "close", None)
            if close:
                close()
        self._connections.clear()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class Progress:
    """Per-host progress lines: `worker-0  python deps  installed  41.2s`."""

    def __init__(self, hosts: tuple[Host, ...]):
        self.width = max(len(h.name) for h in hosts)
        self.started = time.monotonic()

    def step(self, host: Host, step: str, status: str, seconds: float) -> None:
        colour = {"skipped": "dim", "failed": "red"}.get(status.split()[0], "green")
        console.print(f"[bold]{host.name:<{self.width}}[/]  {step:<15} [{colour}]{status}[/]"
                      f"  {seconds:5.1f}s")

    def done(self, what: str) -> None:
        console.print(f"{what} in {time.monotonic() - self.started:.1f}s")
