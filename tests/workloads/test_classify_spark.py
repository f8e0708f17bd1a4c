"""classify on real Spark (local[2]) with the real ImageNet MobileNet file and the chapter's photos."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from floors import ACCURACY_FLOOR
from kindling import UserError
from workloads.classify import main as classify
from workloads.classify.deep_image import DeepImageFeaturizer, DeepImagePredictor, readImages

pytestmark = pytest.mark.slow

BUSES = ("london-2665352-960-720.jpg", "image-21.jpeg", "images-26.jpeg")
CARS = ("image-22.jpeg", "image-10.jpeg", "images-3.jpeg")
BUS_LIKE = {"trolleybus, trolley coach, trackless trolley", "school bus", "minibus",
            "passenger car, coach, carriage", "streetcar, tram, tramcar, trolley, trolley car"}


@pytest.fixture(scope="module")
def spark():
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("test-classify")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def weights(assets) -> str:
    return str(assets / "models/mobilenet_v1_0.25_224.h5")


@pytest.fixture(scope="module")
def photos(assets) -> Path:
    return assets / "datasets/buses-cars"


def copy_dataset(root: Path, photos: Path, pick: dict[str, tuple[str, ...]] | None = None) -> Path:
    """A writable copy of the class folders (all photos, or the picked ones) to add files to."""
    for folder in sorted(p for p in photos.iterdir() if p.is_dir()):
        (root / folder.name).mkdir(parents=True)
        names = pick[folder.name] if pick else [p.name for p in folder.iterdir()]
        for name in names:
            shutil.copyfile(folder / name, root / folder.name / name)
    return root


def local_path(origin: str) -> Path:
    return Path(urlparse(origin).path)


def test_features_equal_keras_predict_for_rgb_gray_and_rgba(spark, photos, weights, tmp_path):
    import keras

    copy_dataset(tmp_path, photos, {"buses": BUSES, "cars": CARS[:1]})
    Image.open(photos / "buses" / BUSES[1]).convert("L").save(tmp_path / "gray.jpg", quality=90)
    car = Image.open(photos / "cars" / CARS[0]).convert("RGB")
    alpha = Image.linear_gradient("L").resize(car.size)
    car.putalpha(alpha)
    car.save(tmp_path / "alpha.png")

    featurizer = DeepImageFeaturizer(inputCol="image", outputCol="features", modelName="MobileNet",
                                     weights=weights)
    rows = (featurizer.transform(readImages(str(tmp_path), spark))
            .select("image.origin", "image.nChannels", "features").collect())
    assert sorted(row.nChannels for row in rows) == [1, 3, 3, 3, 3, 4]

    # The reference: Keras' own loader and preprocessing on PIL-decoded files, no kindling code.
    model = keras.applications.MobileNet(alpha=0.25, include_top=False, pooling="avg",
                                         weights=None, input_shape=(224, 224, 3))
    model.load_weights(weights, by_name=True)
    pixels = np.stack([np.asarray(Image.open(local_path(row.origin)).convert("RGB")
                                  .resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float32)
                       for row in rows])
    expected = model.predict(keras.applications.mobilenet.preprocess_input(pixels), verbose=0)
    features = np.array([row.features.toArray() for row in rows])
    assert features.shape == (6, 256)
    np.testing.assert_allclose(features, expected, atol=1e-5, rtol=0)


def test_classify_buses_cars_drops_a_corrupt_file_and_saved_pipeline_predicts_the_same(
        spark, photos, weights, tmp_path, capsys):
    """The chapter's 89 photos plus one corrupt file (which must be dropped and counted)."""
    from pyspark.ml import PipelineModel
    from pyspark.sql import functions as F

    data = copy_dataset(tmp_path / "buses-cars", photos)
    (data / "cars" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "run"
    classify.main(["--data", str(data), "--model", "MobileNet", "--weights", weights,
                   "--output", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] >= ACCURACY_FLOOR["classify"], metrics
    assert metrics["counts"] == {"train": 54, "test": 35, "dropped": 1}
    assert set(metrics["per_class"]) == {"buses", "cars"}
    assert metrics["per_class"]["buses"]["label"] == 0 and metrics["per_class"]["cars"]["label"] == 1
    assert set(metrics["timings_s"]) == {"read_split", "fit", "evaluate_save", "total"}
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == 35
    assert (table["class"] == table["path"].str.split("/").str[-2]).all()
    assert (table["label"] == table["prediction"]).mean() == pytest.approx(metrics["accuracy"])
    # the terminal's tables name the classes: each test image, then the crosstab
    images_table, crosstab = capsys.readouterr().out.split("|predicted_actual|")
    rows = re.findall(r"^\|(\S+) *\|(\w+) *\|(\w+) *\|$", images_table, re.MULTILINE)
    assert rows[0] == ("image", "predicted", "actual")
    assert sorted(rows[1:]) == sorted(zip(table["path"].str.split("/").str[-1],
                                          table["predicted_class"], table["class"]))
    assert crosstab.startswith("buses|cars|\n")  # the header's actual classes, then the predicted
    assert re.findall(r"^\| *(\w+)\|", crosstab, re.MULTILINE) == ["buses", "cars"]  # right-aligned

    loaded = PipelineModel.load(str(out / "model"))
    featurizer = loaded.stages[0]
    assert isinstance(featurizer, DeepImageFeaturizer)
    assert (featurizer.getModelName(), featurizer.getWeights()) == ("MobileNet", weights)
    paths = [local_path(p).as_posix() for p in table["path"]]
    files = spark.read.format("binaryFile").load(paths).withColumnRenamed("content", "image")
    again = loaded.transform(files).select("path", "prediction", "probability").toPandas()
    again = again.set_index(again["path"].map(lambda p: local_path(p).as_posix())).loc[paths]
    assert (again["prediction"].to_numpy() == table["prediction"].to_numpy()).all()
    # TensorFlow's CPU kernels round differently for different batch compositions: ~1e-7.
    confidence = [p[int(i)] for p, i in zip(again["probability"], again["prediction"])]
    np.testing.assert_allclose(confidence, table["confidence"], rtol=0, atol=1e-6)
    # sparkdl's image structs (decoded in full by the JVM, not in draft mode) still go through it.
    structs = spark.read.format("image").load(paths)
    from_structs = (loaded.transform(structs).select(F.col("image.origin").alias("path"), "prediction")
                    .toPandas())
    same = again.loc[[local_path(p).as_posix() for p in from_structs["path"]], "prediction"]
    assert len(from_structs) == 35 and (from_structs["prediction"].to_numpy() == same.to_numpy()).mean() >= 0.9


def outside_the_cache(plan: str) -> str:
    """A physical plan's text without the plans of the cached relations it reads."""
    kept, cached_indent = [], None
    for line in plan.splitlines():
        indent = len(line) - len(line.lstrip(" :|+-"))
        if cached_indent is not None and indent > cached_indent:
            continue
        cached_indent = indent if "InMemoryRelation" in line else None
        kept.append(line)
    return "\n".join(kept)


def test_each_file_is_featurized_once_into_a_disk_cache_of_features_not_pixels(
        spark, photos, weights, tmp_path, caplog):
    """The job's one pass: files' bytes decoded in draft mode in the Python workers, the cached
    rows (path, label, features) hold no pixels and no bytes, an undecodable file is null
    and named, and the training and test sets read the cache instead of featurizing again."""
    import keras
    from pyspark import StorageLevel

    data = copy_dataset(tmp_path, photos, {"buses": BUSES, "cars": CARS})
    (data / "cars" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    featurizer = classify.image_featurizer("MobileNet", weights)
    images = classify.featurize_classes(spark, [str(data / "buses"), str(data / "cars")], featurizer)
    plan = images._jdf.queryExecution().executedPlan().toString()
    [model_runs] = re.findall(r"ArrowEvalPython \[(.*?)\], ", plan)  # the UDFs it evaluates
    assert model_runs.count("apply(") == 1, plan  # the model runs once a row
    assert images.columns == ["path", "label", "features"]
    assert images.storageLevel == StorageLevel.DISK_ONLY
    with caplog.at_level("WARNING"):
        decodable, dropped = classify.class_counts(images, [str(data / "buses"), str(data / "cars")])
    assert (decodable, dropped) == ([3, 3], 1)
    assert "cars: dropped 1 of 4 files that are not decodable images: broken.jpg" in caplog.text

    train, test, counts = classify.split_classes(images, decodable, 0.4, 42)
    assert counts == {"train": 4, "test": 2}
    for part in (train, test):
        plan = outside_the_cache(part._jdf.queryExecution().executedPlan().toString())
        assert "InMemoryTableScan" in plan and "EvalPython" not in plan, plan
    rows = sorted(images.collect(), key=lambda row: row.path)
    assert [row.path.rsplit("/", 1)[-1] for row in rows if row.features is None] == ["broken.jpg"]
    held_out = sorted(row.path for row in test.collect())
    assert held_out == sorted(
        ranked[rank] for label in (0, 1)
        for ranked in [[row.path for row in rows if row.label == label and row.features is not None]]
        for rank in classify.held_out_ranks(3, 0.4, 42, label))
    assert {row.path for row in train.collect()}.isdisjoint(held_out)

    model = keras.applications.MobileNet(alpha=0.25, include_top=False, pooling="avg",
                                         weights=None, input_shape=(224, 224, 3))
    model.load_weights(weights, by_name=True)
    usable = [row for row in rows if row.features is not None]

    def drafted(path: Path) -> np.ndarray:  # what a Keras user's own script does
        image = Image.open(path)
        image.draft("RGB", (224, 224))
        return np.asarray(image.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR),
                          dtype=np.float32)

    pixels = np.stack([drafted(local_path(row.path)) for row in usable])
    expected = model.predict(keras.applications.mobilenet.preprocess_input(pixels), verbose=0)
    np.testing.assert_allclose([row.features.toArray() for row in usable], expected, atol=1e-5, rtol=0)
    images.unpersist()


def test_class_without_readable_images_is_an_error(spark, photos, weights, tmp_path):
    data = copy_dataset(tmp_path / "data", photos, {"buses": BUSES, "cars": ()})
    (data / "cars" / "broken.jpg").write_bytes(b"GIF89a truncated")
    with pytest.raises(UserError, match=r"class folder .*/cars has no readable images \(1 files dropped\)"):
        classify.main(["--data", str(data), "--model", "MobileNet", "--weights", weights,
                       "--output", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_predictor_names_a_bus_and_saves(spark, photos, weights, assets, tmp_path):
    images = readImages(str(photos / "buses" / BUSES[0]), spark)
    predictor = DeepImagePredictor(inputCol="image", outputCol="predicted_labels", modelName="MobileNet",
                                   weights=weights, topK=3,
                                   labelsPath=str(assets / "models/imagenet_labels_1001.txt"))
    top = predictor.transform(images).select("predicted_labels").first().predicted_labels
    assert len(top) == 3
    assert top[0]["description"] in BUS_LIKE, top  # measured: trolleybus, p=0.89
    assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)

    predictor.save(str(tmp_path / "predictor"))
    loaded = DeepImagePredictor.load(str(tmp_path / "predictor"))
    def named(stage):
        return {param.name: value for param, value in stage.extractParamMap().items()}

    assert named(loaded) == named(predictor)
    probabilities = (loaded.transform(images, {loaded.decodePredictions: False})
                     .select("predicted_labels").first().predicted_labels.toArray())
    assert probabilities.shape == (1000,) and probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    assert str(int(probabilities.argmax())) == top[0]["class"]
    assert probabilities.max() == pytest.approx(top[0]["probability"], abs=1e-6)


def test_import_sparkdl_gives_imageschema_spark_23s_readImages(spark, photos, tmp_path):
    """The chapter's `ImageSchema.readImages('buses/')`, there again once sparkdl is imported:
    Spark's image schema, the folder's own images only unless recursive (Spark 2.3's default),
    a file that is not an image dropped."""
    from pyspark.ml.image import ImageSchema

    importlib.import_module("sparkdl")  # the chapter's `import sparkdl as dl`

    folder = tmp_path / "buses"
    (folder / "more").mkdir(parents=True)
    for name in BUSES[:2]:
        shutil.copy(photos / "buses" / name, folder)
    shutil.copy(photos / "cars" / CARS[0], folder / "more")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    images = ImageSchema.readImages(str(folder))
    assert images.schema.simpleString() == ImageSchema.imageSchema.simpleString()
    assert sorted(local_path(row.origin).name for row in images.select("image.origin").collect()
                  ) == sorted(BUSES[:2])
    nested = ImageSchema.readImages(str(folder), recursive=True).select("image.origin").collect()
    assert sorted(local_path(row.origin).name for row in nested) == sorted((*BUSES[:2], CARS[0]))
