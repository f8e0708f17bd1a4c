"""`python -m workloads.train_mnist`: the job's driver (workloads.train_mnist.main), which
spark-submit runs (it needs spark-submit's --master)."""

from workloads.train_mnist.main import cli

if __name__ == "__main__":
    cli()
