"""sparkdl's image API (Deep Learning Pipelines, 2018) on Spark 4 and Keras 3.

    sparkdl                                      kindling
    ImageSchema.readImages(path)             ->  readImages(path)  (or read_image_folder: + counts)
    DeepImageFeaturizer(inputCol, outputCol,  ->  DeepImageFeaturizer(..., modelName, weights)
                        modelName)
    DeepImagePredictor(..., decodePredictions,->  DeepImagePredictor(..., topK, decodePredictions,
                       topK)                           weights, labelsPath)

Both transformers are real Spark ML Transformers built on pyspark's predict_batch_udf: the Keras
model is built once per Python worker, images are resized inside the predict function (shipping
Spark's decoded pixels is about twice as fast as shipping float tensors), and their Params are
plain JSON, so a Pipeline holding them saves and loads (which sparkdl's never did).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.functions import array_to_vector, predict_batch_udf
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

from workloads.classify.image_models import (IMAGENET, build_model, imagenet_labels,
                                             model_input, model_spec, weights_source)

log = logging.getLogger(__name__)

BATCH_SIZE = 32
"""Images per model call inside a Python worker."""
IMAGE_FIELDS = ("height", "width", "nChannels", "data")
"""The image-schema fields the predict functions read, in their argument order."""
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
                    ".h5/.keras file, read by layer name", typeConverter=_weights)

    def getModelName(self) -> str:
        return self.getOrDefault(self.modelName)

    def getWeights(self) -> str:
        return self.getOrDefault(self.weights)

    def _image_columns(self) -> list[Column]:
        return [F.col(self.getInputCol())[field] for field in IMAGE_FIELDS]

    def _checked(self) -> tuple[str, str]:
        """(modelName, weights), checked again on the driver before any worker builds a model."""
        return model_spec(self.getModelName()).name, weights_source(self.getWeights())


class DeepImageFeaturizer(Transformer, _DeepImageParams, DefaultParamsReadable, DefaultParamsWritable):
    """Image column -> feature vector: the model's last conv block, global-average pooled."""

    @keyword_only
    def __init__(self, *, inputCol: str = "image", outputCol: str = "features",
                 modelName: str | None = None, weights: str = IMAGENET):
        super().__init__()
        self._setDefault(inputCol="image", outputCol="features", weights=IMAGENET)
        self._set(**self._input_kwargs)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        features = _features_udf(*self._checked())(*self._image_columns())
        return dataset.withColumn(self.getOutputCol(), array_to_vector(features))


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
            probabilities = _predictions_udf(*self._checked(), 0, None)(*self._image_columns())
            return dataset.withColumn(output, array_to_vector(probabilities))
        labels = tuple(imagenet_labels(self.getOrDefault(self.labelsPath)))
        top_k = _predictions_udf(*self._checked(), self.getOrDefault(self.topK), labels)
        # Through a column of its own, so the model runs once rather than once per zipped field.
        scratch = f"{output}__top_k"
        return (dataset.withColumn(scratch, top_k(*self._image_columns()))
                .withColumn(output, F.arrays_zip(*(F.col(scratch)[name] for name, _ in TOP_K_FIELDS))
                            .cast(PREDICTIONS_TYPE))
                .drop(scratch))


@functools.cache
def _features_udf(model_name: str, weights: str):
    """One UDF per model: predict_batch_udf caches models per UDF, so reusing it reuses them."""
    return predict_batch_udf(functools.partial(_make_featurizer, model_name, weights),
                             return_type=ArrayType(FloatType()), batch_size=BATCH_SIZE)


def _make_featurizer(model_name: str, weights: str):
    """Runs once per Python worker."""
    spec = model_spec(model_name)
    model = build_model(spec, weights, include_top=False)

    def featurize(heights, widths, channels, datas):
        return model.predict_on_batch(model_input(spec, heights, widths, channels, datas))

    return featurize


@functools.cache
def _predictions_udf(model_name: str, weights: str, top_k: int, labels: tuple | None):
    """labels None: the probability vector; else top_k rows of (class, description, probability)."""
    return_type = ArrayType(FloatType()) if labels is None else StructType(
        [StructField(name, ArrayType(kind)) for name, kind in TOP_K_FIELDS])
    return predict_batch_udf(functools.partial(_make_predictor, model_name, weights, top_k, labels),
                             return_type=return_type, batch_size=BATCH_SIZE)


def _make_predictor(model_name: str, weights: str, top_k: int, labels: tuple | None):
    """Runs once per Python worker."""
    spec = model_spec(model_name)
    model = build_model(spec, weights, include_top=True)
    names = np.array(labels, dtype=object) if labels is not None else None

    def predict(heights, widths, channels, datas):
        probabilities = model.predict_on_batch(model_input(spec, heights, widths, channels, datas))
        if names is None:
            return probabilities
        best = np.argsort(-probabilities, axis=1)[:, :top_k]
        return {"class": names[best, 0], "description": names[best, 1],
                "probability": np.take_along_axis(probabilities, best, axis=1)}

    return predict


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
