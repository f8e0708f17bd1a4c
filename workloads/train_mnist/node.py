"""train-mnist on the executors: one TensorFlow node (TFoS' main_fun, or a barrier task).

Each node trains the CNN of workloads.mnist under MultiWorkerMirroredStrategy with the shared
training step (workloads.training); the chief then evaluates on the official 10k test set and
writes metrics.json, model.keras and checkpoints into --output on its host. The driver side is
workloads.train_mnist.main.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from tensorflowonspark import util as tfos_util

from workloads import stored
from workloads.common import SpotInterruptionError, spot_notice, write_metrics
from workloads.mnist import IMAGE_SHAPE, adam, build_cnn, load_mnist, shuffled, training_input
from workloads.train_mnist.node_reports import report_failure, report_progress
from workloads.training import (Epoch, barrier, epoch_of, evaluate_and_export, log_epoch,
                                plot_training_curve, resumed_checkpoint, store_checkpoints,
                                summary_writer, train_step)

SEED = 0
SHARDS_DONE = "_SUCCESS"
"""Written last beside stored shards (as Hadoop marks a finished output): they are complete."""
READ_AHEAD_BATCHES = 3
"""Batches a node's tf.data pipeline may hold beyond its last step: prefetch(1), the batch the
generator is filling, one spare."""


def _advertise_spark_local_ip() -> None:
    """TFoS learns a node's address from a UDP connect to 8.8.8.8 (or the hostname's address).

    On a host with several interfaces, or none routed outside, that is not the address the
    cluster uses; kindling's Spark daemons export SPARK_LOCAL_IP (the executors inherit it),
    so advertise that. Runs at import: executors unpickle main_fun (shipped by reference to this
    module) and so import this module before TFoS' node wrapper asks for the address.
    """
    address = os.environ.get("SPARK_LOCAL_IP")
    if address:
        tfos_util.get_ip_address = lambda: address


_advertise_spark_local_ip()

AUTHKEY = re.compile(r"""'authkey': b(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
"""The multiprocessing authkey of a node's TFManager in TFoS' log lines: `'authkey': b'...'`."""


class RedactAuthkeys(logging.Filter):
    """TFoS logs every node's manager authkey (driver and executors, INFO), which lets anyone
    who reads the logs drive that node's queues. The logs are kept in run folders: redact it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "'authkey'" in message:
            record.msg, record.args = AUTHKEY.sub("'authkey': <redacted>", message), None
        return True


def _redact_tfos_authkeys() -> None:
    """At import, like the address patch: before TFoS logs a node's reservation."""
    for module in ("TFCluster", "TFSparkNode"):
        logger = logging.getLogger(f"tensorflowonspark.{module}")
        if not any(isinstance(f, RedactAuthkeys) for f in logger.filters):
            logger.addFilter(RedactAuthkeys())


_redact_tfos_authkeys()


def main_fun(args: argparse.Namespace, ctx) -> None:
    """One TensorFlow node; its failure is reported to the driver, which names the first."""
    try:
        run_node(args, ctx)
    except BaseException as exc:
        report_failure(getattr(args, "node_reports", None), ctx.job_name, ctx.task_index, exc)
        raise


def run_node(args: argparse.Namespace, ctx) -> None:
    """Train, then (chief) evaluate and write the results."""
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
        records = shuffled_stream(tfrecord_records(node_shard(args, ctx.executor_id)))
    with strategy.scope():
        model = build_cnn()
        optimizer = adam(args.learning_rate, args.steps)
        optimizer.build(model.trainable_variables)  # its slots exist to be restored into
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    checkpoints = tf.train.CheckpointManager(
        checkpoint,
        # every node saves (variables may need syncing), only the chief's copy is kept
        str(Path(args.output) / "checkpoints") if is_chief else tempfile.mkdtemp(),
        max_to_keep=2)
    summaries = summary_writer(Path(args.output)) if is_chief else None
    log = f"[{ctx.job_name}:{ctx.task_index}]"
    args.first_step = 0
    if args.resume:  # every node restores the same checkpoint, saved as ckpt-<step>
        latest = resumed_checkpoint(args.resume)
        checkpoint.restore(latest)
        args.first_step = int(latest.rsplit("-", 1)[1])
        print(f"{log} resumed at step {args.first_step} of {args.steps}", flush=True)

    def on_epoch(step: int, epoch: Epoch) -> None:
        checkpoints.save(checkpoint_number=step)
        if is_chief and args.run_store:  # where a later run resumes from, whatever host
            store_checkpoints(checkpoints.directory, args.run_store)
        if summaries:
            log_epoch(summaries, step, epoch)
        print(f"{log} step {step}: loss {epoch.loss:.4f}, accuracy {epoch.accuracy:.4f}",
              flush=True)
        if is_chief:
            report_progress(getattr(args, "node_reports", None), epoch_line(args, step, epoch))

    print(f"{log} in cluster {strategy.cluster_resolver.cluster_spec().as_dict()}: training "
          f"{args.steps} steps of {args.batch_size} digits", flush=True)
    epochs = train(train_step(strategy, model, optimizer), iter(batched(records, args.batch_size)),
                   args.steps, args.steps_per_epoch, on_epoch, args.first_step)
    if is_chief:
        write_results(args, model, epochs)
    else:
        shutil.rmtree(checkpoints.directory, ignore_errors=True)
    barrier(strategy)  # nodes leave together, after the chief's results
    if feed is not None:
        # Only now: the driver's feeding job ends once every node stopped reading (the chief's
        # unread partition holds it), so the job cannot end while the chief writes results.
        feed.terminate()


def epoch_line(args: argparse.Namespace, step: int, epoch: Epoch) -> str:
    """As train-ps and Keras print an epoch: `epoch 2/8: loss 0.4123, accuracy 0.8812 (13.2s)`."""
    return (f"epoch {math.ceil(step / args.steps_per_epoch)}/"
            f"{math.ceil(args.steps / args.steps_per_epoch)}: loss {epoch.loss:.4f}, "
            f"accuracy {epoch.accuracy:.4f} ({epoch.seconds:.1f}s)")


def write_results(args: argparse.Namespace, model, epochs: list[Epoch]) -> None:
    """The chief's part: evaluate on the 10k test set, export the model, write metrics.json."""
    started = time.monotonic()
    Path(args.output).mkdir(parents=True, exist_ok=True)  # the chief may be on another host
    _, test_set = load_mnist(args.data)
    loss, accuracy = evaluate_and_export(model.get_weights(), test_set, Path(args.model))
    write_metrics(Path(args.output), {
        "accuracy": accuracy, "loss": loss,
        "final_train_loss": epochs[-1].loss if epochs else None,
        "engine": args.engine, "input_mode": args.input_mode, "cluster_size": args.cluster_size,
        "epochs": args.epochs, "steps": args.steps, "batch_size_per_node": args.batch_size,
        "train_digits": args.train_digits, "test_digits": len(test_set[1]), "model": args.model,
        "resumed_at_step": args.first_step,
        "history": {"loss": [e.loss for e in epochs], "accuracy": [e.accuracy for e in epochs]},
        "timings": {"train_seconds": round(sum(e.seconds for e in epochs), 2),
                    "epoch_seconds": [round(e.seconds, 2) for e in epochs],
                    "evaluate_seconds": round(time.monotonic() - started, 2)},
    })
    if epochs:  # none when resuming a run that had finished
        plot_training_curve(epochs, Path(args.output) / "training_curve.png")
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


def shard_name(index: int, count: int) -> str:
    return f"mnist-train-{index:05d}-of-{count:05d}.tfrecord"


def write_shards(data: str | None, count: int, folder: str, only: int | None = None) -> list[str]:
    """TENSORFLOW mode's prep step: the shuffled training digits dealt into `count` TFRecord
    files in folder (or only the `only`-th of them); their paths."""
    import tensorflow as tf

    (x, y), _ = load_mnist(data)
    x, y = shuffled(x, y, SEED)
    paths = []
    for index in range(count) if only is None else (only,):
        path = Path(folder, shard_name(index, count)).resolve()
        with tf.io.TFRecordWriter(str(path)) as writer:
            for image, label in zip(x[index::count], y[index::count]):
                writer.write(tf.train.Example(features=tf.train.Features(feature={
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                })).SerializeToString())
        paths.append(str(path))
    return paths


def stored_shards(data: str, count: int) -> str:
    """With --data in the cluster's storage, the driver deals the digits into TFRecord shards
    stored beside it, once per version of the data and node count (TFoS' usual layout: the
    nodes read their files from the shared file system); the shards' location."""
    key = hashlib.sha256(repr((stored.fingerprint(data), count, SEED)).encode()).hexdigest()[:12]
    location = f"{data.rstrip('/')}_tfrecords/{key}"
    if stored.exists(stored.join(location, SHARDS_DONE)):
        print(f"train-mnist: TFRecord shards already in {location}", flush=True)
        return location
    with tempfile.TemporaryDirectory() as folder:
        write_shards(data, count, folder)
        stored.copy(folder, location)
        Path(folder, SHARDS_DONE).touch()
        stored.copy(str(Path(folder, SHARDS_DONE)), stored.join(location, SHARDS_DONE))
    print(f"train-mnist: {count} TFRecord shards written to {location}", flush=True)
    return location


def node_shard(args: argparse.Namespace, index: int) -> str:
    """This node's TFRecord file, local: read from the stored shards, else made from --data
    (the same folder on every host, so no node needs a shared file system)."""
    if getattr(args, "shards", None):
        return stored.local_copy(stored.join(args.shards, shard_name(index, args.cluster_size)),
                                 os.getcwd())
    return write_shards(args.data, args.cluster_size, os.getcwd(), only=index)[0]


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


def train(step, batches, steps: int, steps_per_epoch: int,
          on_epoch=lambda step, epoch: None, first_step: int = 0) -> list[Epoch]:
    """The custom training loop: step(batches) for steps first_step + 1 .. steps, every
    `steps_per_epoch` steps (and at the end) an Epoch and on_epoch. A spot interruption notice for this host ends it
    before the next step, so the job fails naming this node, not the peers that lose it."""
    epochs, running, started = [], [], time.monotonic()
    for number in range(first_step + 1, steps + 1):
        notice = spot_notice()
        if notice:
            raise SpotInterruptionError(notice)
        running.append(step(batches).numpy())
        if number % steps_per_epoch == 0 or number == steps:
            epochs.append(epoch_of(running, time.monotonic() - started))
            on_epoch(number, epochs[-1])
            running, started = [], time.monotonic()
    return epochs


class BarrierNode(NamedTuple):
    """What main_fun needs of TFoS' node context, in barrier mode."""
    job_name: str
    task_index: int
    executor_id: int


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


