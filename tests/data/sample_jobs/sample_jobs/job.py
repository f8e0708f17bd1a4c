"""The echo job declared through kindling's public job API; no kindling internals."""

from __future__ import annotations

from workloads.jobs import OUTPUT_FLAG, Flag, Job, Launch, Placement, Process


def one_process(job: Job, placement: Placement, args: list[str], run_dir: str) -> Launch:
    """The job's program once, on the master."""
    argv = (placement.python, "-m", job.module, *args, OUTPUT_FLAG, run_dir)
    return Launch([Process("echo 0", placement.master, argv, placement.process_env, main=True)])


JOB = Job("echo", "sample_jobs.main", "says a word and keeps it in its metrics",
          flags=(Flag("--word", "the word to say", default="hello"),),
          plan=one_process, uses_spark=False)
