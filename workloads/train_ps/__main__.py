"""`python -m workloads.train_ps`: the job's program (workloads.train_ps.main)."""

from workloads.train_ps.main import cli

if __name__ == "__main__":
    cli()
