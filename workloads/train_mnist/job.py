"""train-mnist declared: its flags (the chapter's, in both spellings), the rules across them,
and its plan (spark-submit of the driver with TensorFlowOnSpark's confs). No TensorFlow or
Spark import: ops reads this on the control machine."""

from __future__ import annotations

import argparse
import importlib.util

from kindling import UserError
from workloads.jobs import Flag, Job, tfos_plan
from workloads.training_flags import (BATCH_SIZE, MNIST_DATA, RESUME, epochs, learning_rate,
                                      mnist_download)


def rules(args: argparse.Namespace) -> None:
    """What no single flag can check: the engine's input mode, no ps, tensorboard installed."""
    if args.engine == "barrier" and args.input_mode != "tensorflow":
        raise UserError("--engine barrier has no Spark feed: each node reads its data with "
                        "tf.data; add --input-mode tensorflow")
    if args.num_ps != 0:
        raise UserError(f"--num-ps {args.num_ps}: train-mnist trains with all-reduce "
                        "(MultiWorkerMirroredStrategy), without parameter servers; use "
                        "--num-ps 0, or the train-ps job for parameter servers")
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UserError("--tensorboard needs the tensorboard package on every host; "
                        "pip install tensorboard, or drop --tensorboard")


JOB = Job(
    "train-mnist", "workloads.train_mnist.main",
    "TensorFlowOnSpark MNIST CNN on the Spark cluster (InputMode SPARK or TENSORFLOW)",
    flags=(MNIST_DATA,
           Flag("--input-mode", "spark (RDD fed through TFNode.DataFeed, the chapter's way) "
                "or tensorflow (tf.data reads TFRecord shards; faster)", default="spark",
                choices=("spark", "tensorflow")),
           Flag("--engine", "tfos (TensorFlowOnSpark, the chapter's) or barrier (Spark "
                "barrier mode: nodes start and fail as one unit; --input-mode tensorflow)",
                default="tfos", choices=("tfos", "barrier")),
           Flag("--cluster-size", "TF nodes = Spark executors (default: one per worker)",
                type=int, minimum=1),
           Flag("--num-ps", "parameter servers; must be 0 (all-reduce training; see "
                "train-ps)", type=int, default=0, fab=False),
           epochs(8), BATCH_SIZE,
           Flag("--steps", "at most this many steps per node (default: --epochs of the "
                "data)", type=int, minimum=1),
           learning_rate(2e-3), RESUME,
           Flag("--model", "where to export the trained model (default "
                "<output>/model.keras)", fab=False),
           Flag("--tensorboard", "the tfos engine also serves TensorBoard from the chief "
                "while it trains (the chief always logs to <output>/tensorboard)",
                switch=True, fab=False),
           Flag("--startup-timeout", "seconds to wait for the executors and the TF nodes "
                "to come up", type=int, default=120, minimum=1, fab=False),
           Flag("--timeout", "seconds the training may take before the job is stopped",
                type=int, default=3600, minimum=1, fab=False)),
    plan=tfos_plan, validate=rules, downloads=mnist_download, resume="--resume")
