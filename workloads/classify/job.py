"""classify declared: its flags, the rules across them, the ImageNet weights it downloads, and
its plan (a plain spark-submit). No TensorFlow or Spark import: ops reads this on the control
machine."""

from __future__ import annotations

import argparse
import importlib

from kindling import UserError
from workloads.common import OFFLINE_MOBILENET
from workloads.jobs import Download, Flag, Job, lazy_check, plain_spark_plan
from workloads.stored import LOCATION_EXAMPLES

KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


def rules(args: argparse.Namespace) -> None:
    """A test share strictly between 0 and 1, and data to classify."""
    if not 0.0 < args.test_fraction < 1.0:
        raise UserError(f"--test-fraction must be between 0 and 1, got {args.test_fraction}")
    if args.data is None:
        raise UserError("no data folder; pass --data DIR with one subfolder of images per class "
                        "(or set KINDLING_ASSETS for the offline buses-cars set)")


def imagenet_download(args: argparse.Namespace) -> list[Download]:
    """The model's ImageNet weights through Keras, unless --weights names a file."""
    if args.weights != "imagenet":
        return []
    models = importlib.import_module("workloads.classify.image_models")
    family = models.model_spec(args.model).family
    return [Download(f"the ImageNet weights of {args.model}", f"{KERAS_APPLICATIONS_URL}{family}/",
                     "pass --weights FILE (a Keras .h5 file of that model), or set "
                     "KINDLING_ASSETS to a folder with models/")]


JOB = Job(
    "classify", "workloads.classify.main",
    "Transfer learning: DeepImageFeaturizer + LogisticRegression on a folder of labelled images",
    flags=(Flag("--data", "a folder with one subfolder of images per class (labels follow "
                "the sorted subfolder names), copied to every host; or where it is stored: "
                f"{LOCATION_EXAMPLES}", path=True, stored=True, offline="datasets/buses-cars",
                check=lazy_check("workloads.classify.main", "class_folders")),
           Flag("--model", "Keras ImageNet model (default: InceptionV3, the chapter's)",
                default="InceptionV3", offline_value="MobileNet",
                check=lazy_check("workloads.classify.image_models", "model_spec")),
           Flag("--weights", "'imagenet' (downloaded by Keras) or a Keras .h5/.keras file "
                "of that model (copied to every host)", default="imagenet", path=True,
                names=("imagenet",), offline=OFFLINE_MOBILENET,
                check=lazy_check("workloads.classify.image_models", "weights_source")),
           Flag("--seed", "seed of the per-class train/test split", type=int, default=42,
                fab=False),
           Flag("--test-fraction", "share of each class held out for testing", type=float,
                default=0.4, fab=False),
           Flag("--max-iter", "LogisticRegression iterations", type=int, default=30,
                minimum=1, fab=False)),
    plan=plain_spark_plan, validate=rules, downloads=imagenet_download, writes_store=True)
