"""The main.py of TensorFlow's "Multi-worker training with Keras" tutorial, as every worker runs
it: TF_CONFIG names the cluster and this task, MultiWorkerMirroredStrategy trains the model with
`model.fit`. A few steps only (a test); then each worker keeps its model and history in its
KINDLING_OUTPUT, where the tutorial saves the chief's model and deletes the others' copies."""

import json
import os
import sys

import tensorflow as tf

import mnist_setup

per_worker_batch_size = 64
tf_config = json.loads(os.environ["TF_CONFIG"])
num_workers = len(tf_config["cluster"]["worker"])

strategy = tf.distribute.MultiWorkerMirroredStrategy()

global_batch_size = per_worker_batch_size * num_workers
multi_worker_dataset = mnist_setup.mnist_dataset(global_batch_size)

with strategy.scope():
    # Model building/compiling need to be within `strategy.scope()`.
    multi_worker_model = mnist_setup.build_and_compile_cnn_model()

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 70
history = multi_worker_model.fit(multi_worker_dataset, epochs=2, steps_per_epoch=steps,
                                 verbose=2)

output = os.environ["KINDLING_OUTPUT"]
multi_worker_model.save(os.path.join(output, "model.keras"))
with open(os.path.join(output, "metrics.json"), "w") as f:
    json.dump({"accuracy": history.history["accuracy"][-1], "loss": history.history["loss"],
               "workers": num_workers, "task": tf_config["task"]}, f)
