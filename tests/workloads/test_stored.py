"""The cluster's storage as the job processes read and write it (workloads.stored): a real moto
S3 server and a real one-host HDFS (NameNode + DataNode from the deploy's jars), MNIST and its
TFRecord shards read back from both, and train-mnist's TENSORFLOW mode reading its shards from
HDFS through `fab run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hdfs_server import local_hdfs
from kindling import UserError
from moto_endpoint import ACCESS_KEY, SECRET_KEY, moto_server, upload_folder
from workloads import mnist_node, stored
from workloads.mnist import load_mnist

REPO = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")


@pytest.fixture(scope="module")
def hdfs_root(tmp_path_factory):
    with local_hdfs(tmp_path_factory.mktemp("hdfs")) as root:
        yield root


@pytest.fixture(scope="module")
def s3_root():
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
                                            "AWS_SECRET_ACCESS_KEY", "AWS_REGION")}
    with moto_server("127.0.0.1") as endpoint:
        os.environ.update(AWS_ENDPOINT_URL_S3=endpoint, AWS_ACCESS_KEY_ID=ACCESS_KEY,
                          AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_REGION="us-east-1")
        upload_folder(endpoint, "kindling-data", "empty", Path(__file__).parent)  # the bucket
        yield "s3://kindling-data"
    for name, value in saved.items():
        os.environ.pop(name, None) if value is None else os.environ.update({name: value})


@pytest.fixture(params=["hdfs", "s3"])
def store(request):
    return request.getfixturevalue(f"{request.param}_root")


def test_a_folder_copied_in_reads_back_the_same_and_a_missing_file_is_one_line(store, assets):
    mnist = assets / "datasets" / "mnist"
    stored.copy(str(mnist), f"{store}/copied/mnist")
    assert stored.exists(f"{store}/copied/mnist") and not stored.exists(f"{store}/nowhere")
    names = [(name.rsplit("/", 1)[-1], size) for name, size, _ in
             stored.fingerprint(f"{store}/copied/mnist")]
    assert names == sorted((p.name, p.stat().st_size) for p in mnist.iterdir())
    (x, y), (xt, yt) = load_mnist(f"{store}/copied/mnist")
    (lx, ly), (lxt, lyt) = load_mnist(str(mnist))
    for got, want in ((x, lx), (y, ly), (xt, lxt), (yt, lyt)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(UserError, match="lacks train-images-idx3-ubyte.gz"):
        load_mnist(f"{store}/copied")
    with pytest.raises(UserError, match="nowhere/file: not found"):
        stored.read_bytes(f"{store}/nowhere/file")


@pytest.mark.slow
def test_stored_shards_are_written_once_and_each_node_reads_the_shard_it_would_have_made(
        store, assets, tmp_path, capsys, monkeypatch):
    data = f"{store}/shards-test/mnist"
    stored.copy(str(assets / "datasets" / "mnist"), data)
    location = mnist_node.stored_shards(data, 2)
    assert "2 TFRecord shards written to" in capsys.readouterr().out
    assert mnist_node.stored_shards(data, 2) == location
    assert "already in" in capsys.readouterr().out
    made = mnist_node.write_shards(str(assets / "datasets" / "mnist"), 2, str(tmp_path))
    (tmp_path / "node").mkdir()
    monkeypatch.chdir(tmp_path / "node")  # where TFoS runs a node: its executor folder
    for index, local in enumerate(made):
        node = Path(mnist_node.node_shard(
            type("Args", (), {"shards": location, "cluster_size": 2})(), index))
        assert node.read_bytes() == Path(local).read_bytes()


@pytest.mark.slow
def test_train_mnist_tensorflow_mode_reads_its_shards_from_hdfs(hdfs_root, assets, tmp_path):
    data = f"{hdfs_root}/datasets/mnist"
    stored.copy(str(assets / "datasets" / "mnist"), data)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    done = subprocess.run([FAB, "run", "train-mnist", "--target", "local", "--data", data,
                           "--input-mode", "tensorflow", "--epochs", "1", "--job-args",
                           f"--steps 20 --output {tmp_path / 'run'}"], cwd=REPO,
                          env=env | {"KINDLING_ASSETS": str(assets)}, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "TFRecord shards written to " + data + "_tfrecords/" in done.stdout, done.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["input_mode"] == "tensorflow" and metrics["steps"] == 20, metrics
    shards = [name for name, _, _ in stored.fingerprint(data + "_tfrecords")]
    assert len([name for name in shards if name.endswith(".tfrecord")]) == 2, shards


def test_publish_replaces_a_half_done_copy_and_never_shows_one(hdfs_root, assets):
    """How fab puts a local folder into HDFS (S3 has no rename: the bucket gets a marker)."""
    photos = assets / "datasets" / "buses-cars"
    target = f"{hdfs_root}/published/buses-cars"
    stored.copy(str(photos / "buses"), target + ".partial")  # an earlier copy that died
    stored.publish(str(photos), target)
    assert not stored.exists(target + ".partial")
    names = sorted(name for name, _, _ in stored.fingerprint(target))
    assert names == sorted("/" + p.relative_to(photos).as_posix()
                           for p in photos.rglob("*") if p.is_file())
