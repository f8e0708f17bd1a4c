"""Stands for Databricks' sparkdl, whose Spark 2.4 code fails on Spark 4 (tests)."""
raise ImportError("Databricks' sparkdl was imported, not kindling's")
