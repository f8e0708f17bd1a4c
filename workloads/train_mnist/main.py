"""train-mnist: the chapter's TensorFlowOnSpark MNIST on Spark 4 + TensorFlow 2 + Keras 3.

spark-submit runs this file (the job's declared module) as the driver. TFCluster.run starts one
TensorFlow node per Spark executor (the first is the chief) and each node runs `main_fun`
(workloads.train_mnist.node): the CNN trained under MultiWorkerMirroredStrategy by a custom
loop (Keras 3 `model.fit` breaks under multi-worker strategies, keras#20585). Input modes:

- spark: the driver shuffles the digits into an RDD of (image, label) that TFCluster.train
  feeds to every node through TFNode.DataFeed.
- tensorflow: each node reads its TFRecord shard with tf.data; the driver only coordinates.
  Faster: no feeding job, no per-row queue traffic. With --data in the cluster's storage
  (HDFS, S3) the driver writes the shards there once and each node fetches its own;
  with a local folder (the same path on every host) each node makes its shard itself.

--engine barrier replaces TFoS by Spark barrier mode (tensorflow input only): the nodes start
together, trade addresses with BarrierTaskContext.allGather and fail as one unit.

The chief then evaluates on the official 10k test set and writes metrics.json, model.keras and
checkpoints into --output on its host.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
from kindling import UserError
from workloads import stored
from workloads.common import results_dir, run_cli
from workloads.mnist import load_mnist, shuffled
from workloads.stored import is_uri
from workloads.train_mnist.job import JOB
from workloads.train_mnist.node import (READ_AHEAD_BATCHES, SEED, barrier_node, main_fun,
                                        stored_shards)
from workloads.train_mnist.node_reports import NodeReports, error_line

PARTITIONS_PER_NODE = 5
"""SPARK mode: partitions per node and epoch; smaller partitions waste less data at the end."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The job's flags (its declaration, workloads.train_mnist.job), in the chapter's spellings
    too, checked."""
    return JOB.parse(argv, JOB.parser(description=__doc__.split("\n\n")[0]))


def plan_steps(args: argparse.Namespace, train_digits: int) -> tuple[int, int]:
    """(steps, steps per epoch) per node, a little under the data each node will receive.

    MultiWorkerMirroredStrategy steps all nodes together: a node that runs out of data first
    would block the others forever. TENSORFLOW shards are equal. SPARK partitions go to
    whichever node is free, so the last partition may land on any node: keep one partition
    per node in reserve, plus what tf.data reads ahead. The reserve also keeps data unread in the
    chief's queue at the end, which is what keeps the job alive while the chief writes results.
    """
    nodes = args.cluster_size
    if args.input_mode == "tensorflow":
        per_epoch = train_digits // nodes // args.batch_size
        planned = per_epoch * args.epochs
    else:
        partition = math.ceil(train_digits / (nodes * PARTITIONS_PER_NODE))
        reserve = nodes * (partition + READ_AHEAD_BATCHES * args.batch_size)
        planned = (train_digits * args.epochs - reserve) // (nodes * args.batch_size)
        per_epoch = max(1, math.ceil(planned / args.epochs))
    if planned < 1:
        raise UserError(f"{train_digits} training digits are too few for {nodes} nodes with "
                        f"--batch_size {args.batch_size}; lower --batch_size or raise --epochs")
    steps = min(planned, args.steps) if args.steps else planned
    return steps, min(per_epoch, steps)


def default_cluster_size(conf) -> int:
    """Executors the Spark conf asks for: spark.executor.instances, else cores.max / task.cpus."""
    if conf.get("spark.executor.instances"):
        return int(conf.get("spark.executor.instances"))
    if conf.get("spark.cores.max"):
        return int(conf.get("spark.cores.max")) // int(conf.get("spark.task.cpus", "1"))
    return 2


def check_cores(conf, wanted: int) -> None:
    """A cores.max that cannot give one executor per TF node fails at once."""
    cores_max, task_cpus = conf.get("spark.cores.max"), int(conf.get("spark.task.cpus", "1"))
    if cores_max and int(cores_max) // task_cpus < wanted:
        raise UserError(f"--cluster_size {wanted} needs {wanted} executors but spark.cores.max="
                        f"{cores_max} with spark.task.cpus={task_cpus} allows "
                        f"{int(cores_max) // task_cpus}; lower --cluster_size or raise "
                        "spark.cores.max")


def await_executors(sc, wanted: int, timeout: int) -> None:
    """Fail with the fix instead of letting TFoS wait for nodes that can never start."""
    deadline = time.monotonic() + timeout
    while (joined := len(sc._jsc.sc().statusTracker().getExecutorInfos()) - 1) < wanted:
        if time.monotonic() > deadline:  # the list above includes the driver, hence the - 1
            raise UserError(f"--cluster_size {wanted} but only {joined} Spark executors joined "
                            f"within {timeout}s; the cluster has too few free cores (one "
                            "executor per TF node): lower --cluster_size or add workers")
        time.sleep(1)


def training_rdd(sc, x: np.ndarray, y: np.ndarray, nodes: int):
    """SPARK mode input: shuffled (flat uint8 image, label) rows."""
    x, y = shuffled(x, y, SEED)
    rows = list(zip(x.reshape(len(x), -1), y.astype(np.int64).tolist()))
    return sc.parallelize(rows, nodes * PARTITIONS_PER_NODE)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    for flag in ("data", "resume"):  # the nodes run in other folders
        value = getattr(args, flag)
        if value and not is_uri(value):
            setattr(args, flag, str(Path(value).expanduser().resolve()))
    args.run_store = stored.run_store()  # where the chief keeps its checkpoints for a resume
    (x_train, y_train), _ = load_mnist(args.data)  # a bad --data fails here, before Spark
    output = results_dir(args.output, JOB.name).resolve()
    args.output = str(output)
    args.model = str(Path(args.model).expanduser().resolve() if args.model
                     else output / "model.keras")
    args.train_digits = len(x_train)

    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # joins spark-submit's JVM: SparkConf() sees its --conf
    conf = SparkConf().setAppName("kindling train-mnist")
    if not conf.contains("spark.master"):
        raise UserError("no Spark master: launch train-mnist with spark-submit --master "
                        "spark://HOST:7077 (`fab run train-mnist` does)")
    args.cluster_size = args.cluster_size or default_cluster_size(conf)
    check_cores(conf, args.cluster_size)
    args.steps, args.steps_per_epoch = plan_steps(args, args.train_digits)
    args.shards = (stored_shards(args.data, args.cluster_size) if args.input_mode == "tensorflow"
                   and args.data and is_uri(args.data) else None)
    sc = SparkContext(conf=conf)
    app_id, started = sc.applicationId, time.monotonic()
    print(f"train-mnist: {args.cluster_size} TF nodes ({args.engine}), {args.input_mode} input, "
          f"{args.steps} steps per node; Spark application {app_id}", flush=True)
    # the executors must reach what the driver serves: TFoS' reservation server, the collector
    driver_address = os.environ.get("SPARK_LOCAL_IP") or conf.get("spark.driver.host")
    with NodeReports(driver_address) as reports:
        args.node_reports = reports.address
        try:
            await_executors(sc, args.cluster_size, args.startup_timeout)
            if args.engine == "barrier":
                run_barrier(sc, args)
            else:
                run_tfos(sc, args, x_train, y_train, driver_address)
        except UserError:
            raise
        except (Exception, SystemExit) as exc:  # a failed node, or --timeout
            print(f"error: training failed on the cluster: {cluster_failure(exc, args, reports)}"
                  "; the nodes' full output is in the executors' stderr files (Spark worker dir, "
                  f"{app_id})", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        finally:
            sc.stop()
    report(output, time.monotonic() - started)


def run_tfos(sc, args: argparse.Namespace, x_train: np.ndarray, y_train: np.ndarray,
             driver_address: str) -> None:
    """The chapter's way: TFoS reserves the nodes, starts main_fun on them, feeds SPARK mode."""
    from tensorflowonspark import TFCluster

    os.environ.setdefault("TFOS_SERVER_HOST", driver_address)  # TFoS' reservation server
    spark_mode = args.input_mode == "spark"
    input_mode = TFCluster.InputMode.SPARK if spark_mode else TFCluster.InputMode.TENSORFLOW
    log_dir = str(Path(args.output) / "tensorboard") if args.tensorboard else None
    cluster = TFCluster.run(sc, main_fun, args, args.cluster_size, args.num_ps, args.tensorboard,
                            input_mode, log_dir=log_dir, master_node="chief",
                            reservation_timeout=args.startup_timeout)
    if args.tensorboard:
        print(f"tensorboard: {cluster.tensorboard_url()}", flush=True)
    if spark_mode:
        cluster.train(training_rdd(sc, x_train, y_train, args.cluster_size), args.epochs,
                      feed_timeout=args.timeout)
    cluster.shutdown(timeout=args.timeout)
    signal.alarm(0)  # TFoS leaves its shutdown alarm armed


def run_barrier(sc, args: argparse.Namespace) -> None:
    """Spark barrier mode: every node's task starts at once or none does, and one failing task
    fails them all; no reservation server, no feeding job, no polling."""
    def on_timeout(*_):
        raise TimeoutError(f"--timeout {args.timeout}s")

    signal.signal(signal.SIGALRM, on_timeout)
    signal.alarm(args.timeout)
    nodes = sc.parallelize(range(args.cluster_size), args.cluster_size).barrier()
    nodes.mapPartitions(lambda _: barrier_node(args)).collect()
    signal.alarm(0)


def cluster_failure(exc: BaseException, args: argparse.Namespace,
                    reports: NodeReports) -> str:
    """One line on why the cluster part failed: the node that failed first, when one said so
    (not a peer that failed because it lost that node), else what Spark or TFoS saw."""
    from tensorflowonspark import TFCluster

    first = reports.first_failure(args.cluster_size)
    if first:
        return f"{first.node} failed first: {first.error}"
    if "error" in TFCluster.tf_status:  # TFoS' record of a failed node
        return error_line(TFCluster.tf_status["error"])
    if isinstance(exc, (SystemExit, TimeoutError)):  # TFoS' or barrier mode's --timeout alarm
        return f"no result within --timeout {args.timeout}s"
    return error_line(str(exc))


def report(output: Path, seconds: float) -> None:
    """What the user reads last: accuracy when the chief wrote here (local target), the folder."""
    metrics = output / "metrics.json"
    if metrics.is_file():
        accuracy = json.loads(metrics.read_text())["accuracy"]
        print(f"test accuracy: {accuracy:.4f} (10k official MNIST test digits), "
              f"cluster time {seconds:.0f}s", flush=True)
    print(f"results: {output}", flush=True)


def cli() -> None:
    """What spark-submit of this file runs (and `python -m workloads.train_mnist`): main() with
    one-line errors."""
    run_cli(main)


if __name__ == "__main__":
    cli()
