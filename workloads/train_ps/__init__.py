"""train-ps, the chapter's distributed TensorFlow: its declaration (job.py), the program every
process runs (main.py), cluster specs (tf_cluster.py) and the watch on peers (peer_watch.py).
`python -m workloads.train_ps --help` runs it."""
