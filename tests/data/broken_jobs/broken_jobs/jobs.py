"""Declarations kindling must refuse, each in one line naming this package."""

from sample_jobs.job import JOB as ECHO

NOT_A_JOB = "echo"
