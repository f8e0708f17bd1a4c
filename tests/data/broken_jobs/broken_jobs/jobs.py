"""Declarations kindling must refuse, each in one line naming this package."""

from dataclasses import replace

from sample_jobs.job import JOB as ECHO
from workloads.jobs import Flag

NOT_A_JOB = "echo"
TIMED = replace(ECHO, name="timed", flags=(Flag("--timeout", "seconds", type=float),))
