"""kindling's `sparkdl` import name: Databricks' sparkdl installed beside it (here a stand-in
distribution of the same name and package, installed by pip) is refused in one line by
`import sparkdl`, and fab sees which scripts import sparkdl. Its readImages on pyspark's
ImageSchema runs on Spark in test_classify_spark; the chapter's listing in ops/test_scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kindling import UserError
from workloads.scripts import check_sparkdl_here, imported, job_and_args

REPO = Path(__file__).resolve().parents[2]
FIX = "pip uninstall sparkdl"


@pytest.fixture(scope="module")
def databricks_sparkdl(install_packages) -> Path:
    return install_packages("real_sparkdl")


def python(code: str, *path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60,
                          env=os.environ | {"PYTHONPATH": os.pathsep.join(map(str, path))})


def test_import_sparkdl_beside_databricks_sparkdl_is_one_line_naming_the_fix(databricks_sparkdl):
    done = python("import sparkdl as dl", REPO, databricks_sparkdl)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: sparkdl 0.2.2 (Databricks' Deep Learning Pipelines, "
                           "Spark 2.4 only) is installed beside kindling"), last
    assert last.endswith(FIX), last


def test_without_it_import_sparkdl_is_kindlings_api_and_adds_readImages_to_imageschema():
    code = ("from pyspark.ml.image import ImageSchema; "
            "before = hasattr(ImageSchema, 'readImages'); "
            "import sparkdl as dl; from workloads.classify import deep_image; "
            "print(before, dl.DeepImageFeaturizer is deep_image.DeepImageFeaturizer, "
            "dl.DeepImagePredictor is deep_image.DeepImagePredictor, "
            "dl.readImages is deep_image.readImages, callable(ImageSchema.readImages))")
    done = python(code, REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True", "True", "True"]


@pytest.mark.parametrize("source, imports", [
    ("import sparkdl as dl\n", True),
    ("import os, sparkdl\n", True),
    ("from sparkdl.image import imageIO\n", True),
    ("def f():\n    from sparkdl import DeepImageFeaturizer\n", True),
    ("import sparkdlx\nfrom . import sparkdl\n# import sparkdl\n", False),
    ("import sparkdl as\n", False),  # Python's own SyntaxError says what is wrong
])
def test_which_scripts_import_sparkdl(source, imports, tmp_path):
    (tmp_path / "script.py").write_text(source)
    assert ("sparkdl" in imported(str(tmp_path / "script.py"))) is imports


def test_a_script_importing_sparkdl_runs_here_only_without_databricks_sparkdl(
        databricks_sparkdl, tmp_path, monkeypatch):
    (tmp_path / "chapter.py").write_text("import sparkdl as dl\n")
    (tmp_path / "plain.py").write_text("import pyspark\n")
    chapter = job_and_args(str(tmp_path / "chapter.py"), {})[0]
    plain = job_and_args(str(tmp_path / "plain.py"), {})[0]
    check_sparkdl_here(chapter)  # kindling's sparkdl alone
    monkeypatch.syspath_prepend(str(databricks_sparkdl))
    with pytest.raises(UserError, match=rf"^{tmp_path}/chapter.py imports sparkdl, and sparkdl "
                                        rf"0.2.2 \(Databricks' .*: {FIX}$"):
        check_sparkdl_here(chapter)
    check_sparkdl_here(plain)
    check_sparkdl_here(job_and_args("classify", {})[0])
