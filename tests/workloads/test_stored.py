"""The cluster's storage as the job processes read and write it (workloads.stored): a real moto
S3 server and a real one-host HDFS (NameNode + DataNode from the deploy's jars), MNIST and its
TFRecord shards read back from both. (train-mnist's TENSORFLOW mode reading its shards from
HDFS through `fab run` is an e2e test on the namespace hosts.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kindling import UserError
from workloads import stored
from workloads.mnist import load_mnist
from workloads.train_mnist import node as mnist_node


@pytest.fixture(params=[pytest.param("hdfs", marks=pytest.mark.slow), "s3"])
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
@pytest.mark.parametrize("where", ["hdfs", "s3", "local"])
def test_checkpoints_kept_in_the_store_are_where_a_resume_finds_them(where, request, tmp_path):
    """A run's checkpoints copied file by file (the index last) into a folder that does not
    exist yet, in each kind of store, read back by the check a --resume runs first."""
    from workloads.training import checkpoints_in, store_checkpoints

    root = str(tmp_path / "store") if where == "local" else request.getfixturevalue(f"{where}_root")
    local = tmp_path / "checkpoints"
    local.mkdir()
    for name, text in (("ckpt-2.index", "i"), ("ckpt-2.data-00000-of-00001", "d"),
                       ("checkpoint", 'model_checkpoint_path: "ckpt-2"\n')):
        (local / name).write_text(text)
    run = stored.join(root, "runs", f"train-ps-{where}")
    store_checkpoints(str(local), run)
    folder = checkpoints_in(run)
    assert stored.read_bytes(stored.join(folder, "checkpoint")) == b'model_checkpoint_path: "ckpt-2"\n'
    assert sorted(name.rsplit("/", 1)[-1] for name, _, _ in stored.fingerprint(folder)) == sorted(
        p.name for p in local.iterdir())


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


def test_the_local_target_reads_an_hdfs_named_by_its_namenode(hdfs_root, assets):
    """`fab run --target local --data hdfs://NAMENODE:8020/path`: checked over WebHDFS before
    anything starts, then read by pyspark's own HDFS client (no conf needed)."""
    from ops.targets import LocalTarget

    data = f"{hdfs_root}/local-target/mnist"
    stored.copy(str(assets / "datasets" / "mnist"), data)
    storage = LocalTarget().storage
    storage.check([data])
    assert storage.access([data], "") == ({}, {}, {})
    with pytest.raises(UserError, match="no such path in that HDFS"):
        storage.check([f"{hdfs_root}/nowhere"])
    with pytest.raises(UserError, match="the local target has no HDFS of its own"):
        storage.check(["hdfs:///local-target/mnist"])


def test_publish_replaces_a_half_done_copy_and_never_shows_one(hdfs_root, assets):
    """How fab puts a local folder into HDFS (S3 has no rename: the bucket gets a marker)."""
    mnist = assets / "datasets" / "mnist"
    target = f"{hdfs_root}/published/mnist"
    stored.copy(str(mnist / "t10k-labels-idx1-ubyte.gz"),  # an earlier copy that died
                target + ".partial/t10k-labels-idx1-ubyte.gz")
    stored.publish(str(mnist), target)
    assert not stored.exists(target + ".partial")
    assert [(name, size) for name, size, _ in stored.fingerprint(target)] == sorted(
        ("/" + p.name, p.stat().st_size) for p in mnist.iterdir())
