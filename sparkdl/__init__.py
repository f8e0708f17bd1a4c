"""kindling's sparkdl-compatible API under sparkdl's import name, so that code written for
Databricks' sparkdl (Deep Learning Pipelines, which stopped at Spark 2.4) runs on Spark 4:

    import sparkdl as dl
    from pyspark.ml.image import ImageSchema
    images = ImageSchema.readImages("buses/")  # Spark 2.3's, gone since Spark 3: added here
    dl.DeepImageFeaturizer(inputCol="image", outputCol="features", modelName="InceptionV3")

The names are workloads.classify.deep_image's, not copies; what they cover and what they do not:
docs/classify.md. Imported where Databricks' sparkdl is installed too, it refuses in one line.
"""

from workloads.classify.sparkdl_conflict import conflict, real_sparkdl

if _found := real_sparkdl():
    raise ImportError(conflict(_found))

from pyspark.ml.image import ImageSchema  # noqa: E402
from pyspark.sql import DataFrame  # noqa: E402

from workloads.classify.deep_image import (DeepImageFeaturizer, DeepImagePredictor,  # noqa: E402
                                           readImages)

__all__ = ["DeepImageFeaturizer", "DeepImagePredictor", "readImages"]


def _read_images(path: str, recursive: bool = False) -> DataFrame:
    """Spark 2.3's `ImageSchema.readImages(path, recursive=False)`: the images DataFrame in
    Spark's image schema, through kindling's readImages (files that are not images dropped,
    counted and logged)."""
    return readImages(path, recursive=recursive)


if not hasattr(ImageSchema, "readImages"):
    ImageSchema.readImages = _read_images
