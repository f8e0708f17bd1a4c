"""What TensorFlowOnSpark costs per epoch: train-mnist on Spark vs the same loop in one process.

In one run on this machine: the training loop of workloads/train_mnist/node.py in a single process
(all cores), then train-mnist through TFoS (TENSORFLOW input mode, 2 executors of 1 core on a
local Spark standalone cluster, spark-submit as ops launches it), on the same digits with the
same global batch and steps per epoch. Prints their epoch times side by side and the ratio
(goal: TFoS <= 1.3x the single process). The first epoch (tracing, warm-up) counts for neither.

    python benchmarks/tfos_epoch_time.py --data ../shared/datasets/mnist [--epochs 4]

Run it inside a loopback-only network namespace to be sure nothing leaves the machine:
unshare -n sh -c 'ip link set lo up; .venv/bin/python benchmarks/tfos_epoch_time.py ...'
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from kindling import Host
from ops.local import LocalSparkCluster, free_port
from workloads.jobs import JOBS, Placement
from workloads.mnist import build_cnn
from workloads.train_mnist import node as mnist_node
from workloads.training import train_step

HOST = "127.0.0.1"


def single_process_epochs(data: str, nodes: int, batch_size: int, epochs: int,
                          scratch: str) -> list[float]:
    """Epoch seconds of mnist_node.train in this process: one shard of all digits, the
    cluster's global batch, as many steps per epoch as each TFoS node runs."""
    import keras
    import tensorflow as tf

    [shard] = mnist_node.write_shards(data, 1, scratch)
    digits = sum(1 for _ in tf.data.TFRecordDataset(shard))
    steps_per_epoch = digits // nodes // batch_size
    batches = mnist_node.batched(mnist_node.shuffled_stream(mnist_node.tfrecord_records(shard)),
                                  nodes * batch_size)
    strategy = tf.distribute.get_strategy()
    step = train_step(strategy, build_cnn(), keras.optimizers.Adam())
    trained = mnist_node.train(step, iter(batches), steps_per_epoch * epochs, steps_per_epoch)
    return [epoch.seconds for epoch in trained]


def tfos_epochs(data: str, nodes: int, batch_size: int, epochs: int, scratch: str) -> dict:
    """metrics.json of a train-mnist run on a fresh local Spark cluster of `nodes` workers."""
    output = Path(scratch, "tfos-run")
    hosts = tuple(Host(name=f"worker-{i}", hostname=HOST, privateIp=HOST) for i in range(nodes))
    with LocalSparkCluster(workers=nodes, host=HOST, base_dir=str(Path(scratch, "spark")),
                           port=free_port(), webui_port=free_port()) as cluster:
        placement = Placement(Host(name="master", hostname=HOST, privateIp=HOST), hosts, (),
                              sys.executable, cluster.master_url, cluster.spark_home,
                              spark_conf_dir=cluster.conf_dir)
        job = JOBS["train-mnist"]
        [driver] = job.plan(job, placement, ["--data", data, "--input-mode", "tensorflow",
                                             "--epochs", str(epochs), "--batch-size",
                                             str(batch_size)], str(output)).processes
        subprocess.run(driver.argv, env={**os.environ, **dict(driver.env)}, check=True,
                       timeout=1800, stdout=subprocess.DEVNULL)
    return json.loads((output / "metrics.json").read_text())


def epoch_arguments(description: str) -> argparse.Namespace:
    """The flags every epoch-time benchmark takes: data, epochs, TFoS nodes, batch size."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", required=True, help="MNIST folder (the four IDX .gz files)")
    parser.add_argument("--epochs", type=int, default=4, help="the first one is warm-up")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=64, help="per TFoS node")
    return parser.parse_args()


def main() -> None:
    args = epoch_arguments(__doc__.split("\n\n")[0])
    data = str(Path(args.data).resolve())
    with tempfile.TemporaryDirectory(prefix="tfos-bench-") as scratch:
        single = single_process_epochs(data, args.nodes, args.batch_size, args.epochs, scratch)
        metrics = tfos_epochs(data, args.nodes, args.batch_size, args.epochs, scratch)
    distributed = metrics["timings"]["epoch_seconds"]
    single_median = statistics.median(single[1:])
    tfos_median = statistics.median(distributed[1:])
    print(f"MNIST CNN, {metrics['train_digits']} digits, global batch "
          f"{args.nodes * args.batch_size}, {metrics['steps'] // args.epochs} steps per epoch, "
          f"epochs after the first (warm-up):")
    for label, seconds, median in (
            (f"single process (all {os.cpu_count()} cores)", single, single_median),
            (f"TFoS, {args.nodes} executors x 1 core", distributed, tfos_median)):
        print(f"  {label:<36}{' '.join(f'{s:6.2f}s' for s in seconds[1:])}   "
              f"median {median:6.2f}s")
    print(f"  ratio TFoS / single process: {tfos_median / single_median:.2f}x (goal <= 1.3x); "
          f"TFoS test accuracy {metrics['accuracy']:.4f}")


if __name__ == "__main__":
    main()
