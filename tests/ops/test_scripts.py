"""A plain script of yours, no kindling import: `fab run path/to/script.py [--roles ...]` as the
user types it. Bad input is one line before anything starts; with roles each process gets its
TF_CONFIG, its own KINDLING_OUTPUT and the code folder on its PYTHONPATH, a failing script is
named by role and host; a PySpark script, TensorFlow's multi-worker Keras tutorial (its
tf.keras `model.fit` under MultiWorkerMirroredStrategy) and the chapter's sparkdl listing run
unchanged on the local target."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_targets import offline_env, refused_before_anything_starts

from kindling import Host, UserError
from ops import local
from workloads.jobs import Placement
from workloads.scripts import job_and_args

REPO = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")
SCRIPTS = REPO / "tests" / "data" / "scripts"

PROBE = """\
import json, os, sys
import helper  # beside the code folder's root, not beside this script: PYTHONPATH
task = json.loads(os.environ["TF_CONFIG"])
seen = {"argv": sys.argv[1:], "tf_config": task, "output": os.environ["KINDLING_OUTPUT"],
        "legacy_keras": os.environ["TF_USE_LEGACY_KERAS"]}
json.dump(seen, open(os.path.join(os.environ["KINDLING_OUTPUT"], "seen.json"), "w"))
print(helper.hello(task["task"]))
"""


def fab(*args: str, runs: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([FAB, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=os.environ | {"KINDLING_RUNS_DIR": str(runs)} | (env or {}),
                          stdin=subprocess.DEVNULL)


def results_of(done: subprocess.CompletedProcess) -> Path:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return (REPO / re.search(r"^results: (\S+)$", done.stdout, re.M).group(1)).resolve()


@pytest.fixture
def code(tmp_path) -> Path:
    """A code folder: the probe script in a subfolder, the module it imports at the root."""
    (tmp_path / "code" / "sub").mkdir(parents=True)
    (tmp_path / "code" / "sub" / "probe.py").write_text(PROBE)
    (tmp_path / "code" / "helper.py").write_text(
        "def hello(task):\n    return f\"hello from {task['type']} {task['index']}\"\n")
    (tmp_path / "notes.txt").write_text("not a script\n")
    (tmp_path / "elsewhere").mkdir()
    return tmp_path / "code"


@pytest.mark.parametrize("argv, message", [
    (["{code}/sub/nothere.py"], "{code}/sub/nothere.py: no such script; pass the path of your "
                                ".py file"),
    (["{code}/../notes.txt"], "is not a Python script (.py); fab runs a .py script of yours or a "
                              "job (`fab jobs` lists them)"),
    (["{code}/sub/probe.py", "--roles", "worker=two"], "--roles worker=two: 'worker=two' is not "
                                                        "ROLE=COUNT with a whole count"),
    (["{code}/sub/probe.py", "--roles", "gpu=1,worker=2"], "unknown role 'gpu'; the roles are "
                                                            "chief, worker and ps"),
    (["{code}/sub/probe.py", "--roles", "chief=1"], "--roles chief=1: no worker; tf.distribute "
                                                     "needs at least one"),
])
def test_bad_script_input_is_one_line_before_anything_starts(argv, message, code, tmp_path):
    line = refused_before_anything_starts(
        ["run", *(a.format(code=code) for a in argv), "--target", "local"], tmp_path)
    assert message.format(code=code) in line, line


def test_a_script_importing_sparkdl_beside_databricks_sparkdl_is_refused_here(install_packages,
                                                                             tmp_path):
    """On the local target the script runs with fab's Python: Databricks' sparkdl installed
    there (whose files may have replaced kindling's sparkdl) is one line before anything starts."""
    site = install_packages("real_sparkdl")
    shutil.copy(SCRIPTS / "sparkdl_chapter" / "image_classification.py", tmp_path)
    line = refused_before_anything_starts(
        ["run", str(tmp_path / "image_classification.py"), "--target", "local"], tmp_path,
        env=offline_env(PYTHONPATH=f"{site}{os.pathsep}{REPO}"))
    assert line.startswith(f"error: {tmp_path}/image_classification.py imports sparkdl, and "
                           "sparkdl 0.2.2 (Databricks'") and line.endswith("pip uninstall sparkdl")


def test_the_notebooks_way_to_spark_is_refused_before_anything_starts(tmp_path):
    """The chapter's listing as printed starts with findspark.init and PYSPARK_SUBMIT_ARGS."""
    listing = (SCRIPTS / "sparkdl_chapter" / "image_classification.py").read_text()
    (tmp_path / "chapter.py").write_text(
        "import findspark\nfindspark.init('/home/ubuntu/spark-2.4.0-bin-hadoop2.7')\n"
        "import os\nos.environ['PYSPARK_SUBMIT_ARGS'] = '--packages databricks:spark-deep-"
        "learning:1.3.0-spark2.4-s_2.11 pyspark-shell'\n" + listing)
    line = refused_before_anything_starts(["run", str(tmp_path / "chapter.py"), "--target",
                                           "local"], tmp_path)
    assert line.startswith(f"error: {tmp_path}/chapter.py imports findspark; fab runs it with "
                           "spark-submit and the cluster's Spark, so remove its findspark lines")


@pytest.mark.parametrize("name, roles, folder, options, message", [
    ("train-ps", "worker=2", None, {}, "--roles and --code are for a script of yours"),
    ("{code}/sub/probe.py", None, "{code}/helper.py", {}, "not a folder that holds"),
    ("{code}/sub/probe.py", None, "{code}/../elsewhere", {}, "not a folder that holds"),
    ("{code}/sub/probe.py", "worker=1,worker=2", None, {}, "each role once"),
    ("{code}/sub/probe.py", "chief=2,worker=1", None, {}, "at most one chief"),
    ("{code}/sub/probe.py", "worker=2,ps=1", None, {}, "parameter servers need a chief"),
    ("{code}/sub/probe.py", None, None, {"data": "x"},
     "has no --data flag; a script's own flags go through --job-args '--data VALUE'"),
])
def test_what_runs_is_refused_in_one_line_when_wrong(name, roles, folder, options, message,
                                                     code):
    """The rest of what `fab deploy|run NAME` refuses, as job_and_args (which fab calls) does."""
    folder = folder.format(code=code) if folder else None
    with pytest.raises(UserError, match=re.escape(message)):
        job_and_args(name.format(code=code), options, "", roles, folder)


def test_the_code_folder_is_the_scripts_or_one_above_it(code):
    job, args = job_and_args(str(code / "sub" / "probe.py"), {}, "--lr 0.1")
    assert (job.module, args) == ("probe.py", ["--code", str(code / "sub"), "--", "--lr", "0.1"])
    job, args = job_and_args(str(code / "sub" / "probe.py"), {}, "", code=str(code.parent))
    assert (job.module, args) == ("code/sub/probe.py", ["--code", str(code.parent), "--"])
    assert job.uses_spark and job.run_name == "probe"


def test_roles_on_a_cluster_each_task_with_its_tf_config(code, monkeypatch):
    """--roles chief=1,worker=3,ps=1 on a master and 2 workers: workers dealt in turn, the chief
    and the ps on the master, each host's tasks on their own ports; the chief decides; the
    opt-out of legacy Keras is the user's TF_USE_LEGACY_KERAS."""
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "0")
    master, *workers = (Host(name, name, f"10.0.0.{i}") for i, name in
                        enumerate(("master", "worker-0", "worker-1"), start=10))
    job, args = job_and_args(str(code / "sub" / "probe.py"), {}, "--epochs 2",
                             "chief=1,worker=3,ps=1", str(code))
    placement = Placement(master, tuple(workers), (), "/opt/venv/bin/python",
                          site_packages="/opt/venv/lib/python3.13/site-packages")
    launch = job.plan(job, placement, job.with_paths(args, {str(code): "/srv/code"}), "/srv/run")
    where = {p.label: (p.host.name, json.loads(dict(p.env)["TF_CONFIG"])["task"])
             for p in launch.processes}
    assert [p.label for p in launch.processes] == ["ps 0", "worker 0", "worker 1", "worker 2",
                                                   "chief 0"]  # servers first
    assert where["worker 2"] == ("worker-0", {"type": "worker", "index": 2})
    assert where["ps 0"][0] == where["chief 0"][0] == "master"
    spec = json.loads(dict(launch.processes[0].env)["TF_CONFIG"])["cluster"]
    assert spec == {"chief": ["10.0.0.10:2222"], "ps": ["10.0.0.10:2223"],
                    "worker": ["10.0.0.11:2222", "10.0.0.12:2222", "10.0.0.11:2223"]}
    chief = launch.processes[-1]
    assert chief.main and not any(p.main for p in launch.processes[:-1])
    assert chief.argv == ("/opt/venv/bin/python", "/srv/code/sub/probe.py", "--epochs", "2")
    env = dict(chief.env)
    assert (env["PYTHONPATH"], env["KINDLING_OUTPUT"], env["TF_USE_LEGACY_KERAS"]) == (
        "/srv/code", "/srv/run", "0")
    assert dict(launch.processes[1].env)["KINDLING_OUTPUT"] == "/srv/run/worker-0"
    assert launch.folders == ("ps-0", "worker-0", "worker-1", "worker-2")


def test_on_this_machines_installation_a_script_keeps_the_pythonpath_fab_runs_with(
        code, monkeypatch):
    """The local target: the code folder, then fab's PYTHONPATH (a checkout used from its folder
    is the kindling, and the sparkdl, the driver imports); a cluster's hosts: the code folder."""
    monkeypatch.setenv("PYTHONPATH", "/home/me/kindling")
    job, args = job_and_args(str(code / "sub" / "probe.py"), {}, "")
    here = Host("local", "127.0.0.1", "127.0.0.1")
    paths = {}
    for name, installed in (("local", ""), ("cluster", "/opt/venv/lib/python3.13/site-packages")):
        placement = Placement(here, (here,), (), sys.executable, site_packages=installed)
        launch = job.plan(job, placement, job.with_paths(args, {str(code / "sub"): "/srv/code"}),
                          "/srv/run")
        paths[name] = dict(launch.processes[0].env)["PYTHONPATH"]
    assert paths == {"local": f"/srv/code{os.pathsep}/home/me/kindling", "cluster": "/srv/code"}


def test_roles_on_the_local_target(code, tmp_path):
    """chief, 2 workers and a ps as 4 processes here: each sees its TF_CONFIG and legacy Keras,
    imports from the code folder, gets its --job-args untouched (fab's own --output and --code
    included); the chief's files come back at the top of the run's folder, the others' in
    theirs; `fab logs --job SCRIPT` shows the run."""
    script = str(code / "sub" / "probe.py")
    done = fab("run", script, "--code", str(code), "--roles", "chief=1,worker=2,ps=1",
               "--target", "local", "--job-args", "--output x --code 'a b'", runs=tmp_path / "runs")
    results = results_of(done)
    for label in ("chief 0", "worker 0", "worker 1", "ps 0"):
        assert f"[{label}] hello from {label}" in done.stdout, done.stdout
    seen = {folder: json.loads((results / folder / "seen.json").read_text())
            for folder in ("", "worker-0", "worker-1", "ps-0")}
    assert seen[""]["tf_config"]["task"] == {"type": "chief", "index": 0}
    assert seen["worker-1"]["tf_config"]["task"] == {"type": "worker", "index": 1}
    cluster = seen[""]["tf_config"]["cluster"]
    assert {role: len(tasks) for role, tasks in cluster.items()} == {"chief": 1, "worker": 2, "ps": 1}
    assert len({address for tasks in cluster.values() for address in tasks}) == 4
    assert all(s["argv"] == ["--output", "x", "--code", "a b"] and s["legacy_keras"] == "1"
               and s["tf_config"]["cluster"] == cluster for s in seen.values())
    assert seen["ps-0"]["output"] == str(results / "ps-0")
    logs = fab("logs", "--job", script, "--target", "local", runs=tmp_path / "runs")
    assert logs.returncode == 0 and "hello from worker 1" in logs.stdout, logs.stderr


FAILS = """\
import json, os, socket
config = json.loads(os.environ["TF_CONFIG"])
if config["task"]["index"] == 1:
    raise RuntimeError("worker one broke")
host, port = config["cluster"]["worker"][0].rsplit(":", 1)
with socket.create_server((host, int(port))) as server:  # waits for its peer, as a TF task does
    server.settimeout(120)
    server.accept()
"""


def test_a_failing_script_is_named_by_role_and_host(tmp_path):
    """worker 1 fails while worker 0, the main process, waits for it: the run stops, naming it."""
    (tmp_path / "fails.py").write_text(FAILS)
    done = fab("run", str(tmp_path / "fails.py"), "--roles", "worker=2", "--target", "local",
               runs=tmp_path / "runs")
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"^error: worker 1 on local \(127\.0\.0\.1\) exited with code 1: "
                     r"RuntimeError: worker one broke; every process of the run was stopped",
                     done.stderr, re.M), done.stderr


@pytest.mark.slow
def test_a_pyspark_script_runs_with_the_clusters_spark(tmp_path):
    """Spark's wordcount, deployed and run on the local target's Spark (the executors import the
    module beside it): its own argument, its prints, its KINDLING_OUTPUT file. That Spark already
    had a user (as a notebook does): the run leaves it running for them, and its last user stops it."""
    code = shutil.copytree(SCRIPTS / "wordcount", tmp_path / "wordcount")
    spark = local.spark_cluster()
    try:
        notebook = spark.acquire()
        daemons = spark.processes()
        done = fab("deploy", str(code / "wordcount.py"), "--target", "local", "--job-args",
                   "words.txt", runs=tmp_path / "runs")
        assert spark.running() and set(daemons) <= set(spark.processes())
        spark.release(notebook)
        assert not spark.running() and spark.processes() == []
    finally:
        spark.stop()
    results = results_of(done)
    assert "[driver] cat: 2" in done.stdout and "[driver] the: 3" in done.stdout, done.stdout
    assert json.loads((results / "counts.json").read_text()) == {
        "the": 3, "cat": 2, "sat": 1, "dog": 1, "and": 1}


@pytest.mark.slow
def test_tensorflows_multi_worker_keras_tutorial_trains_on_two_workers(tmp_path, assets):
    """tf.keras `model.fit` under MultiWorkerMirroredStrategy (which Keras 3 cannot do): two
    worker processes, each with its TF_CONFIG, train together; each keeps its model."""
    code = shutil.copytree(SCRIPTS / "mwms", tmp_path / "mwms")
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(assets / "datasets" / "mnist" / name, code)
    done = fab("run", str(code / "main.py"), "--roles", "worker=2", "--target", "local",
               "--job-args", "5", runs=tmp_path / "runs")
    results = results_of(done)
    print(done.stdout)
    assert re.search(r"^accuracy: 0\.\d{4}$", done.stdout, re.M)
    for folder, index in ((results, 0), (results / "worker-1", 1)):
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["task"] == {"type": "worker", "index": index} and metrics["workers"] == 2
        assert len(metrics["loss"]) == 2 and all(loss > 0 for loss in metrics["loss"])
        assert (folder / "model.keras").stat().st_size > 100_000
    assert re.search(r"\[worker 1\] 5/5 - \d+s - loss: ", done.stdout), done.stdout


CHAPTER_PHOTOS = {"buses": ("images-5.jpeg", "images-7.jpeg", "image-12.jpeg", "images.jpeg"),
                  "cars": ("image-4.jpeg", "images-8.jpeg", "image-11.jpeg", "image-8.jpeg")}
"""The smallest of the chapter's photos: each class splits into train and test rows by the
listing's seeds."""


@pytest.mark.slow
def test_the_chapters_sparkdl_listing_runs(tmp_path, assets):
    """The chapter's transfer learning as written for sparkdl (`import sparkdl as dl`,
    `ImageSchema.readImages`, `DeepImageFeaturizer(modelName="InceptionV3")`, `Pipeline`,
    `MulticlassClassificationEvaluator`), its photos shipped beside it, through `fab run`.
    InceptionV3's ImageNet weights are not available offline: random ones in a file where
    $KINDLING_ASSETS says, as code that names only a model runs offline, so the accuracy is
    only printed, not judged."""
    code = shutil.copytree(SCRIPTS / "sparkdl_chapter", tmp_path / "chapter")
    for folder, names in CHAPTER_PHOTOS.items():
        (code / folder).mkdir()
        for name in names:
            shutil.copy(assets / "datasets" / "buses-cars" / folder / name, code / folder)
    weights = tmp_path / "assets" / "models" / "InceptionV3.h5"
    weights.parent.mkdir(parents=True)
    subprocess.run([sys.executable, "-c", "import keras, sys; keras.applications.InceptionV3("
                    "weights=None, include_top=False, pooling='avg').save(sys.argv[1])",
                    str(weights)], check=True, timeout=300, capture_output=True)
    done = fab("run", str(code / "image_classification.py"), "--target", "local",
               runs=tmp_path / "runs", env=offline_env(KINDLING_ASSETS=str(tmp_path / "assets")))
    results_of(done)
    assert not local.spark_cluster().running()  # started for the run, stopped after it
    print(done.stdout)
    shown = re.findall(r"^\[driver\] \|\{file://\S*\|\s*([01])\|$", done.stdout, re.M)
    assert sorted(set(shown)) == ["0", "1"], done.stdout  # dfbuses.show(5), dfcars.show(5)
    tested = re.findall(r"^\[driver\] \|([01])\.0\s*\|([01])\s*\|$", done.stdout, re.M)
    assert {label for _, label in tested} == {"0", "1"}, done.stdout  # both classes predicted
    assert re.search(r"^\[driver\] \|prediction_label\|", done.stdout, re.M), done.stdout
    assert re.search(r"^\[driver\] accuracy: \d+(\.\d+)?%$", done.stdout, re.M), done.stdout
