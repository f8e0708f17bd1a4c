"""The inventory schema: what infra/ exports is what ops reads; bad inventories get one clear line."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kindling import InventoryError, known_hosts_line, load_inventory, parse_inventory


def openssh_keypair() -> tuple[str, str]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, public


def host(name: str, ip: str) -> dict:
    return {"name": name, "hostname": f"ip-{ip.replace('.', '-')}", "publicIp": ip,
            "privateIp": ip, "publicDns": "", "instanceId": f"i-{ip.replace('.', '')}",
            "spot": name.startswith("worker")}


@pytest.fixture
def outputs() -> dict:
    private, public = openssh_keypair()
    hosts = [host("master", "10.77.0.2"), host("worker-0", "10.77.0.3"), host("worker-1", "10.77.0.4")]
    return {
        "clusterName": "test", "region": "local", "sshUser": "ubuntu", "sshPrivateKey": private,
        "knownHosts": "\n".join(known_hosts_line([h["publicIp"], h["hostname"]], public) for h in hosts),
        "master": hosts[0], "workers": hosts[1:], "ps": [], "bucket": "",
        "sparkMasterUrl": "spark://10.77.0.2:7077", "s3Endpoint": "", "hdfs": False,
        "idleStopMinutes": 60.0, "maxHours": 0.0, "ec2Endpoint": "", "imdsEndpoint": "",
        "hourlyCostUsd": {"running": 0.6, "stopped": 0.01}, "sparkSecret": "s3cretLettersAndDigits42",
    }


def test_round_trip(outputs, tmp_path):
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(outputs))
    inventory = load_inventory(path)
    assert inventory.master.address == "10.77.0.2"
    assert [w.name for w in inventory.workers] == ["worker-0", "worker-1"]
    assert inventory.to_outputs() == outputs
    assert inventory.host("worker-1").privateIp == "10.77.0.4"


@pytest.mark.parametrize("mutate, message", [
    (lambda o: o.pop("sshUser"), "missing field 'sshUser'"),
    (lambda o: o.update(workers=[]), "field 'workers' is empty"),
    (lambda o: o.update(workers="10.0.0.1"), "field 'workers' must be a list"),
    (lambda o: o["master"].pop("privateIp"), "master: missing field 'privateIp'"),
    (lambda o: o.update(sshPrivateKey="hunter2"), "'sshPrivateKey' is not a private key"),
    (lambda o: o.update(knownHosts=o["knownHosts"].splitlines()[0]), "no host key for worker-0"),
    (lambda o: o["workers"][1].update(name="worker-0"), "host name 'worker-0' appears twice"),
    (lambda o: o.update(s3Endpoint="minio:9000"), "'s3Endpoint' must be an http"),
    (lambda o: o.update(hdfs="yes"), "field 'hdfs' must be true or false"),
    (lambda o: o.update(idleStopMinutes=-5), "field 'idleStopMinutes' must be a number >= 0"),
    (lambda o: o.update(maxHours="8h"), "field 'maxHours' must be a number >= 0"),
    (lambda o: o.update(ec2Endpoint="moto"), "'ec2Endpoint' must be an http"),
    (lambda o: o["workers"][0].update(spot="yes"), "field 'spot' must be true or false"),
    (lambda o: o.update(hourlyCostUsd={"running": "cheap"}), "field 'hourlyCostUsd' must be"),
    (lambda o: o.update(sparkSecret="[secret]"), "not the secret itself; export it with `pulumi stack output --json --show-secrets`"),
    (lambda o: o.update(sparkSecret=42), "'sparkSecret' is 42, not the secret itself"),
])
def test_each_problem_names_the_field(outputs, mutate, message):
    mutate(outputs)
    with pytest.raises(InventoryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_inventory(outputs)


def test_s3_endpoint_is_optional_and_kept(outputs):
    outputs.pop("s3Endpoint")
    assert parse_inventory(outputs).s3Endpoint == ""
    outputs["s3Endpoint"] = "http://10.77.0.1:9000/"
    assert parse_inventory(outputs).s3Endpoint == "http://10.77.0.1:9000"


def test_spark_secret_is_optional_for_inventories_written_before_it(outputs):
    assert parse_inventory(outputs).sparkSecret == "s3cretLettersAndDigits42"
    outputs.pop("sparkSecret")
    older = parse_inventory(outputs)
    assert older.sparkSecret == ""
    assert older.to_outputs()["sparkSecret"] == ""


def test_file_errors(tmp_path):
    with pytest.raises(InventoryError, match="not found"):
        load_inventory(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InventoryError, match="not valid JSON"):
        load_inventory(bad)
    bad.write_text("[]")
    with pytest.raises(InventoryError, match="JSON object of stack outputs"):
        load_inventory(bad)
