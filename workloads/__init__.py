"""kindling's jobs: distributed TensorFlow (train-ps), TensorFlowOnSpark MNIST (train-mnist) and
sparkdl-style transfer learning (classify). Each module runs on its own with ``--help``."""
