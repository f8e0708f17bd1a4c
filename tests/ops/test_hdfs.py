"""HDFS's configuration and the NameNode's view of its DataNodes (ops.services.hdfs), without daemons:
the e2e tests run the real ones on the namespace hosts."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

from ops.services import hdfs


def properties(xml: str) -> dict[str, str]:
    return {p.findtext("name"): p.findtext("value") for p in ET.fromstring(xml).iter("property")}


def test_every_address_is_the_hosts_private_one():
    files = hdfs.config_files("10.42.0.10", "10.42.0.33", "/srv/kindling/hdfs", replication=2)
    site = properties(files["hdfs-site.xml"])
    addresses = [v for k, v in site.items() if re.fullmatch(r"[\d.]+:\d+", v or "")]
    assert addresses and all(a.startswith(("10.42.0.10:", "10.42.0.33:")) for a in addresses)
    assert {k for k, v in site.items() if v.startswith("10.42.0.33:")} == set(hdfs.DATANODE_PORTS)
    assert site["dfs.namenode.rpc-address"] == "10.42.0.10:8020"
    assert site["dfs.replication"] == "2"
    assert properties(files["core-site.xml"]) == {"fs.defaultFS": "hdfs://10.42.0.10:8020"}
    assert "0.0.0.0" not in "".join(files.values())


def test_the_namenode_is_formatted_only_when_it_never_was():
    command = hdfs.format_command("/conf", "/jars", "/srv/hdfs", "dev")
    assert command.startswith("test -f /srv/hdfs/name/current/VERSION || ")
    assert "-format -nonInteractive -clusterId kindling-dev" in command


def test_a_datanode_silent_longer_than_the_stale_interval_is_not_live():
    nodes = {"a:9866": {"xferaddr": "10.0.0.3:9866", "lastContact": 1},
             "b:9866": {"xferaddr": "10.0.0.4:9866", "lastContact": hdfs.STALE_SECONDS + 5}}
    assert list(hdfs.live_datanodes({"LiveNodes": json.dumps(nodes)})) == ["10.0.0.3"]
    assert hdfs.live_datanodes({"LiveNodes": "{}"}) == {}
