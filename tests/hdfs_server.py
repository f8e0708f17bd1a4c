"""A real one-host HDFS for the storage tests: a NameNode and a DataNode on 127.0.0.1, from the
same jars (ops.jvm) and configuration builders (ops.services.hdfs) that `fab deploy` uses on hosts."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from ops import jvm
from ops.remote import start_daemon, stop_daemon
from ops.services import hdfs
from ops.local import local_spark_home

ADDRESS = "127.0.0.1"
START_TIMEOUT = 120


def live_datanodes() -> dict:
    url = (f"http://{ADDRESS}:{hdfs.NAMENODE_HTTP_PORT}/jmx?"
           "qry=Hadoop:service=NameNode,name=NameNodeInfo")
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            beans = json.load(answer).get("beans") or [{}]
    except OSError:
        return {}
    return hdfs.live_datanodes(beans[0])


@contextmanager
def local_hdfs(state: Path):
    """NameNode + DataNode under state; yields the file system's URI (hdfs://127.0.0.1:8020)."""
    jars = jvm.resolve("hdfs", Path(local_spark_home()))
    conf = state / "conf"
    conf.mkdir(parents=True)
    for name, text in hdfs.config_files(ADDRESS, ADDRESS, str(state), 1).items():
        (conf / name).write_text(text)
    subprocess.run(hdfs.format_command(str(conf), str(jars), str(state), "test"), shell=True,
                   check=True, capture_output=True, timeout=START_TIMEOUT)
    pids = []
    for label, main in (("namenode", hdfs.NAMENODE_CLASS), ("datanode", hdfs.DATANODE_CLASS)):
        pid = state / f"{label}.pid"
        subprocess.run(start_daemon(hdfs.daemon_command(str(conf), str(jars), main),
                                    str(state / f"{label}.log"), str(pid)),
                       shell=True, check=True, timeout=30)
        pids.append(pid)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while ADDRESS not in live_datanodes():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no live DataNode within {START_TIMEOUT}s; see {state}/*.log")
            time.sleep(0.5)
        yield hdfs.default_fs(ADDRESS)
    finally:
        for pid in pids:
            subprocess.run(stop_daemon(str(pid)), shell=True, timeout=30)
