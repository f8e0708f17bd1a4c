"""train-mnist, the chapter's TensorFlowOnSpark MNIST: its declaration (job.py), the Spark
driver (main.py), what each TensorFlow node runs on the executors (node.py) and the report of
the node that failed first (node_failures.py). `python -m workloads.train_mnist --help`."""
