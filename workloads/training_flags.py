"""The flags train-ps and train-mnist both declare (MNIST data, resume, batch size, epochs,
learning rate) and what they download without --data. Declarations only: no TensorFlow."""

from __future__ import annotations

import argparse

from workloads.jobs import Download, Flag, lazy_check
from workloads.stored import LOCATION_EXAMPLES, RUN_LOCATION_EXAMPLES

MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"

MNIST_DATA = Flag("--data", "MNIST: a folder of the four IDX .gz files or an mnist.npz "
                  f"(copied to every host), or where it is stored: {LOCATION_EXAMPLES}; "
                  "omit to download MNIST", aliases=("--data-dir",), path=True,
                  stored=True, offline="datasets/mnist",
                  check=lazy_check("workloads.mnist", "mnist_source"))
RESUME = Flag("--resume", "continue from the last checkpoint of an earlier run: its results "
              f"folder (runs/<id>) or where the cluster stored it ({RUN_LOCATION_EXAMPLES})",
              path=True, stored=True, check=lazy_check("workloads.training", "checkpoints_in"))
BATCH_SIZE = Flag("--batch-size", "examples per training step", type=int, default=64, minimum=1)


def epochs(default: int) -> Flag:
    return Flag("--epochs", "training epochs", type=int, default=default, minimum=1)


def learning_rate(default: float) -> Flag:
    return Flag("--learning-rate", "Adam's initial learning rate (cosine-decayed to 0 over the "
                "run)", type=float, default=default)


def mnist_download(args: argparse.Namespace) -> list[Download]:
    """MNIST through Keras, unless --data names a copy."""
    if args.data:
        return []
    return [Download("the MNIST dataset", MNIST_URL,
                     "pass --data DIR (a folder of the four MNIST .gz files), or set "
                     "KINDLING_ASSETS to a folder with datasets/mnist")]
