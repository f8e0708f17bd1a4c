"""`fab notebook --target local`: JupyterLab on 127.0.0.1 over the local Spark, which it starts
when none runs and, as its last user, stops at the end; a local Spark started by hand it uses as
found and leaves running (users counted: tests/ops/test_scripts.py's wordcount). (A cell run
in a real browser: the netns cluster's notebook, tests/e2e/test_notebook.py.)"""

from __future__ import annotations

import os

import pytest

from e2e.fab_cli import NO_PROXY, end_as_a_person, serving
from ops import local

pytestmark = pytest.mark.slow


def notebook_until_ctrl_c() -> None:
    """`fab notebook --target local` serving its lab page (with its token), then a Ctrl-C."""
    fab, url = serving(os.environ, "notebook", "--target", "local", "--seconds", "600")
    try:
        assert "/lab?token=" in url and NO_PROXY.open(url, timeout=30).status == 200
    finally:
        end_as_a_person(fab, "ctrl-c")
    assert fab.returncode == 0, fab.stderr.read()


def test_a_local_notebook_stops_the_spark_it_started_and_keeps_one_that_ran():
    spark = local.spark_cluster()
    assert not spark.running()  # the local target's tests leave it stopped
    notebook_until_ctrl_c()
    assert not spark.running()
    try:
        spark.start()
        daemons = spark.processes()
        notebook_until_ctrl_c()
        assert spark.running() and set(daemons) <= set(spark.processes())
    finally:
        spark.stop()
