"""train-mnist without a cluster: user errors as one line from the real script, the step plan
that keeps MultiWorkerMirroredStrategy from blocking, the address TFoS advertises, TFRecord
shards. The cluster runs are in test_train_mnist_cluster.py."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from workloads.train_mnist import main as train_mnist
from workloads.train_mnist import node as mnist_node
from workloads.mnist import load_mnist, shuffled

SCRIPT = train_mnist.__file__


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The job as a user runs it (no Spark needed: these fail before Spark starts)."""
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_bad_input_mode_is_one_clear_line():
    result = run_script("--input_mode", "rdd", "--data", "/nowhere")
    assert result.returncode == 2
    assert error_lines(result) == ["error: argument --input-mode/--input_mode: invalid choice: "
                                   "'rdd' (choose from 'spark', 'tensorflow') (see --help)"]


def test_usage_mistakes_are_one_line_too():
    result = run_script("--epochs", "two")
    assert result.returncode == 2
    assert error_lines(result) == ["error: argument --epochs: invalid int value: 'two' "
                                   "(see --help)"]


def test_missing_data_is_one_clear_line(tmp_path):
    result = run_script("--data", str(tmp_path / "mnist"), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    [line] = error_lines(result)
    assert line.startswith(f"error: MNIST data not found: {tmp_path / 'mnist'}; pass --data")
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


def test_offline_default_data_comes_from_kindling_assets(tmp_path):
    """--data omitted + KINDLING_ASSETS set: the registry's offline default is used (and must
    exist), never a download."""
    result = run_script("--output", str(tmp_path / "out"), KINDLING_ASSETS=str(tmp_path))
    assert result.returncode == 2
    assert error_lines(result) == [f"error: KINDLING_ASSETS={tmp_path} has no datasets/mnist; "
                                   "point it at a folder laid out like ../shared (datasets/, "
                                   "models/) or unset it"]


def test_barrier_engine_needs_tensorflow_input():
    with pytest.raises(train_mnist.UserError, match="--engine barrier has no Spark feed: .*add "
                       "--input-mode tensorflow"):
        train_mnist.parse_args(["--engine", "barrier"])
    assert train_mnist.parse_args(["--engine", "barrier", "--input_mode", "tensorflow"]).engine \
        == "barrier"


def test_parameter_servers_point_to_train_ps():
    with pytest.raises(train_mnist.UserError,
                       match="--num-ps 1: .*use --num-ps 0, or the train-ps"):
        train_mnist.parse_args(["--num_ps", "1"])


def test_flags_in_the_chapters_spelling_and_in_fabs(assets):
    data = str(assets / "datasets" / "mnist")
    chapter = train_mnist.parse_args(["--data_dir", data, "--batch_size", "32",
                                      "--input_mode", "tensorflow", "--cluster_size", "3"])
    fab = train_mnist.parse_args(["--data", data, "--batch-size", "32",
                                  "--input-mode", "tensorflow", "--cluster-size", "3"])
    assert chapter == fab
    assert (fab.data, fab.batch_size, fab.input_mode, fab.cluster_size) == \
        (data, 32, "tensorflow", 3)


def plan(input_mode: str, steps: int | None = None, epochs: int = 2, nodes: int = 2,
         batch_size: int = 64) -> argparse.Namespace:
    return argparse.Namespace(input_mode=input_mode, cluster_size=nodes, batch_size=batch_size,
                              epochs=epochs, steps=steps)


def test_tensorflow_mode_runs_whole_shards():
    # 5000 digits on 2 nodes: shards of 2500, 39 full batches of 64 per epoch
    assert train_mnist.plan_steps(plan("tensorflow"), 5000) == (78, 39)
    assert train_mnist.plan_steps(plan("tensorflow", steps=10), 5000) == (10, 10)


def test_spark_mode_keeps_a_partition_per_node_in_reserve():
    steps, per_epoch = train_mnist.plan_steps(plan("spark"), 5000)
    partition = 5000 // (2 * train_mnist.PARTITIONS_PER_NODE)
    fed_per_node = 2 * 5000 // 2
    # a node may get one partition less than its fair share, and tf.data reads ahead
    assert steps * 64 <= fed_per_node - partition - mnist_node.READ_AHEAD_BATCHES * 64
    assert steps >= 60  # ... but not much less than the data allows
    assert per_epoch == math.ceil(steps / 2)  # two checkpoints, no stray third "epoch"


def test_too_little_data_is_a_user_error():
    with pytest.raises(train_mnist.UserError, match="too few for 4 nodes with --batch_size 512"):
        train_mnist.plan_steps(plan("spark", nodes=4, batch_size=512, epochs=1), 2000)


@pytest.mark.parametrize("conf, size", [
    ({"spark.executor.instances": "3"}, 3),
    ({"spark.cores.max": "8", "spark.task.cpus": "2"}, 4),
    ({"spark.cores.max": "2"}, 2),
    ({}, 2),
])
def test_default_cluster_size_follows_the_spark_conf(conf, size):
    assert train_mnist.default_cluster_size(conf) == size


def test_cores_max_too_small_for_the_nodes_fails_at_once():
    with pytest.raises(train_mnist.UserError, match="--cluster_size 3 needs 3 executors but "
                       "spark.cores.max=4 with spark.task.cpus=2 allows 2; lower --cluster_size"):
        train_mnist.check_cores({"spark.cores.max": "4", "spark.task.cpus": "2"}, 3)
    train_mnist.check_cores({"spark.cores.max": "6", "spark.task.cpus": "2"}, 3)
    train_mnist.check_cores({}, 3)  # no cap: the executors that join decide (await_executors)


def test_executors_advertise_spark_local_ip_to_tfos():
    """TFoS would ask 8.8.8.8's route; with SPARK_LOCAL_IP set (kindling's daemons set it and
    executors inherit it) importing the job makes TFoS use that address."""
    code = ("import workloads.train_mnist.main; from tensorflowonspark import util; "
            "print(util.get_ip_address())")
    advertised = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=120, env={**os.environ, "SPARK_LOCAL_IP": "10.9.8.7"})
    assert advertised.stdout.strip() == "10.9.8.7", advertised.stderr


@pytest.mark.slow
def test_tfrecord_shards_split_the_shuffled_digits(assets, tmp_path):
    data = str(assets / "datasets" / "mnist")
    (x, y), _ = load_mnist(data)
    x, y = shuffled(x, y, mnist_node.SEED)
    seen_labels = []
    for index in range(2):
        [path] = mnist_node.write_shards(data, 2, str(tmp_path), only=index)
        assert path == str(tmp_path / f"mnist-train-0000{index}-of-00002.tfrecord")
        [(images, labels)] = mnist_node.tfrecord_records(path).batch(5000).as_numpy_iterator()
        assert len(labels) == 2500
        np.testing.assert_array_equal(images, x[index::2].reshape(2500, -1))
        np.testing.assert_array_equal(labels, y[index::2])
        seen_labels.append(labels)
    # every digit class on every node: the sorted files were shuffled before sharding
    assert all(set(labels) == set(range(10)) for labels in seen_labels)


def test_a_spot_notice_ends_the_training_loop_before_the_next_step(tmp_path, monkeypatch):
    """The watcher's notice file appears mid-training: the node stops at the next step with an
    error that names its host, which its failure report carries to the driver."""
    notice_file = tmp_path / "spot-notice.json"
    monkeypatch.setenv("KINDLING_SPOT_NOTICE", str(notice_file))
    steps = []

    class Loss:
        def numpy(self):
            return [0.5, 0.9]

    def step(batches):
        steps.append(len(steps) + 1)
        if len(steps) == 3:
            notice_file.write_text('{"host": "worker-1", "address": "10.0.0.3", '
                                   '"action": "terminate", "time": "2026-12-06T18:00:00Z"}')
        return Loss()

    with pytest.raises(mnist_node.SpotInterruptionError) as stopped:
        mnist_node.train(step, None, steps=10, steps_per_epoch=2)
    assert steps == [1, 2, 3]
    assert str(stopped.value) == ("worker-1 (10.0.0.3) got a spot interruption notice: EC2 will "
                                  "terminate it at 2026-12-06T18:00:00Z")
