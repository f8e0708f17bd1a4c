"""HDFS on the cluster, as Flintrock installs it: a NameNode on the master, a DataNode on every
worker, bound to the hosts' private addresses. The daemons run from Maven Central's Hadoop jars
(ops.jvm, at the Hadoop version pyspark bundles) on the hosts' Java; Spark reads HDFS with the
client pyspark already ships (ops.storage.hdfs is the data side).

This module owns all of it: configuration, the daemons' commands (shell strings, run over SSH),
the deploy steps, the health check and `fab status`'s line.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from pathlib import Path
from xml.sax.saxutils import escape

from kindling import Host, Inventory, KindlingError, UserError
from ops import jvm
from ops.remote import (BIN, HADOOP_CONF, HDFS_STATE, INSTALL_TIMEOUT, daemon_alive, fetch_json,
                        jar_folder, ok, read_stamp, sh, start_daemon, stop_daemon,
                        write_files_command, write_stamp)
from ops.services.base import Service, Step
from ops.services.host import JvmJars

NAMENODE_PORT = 8020
NAMENODE_HTTP_PORT = 9870
DATANODE_PORTS = {"dfs.datanode.address": 9866, "dfs.datanode.http.address": 9864,
                  "dfs.datanode.ipc.address": 9867}
NAMENODE_CLASS = "org.apache.hadoop.hdfs.server.namenode.NameNode"
DATANODE_CLASS = "org.apache.hadoop.hdfs.server.datanode.DataNode"
STALE_SECONDS = 30
"""A DataNode silent this long counts as down (HDFS's own stale interval; dead takes 10 min)."""
HEAP = "-Xmx1g"


def default_fs(master_ip: str) -> str:
    return f"hdfs://{master_ip}:{NAMENODE_PORT}"


def _xml(properties: dict[str, str]) -> str:
    rows = "".join(f"<property><name>{escape(k)}</name><value>{escape(str(v))}</value></property>\n"
                   for k, v in properties.items())
    return f'<?xml version="1.0"?>\n<configuration>\n{rows}</configuration>\n'


def config_files(master_ip: str, host_ip: str, state: str, replication: int) -> dict[str, str]:
    """core-site.xml, hdfs-site.xml and log4j.properties of one host: every address its own
    private one, data under `state`."""
    hdfs = {
        "dfs.namenode.name.dir": f"{state}/name",
        "dfs.datanode.data.dir": f"{state}/data",
        "dfs.replication": replication,
        "dfs.namenode.rpc-address": f"{master_ip}:{NAMENODE_PORT}",
        "dfs.namenode.http-address": f"{master_ip}:{NAMENODE_HTTP_PORT}",
        "dfs.namenode.stale.datanode.interval": STALE_SECONDS * 1000,
        # the hosts' private names may not resolve; addresses are what the members know
        "dfs.namenode.datanode.registration.ip-hostname-check": "false",
        "dfs.datanode.hostname": host_ip,  # WebHDFS redirects clients to this name
        # owners and modes checked: the jobs' user (who runs the daemons, so HDFS's superuser)
        # owns kindling's folders, and no other user may change them
        "dfs.permissions.enabled": "true",
        **{key: f"{host_ip}:{port}" for key, port in DATANODE_PORTS.items()},
    }
    log4j = ("log4j.rootLogger=INFO,console\n"
             "log4j.appender.console=org.apache.log4j.ConsoleAppender\n"
             "log4j.appender.console.layout=org.apache.log4j.PatternLayout\n"
             "log4j.appender.console.layout.ConversionPattern=%d{ISO8601} %p %c{2}: %m%n\n")
    return {"core-site.xml": _xml({"fs.defaultFS": default_fs(master_ip)}),
            "hdfs-site.xml": _xml(hdfs), "log4j.properties": log4j}


def _java(conf: str, jars: str, main: str, *args: str) -> str:
    return shlex.join(["java", HEAP, "-cp", f"{conf}:{jars}/*", main, *args])


def format_command(conf: str, jars: str, state: str, cluster: str) -> str:
    """Format the NameNode's metadata once: never when it was formatted before."""
    return (f"test -f {state}/name/current/VERSION || "
            + _java(conf, jars, NAMENODE_CLASS, "-format", "-nonInteractive", "-clusterId",
                    f"kindling-{cluster}"))


def daemon_command(conf: str, jars: str, main: str) -> str:
    """The java command line of a NameNode or DataNode (main: its class)."""
    return _java(conf, jars, main)


def shell_command(conf: str, jars: str) -> str:
    """/opt/kindling/bin/hdfs: `hdfs dfs ...` and `hdfs dfsadmin ...`, as Hadoop users type."""
    return ("#!/bin/sh\n"
            "case \"$1\" in\n"
            f"  dfs) shift; exec {_java(conf, jars, 'org.apache.hadoop.fs.FsShell')} \"$@\";;\n"
            f"  dfsadmin) shift; exec {_java(conf, jars, 'org.apache.hadoop.hdfs.tools.DFSAdmin')} \"$@\";;\n"
            "  *) echo 'usage: hdfs dfs|dfsadmin ...' >&2; exit 2;;\n"
            "esac\n")


def live_datanodes(namenode_info: dict) -> dict[str, dict]:
    """Address -> the NameNode's entry for each DataNode that reported within STALE_SECONDS,
    from its JMX bean NameNodeInfo (LiveNodes is a JSON string keyed by host:port)."""
    live = json.loads(namenode_info.get("LiveNodes") or "{}")
    return {node["xferaddr"].rsplit(":", 1)[0]: node for node in live.values()
            if node.get("lastContact", STALE_SECONDS + 1) <= STALE_SECONDS}


def namenode_info(cxn, master: Host) -> dict | None:
    """The NameNode's JMX bean NameNodeInfo (live DataNodes, capacity), fetched on the master."""
    document = fetch_json(cxn, f"http://{master.privateIp}:{NAMENODE_HTTP_PORT}/jmx?"
                               "qry=Hadoop:service=NameNode,name=NameNodeInfo")
    beans = (document or {}).get("beans") or [None]
    return beans[0]  # None while the NameNode is starting: its beans are not registered yet


def down_datanodes(inventory: Inventory, info: dict | None) -> list[str]:
    """`name (ip)` of each worker whose DataNode the NameNode (its NameNodeInfo) does not see
    live; every worker when the NameNode does not answer (None)."""
    live = live_datanodes(info) if info else {}
    return [f"{w.name} ({w.privateIp})" for w in inventory.workers if w.privateIp not in live]


class HdfsDaemon(Step):
    """A NameNode or DataNode from the HDFS jars, its configuration in HADOOP_CONF, its data in
    HDFS_STATE; restarted when its configuration or jars change."""

    daemon_class = ""
    label = ""

    @property
    def pid(self) -> str:
        return f"{HDFS_STATE}/{self.label}.pid"

    def version(self, host: Host, ctx) -> str:
        files = self.config(host, ctx)
        text = "".join(f"{name}\n{body}" for name, body in sorted(files.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16] + JvmJars("hdfs").version(ctx)

    def config(self, host: Host, ctx) -> dict[str, str]:
        inventory = ctx.inventory
        return config_files(inventory.master.privateIp, host.privateIp, HDFS_STATE,
                            min(3, len(inventory.workers)))

    def running(self, cxn, host: Host) -> bool:
        return ok(cxn, daemon_alive(self.pid))

    def is_current(self, cxn, host, ctx):
        return (read_stamp(cxn, self.label) == self.version(host, ctx)
                and self.running(cxn, host))

    def install(self, cxn, host, ctx):
        jars = jar_folder("hdfs")
        sh(cxn, f"mkdir -p {HDFS_STATE} {BIN} && "
                + write_files_command(HADOOP_CONF, self.config(host, ctx)), what="writing the "
                "HDFS configuration")
        sh(cxn, f"printf %s {shlex.quote(shell_command(HADOOP_CONF, jars))} > {BIN}/hdfs "
                f"&& chmod +x {BIN}/hdfs", what="installing the hdfs command")
        sh(cxn, stop_daemon(self.pid), what=f"stopping the old {self.label}")
        self.prepare(cxn, host, ctx)
        sh(cxn, start_daemon(daemon_command(HADOOP_CONF, jars, self.daemon_class),
                             f"{HDFS_STATE}/{self.label}.log", self.pid),
           what=f"starting the {self.label}")
        write_stamp(cxn, self.label, self.version(host, ctx))

    def prepare(self, cxn, host: Host, ctx) -> None:
        """What must be done before the daemon starts."""


class NameNode(HdfsDaemon):
    """HDFS's NameNode on the master, formatted on its first start only."""

    name = "hdfs namenode"
    label = "namenode"
    daemon_class = NAMENODE_CLASS

    def running(self, cxn, host):
        return namenode_info(cxn, host) is not None

    def prepare(self, cxn, host, ctx):
        sh(cxn, format_command(HADOOP_CONF, jar_folder("hdfs"), HDFS_STATE,
                               ctx.inventory.clusterName),
           timeout=INSTALL_TIMEOUT, what="formatting the NameNode (first start only)")


class DataNode(HdfsDaemon):
    """HDFS's DataNode on a worker, storing blocks under HDFS_STATE/data."""

    name = "hdfs datanode"
    label = "datanode"
    daemon_class = DATANODE_CLASS


class Hdfs(Service):
    """HDFS's jars on the master and workers, the NameNode on the master (formatted on its first
    start only), a DataNode on each worker; healthy when every DataNode is live."""

    registration_timeout = 120

    def wanted(self, inventory, job):
        return inventory.hdfs

    def preflight(self, cluster):
        """HDFS's daemons need Java on every host: there already, or installable by the base
        packages (apt-get). Else one line naming the hosts, before anything changes."""
        check = "java -version >/dev/null 2>&1 || apt-get --version >/dev/null 2>&1"
        missing = [name for name, present in cluster.parallel(
            lambda host, cxn: ok(cxn, check)).items() if not present]
        if missing:
            raise UserError(f"hdfs: true needs Java on every host, and {', '.join(missing)} has "
                            "no `java` and no apt-get to install one: install a JRE 17+ there, or "
                            "turn HDFS off (`pulumi config set hdfs false`, or \"hdfs\": false "
                            "in the inventory)")

    def plan(self, ctx):
        from ops.local import local_spark_home

        ctx.jars["hdfs"] = jvm.resolve("hdfs", Path(local_spark_home()))
        inventory = ctx.inventory
        master = inventory.master
        return [((JvmJars("hdfs"),), (master, *inventory.workers)), ((NameNode(),), (master,)),
                ((DataNode(),), inventory.workers)]

    def health_check(self, cluster, ctx):
        """Every worker's DataNode live on the NameNode, within a deadline."""
        master = ctx.inventory.master
        cxn = cluster.connection(master)
        deadline = time.monotonic() + self.registration_timeout
        while True:
            down = down_datanodes(ctx.inventory, namenode_info(cxn, master))
            if not down:
                return
            if time.monotonic() > deadline:
                raise KindlingError(f"HDFS DataNodes on {', '.join(down)} are not live on the "
                                    f"NameNode after {self.registration_timeout}s; see "
                                    f"{HDFS_STATE}/datanode.log on those hosts")
            time.sleep(1)

    def ready(self, inventory):
        return (f"hdfs ready: {len(inventory.workers)} DataNodes live on "
                f"{default_fs(inventory.master.privateIp)}")

    def status(self, target):
        inventory = target.cluster.inventory
        if not inventory.hdfs:
            return []
        master = inventory.master
        info = namenode_info(target.cluster.connection(master), master)
        if info is None:
            return [f"hdfs: NameNode on {master.name} not running (`fab deploy JOB` starts it)"]
        down = down_datanodes(inventory, info)
        workers = len(inventory.workers)
        return [f"hdfs: NameNode {default_fs(master.privateIp)} up, {workers - len(down)}/"
                f"{workers} DataNodes live, capacity {info.get('Total', 0) / 1e9:.1f} GB, "
                f"{info.get('Free', 0) / 1e9:.1f} GB free"
                + (f"; DataNode down on {', '.join(down)} (`fab deploy JOB` restarts it)"
                   if down else "")]
