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


def held_out(origins: list[str], fraction: float, seed: int, label: int) -> list[str]:
    """The test share of one class: round(n * fraction) images (at least one, never all of them),
    drawn by seed and label from the sorted paths. Unlike randomSplit, this neither depends on
    Spark's partitioning nor reuses one random sequence for every class."""
    if len(origins) < 2:
        return []
    count = min(len(origins) - 1, max(1, round(len(origins) * fraction)))
    rng = np.random.default_rng([seed, label])
    return sorted(rng.choice(sorted(origins), size=count, replace=False).tolist())


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
    """The session spark-submit configured (its --master), or local[*] when run directly."""
    # Python workers run this interpreter (and its TensorFlow) unless the cluster says otherwise.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    return SparkSession.builder.appName(f"kindling-{JOB.name}").getOrCreate()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from workloads.classify.image_models import model_spec, weights_source

    model_name = model_spec(args.model).name
    weights = weights_source(args.weights)
    folders = None if is_uri(args.data) else [str(f) for f in class_folders(args.data)]
    started = time.monotonic()

    spark = spark_session()
    folders = folders or stored_class_folders(spark, args.data)
    reads = read_classes(spark, folders)
    train, test = split_classes(reads, args.test_fraction, args.seed)
    counts = {"train": train.count(), "test": test.count(), "dropped": sum(r.dropped for r in reads)}
    if counts["test"] == 0:
        raise UserError(f"the test split is empty ({counts['train']} training images); add images "
                        "or raise --test-fraction")
    read_done = time.monotonic()

    model = fit_pipeline(train, model_name, weights, args.max_iter)
    fit_done = time.monotonic()

    classes = [folder.rstrip("/").rsplit("/", 1)[-1] for folder in folders]
    output = results_dir(args.output, JOB.name)
    predictions = predict_test_set(model, test, counts["test"])
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
    for cached in (predictions, *(read.images for read in reads)):
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


def fit_pipeline(train, model_name: str, weights: str, max_iter: int):
    """Pipeline(DeepImageFeaturizer, LogisticRegression) fitted on the training images."""
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression

    from workloads.classify.deep_image import DeepImageFeaturizer

    pipeline = Pipeline(stages=[
        DeepImageFeaturizer(inputCol="image", outputCol="features", modelName=model_name, weights=weights),
        LogisticRegression(featuresCol="features", labelCol="label", maxIter=max_iter),
    ])
    return pipeline.fit(train)


def predict_test_set(model, test, count: int):
    """The model's predictions on the `count` test images (cached), shown one per image, then
    as a crosstab of prediction by label."""
    from pyspark.sql import functions as F

    predictions = (model.transform(test)
                   .select(F.col("image.origin").alias("path"), "label", "prediction", "probability")
                   .cache())
    predictions.select(F.element_at(F.split("path", "/"), -1).alias("image"), "prediction", "label") \
        .orderBy("label", "image").show(count, truncate=False)
    predictions.crosstab("prediction", "label").orderBy("prediction_label").show()
    return predictions


def read_classes(spark, folders: list[str]) -> list:
    """Each class folder's images (cached) and counts; a class without a readable image stops."""
    from workloads.classify.deep_image import read_image_folder

    reads = [read_image_folder(folder, spark) for folder in folders]
    for folder, read in zip(folders, reads):
        if read.count == 0:
            raise UserError(f"class folder {folder} has no readable images ({read.dropped} files "
                            "dropped); add images or remove the folder")
    return reads


def split_classes(reads: list, test_fraction: float, seed: int):
    """(train, test) DataFrames with a `label` column: the class folder's position."""
    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F

    train_parts, test_parts = [], []
    for label, read in enumerate(reads):
        origins = [row.origin for row in read.images.select("image.origin").collect()]
        is_test = F.col("image.origin").isin(held_out(origins, test_fraction, seed, label))
        labelled = read.images.withColumn("label", F.lit(float(label)))
        train_parts.append(labelled.filter(~is_test))
        test_parts.append(labelled.filter(is_test))
    return (functools.reduce(DataFrame.unionByName, train_parts),
            functools.reduce(DataFrame.unionByName, test_parts))


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
