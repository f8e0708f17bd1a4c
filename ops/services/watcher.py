"""The watcher on every host (ops.agent.autostop: idle auto-stop, spot notices): its deploy
step, the spot notices and auto-stop lines of `fab status`, the cost line, and what a run
stopped by a spot interruption says.
"""

from __future__ import annotations

import hashlib
import json
import shlex

from kindling import Host, Inventory, KindlingError
from ops.agent import autostop
from ops.cluster import LOST_CONNECTION
from ops.remote import (AUTOSTOP_STATE, HOME, PYTHON, RUNS, SPARK_STATE, SPOT_NOTICE_FILE,
                        daemon_alive, ok, read_stamp, sh, start_daemon, stop_daemon,
                        write_files_command, write_stamp)
from ops.services.base import DeployContext, Service, Step
from ops.services.spark import MASTER_WEBUI_PORT, worker_pid_file
from workloads.common import describe_notice

NOTICE_TIMEOUT = 15


def stops(inventory: Inventory) -> bool:
    """The master's watcher stops the cluster: it knows the instances and has a limit."""
    return any(host.instanceId for host in inventory.hosts) and bool(
        inventory.idleStopMinutes or inventory.maxHours)


class WatcherStep(Step):
    """The watcher (ops.agent.autostop: idle auto-stop, spot notices) on every host, as a systemd
    service where systemd runs the host, else a detached process with the same code; restarted
    when its settings change."""

    name = "watcher"
    unit = "kindling-autostop"
    pid = f"{AUTOSTOP_STATE}/watcher.pid"

    def settings(self, host: Host, ctx: DeployContext) -> dict:
        inventory = ctx.inventory
        is_master = host == inventory.master
        idle_seconds = inventory.idleStopMinutes * 60 or inventory.maxHours * 3600
        others = [h for h in inventory.hosts if h != inventory.master]
        stoppable = [h for h in inventory.hosts if h.instanceId] if is_master and stops(
            inventory) else []
        return {
            "host": host.name, "address": host.privateIp, "runs": RUNS, "state": AUTOSTOP_STATE,
            "idle_minutes": inventory.idleStopMinutes, "max_hours": inventory.maxHours,
            "interval": max(1.0, min(30.0, idle_seconds / 10)),
            "spark_master": (f"http://{host.privateIp}:{MASTER_WEBUI_PORT}/json/"
                             if is_master else ""),
            "peers": [h.privateIp for h in others] if is_master else [],
            "instance_ids": [h.instanceId for h in stoppable if not h.spot],
            "spot_ids": [h.instanceId for h in stoppable if h.spot],
            "region": inventory.region, "ec2_endpoint": inventory.ec2Endpoint,
            "imds_endpoint": inventory.imdsEndpoint,
            "spot_notice": SPOT_NOTICE_FILE if host.spot else "",
            "spark_worker_pid": worker_pid_file(SPARK_STATE, 1),
        }

    def version(self, host: Host, ctx: DeployContext) -> str:
        text = json.dumps(self.settings(host, ctx), sort_keys=True) + ctx.project_wheel.name
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def running(self, cxn) -> bool:
        return ok(cxn, f"systemctl is-active --quiet {self.unit} 2>/dev/null || "
                       + daemon_alive(self.pid))

    def is_current(self, cxn, host, ctx):
        return read_stamp(cxn, "autostop") == self.version(host, ctx) and self.running(cxn)

    def install(self, cxn, host, ctx):
        settings = f"{HOME}/autostop.json"
        # a notice from before (this host was spot then) is not this host's to act on
        sh(cxn, f"mkdir -p {AUTOSTOP_STATE} && rm -f {SPOT_NOTICE_FILE} && " + write_files_command(HOME, {
            "autostop.json": json.dumps(self.settings(host, ctx), indent=1)}),
           what="writing the auto-stop settings")
        command = f"{PYTHON} -m ops.agent.autostop {settings}"
        if ok(cxn, "test -d /run/systemd/system"):
            unit = (f"[Unit]\nDescription=kindling idle auto-stop\nAfter=network-online.target\n"
                    f"[Service]\nExecStart={command}\nRestart=always\nRestartSec=10\n"
                    f"[Install]\nWantedBy=multi-user.target\n")
            sh(cxn, f"printf %s {shlex.quote(unit)} | sudo tee /etc/systemd/system/{self.unit}.service"
                    f" > /dev/null && sudo systemctl daemon-reload && sudo systemctl enable "
                    f"--quiet {self.unit} && sudo systemctl restart {self.unit}",
               what="starting the auto-stop service")
        else:
            sh(cxn, stop_daemon(self.pid) + "; "
                    + start_daemon(command, f"{AUTOSTOP_STATE}/watcher.log", self.pid),
               what="starting the auto-stop watcher")
        write_stamp(cxn, "autostop", self.version(host, ctx))


class Watcher(Service):
    """The watcher on every host, when there is something to watch: instances to stop when idle
    (the inventory names them and a limit is set), or spot hosts to take back."""

    def wanted(self, inventory, job):
        return stops(inventory) or any(host.spot for host in inventory.hosts)

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
            lines.append("auto-stop: not running (`fab deploy JOB` starts it)")
            return None
        state = json.loads(text)
        lines.append(autostop.describe(state))
        return state

    @staticmethod
    def cost_status(cluster, watcher: dict | None) -> list[str]:
        """Cost per hour from the price table `pulumi up` used, and the spend since the cluster
        last started (the master's watcher start, else the master's uptime)."""
        inventory = cluster.inventory
        if not inventory.hourlyCostUsd:
            return []
        costs = dict(inventory.hourlyCostUsd)
        if watcher:
            up = watcher["checked"] - watcher["started"]
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
