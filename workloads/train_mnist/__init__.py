"""train-mnist, the chapter's TensorFlowOnSpark MNIST: its declaration (job.py), the Spark
driver (main.py), what each TensorFlow node runs on the executors (node.py) and what the nodes
tell the driver: the chief's epochs, the node that failed first (node_reports.py).
`python -m workloads.train_mnist --help`."""
