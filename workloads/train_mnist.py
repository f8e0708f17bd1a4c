"""train-mnist: the chapter's TensorFlowOnSpark MNIST on Spark 4 + TensorFlow 2 + Keras 3.

spark-submit runs this file as the driver. TFCluster.run starts one TensorFlow node per Spark
executor (the first is the chief) and each node runs `main_fun`: the CNN of workloads.mnist
trained under MultiWorkerMirroredStrategy by a custom loop (Keras 3 `model.fit` breaks under
multi-worker strategies, keras#20585). Input modes:

- spark: the driver shuffles the digits into an RDD of (image, label) that TFCluster.train
  feeds to every node through TFNode.DataFeed.
- tensorflow: each node converts its shard of the MNIST folder (the same path on every host)
  into a TFRecord file in its executor folder and reads it with tf.data; the driver only
  coordinates. Faster: no feeding job, no per-row queue traffic.

--engine barrier replaces TFoS by Spark barrier mode (tensorflow input only): the nodes start
together, trade addresses with BarrierTaskContext.allGather and fail as one unit.

The chief then evaluates on the official 10k test set and writes metrics.json, model.keras and
checkpoints into --output on its host.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tensorflowonspark import util as tfos_util

from workloads.common import ArgumentParser, UserError, results_dir, run_cli, write_metrics
from workloads.jobs import JOBS
from workloads.mnist import (IMAGE_SHAPE, adam, build_cnn, load_mnist, shuffled, to_model_input,
                             training_input)

INPUT_MODES = ("spark", "tensorflow")
ENGINES = ("tfos", "barrier")
PARTITIONS_PER_NODE = 5
"""SPARK mode: partitions per node and epoch; smaller partitions waste less data at the end."""
READ_AHEAD_BATCHES = 3
"""Batches a node's tf.data pipeline may hold beyond its last step: prefetch(1), the batch the
generator is filling, one spare."""
SEED = 0


def _advertise_spark_local_ip() -> None:
    """TFoS learns a node's address from a UDP connect to 8.8.8.8 (or the hostname's address).

    On a host with several interfaces, or none routed outside, that is not the address the
    cluster uses; kindling's Spark daemons export SPARK_LOCAL_IP (the executors inherit it),
    so advertise that. Runs at import, which the executors do before TFoS asks for the address.
    """
    address = os.environ.get("SPARK_LOCAL_IP")
    if address:
        tfos_util.get_ip_address = lambda: address


_advertise_spark_local_ip()


def spellings(*flags: str) -> list[str]:
    """Each flag as the chapter spells it (--batch_size) and as fab passes it (--batch-size)."""
    return list(dict.fromkeys(f for flag in flags for f in (flag, flag.replace("_", "-"))))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="train-mnist", description=__doc__.split("\n\n")[0])
    parser.add_argument(*spellings("--data", "--data_dir"), dest="data",
                        help="MNIST folder (the four IDX .gz files) or an mnist.npz, at the same "
                             "path on every host; omit to download MNIST")
    parser.add_argument(*spellings("--input_mode"), choices=INPUT_MODES, default="spark",
                        help="spark (RDD fed through TFNode.DataFeed, the chapter's way) or "
                             "tensorflow (tf.data reads TFRecord shards; faster)")
    parser.add_argument(*spellings("--engine"), choices=ENGINES, default="tfos",
                        help="tfos (TensorFlowOnSpark, the chapter's) or barrier (Spark barrier "
                             "mode: nodes start and fail as one unit; --input_mode tensorflow)")
    parser.add_argument(*spellings("--cluster_size"), type=int,
                        help="TF nodes = Spark executors (default: from the Spark conf, or 2)")
    parser.add_argument(*spellings("--num_ps"), type=int, default=0,
                        help="parameter servers; must be 0 (all-reduce training; see train-ps)")
    parser.add_argument(*spellings("--epochs"), type=int, default=8)
    parser.add_argument(*spellings("--batch_size"), type=int, default=64, help="per node and step")
    parser.add_argument(*spellings("--steps"), type=int,
                        help="at most this many steps per node (default: --epochs of the data)")
    parser.add_argument(*spellings("--learning_rate"), type=float, default=2e-3)
    parser.add_argument(*spellings("--output"),
                        help="results folder (default runs/train-mnist-<time>)")
    parser.add_argument(*spellings("--model"),
                        help="where to export the trained model (default <output>/model.keras)")
    parser.add_argument(*spellings("--tensorboard"), action="store_true",
                        help="log to <output>/tensorboard; the tfos engine also serves "
                             "TensorBoard from the chief")
    parser.add_argument(*spellings("--startup_timeout"), type=int, default=120,
                        help="seconds to wait for the executors and the TF nodes to come up")
    parser.add_argument(*spellings("--timeout"), type=int, default=3600,
                        help="seconds the training may take before the job is stopped")
    args = parser.parse_args(argv)
    if args.engine == "barrier" and args.input_mode != "tensorflow":
        raise UserError("--engine barrier has no Spark feed: each node reads its data with "
                        "tf.data; add --input_mode tensorflow")
    if args.num_ps != 0:
        raise UserError(f"--num_ps {args.num_ps}: train-mnist trains with all-reduce "
                        "(MultiWorkerMirroredStrategy), without parameter servers; use "
                        "--num_ps 0, or the train-ps job for parameter servers")
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UserError("--tensorboard needs the tensorboard package on every host; "
                        "pip install tensorboard, or drop --tensorboard")
    for flag in ("epochs", "batch_size", "steps", "cluster_size", "startup_timeout", "timeout"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag} must be at least 1, got {value}")
    return args


# ---------------------------------------------------------------- on the executors

def main_fun(args: argparse.Namespace, ctx) -> None:
    """One TensorFlow node: train, then (chief) evaluate and write the results."""
    import tensorflow as tf

    # TF_CONFIG comes from TFoS (master_node="chief"); a collective that waits longer than
    # --timeout for a peer fails instead of hanging.
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=args.timeout))
    is_chief = ctx.job_name == "chief"
    feed = ctx.get_data_feed(train_mode=True) if args.input_mode == "spark" else None
    if feed is not None:
        records = fed_records(feed, args.batch_size)
    else:
        records = shuffled_stream(tfrecord_records(
            write_shard(args.data, ctx.executor_id, args.cluster_size, os.getcwd())))
    with strategy.scope():
        model = build_cnn()
        optimizer = adam(args.learning_rate, args.steps)
    checkpoints = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, optimizer=optimizer),
        # every node saves (variables may need syncing), only the chief's copy is kept
        str(Path(args.output) / "checkpoints") if is_chief else tempfile.mkdtemp(),
        max_to_keep=2)
    summaries = (tf.summary.create_file_writer(str(Path(args.output) / "tensorboard"))
                 if is_chief and args.tensorboard else None)
    log = f"[{ctx.job_name}:{ctx.task_index}]"

    def on_epoch(step: int, loss: float) -> None:
        checkpoints.save(checkpoint_number=step)
        if summaries:
            with summaries.as_default():
                tf.summary.scalar("loss", loss, step=step)
        print(f"{log} step {step}: loss {loss:.4f}", flush=True)

    print(f"{log} in cluster {strategy.cluster_resolver.cluster_spec().as_dict()}: training "
          f"{args.steps} steps of {args.batch_size} digits", flush=True)
    epochs = train(strategy, model, optimizer, iter(batched(records, args.batch_size)), args.steps,
                   args.steps_per_epoch, on_epoch)
    if is_chief:
        write_results(args, model, epochs)
    else:
        shutil.rmtree(checkpoints.directory, ignore_errors=True)
    # Nodes leave together, after the chief's results: TF's coordination service takes a node
    # that exits early for a crash. An all-reduce is the barrier.
    tf.function(lambda: strategy.reduce("SUM", strategy.run(lambda: tf.constant(1)), axis=None))()
    if feed is not None:
        # Only now: the driver's feeding job ends once every node stopped reading (the chief's
        # unread partition holds it), so the job cannot end while the chief writes results.
        feed.terminate()


def write_results(args: argparse.Namespace, model, epochs: list[Epoch]) -> None:
    """The chief's part: evaluate on the 10k test set, export the model, write metrics.json."""
    started = time.monotonic()
    Path(args.output).mkdir(parents=True, exist_ok=True)  # the chief may be on another host
    exported = standalone_copy(model)
    loss, accuracy, test_digits = evaluate(exported, args.data)
    evaluate_seconds = time.monotonic() - started
    Path(args.model).parent.mkdir(parents=True, exist_ok=True)
    exported.save(args.model)
    write_metrics(Path(args.output), {
        "accuracy": accuracy, "loss": loss, "final_train_loss": epochs[-1].loss,
        "engine": args.engine, "input_mode": args.input_mode, "cluster_size": args.cluster_size,
        "epochs": args.epochs, "steps": args.steps, "batch_size_per_node": args.batch_size,
        "train_digits": args.train_digits, "test_digits": test_digits, "model": args.model,
        "timings": {"train_seconds": round(sum(e.seconds for e in epochs), 2),
                    "epoch_seconds": [round(e.seconds, 2) for e in epochs],
                    "evaluate_seconds": round(evaluate_seconds, 2)},
    })
    print(f"[chief] test accuracy {accuracy:.4f}, loss {loss:.4f}", flush=True)


def fed_records(feed, batch_size: int):
    """SPARK mode: the (image, label) rows TFCluster.train pushes into this node's queue."""
    import tensorflow as tf

    def rows():
        while not feed.should_stop():
            for image, label in feed.next_batch(batch_size):
                yield image, label

    return tf.data.Dataset.from_generator(rows, output_signature=(
        tf.TensorSpec((IMAGE_SHAPE[0] * IMAGE_SHAPE[1],), tf.uint8), tf.TensorSpec((), tf.int64)))


def write_shard(data: str | None, index: int, count: int, folder: str) -> str:
    """TENSORFLOW mode's prep step: this node's slice of the shuffled training digits as a
    TFRecord file in its executor folder. The MNIST folder is at the same path on every host,
    so no node needs a shared file system (TFoS' usual HDFS)."""
    import tensorflow as tf

    (x, y), _ = load_mnist(data)
    x, y = shuffled(x, y, SEED)
    path = Path(folder, f"mnist-train-{index:05d}-of-{count:05d}.tfrecord").resolve()
    with tf.io.TFRecordWriter(str(path)) as writer:
        for image, label in zip(x[index::count], y[index::count]):
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
            })).SerializeToString())
    return str(path)


def tfrecord_records(path: str):
    """The (flat uint8 image, label) rows of a shard, in file order."""
    import tensorflow as tf

    features = {"image": tf.io.FixedLenFeature([], tf.string),
                "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        example = tf.io.parse_single_example(record, features)
        return tf.io.decode_raw(example["image"], tf.uint8), example["label"]

    return tf.data.TFRecordDataset(path).map(parse)


def shuffled_stream(records):
    """A shard's rows kept in memory, reshuffled every pass, endless (the step count stops)."""
    return records.cache().shuffle(10_000, seed=SEED).repeat()


def batched(records, batch_size: int):
    """A node's batches of model input, fed straight to its one replica (CPU).

    Not through strategy.distribute_datasets_from_function: each node already reads only its
    own data (a distributed dataset would auto-shard it again, silently dropping half), and
    the distributed iterator costs ~30 ms a step here, doubling the epoch time."""
    return records.map(training_input).batch(batch_size, drop_remainder=True).prefetch(1)


class Epoch(NamedTuple):
    loss: float
    """Mean training loss of the epoch's steps."""
    seconds: float
    """Time of its steps, on_epoch (checkpointing) not included."""


def train(strategy, model, optimizer, batches, steps: int, steps_per_epoch: int,
          on_epoch=lambda step, loss: None) -> list[Epoch]:
    """The custom training loop, every `steps_per_epoch` steps (and at the end) an Epoch."""
    import keras
    import tensorflow as tf

    per_digit_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

    @tf.function
    def train_step(iterator):
        def replica_step(images, labels):
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                loss = tf.nn.compute_average_loss(per_digit_loss(labels, logits))
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return loss

        losses = strategy.run(replica_step, args=next(iterator))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    epochs, running, started = [], [], time.monotonic()
    for step in range(1, steps + 1):
        running.append(float(train_step(batches)))
        if step % steps_per_epoch == 0 or step == steps:
            epochs.append(Epoch(sum(running) / len(running), time.monotonic() - started))
            on_epoch(step, epochs[-1].loss)
            running, started = [], time.monotonic()
    return epochs


def standalone_copy(model):
    """The trained weights in a model outside the strategy: what gets evaluated and saved."""
    copy = build_cnn()
    copy.set_weights(model.get_weights())
    return copy


def evaluate(model, data: str | None) -> tuple[float, float, int]:
    """(loss, accuracy, digits) on the official 10k test set."""
    import keras

    _, (x_test, y_test) = load_mnist(data)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    loss, accuracy = model.evaluate(to_model_input(x_test), y_test, batch_size=1000, verbose=0)
    return float(loss), float(accuracy), len(y_test)


# ---------------------------------------------------------------- on the driver

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
    argv = JOBS["train-mnist"].with_offline_defaults(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.data:
        args.data = str(Path(args.data).expanduser().resolve())
    (x_train, y_train), _ = load_mnist(args.data)  # a bad --data fails here, before Spark
    output = results_dir(args.output, "train-mnist").resolve()
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
    sc = SparkContext(conf=conf)
    app_id, started = sc.applicationId, time.monotonic()
    print(f"train-mnist: {args.cluster_size} TF nodes ({args.engine}), {args.input_mode} input, "
          f"{args.steps} steps per node; Spark application {app_id}", flush=True)
    try:
        await_executors(sc, args.cluster_size, args.startup_timeout)
        if args.engine == "barrier":
            run_barrier(sc, args)
        else:
            run_tfos(sc, args, x_train, y_train)
    except UserError:
        raise
    except (Exception, SystemExit) as exc:  # a failed node, or --timeout
        print(f"error: training failed on the cluster: {cluster_failure(exc, args)}; the nodes' "
              f"full output is in the executors' stderr files (Spark worker dir, {app_id})",
              file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        sc.stop()
    report(output, time.monotonic() - started)


def run_tfos(sc, args: argparse.Namespace, x_train: np.ndarray, y_train: np.ndarray) -> None:
    """The chapter's way: TFoS reserves the nodes, starts main_fun on them, feeds SPARK mode."""
    from tensorflowonspark import TFCluster

    # the reservation server must listen where the executors can reach it
    os.environ.setdefault("TFOS_SERVER_HOST", os.environ.get("SPARK_LOCAL_IP")
                          or sc.getConf().get("spark.driver.host"))
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


class BarrierNode(NamedTuple):
    """What main_fun needs of TFoS' node context, in barrier mode."""
    job_name: str
    task_index: int
    executor_id: int


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


def barrier_node(args: argparse.Namespace):
    """One node: trade addresses with the others (allGather), then TF_CONFIG and main_fun."""
    from pyspark import BarrierTaskContext

    context = BarrierTaskContext.get()
    with socket.socket() as probe:  # a free port for this node's TF server
        probe.bind(("", 0))
        address = f"{tfos_util.get_ip_address()}:{probe.getsockname()[1]}"
    addresses = context.allGather(address)
    index = context.partitionId()
    node = BarrierNode("chief" if index == 0 else "worker", max(index - 1, 0), index)
    cluster = {"chief": addresses[:1], **({"worker": addresses[1:]} if len(addresses) > 1 else {})}
    os.environ["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {
        "type": node.job_name, "index": node.task_index}})
    main_fun(args, node)
    yield index


def cluster_failure(exc: BaseException, args: argparse.Namespace) -> str:
    """One line on why the cluster part failed."""
    from tensorflowonspark import TFCluster

    if "error" in TFCluster.tf_status:  # TFoS' record of a failed node
        return failure_reason(TFCluster.tf_status["error"])
    if isinstance(exc, (SystemExit, TimeoutError)):  # TFoS' or barrier mode's --timeout alarm
        return f"no result within --timeout {args.timeout}s"
    return failure_reason(str(exc))


def failure_reason(message: str) -> str:
    """The last `SomeError: ...` line of a (Python-in-Java) traceback, else its first line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)
              and not line.startswith(("org.apache.", "java.", "py4j."))]
    return (errors[-1] if errors else lines[0] if lines else "unknown")[:300]


def report(output: Path, seconds: float) -> None:
    """What the user reads last: accuracy when the chief wrote here (local target), the folder."""
    metrics = output / "metrics.json"
    if metrics.is_file():
        accuracy = json.loads(metrics.read_text())["accuracy"]
        print(f"test accuracy: {accuracy:.4f} (10k official MNIST test digits), "
              f"cluster time {seconds:.0f}s", flush=True)
    print(f"results: {output}", flush=True)


if __name__ == "__main__":
    # Run through the importable module, not __main__: cloudpickle then ships main_fun by
    # reference, so each executor imports workloads.train_mnist (and its address fix) first.
    from workloads.train_mnist import main as module_main

    run_cli(module_main)
