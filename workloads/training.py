"""What train-ps and train-mnist share on their TensorFlow processes: the CNN's training step
under any tf.distribute strategy, its evaluation and export, and the all-reduce barrier."""

from __future__ import annotations

from pathlib import Path

from workloads.mnist import build_cnn, to_model_input


def train_step(strategy, model, optimizer, global_batch_size: int | None = None):
    """A tf.function that takes a batch from an iterator and trains every replica on it;
    returns the loss summed over replicas. global_batch_size: the batch the loss is averaged
    over (None: each replica's batch times the replicas in sync)."""
    import keras
    import tensorflow as tf

    per_example_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                  reduction="none")

    @tf.function
    def step(batches):
        def replica_step(images, labels):
            with tf.GradientTape() as tape:
                loss = tf.nn.compute_average_loss(
                    per_example_loss(labels, model(images, training=True)),
                    global_batch_size=global_batch_size)
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return loss

        return strategy.reduce("SUM", strategy.run(replica_step, args=next(batches)), axis=None)

    return step


def evaluate_and_export(weights: list, test_set, path: Path) -> tuple[float, float]:
    """(loss, accuracy) of the trained weights on the test set, and model.keras at path, both
    from a plain Keras model built outside any strategy, so the saved model loads anywhere."""
    import keras

    x_test, y_test = test_set
    model = build_cnn()
    model.set_weights(weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)  # uncompiled: no optimizer state that was never trained
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    scores = model.evaluate(to_model_input(x_test), y_test, batch_size=1000, verbose=0,
                            return_dict=True)
    return float(scores["loss"]), float(scores["accuracy"])


def barrier(strategy) -> None:
    """Return once every replica of a synchronous strategy got here: an all-reduce of ones.

    Sync trainers leave together, after the chief's evaluation: TF's coordination service
    takes a trainer that exits early for a crash."""
    import tensorflow as tf

    @tf.function
    def all_reduce_ones():
        return strategy.reduce("SUM", strategy.run(tf.ones, args=((),)), axis=None)

    all_reduce_ones()
