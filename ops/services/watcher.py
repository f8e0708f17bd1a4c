"""The watcher on every host (ops.agent.autostop: idle auto-stop, spot notices): its upgrade step,
the spot notices and auto-stop lines of `fab status`, the cost line, and what a run stopped by a
spot interruption says.

The user data arms the watcher at first boot (infra/cloud_init.py); `fab deploy` upgrades it to
this checkout's code and the inventory's settings (and installs it on hosts no user data booted).
"""

from __future__ import annotations

import json
import shlex
import time

from kindling import Host, Inventory, KindlingError
from ops.agent import install
from ops.cluster import LOST_CONNECTION
from ops.remote import AUTOSTOP_STATE, SPOT_NOTICE_FILE, ok, sh
from ops.services.base import DeployContext, Service, Step
from workloads.common import describe_notice

NOTICE_TIMEOUT = 15


def stops(inventory: Inventory) -> bool:
    """The cluster stops itself: its hosts are EC2 instances (the inventory names them) and a
    limit is set. Hosts of an inventory without instance ids are never shut down."""
    return any(host.instanceId for host in inventory.hosts) and bool(
        inventory.idleStopMinutes or inventory.maxHours)


class WatcherStep(Step):
    """The watcher (ops.agent.autostop) on every host, upgraded to this checkout's code and the
    inventory's settings when they differ from the host's; restarted then."""

    name = "watcher"

    def settings(self, host: Host, ctx: DeployContext) -> dict:
        inventory = ctx.inventory
        limits = (inventory.idleStopMinutes, inventory.maxHours) if stops(inventory) else (0, 0)
        return install.settings(host.name, inventory.master.hostname,
                                [h.name for h in inventory.hosts if h != inventory.master],
                                *limits, host.spot, inventory.imdsEndpoint)

    def running(self, cxn) -> bool:
        # the watcher's own user's process: kill -0 from the login user would be refused
        return ok(cxn, f"systemctl is-active --quiet {install.UNIT} 2>/dev/null || grep -qs "
                       f"ops.agent.autostop /proc/$(cat {install.PID})/cmdline")

    @staticmethod
    def on_host(cxn) -> dict:
        """The host's settings file, as the user data or the last deploy wrote it ({} if none)."""
        try:
            return json.loads(sh(cxn, f"cat {install.SETTINGS} 2>/dev/null || true") or "{}")
        except ValueError:
            return {}

    def is_current(self, cxn, host, ctx):
        return (self.on_host(cxn).get("version") == self.settings(host, ctx)["version"]
                and self.running(cxn))

    def install(self, cxn, host, ctx):
        # settings the host got at boot that the inventory does not give (the tests' shutdown
        # command) are kept
        values = self.on_host(cxn) | self.settings(host, ctx)
        systemd = ok(cxn, "test -d /run/systemd/system")
        writes = [f"sudo -n mkdir -p {shlex.quote(path.rsplit('/', 1)[0])} && printf %s "
                  f"{shlex.quote(text)} | sudo -n tee {shlex.quote(path)} > /dev/null"
                  for path, text in install.files(values).items()
                  if systemd or path != install.UNIT_FILE]
        # a notice from before (this host was spot then) is not this host's to act on
        sh(cxn, " && ".join([f"sudo -n rm -f {SPOT_NOTICE_FILE}", *writes]),
           what="writing the watcher")
        sh(cxn, f"sudo -n sh -c {shlex.quote(install.restart_command())}",
           what="starting the watcher")


def describe(status: dict) -> str:
    """`fab status`'s line for the master's status.json: busy, held back by a silent host, when
    the cluster stops, or that it was stopped."""
    booted = status["checked"] - status["up"]

    def clock(since_boot: float) -> str:
        return time.strftime("%H:%M:%S", time.localtime(booted + since_boot))

    if status.get("shutdown"):
        return (f"auto-stop: stopped the cluster at {clock(status['shutdown']['up'])} "
                f"({status['shutdown']['why']})")
    if status.get("decision"):
        return f"auto-stop: stopping the cluster ({status['decision']})"
    if not status["stopAt"]:
        return "auto-stop: off (idleStopMinutes 0, no maxHours)"
    held = [f"{peer} ({quiet:.0f} s)" for peer, quiet in sorted(status.get("silent", {}).items())]
    if held:
        return (f"auto-stop: blocked: no answer from {', '.join(held)}; the cluster does not stop "
                "while a host may be busy (a host that cannot reach the master stops itself "
                f"after {status['idleStopMinutes']:g} min)")
    if status["active"]:
        limits = [f"after {status['idleStopMinutes']:g} idle minutes"] if status[
            "idleStopMinutes"] else []
        if status["maxHours"]:
            limits.append(f"at {clock(status['maxHours'] * 3600)} however busy "
                          f"(maxHours {status['maxHours']:g})")
        return (f"auto-stop: busy ({'; '.join(status['active'])}); the cluster stops "
                + ", or ".join(limits))
    left = max(0.0, status["stopAt"] - status["up"])
    return (f"auto-stop: idle since {clock(status['lastActive'])}; the cluster stops in "
            f"{left / 60:.1f} min (at {clock(status['stopAt'])})")



class Watcher(Service):
    """The watcher on every host of a cluster of EC2 instances (the user data armed it: its
    settings follow the inventory's), or with spot hosts to watch for notices."""

    def wanted(self, inventory, job):
        return any(host.instanceId or host.spot for host in inventory.hosts)

    def plan(self, ctx):
        return [((WatcherStep(),), ctx.inventory.hosts)]

    def ready(self, inventory):
        lines = []
        if stops(inventory):
            limits = [f"after {inventory.idleStopMinutes:g} idle minutes"
                      if inventory.idleStopMinutes else "",
                      f"{inventory.maxHours:g} h after it started" if inventory.maxHours else ""]
            lines.append("auto-stop: the cluster stops " + " or ".join(filter(None, limits)))
        spot = [host.name for host in inventory.hosts if host.spot]
        if spot:
            lines.append(f"spot: {', '.join(spot)} watched for interruption notices (Spark "
                         "decommissions a host's worker on one)")
        return "; ".join(lines)

    @staticmethod
    def notices(cluster) -> dict[str, dict]:
        """Host name -> the spot interruption notice its watcher wrote, read from the spot hosts
        that still answer: EC2 takes one two minutes after its notice, and a host gone (or not
        answering within NOTICE_TIMEOUT) has none to tell."""
        def read(host, cxn) -> dict | None:
            try:
                text = sh(cxn, f"cat {SPOT_NOTICE_FILE} 2>/dev/null || true", timeout=NOTICE_TIMEOUT)
                return json.loads(text) if text else None
            except (KindlingError, ValueError, *LOST_CONNECTION):
                return None

        spot = tuple(host for host in cluster.inventory.hosts if host.spot)
        notices = cluster.parallel(read, spot) if spot else {}
        return {name: notice for name, notice in notices.items() if notice}

    def status(self, target):
        lines = [f"spot: {describe_notice(notice)}; `pulumi up` replaces the instance once EC2 "
                 "took it" for notice in target.spot_notices().values()]
        watcher = self.autostop_status(target.cluster, lines)
        return lines + self.cost_status(target.cluster, watcher)

    @staticmethod
    def autostop_status(cluster, lines: list[str]) -> dict | None:
        """What the master's idle watcher decided last (busy, or when it stops the cluster),
        added to lines; its status document."""
        inventory = cluster.inventory
        if not any(host.instanceId for host in inventory.hosts):
            return None
        text = sh(cluster.connection(inventory.master),
                  f"cat {AUTOSTOP_STATE}/status.json 2>/dev/null || true")
        if not text:
            lines.append("auto-stop: the master's watcher has decided nothing yet (the first "
                         "boot starts it once cloud-init is done; `fab deploy JOB` restarts it)")
            return None
        state = json.loads(text)
        lines.append(describe(state))
        return state

    @staticmethod
    def cost_status(cluster, watcher: dict | None) -> list[str]:
        """Cost per hour from the price table `pulumi up` used, and the spend since the cluster
        last started (the master's boot, as its watcher counts it, else its uptime)."""
        inventory = cluster.inventory
        if not inventory.hourlyCostUsd:
            return []
        costs = dict(inventory.hourlyCostUsd)
        if watcher:
            up = watcher["up"]
        else:
            up = float(sh(cluster.connection(inventory.master), "cut -d' ' -f1 /proc/uptime"))
        return [f"cost: ${costs['running']:.4f}/h running (${costs['stopped']:.4f}/h "
                f"stopped); up {up / 3600:.2f} h since it last started: "
                f"${costs['running'] * up / 3600:.2f}"]

    def explain(self, target, job, error, results, notices):
        """A host's Spark worker is decommissioned, not "died": what to do once EC2 took it."""
        if not notices:
            return None
        unsaid = [describe_notice(n) for n in notices.values()
                  if describe_notice(n) not in str(error)]
        after = (f"`fab run {job.name}` resumes from the last checkpoint" if job.resume
                 else f"run `fab run {job.name}` again")
        return (f"{error}{' (' + '; '.join(unsaid) + ')' if unsaid else ''}; once `pulumi "
                f"up` has replaced the instance and `fab deploy {job.name}` set it up, {after}")
