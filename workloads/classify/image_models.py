"""The Keras side of the image transformers: which ImageNet model, what input it wants, which weights.

No Spark here: this runs inside every Python worker (and in plain Python for checks and benchmarks).
Keras and h5py are imported inside the functions so that `--help` and flag errors stay fast.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from kindling import UserError
from workloads.common import OFFLINE_MOBILENET, asset

IMAGENET = "imagenet"
WEIGHT_FILE_SUFFIXES = (".h5", ".hdf5", ".keras")
OFFLINE_WEIGHTS = {"MobileNet": OFFLINE_MOBILENET}
"""The offline copy of a model's weights below $KINDLING_ASSETS, when not models/<name>.h5."""
RESAMPLE = Image.Resampling.BILINEAR
"""How images are resized to the model's input (PIL's bilinear filter antialiases when shrinking)."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    """sparkdl's modelName; also the keras.applications constructor of that name."""
    family: str
    """The keras.applications module whose preprocess_input the model was trained with."""
    input_size: int
    feature_size: int
    """Length of the pooled features at the default width (alpha 1.0)."""
    width_layer: str = ""
    """MobileNets: the layer whose output channels reveal the width multiplier (alpha) of a file..."""
    full_width: int = 0
    """...and its channels at alpha 1.0."""

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """Keras' preprocess_input for this family, on a float32 copy (it scales float input in place)."""
        import keras

        return getattr(keras.applications, self.family).preprocess_input(rgb.astype(np.float32))

    def width_argument(self, saved: list[tuple[str, list[np.ndarray]]], source: str) -> dict[str, float]:
        """The constructor's width argument matching a weights file ({} for fixed-width models)."""
        if not self.width_layer:
            return {}
        kernels = {name: values[0] for name, values in saved}
        if self.width_layer not in kernels:
            raise UserError(f"weights file {source} has no layer {self.width_layer}, so it is not a "
                            f"{self.name}; pass a file saved from keras.applications.{self.name}")
        return {"alpha": kernels[self.width_layer].shape[-1] / self.full_width}


MODEL_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("InceptionV3", "inception_v3", 299, 2048),
    ModelSpec("Xception", "xception", 299, 2048),
    ModelSpec("ResNet50", "resnet50", 224, 2048),
    ModelSpec("VGG16", "vgg16", 224, 512),
    ModelSpec("VGG19", "vgg19", 224, 512),
    ModelSpec("MobileNet", "mobilenet", 224, 1024, width_layer="conv_pw_13", full_width=1024),
    ModelSpec("MobileNetV2", "mobilenet_v2", 224, 1280, width_layer="block_16_project", full_width=320),
)}


def model_spec(name: str) -> ModelSpec:
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_SPECS)}") from None


def weights_source(weights: str | None) -> str:
    """'imagenet', or the absolute path of an existing Keras weights file.

    Random weights (None) are refused: every Python worker would draw different ones.
    """
    if weights == IMAGENET:
        return weights
    if not weights:
        raise UserError("weights must be 'imagenet' or a Keras .h5/.keras file; random weights "
                        "would differ on every Spark worker")
    path = Path(weights).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"weights file not found: {weights}; pass an existing .h5/.keras file "
                        "or 'imagenet'")
    if path.suffix not in WEIGHT_FILE_SUFFIXES:
        raise UserError(f"weights file {weights} is not a Keras .h5/.keras file; save it with "
                        "model.save('name.keras') or pass 'imagenet'")
    return str(path)


def default_weights(spec: ModelSpec) -> str:
    """The weights of a transformer given none: 'imagenet' (Keras downloads them), or with
    $KINDLING_ASSETS set (tests and offline demos, as the jobs' offline defaults) the model's
    file there, models/<name>.h5 (MobileNet: the shared MobileNet file), so that code which
    names only a model, such as the chapter's, runs offline unchanged."""
    offline = asset(OFFLINE_WEIGHTS.get(spec.name, f"models/{spec.name}.h5"))
    return IMAGENET if offline is None else weights_source(offline)


def saved_weights(path: str) -> list[tuple[str, list[np.ndarray]]]:
    """(layer name, weight arrays) of the file's layers that have weights, in the model's order;
    arrays in Keras' saved order (trainable, then non-trainable).

    Read directly rather than with keras.models.load_model, because Keras 3 cannot rebuild some
    Keras 2 files (MobileNet's DepthwiseConv2D 'groups' argument) whose weights are fine.
    """
    if path.endswith(".keras"):
        import keras

        model = keras.saving.load_model(path, compile=False)
        return [(layer.name, [v.numpy() for v in layer.trainable_weights + layer.non_trainable_weights])
                for layer in model.layers if layer.weights]
    import h5py

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in group.attrs:
            raise UserError(f"weights file {path} has no Keras layer names; save the model with "
                            "model.save('name.keras') or model.save('name.h5')")
        layers = [(_text(name), group[_text(name)]) for name in group.attrs["layer_names"]]
        return [(name, [np.asarray(layer[_text(w)]) for w in layer.attrs["weight_names"]])
                for name, layer in layers if len(layer.attrs["weight_names"])]


def _text(value: str | bytes) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else value


def load_in_order(model, saved: list[tuple[str, list[np.ndarray]]], source: str) -> None:
    """Give the model's layers with weights those of the file's, pairwise in order, as Keras loads
    its own application weights: names are no key, since unnamed layers (most of InceptionV3)
    get a per-process counter in their name. The file may go on after the model's last layer
    (a full model's classification head, unused by the feature extractor); shapes must match.
    """
    layers = [layer for layer in model.layers if layer.weights]
    if len(saved) < len(layers):
        raise UserError(f"weights file {source} has {len(saved)} layers with weights, "
                        f"{model.name} needs {len(layers)}; pass a file saved from the same "
                        "keras.applications model (with its classification head for predictions)")
    for index, (layer, (name, values)) in enumerate(zip(layers, saved), start=1):
        variables = layer.trainable_weights + layer.non_trainable_weights
        expected = [tuple(v.shape) for v in variables]
        if expected != [v.shape for v in values]:
            raise UserError(f"weights file {source} does not fit {model.name}: its layer #{index} "
                            f"({name}) has shapes {[v.shape for v in values]}, the model's "
                            f"({layer.name}) needs {expected}; pass a file saved from the same "
                            "keras.applications model")
        for variable, value in zip(variables, values):
            variable.assign(value)


def build_model(spec: ModelSpec, weights: str, include_top: bool):
    """The model with the same weights on every worker: the 1000-class ImageNet classifier
    (include_top) or the feature extractor (last conv block, global-average pooled)."""
    import keras

    constructor = getattr(keras.applications, spec.name)
    shape = {"include_top": include_top, "pooling": None if include_top else "avg",
             "input_shape": (spec.input_size, spec.input_size, 3)}
    if weights == IMAGENET:
        return constructor(weights=IMAGENET, **shape)  # Keras downloads and caches the file
    saved = saved_weights(weights)
    model = constructor(weights=None, **shape, **spec.width_argument(saved, weights))
    load_in_order(model, saved, weights)
    return model


def resized_rgb(data: bytes, height: int, width: int, channels: int, size: int) -> np.ndarray:
    """Pixels from Spark's image source (row-major uint8 BGR, BGRA or gray) as size x size RGB.

    Resized before the channels are reordered: PIL filters each channel alike, and flipping the
    small image is cheaper. Alpha is dropped (as PIL's convert('RGB') does), not composited.
    """
    pixels = np.frombuffer(data, dtype=np.uint8).reshape(height, width, channels)
    if channels == 1:
        return np.asarray(Image.fromarray(pixels[:, :, 0]).resize((size, size), RESAMPLE).convert("RGB"))
    if channels not in (3, 4):
        raise ValueError(f"images have 1, 3 or 4 channels, got {channels}")
    bgr = Image.fromarray(np.ascontiguousarray(pixels[:, :, :3]))
    return np.asarray(bgr.resize((size, size), RESAMPLE))[:, :, ::-1]


def decoded_rgb(data: bytes, size: int) -> np.ndarray | None:
    """An image file's bytes (JPEG, PNG, GIF, ...) as size x size RGB, or None when PIL cannot
    decode them. A JPEG is decoded straight at the smallest scale its DCT offers that is still
    at least size x size (PIL's draft mode: a 12 MP photo costs a 1/8 decode), then resized."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (size, size))
            return np.asarray(image.convert("RGB").resize((size, size), RESAMPLE))
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError):
        return None  # not an image, truncated, corrupt, or too large to be one (PIL's errors)


def imagenet_labels(labels_path: str = "") -> list[tuple[str, str]]:
    """(class, description) of the 1000 ImageNet classes in Keras order.

    Without a file: Keras' class index (WordNet ids, downloaded and cached). With a file: one name
    per line, class = the line's index; a leading `background` line (1001-line files) is skipped.
    """
    if not labels_path:
        from keras.applications.imagenet_utils import decode_predictions

        return [(wnid, name) for ((wnid, name, _),) in decode_predictions(np.eye(1000), top=1)]
    path = Path(labels_path).expanduser()
    if not path.is_file():
        raise UserError(f"labels file not found: {labels_path}; pass a file with one ImageNet "
                        "class name per line, or no labels file to use Keras' class index")
    names = path.read_text().splitlines()
    if len(names) == 1001 and names[0].strip().lower() == "background":
        names = names[1:]
    if len(names) != 1000:
        raise UserError(f"labels file {labels_path} has {len(names)} lines; it needs the 1000 "
                        "ImageNet classes in Keras order (optionally after a 'background' line)")
    return [(str(index), name) for index, name in enumerate(names)]
