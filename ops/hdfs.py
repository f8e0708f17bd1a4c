"""HDFS on the cluster, as Flintrock installs it: a NameNode on the master, a DataNode on every
worker, bound to the hosts' private addresses. The daemons run from Maven Central's Hadoop jars
(ops.jvm, at the Hadoop version pyspark bundles) on the hosts' Java; Spark reads `hdfs://` with
the HDFS client pyspark already ships.

The builders below return shell strings (like ops.spark), so ops runs them over SSH.
"""

from __future__ import annotations

import json
import shlex
from xml.sax.saxutils import escape

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
        "dfs.permissions.enabled": "false",
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


def start_command(conf: str, jars: str, main: str, log: str, pid: str) -> str:
    """Start a daemon detached, in its own session; its pid noted (as ops.runs does for jobs)."""
    return (f"(setsid nohup {_java(conf, jars, main)} > {log} 2>&1 < /dev/null & "
            f"echo $! > {pid})")


def stop_command(pid: str) -> str:
    return f"test -f {pid} && kill $(cat {pid}) 2>/dev/null; rm -f {pid}; true"


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
