"""sparkdl's image API (Deep Learning Pipelines, 2018) on Spark 4 and Keras 3.

    sparkdl                                      kindling
    ImageSchema.readImages(path)             ->  readImages(path)  (or read_image_folder: + counts)
    DeepImageFeaturizer(inputCol, outputCol,  ->  DeepImageFeaturizer(..., modelName, weights)
                        modelName)
    DeepImagePredictor(..., decodePredictions,->  DeepImagePredictor(..., topK, decodePredictions,
                       topK)                           weights, labelsPath)

Both transformers are real Spark ML Transformers built on a pandas UDF (Arrow batches). Their
input column holds either the image files' compressed bytes (Spark's binaryFile source, what
classify reads: a file is decoded once, in the Python worker, JPEGs by PIL's draft mode straight
to about the model's input size) or Spark's image struct (sparkdl's readImages: pixels decoded
by the JVM, resized in the worker). The Keras model is built once per Python worker and kept
for its later tasks; files that do not decode give null. Their Params are plain JSON, so a
Pipeline holding them saves and loads (which sparkdl's never did). sparkdl code imports them
under sparkdl's own name: `import sparkdl` (the package sparkdl/ beside workloads/).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.functions import array_to_vector
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import (ArrayType, BinaryType, DataType, FloatType, StringType, StructField,
                               StructType)

from workloads.classify.image_models import (IMAGENET, build_model, decoded_rgb, default_weights,
                                             imagenet_labels, model_spec, resized_rgb,
                                             weights_source)

log = logging.getLogger(__name__)

BATCH_SIZE = 32
"""Images per model call inside a Python worker."""
IMAGE_FIELDS = ("height", "width", "nChannels", "data")
"""The image-schema fields the transformers read."""
ARROW_CONF = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(4 * BATCH_SIZE),
              "spark.sql.execution.arrow.maxBytesPerBatch": str(32 * 2**20)}
"""What a session featurizing image files should set: Spark's default Arrow batch (10,000 rows)
would hand a Python worker 10,000 photos at once (gigabytes of phone JPEGs); these keep each
worker's input to 128 files and 32 MiB."""
TOP_K_FIELDS = (("class", StringType()), ("description", StringType()), ("probability", FloatType()))
PREDICTIONS_TYPE = ArrayType(StructType([StructField(name, kind) for name, kind in TOP_K_FIELDS]))
"""DeepImagePredictor's decoded output, as sparkdl's: [(class, description, probability)] best first."""


def _model_name(value: object) -> str:
    return model_spec(TypeConverters.toString(value)).name


def _weights(value: object) -> str:
    return weights_source(TypeConverters.toString(value))


class _DeepImageParams(HasInputCol, HasOutputCol):
    """Params both transformers share; the converters reject bad values when they are set."""

    modelName = Param(Params._dummy(), "modelName", "Keras ImageNet model: InceptionV3, Xception, "
                      "ResNet50, VGG16, VGG19, MobileNet or MobileNetV2", typeConverter=_model_name)
    weights = Param(Params._dummy(), "weights", "'imagenet' (downloaded by Keras) or a Keras "
                    ".h5/.keras file, read by layer name; not set: 'imagenet', or with "
                    "$KINDLING_ASSETS set the model's file there", typeConverter=_weights)

    def getModelName(self) -> str:
        return self.getOrDefault(self.modelName)

    def getWeights(self) -> str:
        return self.getOrDefault(self.weights)

    def _model_column(self, dataset: DataFrame, top: int | None, labels: tuple | None,
                      return_type: DataType) -> Column:
        """The model applied to the input column: files' bytes (binaryFile's `content`) or
        Spark's image struct (sparkdl's readImages); modelName and weights are checked again on
        the driver before any worker builds a model."""
        name = self.getInputCol()
        kind = dataset.schema[name].dataType
        if not (isinstance(kind, BinaryType) or (isinstance(kind, StructType)
                                                 and set(IMAGE_FIELDS) <= set(kind.fieldNames()))):
            raise ValueError(f"input column {name!r} is {kind.simpleString()}; it must hold the "
                             "image files' bytes (binaryFile's content) or Spark's image struct")
        spec = model_spec(self.getModelName())
        weights = (weights_source(self.getWeights()) if self.isSet(self.weights)
                   else default_weights(spec))
        udf = _model_udf(spec.name, weights, top, labels, return_type,
                         image_struct=isinstance(kind, StructType))
        return udf(F.col(name))


class DeepImageFeaturizer(Transformer, _DeepImageParams, DefaultParamsReadable, DefaultParamsWritable):
    """Image column -> feature vector: the model's last conv block, global-average pooled."""

    @keyword_only
    def __init__(self, *, inputCol: str = "image", outputCol: str = "features",
                 modelName: str | None = None, weights: str = IMAGENET):
        super().__init__()
        self._setDefault(inputCol="image", outputCol="features", weights=IMAGENET)
        self._set(**self._input_kwargs)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        features = self._model_column(dataset, None, None, ArrayType(FloatType()))
        return _with_vector(dataset, self.getOutputCol(), features)


class DeepImagePredictor(Transformer, _DeepImageParams, DefaultParamsReadable, DefaultParamsWritable):
    """Image column -> ImageNet predictions: the top-k (class, description, probability), or with
    decodePredictions=False the vector of 1000 probabilities."""

    topK = Param(Params._dummy(), "topK", "how many classes to keep, best first",
                 typeConverter=TypeConverters.toInt)
    decodePredictions = Param(Params._dummy(), "decodePredictions", "output named top-k classes "
                              "instead of the probability vector", typeConverter=TypeConverters.toBoolean)
    labelsPath = Param(Params._dummy(), "labelsPath", "file of the 1000 ImageNet class names in "
                       "Keras order ('' = Keras' class index)", typeConverter=TypeConverters.toString)

    @keyword_only
    def __init__(self, *, inputCol: str = "image", outputCol: str = "predicted_labels",
                 modelName: str | None = None, weights: str = IMAGENET, topK: int = 5,
                 decodePredictions: bool = True, labelsPath: str = ""):
        super().__init__()
        self._setDefault(inputCol="image", outputCol="predicted_labels", weights=IMAGENET, topK=5,
                         decodePredictions=True, labelsPath="")
        self._set(**self._input_kwargs)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        output = self.getOutputCol()
        if not self.getOrDefault(self.decodePredictions):
            probabilities = self._model_column(dataset, 0, None, ArrayType(FloatType()))
            return _with_vector(dataset, output, probabilities)
        labels = tuple(imagenet_labels(self.getOrDefault(self.labelsPath)))
        top_k = self._model_column(dataset, self.getOrDefault(self.topK), labels, StructType(
            [StructField(name, ArrayType(kind)) for name, kind in TOP_K_FIELDS]))
        # Through a column of its own, so the model runs once rather than once per zipped field.
        scratch = f"{output}__top_k"
        return (dataset.withColumn(scratch, top_k)
                .withColumn(output, F.arrays_zip(*(F.col(scratch)[name] for name, _ in TOP_K_FIELDS))
                            .cast(PREDICTIONS_TYPE))
                .drop(scratch))


def _with_vector(dataset: DataFrame, name: str, values: Column) -> DataFrame:
    """The dataset with column `name`: the values as a Spark ML vector, null staying null
    (array_to_vector fails on it). Through a column of its own, so the model runs once."""
    arrays = dataset.withColumn(name, values)
    return arrays.withColumn(name, F.when(F.col(name).isNotNull(), array_to_vector(F.col(name))))


@functools.cache
def _model(model_name: str, weights: str, include_top: bool):
    """Built once per Python worker (reused across tasks), then kept."""
    _use_task_cores()
    return build_model(model_spec(model_name), weights, include_top=include_top)


def _use_task_cores() -> None:
    """TensorFlow's op kernels run on as many threads as Spark gives a task cores
    (spark.task.cpus), not on one per core of the host: an executor runs a Python worker per
    core, and each would otherwise spin threads on every core."""
    import tensorflow as tf
    from pyspark import TaskContext

    task = TaskContext.get()
    if task is None:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(task.cpus())
    except RuntimeError:  # TensorFlow already ran in this worker: its threads stay as they are
        pass


def _model_udf(model_name: str, weights: str, top: int | None, labels: tuple | None,
               return_type: DataType, image_struct: bool):
    """A pandas UDF over image files' bytes (or image-schema structs): the images decoded in the
    Python worker, fed to the model BATCH_SIZE at a time, undecodable ones null.

    top None: the pooled features; 0: the probability vector; k > 0: the top k named classes."""
    size = model_spec(model_name).input_size

    def decode(cell) -> np.ndarray | None:
        if image_struct:
            return None if cell is None else resized_rgb(
                cell["data"], cell["height"], cell["width"], cell["nChannels"], size)
        return None if cell is None else decoded_rgb(cell, size)

    # Spark reads the hints only to pick the iterator UDF kind: an image struct arrives as a
    # pd.DataFrame, and the top-k struct leaves as one.
    @pandas_udf(return_type)
    def apply(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        model = _model(model_name, weights, top is not None)
        spec = model_spec(model_name)
        for batch in batches:
            rows = batch.to_dict("records") if image_struct else batch
            outputs = model_outputs(model, spec, [decode(cell) for cell in rows])
            yield outputs if top is None or labels is None else _named_top(outputs, top, labels)

    return apply


def model_outputs(model, spec, images: list) -> pd.Series:
    """The model's output per image (None where the image is None), BATCH_SIZE images a call."""
    present = [i for i, image in enumerate(images) if image is not None]
    results: list[np.ndarray | None] = [None] * len(images)
    for start in range(0, len(present), BATCH_SIZE):
        chunk = present[start:start + BATCH_SIZE]
        values = model.predict_on_batch(spec.preprocess(np.stack([images[i] for i in chunk])))
        for index, row in zip(chunk, np.asarray(values)):
            results[index] = row
    return pd.Series(results, dtype=object)


def _named_top(probabilities: pd.Series, top: int, labels: tuple) -> pd.DataFrame:
    names = np.array(labels, dtype=object)
    best = [None if p is None else np.argsort(-p)[:top] for p in probabilities]
    return pd.DataFrame({
        "class": [None if b is None else names[b, 0].tolist() for b in best],
        "description": [None if b is None else names[b, 1].tolist() for b in best],
        "probability": [None if b is None else p[b] for p, b in zip(probabilities, best)]})


@dataclass(frozen=True)
class ImageFolder:
    images: DataFrame
    """Cached, one row per decodable image (column `image`, Spark's image schema)."""
    files: int
    count: int

    @property
    def dropped(self) -> int:
        """Files that are not decodable images (corrupt, or not images at all)."""
        return self.files - self.count


def read_image_folder(path: str, spark: SparkSession | None = None,
                      recursive: bool = True) -> ImageFolder:
    """Spark's image source over a folder, counting what it dropped (a binaryFile listing of the
    same files minus the decodable images), so bad files never vanish silently."""
    spark = spark or SparkSession.builder.getOrCreate()
    images = (spark.read.format("image").option("dropInvalid", True)
              .option("recursiveFileLookup", recursive).load(path).cache())
    files = spark.read.format("binaryFile").option("recursiveFileLookup", recursive).load(path).count()
    folder = ImageFolder(images, files=files, count=images.count())
    if folder.dropped:
        log.warning("%s: dropped %d of %d files that are not decodable images", path,
                    folder.dropped, folder.files)
    return folder


def readImages(path: str, spark: SparkSession | None = None, recursive: bool = True) -> DataFrame:
    """sparkdl's ImageSchema.readImages: the images DataFrame (dropped files are logged)."""
    return read_image_folder(path, spark, recursive).images
