"""classify: the chapter's transfer learning, buses vs cars, on Spark ML.

A folder with one subfolder per class (labels follow the sorted folder names: buses=0, cars=1),
a per-class random train/test split, Pipeline(DeepImageFeaturizer, LogisticRegression), and a
results folder: metrics.json, predictions.csv, confusion_matrix.png and the saved PipelineModel.

Runs as `python -m workloads.classify` (local[*]) or as a spark-submit script (its --master):
this file, the job's declared module workloads.classify.main.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from kindling import UserError
from workloads import stored
from workloads.classify.job import JOB
from workloads.common import results_dir, run_cli, write_metrics
from workloads.stored import is_uri

log = logging.getLogger(__name__)

TASKS_PER_CORE = 4
"""Featurizing tasks per Spark core: few (each Python worker keeps its model for them all), but
enough that a slow or lost executor costs a quarter of its share, not all of it..."""
SCAN_SPLITS_PER_TASK = 16
"""...and at most this many of Spark's file splits a task (about 500 small photos, or 2 GB),
so that a task stays short however many photos there are, and executors that registered after
the job planned its tasks still get work."""
NAMED_DROPS = 10
"""Undecodable files named in the warning, per class."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The job's flags (its declaration, workloads.classify.job), offline defaults included,
    checked."""
    return JOB.parse(list(sys.argv[1:] if argv is None else argv),
                     JOB.parser(prog="python -m workloads.classify"))


def class_folders(data: str) -> list[Path]:
    """The class subfolders, sorted: their position is the label. Each must hold a file."""
    root = Path(data).expanduser()
    if not root.is_dir():
        raise UserError(f"data folder not found: {data}; pass --data DIR with one subfolder of "
                        "images per class")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if len(folders) < 2:
        raise UserError(f"data folder {data} has {len(folders)} class subfolder(s); it needs at "
                        "least 2, one per class (e.g. buses/ and cars/)")
    empty = [f.name for f in folders if not any(p.is_file() for p in f.rglob("*"))]
    if empty:
        raise UserError(f"class folder(s) {', '.join(empty)} in {data} hold no files; put images "
                        "in every class folder or remove the empty ones")
    return folders


def stored_class_folders(spark, uri: str) -> list[str]:
    """class_folders of a location in the cluster's storage, listed by Hadoop's own FileSystem
    (as Spark reads it), so any scheme Spark's classpath knows works."""
    jvm = spark.sparkContext._jvm
    root = jvm.org.apache.hadoop.fs.Path(uri)
    filesystem = root.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not filesystem.exists(root):
        raise UserError(f"data location not found: {uri}; pass --data with one subfolder of "
                        "images per class")
    folders = sorted(status.getPath().toString() for status in filesystem.listStatus(root)
                     if status.isDirectory()
                     and not status.getPath().getName().startswith((".", "_")))
    if len(folders) < 2:
        raise UserError(f"data location {uri} has {len(folders)} class subfolder(s); it needs "
                        "at least 2, one per class (e.g. buses/ and cars/)")
    return folders


def held_out_ranks(count: int, fraction: float, seed: int, label: int) -> list[int]:
    """The test share of a class of `count` images: round(count * fraction) of them (at least
    one, never all), drawn by seed and label, as ranks in the class's sorted paths. Unlike
    randomSplit, this neither depends on Spark's partitioning nor reuses one random sequence for
    every class; and the driver needs the class's size, not its paths."""
    if count < 2:
        return []
    size = min(count - 1, max(1, round(count * fraction)))
    return sorted(np.random.default_rng([seed, label]).choice(count, size=size, replace=False).tolist())


def save_model(model, output: Path) -> str | None:
    """The fitted PipelineModel saved where every executor can write, the run's folder in the
    cluster's storage (else <output>/model when the executors share the driver's disk), and
    loaded back from there; its location, or None when there is no such place."""
    from pyspark.ml import PipelineModel
    from pyspark.sql import SparkSession

    if stored.run_store():
        location = stored.join(stored.run_store(), "model")
    elif executors_on_driver_host(SparkSession.getActiveSession()):
        location = str(output / "model")
    else:  # each executor would write its part to its own disk, the driver finding none
        print("model not saved: the executors run on other hosts and the cluster has no shared "
              "storage (a bucket, or hdfs: true)", flush=True)
        return None
    model.write().overwrite().save(location)
    loaded = PipelineModel.load(location)
    if [type(stage) for stage in loaded.stages] != [type(stage) for stage in model.stages]:
        raise RuntimeError(f"the model loaded back from {location} has stages {loaded.stages}")
    return location


def executors_on_driver_host(spark) -> bool:
    """Whether every executor runs where the driver does (the local target, local[*]): only
    then is a local folder one every writer of the model shares. No public PySpark call lists
    the executors' hosts, hence the JVM's status tracker."""
    driver = spark.conf.get("spark.driver.host")
    return all(info.host() == driver
               for info in spark.sparkContext._jsc.sc().statusTracker().getExecutorInfos())


def spark_session():
    """The session spark-submit configured (its --master), or local[*] when run directly, with
    Arrow batches a Python worker can hold in memory whatever the photos' size."""
    # Python workers run this interpreter (and its TensorFlow) unless the cluster says otherwise.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    from workloads.classify.deep_image import ARROW_CONF

    builder = SparkSession.builder.appName(f"kindling-{JOB.name}")
    for key, value in ARROW_CONF.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from workloads.classify.image_models import model_spec, weights_source

    model_name = model_spec(args.model).name
    weights = weights_source(args.weights)
    folders = None if is_uri(args.data) else [str(f) for f in class_folders(args.data)]
    started = time.monotonic()

    spark = spark_session()
    folders = folders or stored_class_folders(spark, args.data)
    featurizer = image_featurizer(model_name, weights)
    images = featurize_classes(spark, folders, featurizer)
    decodable, dropped = class_counts(images, folders)
    train, test, counts = split_classes(images, decodable, args.test_fraction, args.seed)
    counts["dropped"] = dropped
    if counts["test"] == 0:
        raise UserError(f"the test split is empty ({counts['train']} training images); add images "
                        "or raise --test-fraction")
    read_done = time.monotonic()

    model = fit_pipeline(featurizer, train, args.max_iter)
    fit_done = time.monotonic()

    classes = [folder.rstrip("/").rsplit("/", 1)[-1] for folder in folders]
    output = results_dir(args.output, JOB.name)
    predictions = predict_test_set(model.stages[-1], test, counts["test"], classes)
    metrics = {
        "job": JOB.name, "model": model_name, "weights": weights, "classes": classes,
        "seed": args.seed, "test_fraction": args.test_fraction, "max_iter": args.max_iter,
        **evaluate(predictions, classes),
        "counts": counts,
    }
    table = predictions_table(predictions, classes)
    table.to_csv(output / "predictions.csv", index=False)
    plot_confusion(table, classes, output / "confusion_matrix.png")
    metrics["model_location"] = save_model(model, output)
    for cached in (predictions, images):
        cached.unpersist()
    finished = time.monotonic()
    metrics["timings_s"] = {"read_split": round(read_done - started, 2),
                            "fit": round(fit_done - read_done, 2),
                            "evaluate_save": round(finished - fit_done, 2),
                            "total": round(finished - started, 2)}
    write_metrics(output, metrics)
    print(f"accuracy {metrics['accuracy']:.3f} on {counts['test']} test images "
          f"({counts['train']} train, {counts['dropped']} dropped); results in {output}")
    return metrics


def image_featurizer(model_name: str, weights: str):
    """The pipeline's first stage: its input column `image` holds the files' bytes here (the
    saved model also takes sparkdl's image structs under that name)."""
    from workloads.classify.deep_image import DeepImageFeaturizer

    return DeepImageFeaturizer(inputCol="image", outputCol="features", modelName=model_name,
                               weights=weights)


def featurize_classes(spark, folders: list[str], featurizer):
    """Every file of every class folder featurized once (binaryFile bytes decoded in the Python
    workers; null features for a file that is no decodable image), in a few tasks per core
    rather than one per 32 files (Spark's file splits): (path, label, features). Kept on the
    executors' disks in those partitions: features (KBs an image, never pixels) for the fit and
    the evaluation alike, memory flat in the number of images."""
    from pyspark import StorageLevel
    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F

    files = functools.reduce(DataFrame.unionByName, [
        spark.read.format("binaryFile").option("recursiveFileLookup", True).load(folder)
        .select("path", F.col("content").alias("image"), F.lit(float(label)).alias("label"))
        for label, folder in enumerate(folders)])
    files = files.coalesce(max(TASKS_PER_CORE * spark.sparkContext.defaultParallelism,
                               -(-files.rdd.getNumPartitions() // SCAN_SPLITS_PER_TASK)))
    return featurizer.transform(files).drop("image").persist(StorageLevel.DISK_ONLY)


def class_counts(images, folders: list[str]) -> tuple[list[int], int]:
    """Decodable images per class and files dropped (named in a warning, as sparkdl's readers
    logged them); a class without a readable image stops."""
    from pyspark.sql import functions as F

    rows = {int(row.label): row for row in images.groupBy("label").agg(
        F.count("*").alias("files"), F.count("features").alias("decodable")).collect()}
    decodable = [rows[label].decodable if label in rows else 0 for label in range(len(folders))]
    for label, folder in enumerate(folders):
        files = rows[label].files if label in rows else 0
        if files > decodable[label]:
            names = [row.path.rsplit("/", 1)[-1] for row in images.where(
                (F.col("label") == label) & F.col("features").isNull())
                .select("path").orderBy("path").limit(NAMED_DROPS + 1).collect()]
            more = f" and {files - decodable[label] - NAMED_DROPS} more" if len(names) > NAMED_DROPS else ""
            log.warning("%s: dropped %d of %d files that are not decodable images: %s%s", folder,
                        files - decodable[label], files, ", ".join(names[:NAMED_DROPS]), more)
        if decodable[label] == 0:
            raise UserError(f"class folder {folder} has no readable images ({files} files "
                            "dropped); add images or remove the folder")
    return decodable, sum(rows[label].files for label in rows) - sum(decodable)


def split_classes(images, decodable: list[int], test_fraction: float, seed: int):
    """(train, test) DataFrames of the decodable images, and their counts: the test share of each
    class drawn by held_out_ranks, the ranks matched in the classes' sorted paths (a window over
    the paths alone), and the test paths broadcast, so that the features stay where they are."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    held = [(float(label), rank) for label, count in enumerate(decodable)
            for rank in held_out_ranks(count, test_fraction, seed, label)]
    held_out = images.sparkSession.createDataFrame(held, "label double, rank int")
    usable = images.where(F.col("features").isNotNull())
    ranks = usable.select("label", "path").withColumn(
        "rank", F.row_number().over(Window.partitionBy("label").orderBy("path")) - 1)
    test_paths = F.broadcast(ranks.join(held_out, ["label", "rank"]).select("label", "path"))
    counts = {"train": sum(decodable) - len(held), "test": len(held)}
    return (usable.join(test_paths, ["label", "path"], "left_anti"),
            usable.join(test_paths, ["label", "path"], "left_semi"), counts)


def fit_pipeline(featurizer, train, max_iter: int):
    """PipelineModel(DeepImageFeaturizer, LogisticRegression), the regression fitted on the
    training images' features already computed (what Pipeline.fit would do, without a second
    pass over the images)."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.classification import LogisticRegression

    regression = LogisticRegression(featuresCol="features", labelCol="label", maxIter=max_iter)
    return PipelineModel(stages=[featurizer, regression.fit(train)])


def predict_test_set(regression, test, count: int, classes: list[str]):
    """The regression's predictions on the `count` test images' features (cached), shown one
    per image, then as a crosstab of predicted by actual class, by the classes' names."""
    from pyspark.sql import functions as F

    predictions = (regression.transform(test)
                   .select("path", "label", "prediction", "probability")
                   .cache())
    names = F.array(*(F.lit(name) for name in classes))
    named = predictions.select(
        F.element_at(F.split("path", "/"), -1).alias("image"),
        F.element_at(names, F.col("prediction").cast("int") + 1).alias("predicted"),
        F.element_at(names, F.col("label").cast("int") + 1).alias("actual"))
    named.orderBy("actual", "image").show(count, truncate=False)
    named.crosstab("predicted", "actual").orderBy("predicted_actual").show()
    return predictions


def evaluate(predictions, classes: list[str]) -> dict:
    """Accuracy and per-class precision/recall, as Spark ML's evaluator computes them."""
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator

    def metric(name: str, label: int = 0) -> float:
        evaluator = MulticlassClassificationEvaluator(labelCol="label", metricName=name,
                                                      metricLabel=float(label))
        return evaluator.evaluate(predictions)

    return {"accuracy": metric("accuracy"),
            "per_class": {name: {"label": label, "precision": metric("precisionByLabel", label),
                                 "recall": metric("recallByLabel", label)}
                          for label, name in enumerate(classes)}}


def predictions_table(predictions, classes: list[str]):
    """One row per test image: path, true and predicted class, and the model's confidence."""
    table = predictions.toPandas()
    table["label"] = table["label"].astype(int)
    table["prediction"] = table["prediction"].astype(int)
    table["class"] = [classes[i] for i in table["label"]]
    table["predicted_class"] = [classes[i] for i in table["prediction"]]
    table["confidence"] = [float(p[i]) for p, i in zip(table["probability"], table["prediction"])]
    return table[["path", "class", "label", "predicted_class", "prediction", "confidence"]]


def plot_confusion(table, classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    labels = range(len(classes))
    matrix = pd.crosstab(table["label"], table["prediction"]).reindex(
        index=labels, columns=labels, fill_value=0).to_numpy()
    fig, ax = plt.subplots(figsize=(1.6 * len(classes) + 2, 1.4 * len(classes) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")
    ax.set_xticks(labels, classes)
    ax.set_yticks(labels, classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {(matrix.trace() / matrix.sum()):.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cli() -> None:
    """What `python -m workloads.classify` runs, and spark-submit of this file: main() with
    one-line errors."""
    run_cli(main)


if __name__ == "__main__":
    cli()
