"""kindling's jobs: distributed TensorFlow (train_ps/), TensorFlowOnSpark MNIST (train_mnist/)
and sparkdl-style transfer learning (classify/), one package each (its declaration in job.py,
its program in main.py; `python -m workloads.JOB --help`), and beside them what they share:
the job interface (jobs.py), common.py, stored.py, mnist.py, training.py, training_flags.py."""
