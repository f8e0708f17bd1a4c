"""Spark standalone from the pip pyspark: the daemons' commands, the master and worker steps of
`fab deploy`, the health check, `fab status`'s line and what a Spark failure says.

The pip package has no start-master.sh / start-worker.sh, but its sbin/spark-daemon.sh starts
the Master and Worker classes just as well. The command builders below return one shell string
each, so ops runs them over SSH on cluster hosts and ops.local runs them on this machine.

Every daemon, driver and executor authenticates (spark.authenticate) with the cluster's own
secret, the inventory's `sparkSecret`: it is in spark-defaults.conf in SPARK_CONF_DIR (0600, read
by the daemons and spark-submit), never on a command line. The standalone Worker hands it to its
executors in their environment (`_SPARK_AUTH_SECRET`, Spark's own way; /proc/PID/environ is
readable by the same user only). An application without it is refused by the master.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
import time

from kindling import Host, Inventory, KindlingError, UserError
from ops.remote import (COMMAND_TIMEOUT, PYTHON, SPARK_CONF, SPARK_STATE, SPOT_NOTICE_FILE,
                        STAMPS, daemon_alive, fetch_json, ok, read_stamp, sh, write_private,
                        write_stamp)
from ops.services.base import Service, Step
from workloads.common import SPOT_NOTICE_ENV

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
MASTER_PORT = 7077
MASTER_WEBUI_PORT = 8080
WORKER_WEBUI_PORT = 8081
IDENT = "kindling"
"""SPARK_IDENT_STRING: names the pid and log files, the same for start and stop."""
DEFAULTS = "spark-defaults.conf"


def spark_defaults(secret: str) -> str:
    """spark-defaults.conf: authentication on, with this secret (in a Java properties file,
    where a backslash escapes)."""
    escaped = secret.replace("\\", "\\\\")
    return f"spark.authenticate true\nspark.authenticate.secret {escaped}\n"


def daemon_env(base_dir: str, host: str | None = None, python: str | None = None,
               conf_dir: str | None = None) -> dict[str, str]:
    """Where a daemon keeps logs, pids and executor folders, which address it binds, and where
    its spark-defaults.conf (the authentication secret) is.

    SPARK_LOCAL_IP also reaches every executor (they inherit the Worker's environment), which
    is how kindling's TensorFlowOnSpark nodes learn the address to advertise.
    """
    env = {
        "SPARK_IDENT_STRING": IDENT,
        "SPARK_LOG_DIR": f"{base_dir}/logs",
        "SPARK_PID_DIR": f"{base_dir}/pids",
        "SPARK_WORKER_DIR": f"{base_dir}/work",
    }
    if host:
        env["SPARK_LOCAL_IP"] = host
    if python:
        env["PYSPARK_PYTHON"] = python
    if conf_dir:
        env["SPARK_CONF_DIR"] = conf_dir
    return env


def _daemon_command(spark_home: str, env: dict[str, str], action: str, daemon_class: str,
                    instance: int, *args: str) -> str:
    return shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), "bash",
                       f"{spark_home}/sbin/spark-daemon.sh", action, daemon_class, str(instance),
                       *args])


def master_start_command(spark_home: str, host: str, base_dir: str, port: int = MASTER_PORT,
                         webui_port: int = MASTER_WEBUI_PORT, python: str = sys.executable,
                         conf_dir: str | None = None) -> str:
    return _daemon_command(spark_home, daemon_env(base_dir, host, python, conf_dir), "start",
                           MASTER_CLASS, 1, "--host", host, "--port", str(port), "--webui-port",
                           str(webui_port))


def worker_start_command(spark_home: str, host: str, master_url: str, instance: int, cores: int,
                         memory: str, base_dir: str, python: str = sys.executable,
                         extra_env: dict[str, str] | None = None,
                         conf_dir: str | None = None) -> str:
    """Worker number `instance` (1, 2, ...) of this host; its web UI port is 8080 + instance."""
    env = daemon_env(base_dir, host, python, conf_dir) | (extra_env or {})
    return _daemon_command(spark_home, env, "start", WORKER_CLASS,
                           instance, "--host", host, "--cores", str(cores), "--memory", memory,
                           "--webui-port", str(WORKER_WEBUI_PORT + instance - 1), master_url)


def pid_file(base_dir: str, daemon_class: str, instance: int = 1) -> str:
    """Where spark-daemon.sh keeps the pid of a daemon (the master is instance 1)."""
    return f"{base_dir}/pids/spark-{IDENT}-{daemon_class}-{instance}.pid"


def worker_pid_file(base_dir: str, instance: int) -> str:
    """Where spark-daemon.sh keeps the pid of worker number `instance`."""
    return pid_file(base_dir, WORKER_CLASS, instance)


def master_stop_command(spark_home: str, base_dir: str) -> str:
    return _daemon_command(spark_home, daemon_env(base_dir), "stop", MASTER_CLASS, 1)


def worker_stop_command(spark_home: str, instance: int, base_dir: str) -> str:
    return _daemon_command(spark_home, daemon_env(base_dir), "stop", WORKER_CLASS, instance)


def alive_workers(master_json: dict) -> list[str]:
    """Hosts of the workers the master lists as ALIVE (a host once per worker), from /json/."""
    return [w["host"] for w in master_json.get("workers", []) if w.get("state") == "ALIVE"]


def worker_states(master_json: dict) -> dict[str, str]:
    """Host -> the state the master last saw its worker in (ALIVE, DEAD...); ALIVE wins."""
    states: dict[str, str] = {}
    for worker in master_json.get("workers", []):
        if states.get(worker["host"]) != "ALIVE":
            states[worker["host"]] = worker.get("state", "UNKNOWN")
    return states


def master_status(cxn, master: Host) -> dict | None:
    """The Spark master's /json/ document, fetched on the master."""
    return fetch_json(cxn, f"http://{master.privateIp}:{MASTER_WEBUI_PORT}/json/")


def remote_spark_home(cxn) -> str:
    return sh(cxn, f"{PYTHON} -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))'",
              what="locating pyspark in the venv")


def require_secret(inventory: Inventory) -> None:
    """A cluster's Spark authenticates with the inventory's sparkSecret: refuse one without it
    (a stack from before it existed) in one line naming the fix."""
    if any(c.isspace() for c in inventory.sparkSecret):
        raise UserError(f"inventory {inventory.source or inventory.clusterName}: field "
                        "'sparkSecret' has a space or line break; use the one `pulumi up` "
                        "generates (letters and digits)")
    if not inventory.sparkSecret:
        raise UserError(f"inventory {inventory.source or inventory.clusterName} has no "
                        "sparkSecret, the secret Spark authenticates with (a stack created before "
                        "it existed): run `pulumi up` (it only adds the secret), then export the "
                        "outputs again (`pulumi stack output --json --show-secrets`)")


def defaults_version(inventory: Inventory) -> str:
    return hashlib.sha256(spark_defaults(inventory.sparkSecret).encode()).hexdigest()[:16]


class SparkDefaults(Step):
    """spark-defaults.conf with the cluster's secret in SPARK_CONF on the master and each worker:
    0600 in a 0700 folder (only the SSH user, who runs Spark and the jobs, reads it), written
    through stdin."""

    name = "spark secret"

    def is_current(self, cxn, host, ctx):
        return (read_stamp(cxn, "spark-defaults") == defaults_version(ctx.inventory)
                and ok(cxn, f"test -s {SPARK_CONF}/{DEFAULTS}"))

    def install(self, cxn, host, ctx):
        write_private(cxn, f"{SPARK_CONF}/{DEFAULTS}", spark_defaults(ctx.inventory.sparkSecret),
                      what="writing spark-defaults.conf")
        write_stamp(cxn, "spark-defaults", defaults_version(ctx.inventory))


class SparkMaster(Step):
    """The standalone master on the master host, bound to its private address, started with
    the current spark-defaults.conf."""

    name = "spark master"
    installed, current = "started", "running"

    def is_current(self, cxn, host, ctx):
        return (read_stamp(cxn, "spark-master") == defaults_version(ctx.inventory)
                and master_status(cxn, host) is not None)

    def install(self, cxn, host, ctx):
        home = remote_spark_home(cxn)
        sh(cxn, f"bash -c {shlex.quote(master_stop_command(home, SPARK_STATE))} || true")
        sh(cxn, master_start_command(home, host.privateIp, SPARK_STATE, python=PYTHON,
                                     conf_dir=SPARK_CONF), what="starting the Spark master")
        write_stamp(cxn, "spark-master", defaults_version(ctx.inventory))


class SparkWorker(Step):
    """One standalone worker per worker host, offering all its cores and 80% of its memory.

    Started ready for Spark's graceful decommissioning (SIGPWR, which the spot watcher sends on
    an interruption notice), with the notice file in its environment, which its executors and
    so a TF node inherit."""

    name = "spark worker"
    installed, current = "started", "running"
    options = {"SPARK_WORKER_OPTS": "-Dspark.decommission.enabled=true",
               SPOT_NOTICE_ENV: SPOT_NOTICE_FILE}

    def version(self, ctx) -> str:
        return hashlib.sha256(json.dumps([self.options, ctx.inventory.sparkMasterUrl,
                                          defaults_version(ctx.inventory)],
                                         sort_keys=True).encode()).hexdigest()[:16]

    def is_current(self, cxn, host, ctx):
        """Running here (the master lists a killed worker as ALIVE for a minute), ALIVE on the
        master (not DEAD, not DECOMMISSIONED), started with these options."""
        pid = worker_pid_file(SPARK_STATE, 1)
        started_with = cxn.run(f"{daemon_alive(pid)} && cat {STAMPS}/spark-worker", hide=True, warn=True,
                               timeout=COMMAND_TIMEOUT, in_stream=False).stdout.strip()
        if started_with != self.version(ctx):  # not running here, or with other options
            return False
        status = master_status(cxn, ctx.inventory.master)
        return bool(status) and host.privateIp in alive_workers(status)

    def install(self, cxn, host, ctx):
        cores = sh(cxn, "nproc")
        memory = sh(cxn, "awk '/MemTotal/ {printf \"%dm\", $2 / 1024 * 0.8}' /proc/meminfo")
        home = remote_spark_home(cxn)
        sh(cxn, f"bash -c {shlex.quote(worker_stop_command(home, 1, SPARK_STATE))} || true")
        sh(cxn, worker_start_command(home, host.privateIp, ctx.inventory.sparkMasterUrl, 1,
                                     int(cores), memory, SPARK_STATE, python=PYTHON,
                                     extra_env=self.options, conf_dir=SPARK_CONF),
           what="starting the Spark worker")
        write_stamp(cxn, "spark-worker", self.version(ctx))


class Spark(Service):
    """A standalone master on the master host and a worker on each worker host."""

    registration_timeout = 90

    def wanted(self, inventory, job):
        return job.uses_spark

    def preflight(self, cluster):
        require_secret(cluster.inventory)

    def plan(self, ctx):
        inventory = ctx.inventory
        return [((SparkDefaults(), SparkMaster()), (inventory.master,)),
                ((SparkDefaults(), SparkWorker()), inventory.workers)]

    def health_check(self, cluster, ctx):
        """Every worker host registered ALIVE, within a deadline."""
        master = ctx.inventory.master
        cxn = cluster.connection(master)
        wanted = {w.privateIp for w in ctx.inventory.workers}
        deadline = time.monotonic() + self.registration_timeout
        alive: set[str] = set()
        while time.monotonic() < deadline:
            status = master_status(cxn, master)
            alive = set(alive_workers(status)) if status else set()
            if wanted <= alive:
                return
            time.sleep(1)
        missing = ", ".join(w.name for w in ctx.inventory.workers if w.privateIp not in alive)
        raise KindlingError(f"Spark workers on {missing} did not register with the master within "
                            f"{self.registration_timeout}s; see {SPARK_STATE}/logs on those hosts")

    def ready(self, inventory):
        return (f"spark ready: {len(inventory.workers)} workers registered with "
                f"{inventory.sparkMasterUrl}")

    @staticmethod
    def check_workers(target, job) -> None:
        """Every worker host's Spark worker ALIVE on the master, or which one is not and the fix."""
        inventory = target.cluster.inventory
        status = target.spark_status()
        if status is None:
            raise KindlingError(f"the Spark master on {inventory.master.name} is not running; "
                                f"`fab deploy {job.name}` starts it")
        states = worker_states(status)
        down = [f"{w.name} ({w.privateIp}) is {states.get(w.privateIp, 'not registered')}"
                for w in inventory.workers if states.get(w.privateIp) != "ALIVE"]
        if down:
            raise KindlingError(f"the Spark worker on {', '.join(down)} on the master; "
                                f"`fab deploy {job.name}` restarts it")

    def status(self, target):
        status = target.spark_status()
        if status is None:
            return ["spark: master not running (`fab run JOB` or `fab deploy JOB` starts it)"]
        alive = alive_workers(status)
        return [f"spark: master {status.get('url', '')} ALIVE, {len(alive)}/"
                f"{target.spark_workers} workers: " + ", ".join(alive)]

    def explain(self, target, job, error, results, notices):
        """A worker that died during the run; else the executor host the driver's log blames.
        (A worker a spot notice decommissioned did not die: the watcher explains that.)"""
        if notices:
            return None
        inventory = target.cluster.inventory
        status = target.spark_status()
        states = worker_states(status) if status else {}
        dead = [w for w in inventory.workers if states and states.get(w.privateIp) != "ALIVE"]
        if dead:
            names = ", ".join(f"{w.name} ({w.privateIp})" for w in dead)
            return (f"the Spark worker on {names} died during the run ({error}); "
                    "`fab deploy JOB` restarts it")
        named = name_failed_host(inventory, results, str(error))
        return named if named != str(error) else None


DIED = re.compile(r"exited unexpectedly|crashed|ExecutorLostFailure|Worker lost|Lost executor|"
                  r"killed|Connection reset|EOFError")
"""How Spark reports a task whose process or host died, as opposed to one that failed on its own
(a TF node whose peer vanished fails too, and must not be blamed)."""


def name_failed_host(inventory, local, message: str) -> str:
    """Make a Spark driver failure name the executor host that died, when the driver log says:
    a task lost because its Python worker or executor died beats one that failed by itself."""
    driver_log = local / "logs" / inventory.master.name / "driver.log"
    if not message.startswith("driver") or not driver_log.is_file():
        return message
    failures = []  # (died?, ip) in log order
    for line in driver_log.read_text(errors="replace").splitlines():
        task = re.search(r"\((\d+\.\d+\.\d+\.\d+) executor \d+\)", line)
        lost = re.search(r"Lost executor \d+ on (\d+\.\d+\.\d+\.\d+)", line)
        if task or lost:
            failures.append((bool(lost or DIED.search(line)), (task or lost).group(1)))
    workers = {host.privateIp: host for host in inventory.workers}
    for died, ip in sorted(failures, key=lambda failure: not failure[0]):  # stable: log order
        if ip in workers:
            what = "its Python worker or executor died" if died else "a task failed"
            return f"{message}: {what} on {workers[ip].name} ({ip}), see its executor log"
    return message
