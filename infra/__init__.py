"""The Pulumi program (Pulumi.yaml `main: infra/`): an EC2 Spark cluster whose outputs are the ops inventory."""
