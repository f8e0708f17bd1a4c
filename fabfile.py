"""`fab` entry point: the tasks live in ops/tasks.py; this file only re-exports them."""

from ops.tasks import (deploy, exec_, jars, jobs, logs, notebook, put, run_job, ssh, status, stop,
                       tensorboard, ui, wheelhouse)

__all__ = ["deploy", "exec_", "jars", "jobs", "logs", "notebook", "put", "run_job", "ssh",
           "status", "stop", "tensorboard", "ui", "wheelhouse"]
