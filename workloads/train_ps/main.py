"""train-ps: the MNIST CNN trained by a TensorFlow cluster, the book chapter's ps/worker setup.

One program for every process: ``python -m workloads.train_ps ROLE INDEX --cluster-spec
spec.json [flags]`` (or --ps-hosts/--worker-hosts/--chief-host, or TF_CONFIG); fab starts this
module, the job's declared one, as ``python -m workloads.train_ps.main``.

--strategy ps (default): each ps and worker runs a tf.distribute.Server; the chief trains
asynchronously with ParameterServerStrategy and a ClusterCoordinator. --strategy sync: every
worker (and the chief, if any) trains with MultiWorkerMirroredStrategy. Keras 3's model.fit
supports neither (keras#20585), hence the custom training loop.

Lifecycle: the chief fails with one line naming the task when a peer is not up within
--timeout or dies (peer_watch). When it is done it tells each server so with a file op run
on that server; a server exits 0 on that file and 1 when the chief disappears without it.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from kindling import UserError
from workloads import stored
from workloads.common import results_dir, run_cli, write_metrics
from workloads.mnist import adam, build_cnn, load_mnist, shuffled, training_input
from workloads.train_ps.job import JOB
from workloads.train_ps.peer_watch import PROBE_SECONDS, PeerWatch, exit_now
from workloads.train_ps.tf_cluster import (ROLES, ClusterSpec, Task, check_task, cluster_spec,
                                           describe, host_list, load_cluster_spec,
                                           parse_tf_config, reachable, split_address, tasks,
                                           tf_error_line, validate_cluster_spec)
from workloads.training import (Epoch, barrier, epoch_of, evaluate_and_export, log_epoch,
                                plot_training_curve, resumed_checkpoint, store_checkpoints,
                                summary_writer, train_step)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The job's flags (its declaration, workloads.train_ps.job) plus the task this process is
    and its cluster."""
    parser = JOB.parser(prog="python -m workloads.train_ps", description=__doc__.split("\n")[0])
    parser.add_argument("role", nargs="?", help=f"one of {', '.join(ROLES)} "
                        "(default: TF_CONFIG's task)")
    parser.add_argument("index", nargs="?", type=int, help="task index within the role")
    cluster = parser.add_argument_group("cluster (one of these, else TF_CONFIG)")
    cluster.add_argument("--cluster-spec", metavar="FILE.json",
                         help='{"chief": ["host:port"], "worker": [...], "ps": [...]}')
    cluster.add_argument("--ps-hosts", default="", help="host:port,host:port")
    cluster.add_argument("--worker-hosts", default="", help="host:port,host:port")
    cluster.add_argument("--chief-host", default="", help="host:port")
    return JOB.parse(argv, parser)


def resolve_cluster(args: argparse.Namespace, environ=os.environ) -> tuple[ClusterSpec, str, int]:
    """(validated spec, role, index) from the flags, the positional task and TF_CONFIG."""
    host_flags = args.ps_hosts or args.worker_hosts or args.chief_host
    tf_config = environ.get("TF_CONFIG")
    if args.cluster_spec and host_flags:
        raise UserError("give the cluster once: --cluster-spec or the --*-hosts flags, not both")
    if args.cluster_spec:
        raw = load_cluster_spec(args.cluster_spec)
    elif host_flags:
        raw = cluster_spec(workers=host_list(args.worker_hosts), ps=host_list(args.ps_hosts),
                           chief=args.chief_host or None)
    elif tf_config:
        raw, _ = parse_tf_config(tf_config)
    else:
        raise UserError("no cluster given; pass --cluster-spec FILE.json, or --worker-hosts "
                        "(with --ps-hosts and --chief-host), or set TF_CONFIG")
    spec = validate_cluster_spec(raw, args.strategy)
    if args.role is not None:
        if args.index is None:
            raise UserError(f"give the task index after the role, e.g. `{args.role} 0`")
        role, index = args.role, args.index
    else:
        _, task = parse_tf_config(tf_config) if tf_config else (None, None)
        if task is None:
            raise UserError("no task given; pass the role and index (e.g. `worker 1`) or set "
                            "TF_CONFIG's task")
        role, index = task
    check_task(spec, role, index)
    return spec, role, index


def trainers(spec: ClusterSpec, strategy: str) -> list[Task]:
    """The tasks that run the training loop: the chief (ps), or the chief and workers (sync)."""
    if strategy == "ps":
        return [("chief", 0)]
    return [(role, index) for role, index, _ in tasks(spec) if role != "ps"]


def is_chief(spec: ClusterSpec, role: str, index: int) -> bool:
    """The task that writes the results: the chief, else worker 0 (TF's convention)."""
    return role == "chief" or ("chief" not in spec and (role, index) == ("worker", 0))


def done_file(args: argparse.Namespace, spec: ClusterSpec, role: str, index: int) -> Path:
    """Where the chief's file op lands on a server to end it: beside the cluster spec (the run's
    folder on every host), else in the server's working directory; the port keeps apart
    tasks that share a host."""
    folder = Path(args.cluster_spec).parent if args.cluster_spec else Path()
    return folder / f".{JOB.name}-{role}-{index}-{split_address(spec[role][index], role)[1]}.done"


def serve(spec: ClusterSpec, role: str, index: int, args: argparse.Namespace) -> None:
    """A ps or worker: serve until the chief's done file appears; fail if the chief vanishes."""
    import tensorflow as tf

    done = done_file(args, spec, role, index)
    done.unlink(missing_ok=True)
    # TF's guide: with fewer cores than workers + 1, servers deadlock on too few inter-op threads.
    inter_op = max(os.cpu_count() or 1, len(spec["worker"]) + 1)
    config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=inter_op,
                                      intra_op_parallelism_threads=args.threads)
    tf.distribute.Server(tf.train.ClusterSpec(spec), job_name=role, task_index=index,
                         protocol="grpc", config=config, start=True)
    print(f"{describe(spec, role, index)}: serving, waiting for the chief", flush=True)
    watch = PeerWatch(spec, [("chief", 0)], args.timeout, formed=True)
    while not done.exists():
        problem = watch.problem()
        if problem and not done.exists():
            exit_now(1, f"{problem}; stopping {role} {index}")
        time.sleep(PROBE_SECONDS)
    done.unlink(missing_ok=True)
    print(f"{role} {index}: the chief is done", flush=True)
    # Leave after the chief: until it exits it may still talk to us (drop remote functions).
    chief, deadline = spec["chief"][0], time.monotonic() + args.timeout
    while reachable(chief) and time.monotonic() < deadline:
        time.sleep(PROBE_SECONDS / 4)


def dataset_fn(tf, images, labels, batch_size: int):
    """Per input pipeline: its shard of the uint8 digits, shuffled, repeated, shifted, batched."""
    def make(context):
        dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype("int64")))
        dataset = dataset.shard(context.num_input_pipelines, context.input_pipeline_id)
        dataset = dataset.shuffle(len(images)).repeat()  # each worker its own order
        dataset = dataset.map(training_input)
        dataset = dataset.batch(context.get_per_replica_batch_size(batch_size))
        return dataset.prefetch(2)
    return make


def join_cluster(tf, spec: ClusterSpec, role: str, index: int, args: argparse.Namespace):
    """(strategy, coordinator or None) once the cluster has formed; PeerWatch guards the wait."""
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(spec), task_type=role, task_id=index, rpc_layer="grpc")
    if args.strategy == "ps":
        strategy = tf.distribute.ParameterServerStrategy(resolver)
        return strategy, tf.distribute.coordinator.ClusterCoordinator(strategy)
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=args.timeout)
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                     communication_options=options), None


class Training(NamedTuple):
    """What the training loop of one trainer works with, once its cluster formed."""
    strategy: object
    coordinator: object | None
    """ParameterServerStrategy's ClusterCoordinator; None under MultiWorkerMirroredStrategy."""
    model: object
    optimizer: object
    epoch: object
    """A tf.Variable: the last epoch done, checkpointed with the model and the optimizer."""
    manager: object
    """The tf.train.CheckpointManager of checkpoint_dir."""
    checkpoint_dir: Path
    steps_per_epoch: int


def train(spec: ClusterSpec, role: str, index: int, args: argparse.Namespace,
          started: float) -> None:
    """The training loop of the chief (ps) or of every trainer (sync); the chief writes results."""
    (x_train, y_train), test_set = load_mnist(args.data)
    x_train, y_train = shuffled(x_train, y_train)
    chief = is_chief(spec, role, index)
    output = results_dir(args.output, JOB.name) if chief else None
    steps_per_epoch = args.steps_per_epoch or math.ceil(len(x_train) / args.batch_size)

    import tensorflow as tf

    stop_watching, strategy, coordinator = form_cluster(tf, spec, role, index, args,
                                                        steps_per_epoch)
    training = training_state(tf, strategy, coordinator, args, steps_per_epoch, output)
    iterator = distributed_batches(tf, training, x_train, y_train, args.batch_size)
    step = train_step(strategy, training.model, training.optimizer,
                      global_batch_size=args.batch_size)
    summaries = summary_writer(output) if chief else None

    first_epoch = int(training.epoch.numpy())
    train_started = time.monotonic()
    try:
        epochs = run_epochs(training, step, iterator, first_epoch, args, chief, summaries)
        train_seconds = time.monotonic() - train_started
        if chief:
            if epochs:
                plot_training_curve(epochs, output / "training_curve.png", first_epoch + 1)
            evaluate_and_save(training.model.get_weights(), test_set, output, training_metrics(
                args, spec, epochs, first_epoch, steps_per_epoch, len(x_train),
                {"startup": train_started - started, "train": train_seconds}))
        else:
            shutil.rmtree(training.checkpoint_dir, ignore_errors=True)
        if coordinator:
            stop_watching.set()  # the servers leave once released
            release_servers(tf, args, spec)
        else:
            barrier(strategy)
            stop_watching.set()
    except tf.errors.OpError as exc:
        exit_now(1, tf_error_line(spec, exc.message, (role, index)))
    print(f"{describe(spec, role, index)}: done in {time.monotonic() - started:.1f}s", flush=True)


def form_cluster(tf, spec: ClusterSpec, role: str, index: int, args: argparse.Namespace,
                 steps_per_epoch: int):
    """(the peer watch's stop event, strategy, coordinator or None): this trainer in its
    formed cluster, its peers watched from now on."""
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    peers = [(r, i) for r, i, _ in tasks(spec) if (r, i) != (role, index)]
    watch = PeerWatch(spec, peers, args.timeout)
    stop_watching = watch.watch_in_background()
    strategy, coordinator = join_cluster(tf, spec, role, index, args)
    watch.formed()
    print(f"{describe(spec, role, index)}: cluster formed ({args.strategy}), "
          f"{steps_per_epoch} steps/epoch", flush=True)
    return stop_watching, strategy, coordinator


def training_state(tf, strategy, coordinator, args: argparse.Namespace, steps_per_epoch: int,
                   output: Path | None) -> Training:
    """The model, its optimizer and the epoch counter under the strategy, restored from the
    last checkpoint of --resume's run, or of --output's when rerun into the same folder."""
    with strategy.scope():
        model = build_cnn()
        optimizer = adam(args.learning_rate, args.epochs * steps_per_epoch)
        optimizer.build(model.trainable_variables)
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch)
    # Non-chief sync trainers must save too (TF's rule), into a folder of their own.
    checkpoint_dir = output / "checkpoints" if output else Path(tempfile.mkdtemp(prefix=JOB.name))
    manager = tf.train.CheckpointManager(checkpoint, str(checkpoint_dir), max_to_keep=2)
    if args.resume:
        checkpoint.restore(resumed_checkpoint(args.resume))
    elif args.output:  # a rerun into the same folder resumes (sync: on a shared filesystem)
        checkpoint.restore(tf.train.latest_checkpoint(str(Path(args.output) / "checkpoints")))
    return Training(strategy, coordinator, model, optimizer, epoch, manager, checkpoint_dir,
                    steps_per_epoch)


def distributed_batches(tf, training: Training, images, labels, batch_size: int):
    """An iterator over the strategy's distributed batches (per worker, under a coordinator)."""
    strategy, make_dataset = training.strategy, dataset_fn(tf, images, labels, batch_size)
    if training.coordinator:
        return iter(training.coordinator.create_per_worker_dataset(
            tf.function(lambda: strategy.distribute_datasets_from_function(make_dataset))))
    return iter(strategy.distribute_datasets_from_function(make_dataset))


def run_epochs(training: Training, step, iterator, first_epoch: int, args: argparse.Namespace,
               chief: bool, summaries) -> list[Epoch]:
    """Epochs first_epoch + 1 .. --epochs, each checkpointed (the chief's also into the run's
    storage, where another host can resume from) and printed; none left when resuming a
    finished run."""
    coordinator, epochs = training.coordinator, []
    for number in range(first_epoch + 1, args.epochs + 1):
        epoch_started = time.monotonic()
        if coordinator:
            results = [coordinator.schedule(step, args=(iterator,))
                       for _ in range(training.steps_per_epoch)]
            coordinator.join()
            results = [result.fetch() for result in results]
        else:
            results = [step(iterator).numpy() for _ in range(training.steps_per_epoch)]
        epochs.append(epoch_of(results, time.monotonic() - epoch_started))
        training.epoch.assign(number)
        training.manager.save()
        if chief and stored.run_store():  # where another host can resume from
            store_checkpoints(str(training.checkpoint_dir), stored.run_store())
        if summaries:
            log_epoch(summaries, number, epochs[-1])
        print(f"epoch {number}/{args.epochs}: loss {epochs[-1].loss:.4f}, accuracy "
              f"{epochs[-1].accuracy:.4f} ({time.monotonic() - epoch_started:.1f}s)",
              flush=True)
    return epochs


def training_metrics(args: argparse.Namespace, spec: ClusterSpec, epochs: list[Epoch],
                     first_epoch: int, steps_per_epoch: int, train_examples: int,
                     seconds: dict[str, float]) -> dict:
    """metrics.json's training part: the history of this run's epochs, the setup, the speed."""
    steps_run = (args.epochs - first_epoch) * steps_per_epoch
    return {
        "train_loss": epochs[-1].loss if epochs else None,
        "history": {"first_epoch": first_epoch + 1, "loss": [e.loss for e in epochs],
                    "accuracy": [e.accuracy for e in epochs]},
        "epochs": args.epochs,
        "epochs_this_run": args.epochs - first_epoch,
        "steps": args.epochs * steps_per_epoch,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "strategy": args.strategy,
        "cluster": {role: len(spec.get(role, [])) for role in ROLES},
        "trainers": len(trainers(spec, args.strategy)),
        "train_examples": train_examples,
        "examples_per_second": steps_run * args.batch_size / seconds["train"],
        "seconds": seconds,
    }


def evaluate_and_save(weights: list, test_set, output: Path, metrics: dict) -> None:
    """Test accuracy of the trained weights, model.keras and metrics.json."""
    evaluate_started = time.monotonic()
    loss, accuracy = evaluate_and_export(weights, test_set, output / "model.keras")
    metrics["seconds"]["evaluate"] = time.monotonic() - evaluate_started
    write_metrics(output, {"accuracy": accuracy, "loss": loss, "test_examples": len(test_set[1]),
                           **metrics})
    print(f"test accuracy {accuracy:.4f}; results in {output}", flush=True)


def release_servers(tf, args: argparse.Namespace, spec: ClusterSpec) -> None:
    """End every ps and worker: a file op placed on each of them writes its done file."""
    for role, index, _ in tasks(spec):
        if role != "chief":
            with tf.device(f"/job:{role}/replica:0/task:{index}/device:CPU:0"):
                tf.io.write_file(str(done_file(args, spec, role, index)), "done")


def main(argv: list[str] | None = None) -> None:
    started = time.monotonic()
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    spec, role, index = resolve_cluster(args)
    if args.strategy == "sync" and args.batch_size % len(trainers(spec, "sync")):
        count = len(trainers(spec, "sync"))
        raise UserError(f"--batch-size {args.batch_size} does not split evenly over the {count} "
                        f"sync trainers; use a multiple of {count}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ info logs out
    if args.strategy == "ps" and role != "chief":
        serve(spec, role, index, args)
    else:
        train(spec, role, index, args, started)


def cli() -> None:
    """What `python -m workloads.train_ps` runs (the package's __main__, or this module, the
    job's declared module that fab starts): main() with one-line errors."""
    run_cli(main)
    exit_now(0)  # all is written: skip TensorFlow's slow C++ teardown


if __name__ == "__main__":
    cli()
