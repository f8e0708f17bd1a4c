"""MNIST data and the CNN that train-ps and train-mnist both train.

Data comes from a standard MNIST folder (the four IDX ``.gz`` files), a ``mnist.npz``
(Keras' layout), or, without ``--data``, Keras' download of the public MNIST.
"""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np

from kindling import UserError
from workloads import stored

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
SHIFT_PIXELS = 2
"""Training digits move by up to this many pixels (the digits sit in a 20x20 box, centred)."""


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzipped or not) into a uint8 array of its declared shape."""
    return parse_idx(path.read_bytes(), str(path))


def parse_idx(data: bytes, path: str) -> np.ndarray:
    """An IDX file's bytes (gzipped or not) as a uint8 array of its declared shape."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise UserError(f"{path} is not an IDX file of unsigned bytes; use the MNIST .gz files")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated: header says {shape}, found {array.size} bytes")
    return array.reshape(shape)


def mnist_source(data: str) -> Path:
    """The mnist.npz or MNIST folder that --data names, checked without reading it."""
    path = Path(data).expanduser()
    if path.is_dir() and (path / "mnist.npz").is_file():
        return path / "mnist.npz"
    if path.is_file() and path.suffix == ".npz":
        return path
    if not path.is_dir():
        raise UserError(f"MNIST data not found: {data}; pass --data with a folder of the four "
                        "MNIST .gz files or an mnist.npz (omit --data to download MNIST)")
    missing = [name for name in IDX_FILES.values() if not (path / name).is_file()]
    if missing:
        raise UserError(f"MNIST folder {path} lacks {', '.join(missing)}; it needs the four "
                        "standard IDX .gz files")
    return path


def load_mnist(data: str | None) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((x_train, y_train), (x_test, y_test)) as uint8 arrays, x of shape (n, 28, 28)."""
    if data is None:
        import keras  # the public MNIST, downloaded and cached by Keras

        return keras.datasets.mnist.load_data()
    if stored.is_uri(data):
        return load_stored_mnist(data)
    path = mnist_source(data)
    if path.suffix == ".npz":
        return read_npz(path, str(path))
    arrays = {key: read_idx(path / name) for key, name in IDX_FILES.items()}
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def load_stored_mnist(location: str):
    """MNIST from the cluster's storage: an mnist.npz, or a folder holding one or the four IDX
    files, read into memory (11 MB)."""
    if location.endswith(".npz"):
        return read_npz(io.BytesIO(stored.read_bytes(location)), location)
    if stored.exists(stored.join(location, "mnist.npz")):
        return load_stored_mnist(stored.join(location, "mnist.npz"))
    missing = [name for name in IDX_FILES.values() if not stored.exists(stored.join(location, name))]
    if missing:
        raise UserError(f"MNIST location {location} lacks {', '.join(missing)}; it needs the four "
                        "standard IDX .gz files or an mnist.npz")
    arrays = {key: parse_idx(stored.read_bytes(stored.join(location, name)),
                             stored.join(location, name)) for key, name in IDX_FILES.items()}
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def read_npz(source, path: str):
    """The four arrays of an mnist.npz (a file or a file object)."""
    with np.load(source) as npz:
        missing = [k for k in IDX_FILES if k not in npz]
        if missing:
            raise UserError(f"{path} lacks arrays {missing}; an mnist.npz holds x_train, "
                            "y_train, x_test, y_test")
        return (npz["x_train"], npz["y_train"]), (npz["x_test"], npz["y_test"])


def shuffled(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle together; the offline 5k training digits come sorted by class."""
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order], y[order]


def to_model_input(x: np.ndarray) -> np.ndarray:
    """uint8 (n, 28, 28) -> float32 (n, 28, 28, 1) in 0..1."""
    return (x.astype(np.float32) / 255.0).reshape((-1, *IMAGE_SHAPE))


def training_input(image, label):
    """A training digit as model input (float32 in 0..1, IMAGE_SHAPE), shifted by up to
    SHIFT_PIXELS in each direction at random (a tf.data map, before batching).

    5k digits are few: shifted copies are new digits to the CNN, so it generalises further
    per epoch instead of memorising the 5k (issue 9: 0.95 -> 0.97+ on the 10k test set)."""
    import tensorflow as tf

    image = tf.reshape(tf.cast(image, tf.float32) / 255.0, IMAGE_SHAPE)
    padded = tf.pad(image, [[SHIFT_PIXELS, SHIFT_PIXELS], [SHIFT_PIXELS, SHIFT_PIXELS], [0, 0]])
    return tf.image.random_crop(padded, IMAGE_SHAPE), label


def adam(learning_rate: float, steps: int):
    """Adam whose rate falls from learning_rate to 0 along a cosine over the run's `steps`:
    big steps early, fine ones at the end, for the best accuracy a fixed budget gives."""
    import keras

    return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, steps))


def build_cnn():
    """The MNIST CNN (two conv blocks, dense head) as a Keras 3 model returning logits."""
    import keras

    return keras.Sequential([
        keras.Input(shape=IMAGE_SHAPE),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.25),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(NUM_CLASSES),
    ], name="mnist_cnn")
