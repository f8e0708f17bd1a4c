"""Databricks' sparkdl installed beside kindling's `sparkdl` import name: found by its
distribution, refused in one line. Standard library only: `import sparkdl` checks it first, and
fab checks it before a script that imports sparkdl runs with this machine's Python."""

from __future__ import annotations

from importlib import metadata

DISTRIBUTIONS = ("sparkdl", "spark-deep-learning")
"""The names Databricks' sparkdl (Deep Learning Pipelines) was published under."""


def real_sparkdl() -> str | None:
    """'sparkdl 0.2.2' when Databricks' sparkdl is installed in this Python, else None."""
    for name in DISTRIBUTIONS:
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def conflict(found: str) -> str:
    """The one line naming the problem and the fix."""
    return (f"{found} (Databricks' Deep Learning Pipelines, Spark 2.4 only) is installed beside "
            "kindling, whose sparkdl-compatible API `import sparkdl` must mean; uninstall it: "
            f"pip uninstall {found.split()[0]}")
