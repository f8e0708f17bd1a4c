"""DeepImageFeaturizer on Spark vs plain Keras model.predict, side by side, on the same images.

Both start from the same pixels (Spark's image source, decoded once and cached), both resize
with PIL and preprocess with Keras, both run the same model with the same weights, batch 32.
Each side gets a warm-up pass (Python workers start and build their model), then the sides take
turns for --passes timed passes and the best of each is printed in images/s, with the ratio
featurizer / model.predict (goal: >= 0.9). "predict only" is model.predict on tensors resized
beforehand: the ceiling.

Without --weights, the model gets random weights saved to a temporary file (throughput does not
depend on their values, and InceptionV3's ImageNet weights are not available offline).

    KINDLING_ASSETS=/work/shared python benchmarks/featurizer_throughput.py
    python benchmarks/featurizer_throughput.py --data DIR --model MobileNet --weights FILE.h5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from workloads.common import asset, run_cli


def best_rates(runs: dict[str, object], count: int, passes: int) -> dict[str, float]:
    """Images/s of each run's fastest pass. One untimed warm-up each, then the runs take turns,
    so load from other processes on a shared machine hits all of them alike."""
    for run in runs.values():
        run()
    best = {name: float("inf") for name in runs}
    for _ in range(passes):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: count / seconds for name, seconds in best.items()}


def random_weights(model_name: str, folder: str) -> str:
    """A weights file for model_name: same random values on every worker, unlike weights=None."""
    import keras

    path = os.path.join(folder, f"random-{model_name}.h5")
    getattr(keras.applications, model_name)(weights=None, include_top=False, pooling="avg").save(path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", default=asset("datasets/buses-cars"),
                        help="folder of images (default: $KINDLING_ASSETS/datasets/buses-cars)")
    parser.add_argument("--model", default="InceptionV3")
    parser.add_argument("--weights", help="'imagenet' or a Keras file (default: random weights)")
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.data:
        parser.error("pass --data DIR or set KINDLING_ASSETS")

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    from workloads.classify.deep_image import IMAGE_FIELDS, DeepImageFeaturizer, read_image_folder
    from workloads.classify.image_models import build_model, model_input, model_spec, weights_source

    spec = model_spec(args.model)
    spark = (SparkSession.builder.master(args.master).appName("featurizer-throughput")
             .config("spark.ui.enabled", "false").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    with tempfile.TemporaryDirectory() as scratch:
        weights = weights_source(args.weights or random_weights(spec.name, scratch))
        folder = read_image_folder(args.data, spark)
        images = folder.images

        features = DeepImageFeaturizer(modelName=spec.name, weights=weights).transform(images)
        columns = list(zip(*images.select([f"image.{f}" for f in IMAGE_FIELDS]).collect()))
        model = build_model(spec, weights, include_top=False)
        tensors = model_input(spec, *columns)
        rates = best_rates({
            "featurizer": lambda: features.select("features").write.format("noop").mode("overwrite").save(),
            "predict": lambda: model.predict(model_input(spec, *columns), batch_size=32, verbose=0),
            "predict_only": lambda: model.predict(tensors, batch_size=32, verbose=0),
        }, folder.count, args.passes)

    print(f"{spec.name} {spec.input_size}px, {folder.count} images from {args.data}, "
          f"{spark.sparkContext.defaultParallelism} Spark cores ({args.master}), "
          f"{images.rdd.getNumPartitions()} partitions, best of {args.passes} warm passes")
    print(f"  DeepImageFeaturizer (Spark)         {rates['featurizer']:8.1f} images/s")
    print(f"  model.predict (resize + predict)    {rates['predict']:8.1f} images/s")
    print(f"  model.predict only (resized input)  {rates['predict_only']:8.1f} images/s")
    print(f"  ratio featurizer / model.predict    {rates['featurizer'] / rates['predict']:8.2f}x"
          "   (goal >= 0.9x)")
    print(f"  ratio featurizer / predict only     {rates['featurizer'] / rates['predict_only']:8.2f}x")
    spark.stop()


if __name__ == "__main__":
    run_cli(main)
