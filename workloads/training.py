"""What train-ps and train-mnist share on their TensorFlow processes: the CNN's training step
under any tf.distribute strategy, its evaluation and export, the all-reduce barrier, and
resuming from an earlier run's checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from kindling import UserError
from workloads import stored
from workloads.mnist import build_cnn, to_model_input


def train_step(strategy, model, optimizer, global_batch_size: int | None = None):
    """A tf.function that takes a batch from an iterator and trains every replica on it;
    returns [loss, accuracy] of the global batch (each replica's share, summed over replicas).
    global_batch_size: the batch both are averaged over (None: each replica's batch times the
    replicas in sync)."""
    import keras
    import tensorflow as tf

    per_example_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                  reduction="none")

    @tf.function
    def step(batches):
        def replica_step(images, labels):
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                loss = tf.nn.compute_average_loss(per_example_loss(labels, logits),
                                                  global_batch_size=global_batch_size)
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=labels.dtype),
                                       labels), tf.float32)
            accuracy = tf.nn.compute_average_loss(correct, global_batch_size=global_batch_size)
            return tf.stack([loss, accuracy])

        return strategy.reduce("SUM", strategy.run(replica_step, args=next(batches)), axis=None)

    return step


class Epoch(NamedTuple):
    loss: float
    """Mean training loss of the epoch's steps."""
    accuracy: float
    """Mean training accuracy of the epoch's batches."""
    seconds: float
    """Time of its steps, checkpointing not included."""


def epoch_of(step_results: list, seconds: float) -> Epoch:
    """An Epoch from its steps' [loss, accuracy] results."""
    losses, accuracies = zip(*(tuple(float(v) for v in result) for result in step_results))
    return Epoch(sum(losses) / len(losses), sum(accuracies) / len(accuracies), seconds)


def summary_writer(output: Path):
    """TensorBoard's event files in <output>/tensorboard: fetched with the results, which
    `fab tensorboard` serves."""
    import tensorflow as tf

    return tf.summary.create_file_writer(str(output / "tensorboard"))


def log_epoch(writer, step: int, epoch: Epoch) -> None:
    """One epoch's training loss and accuracy as TensorBoard scalars at `step`."""
    import tensorflow as tf

    with writer.as_default():
        tf.summary.scalar("loss", epoch.loss, step=step)
        tf.summary.scalar("accuracy", epoch.accuracy, step=step)
    writer.flush()


def plot_training_curve(epochs: list[Epoch], path: Path, first_epoch: int = 1) -> None:
    """training_curve.png: the training loss and accuracy per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numbers = range(first_epoch, first_epoch + len(epochs))
    fig, (loss, accuracy) = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, values, name in ((loss, [e.loss for e in epochs], "training loss"),
                             (accuracy, [e.accuracy for e in epochs], "training accuracy")):
        ax.plot(numbers, values, marker="o")
        ax.set(xlabel="epoch", title=name)
        ax.set_xticks(list(numbers))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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


def store_checkpoints(folder: str, run_store: str) -> None:
    """The chief's checkpoints into the run's folder in the cluster's storage, where a later
    run resumes from on any host. The `checkpoint` index goes last: a copy cut short (the chief's
    host taken) leaves an index that names a checkpoint whose files are all there."""
    files = sorted(Path(folder).iterdir(), key=lambda file: file.name == "checkpoint")
    for file in files:
        stored.copy(str(file), stored.join(run_store, "checkpoints", file.name))


def checkpoints_in(run: str) -> str:
    """An earlier run's checkpoints folder (local or stored), refused in one line when it has
    none."""
    folder = stored.join(run, "checkpoints")
    if not stored.exists(stored.join(folder, "checkpoint")):
        raise UserError(f"--resume {run}: no checkpoints there (no {folder}/checkpoint); pass "
                        "the results folder or stored location of an earlier run of this job")
    return folder


def resumed_checkpoint(run: str) -> str:
    """The latest checkpoint of an earlier run, on this host's disk (copied when stored)."""
    import tensorflow as tf

    folder = checkpoints_in(run)
    return tf.train.latest_checkpoint(stored.download(folder) if stored.is_uri(run) else folder)
