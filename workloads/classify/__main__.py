"""`python -m workloads.classify`: the job's program (workloads.classify.main)."""

from workloads.classify.main import cli

if __name__ == "__main__":
    cli()
