"""The cluster as ops sees it: connections to every host, work in parallel, per-host progress.

Like Flintrock's core: every host works at once (one thread each); a failure on one host is
reported as one line naming that host, after the others have finished their step.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from fabric import Connection
from rich.console import Console

from ops.inventory import Host, Inventory
from ops.ssh import connect, jump_host
from workloads.common import UserError

T = TypeVar("T")
console = Console(highlight=False)


class Cluster:
    """Open connections to an inventory's hosts; run a function on many hosts in parallel."""

    def __init__(self, inventory: Inventory):
        self.inventory = inventory
        self._connections: dict[str, Connection] = {}
        self._gateway_lock = threading.Lock()
        self._gateway_error: BaseException | None = None

    def role(self, host: Host) -> str:
        if host == self.inventory.master:
            return "master"
        return "ps" if host in self.inventory.ps else "worker"

    def connection(self, host: Host) -> Connection:
        """host's open connection (made once); hosts behind the master share its connection."""
        if host == self.inventory.master:
            return self._master_connection()
        if host.name not in self._connections:
            gateway = self._master_connection() if jump_host(self.inventory, host) else None
            self._connections[host.name] = connect(self.inventory, host, gateway)
        return self._connections[host.name]

    def _master_connection(self) -> Connection:
        """The master's connection, opened by one thread while the others wait: N threads
        opening one gateway lazily at once each start a handshake on it, and most fail."""
        master = self.inventory.master
        with self._gateway_lock:
            if self._gateway_error is not None:
                raise self._gateway_error
            if master.name not in self._connections:
                try:
                    self._connections[master.name] = connect(self.inventory, master)
                except BaseException as exc:
                    self._gateway_error = exc
                    raise
            return self._connections[master.name]

    def connect_all(self, hosts: tuple[Host, ...] | None = None) -> None:
        """Connect to every host at once, so an unreachable one is named before work begins."""
        if any(jump_host(self.inventory, h) for h in hosts or self.inventory.hosts):
            self._master_connection()  # the shared gateway first, then the fan-out through it
        self.parallel(lambda host, cxn: None, hosts)

    def parallel(self, work: Callable[[Host, Connection], T],
                 hosts: tuple[Host, ...] | None = None) -> dict[str, T]:
        """work(host, connection) on each host in its own thread; errors name their host."""
        hosts = hosts or self.inventory.hosts

        def one(host: Host) -> T:
            return work(host, self.connection(host))

        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            futures = {host.name: pool.submit(one, host) for host in hosts}
        errors = []
        results: dict[str, T] = {}
        for name, future in futures.items():
            exc = future.exception()
            if exc is None:
                results[name] = future.result()
            elif isinstance(exc, UserError):
                errors.append(str(exc))
            else:
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
        if errors:
            raise UserError("; ".join(dict.fromkeys(errors)))
        return results

    def close(self) -> None:
        """Newest first: hosts behind the master before the master, whose transport they use."""
        for cxn in reversed(list(self._connections.values())):
            cxn.close()
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
