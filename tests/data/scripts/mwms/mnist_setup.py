"""The dataset and model of TensorFlow's "Multi-worker training with Keras" tutorial, written as
it writes them (tf.keras, a Sequential CNN, SGD), except that MNIST comes from the IDX files
beside this module instead of a download (the tests copy them here; nothing else differs)."""

import gzip
import os

import numpy as np
import tensorflow as tf

HERE = os.path.dirname(os.path.abspath(__file__))


def read_idx(name, offset):
    with gzip.open(os.path.join(HERE, name)) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def mnist_dataset(batch_size):
    x_train = read_idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    y_train = read_idx("train-labels-idx1-ubyte.gz", 8)
    # uint8 in [0, 255] -> float32 in [0, 1]
    x_train = x_train / np.float32(255)
    y_train = y_train.astype(np.int64)
    return tf.data.Dataset.from_tensor_slices(
        (x_train, y_train)).shuffle(len(x_train)).repeat().batch(batch_size)


def build_and_compile_cnn_model():
    model = tf.keras.Sequential([
        tf.keras.layers.InputLayer(input_shape=(28, 28)),
        tf.keras.layers.Reshape(target_shape=(28, 28, 1)),
        tf.keras.layers.Conv2D(32, 3, activation="relu"),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(128, activation="relu"),
        tf.keras.layers.Dense(10),
    ])
    model.compile(
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=tf.keras.optimizers.SGD(learning_rate=0.001),
        metrics=["accuracy"])
    return model
