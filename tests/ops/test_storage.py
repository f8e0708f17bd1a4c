"""Job data in S3: a real moto S3 server, real Ivy-resolved hadoop-aws jars pinned by the lock,
train-ps reading `--data s3://...` on the local target, and every bad location refused in one
line before anything starts."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kindling import UserError
from ops import jvm
from ops.local import free_port, local_spark_home
from ops.storage.s3 import ObjectStore
from moto_endpoint import ACCESS_KEY, SECRET_KEY, client, moto_server, upload_folder

REPO = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")
BUCKET = "kindling-photos"
PREFIX = "vehicles"


@pytest.fixture(scope="module")
def s3(assets):
    """A moto S3 server on this machine holding the buses-cars photos under s3://BUCKET/PREFIX."""
    with moto_server("127.0.0.1") as endpoint:
        upload_folder(endpoint, BUCKET, PREFIX, assets / "datasets" / "buses-cars")
        yield endpoint


def user_env(endpoint: str, tmp_path: Path, assets: Path, **extra: str) -> dict[str, str]:
    """A user's shell with credentials in the environment and the store's endpoint, no proxies."""
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and not k.startswith("AWS_")}
    return env | {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                  "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1",
                  "HOME": str(tmp_path), "KINDLING_ASSETS": str(assets),
                  "XDG_CACHE_HOME": str(jvm.cache_root().parents[1]),  # the resolved jars
                  "KINDLING_RUNS_DIR": str(tmp_path / "runs")} | extra


@pytest.mark.parametrize("job, data, env_change, message", [
    ("classify", f"s3://no-such-bucket/{PREFIX}", {}, "bucket 'no-such-bucket' does not exist at"),
    ("classify", f"s3://{BUCKET}/no-such-prefix", {}, "nothing is stored under this prefix"),
    ("classify", f"s3://{BUCKET}/{PREFIX}", {"AWS_ACCESS_KEY_ID": None}, "no AWS credentials"),
    ("classify", f"s3://{BUCKET}/{PREFIX}", {"AWS_ENDPOINT_URL": "http://127.0.0.1:{closed}"},
     "cannot reach the S3 endpoint http://127.0.0.1:"),
    ("classify", "hdfs:///photos", {}, "the local target has no HDFS"),
    ("classify", "gs://photos/vehicles", {}, "kindling reads s3:// (or s3a://) and hdfs://"),
    ("train-ps", "s3://no-such-bucket/mnist", {}, "bucket 'no-such-bucket' does not exist at"),
    ("train-mnist", "hdfs:///mnist", {}, "the local target has no HDFS of its own"),
    ("classify --weights", f"s3://{BUCKET}/{PREFIX}/bus.h5", {},
     "classify reads --weights from the hosts' disks"),
])
def test_a_bad_location_is_one_line_before_anything_starts(s3, tmp_path, assets, job, data,
                                                           env_change, message):
    env = user_env(s3, tmp_path, assets)
    for name, value in env_change.items():
        if value is None:
            env.pop(name)
        else:
            env[name] = value.format(closed=free_port())
    spark_logs = REPO / ".kindling" / "local" / "spark" / "logs"
    before = {log.name: log.stat().st_mtime_ns for log in spark_logs.glob("*")}
    job, _, flag = job.partition(" ")
    done = subprocess.run([FAB, "run", job, "--target", "local", "--job-args",
                           f"{flag or '--data'} {data}"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and data in lines[0], lines
    assert message in lines[0], lines
    assert not (tmp_path / "runs").exists()
    assert {log.name: log.stat().st_mtime_ns for log in spark_logs.glob("*")} == before


def test_spark_gets_s3a_and_the_credentials_only_for_an_explicit_endpoint(monkeypatch):
    on_aws = ObjectStore(jar_folder=lambda: "/opt/jars", secrets="/s").access(["s3://b/x"])
    assert on_aws.conf["spark.executor.extraClassPath"] == on_aws.conf["spark.driver.extraClassPath"] == "/opt/jars/*"
    assert on_aws.conf["spark.hadoop.fs.s3.impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"
    assert not any("endpoint" in key or "executorEnv" in key or "auth" in key for key in on_aws.conf)
    assert (on_aws.env, on_aws.private) == ({}, {})  # the instance role: no key leaves this machine

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "an-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-secret-key")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "a-session-token")
    store = ObjectStore("http://10.0.0.1:9000", "eu-west-1", lambda: "/opt/jars", "/opt/k/secrets")
    conf, env, private = store.access(["s3://b/x"])
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://10.0.0.1:9000"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.endpoint.region"] == "eu-west-1"
    # the keys only in the private file, which S3A, boto3 and pyarrow are pointed at
    assert list(private) == ["/opt/k/secrets/aws-credentials"]
    profile = configparser.ConfigParser()
    profile.read_string(private["/opt/k/secrets/aws-credentials"])
    assert dict(profile["kindling"]) == {"aws_access_key_id": "an-access-key",
                                         "aws_secret_access_key": "a-secret-key",
                                         "aws_session_token": "a-session-token"}
    assert conf["spark.hadoop.fs.s3a.aws.credentials.provider"].endswith("ProfileAWSCredentialsProvider")
    assert conf["spark.hadoop.fs.s3a.auth.profile.file"] == env["AWS_SHARED_CREDENTIALS_FILE"] \
        == conf["spark.executorEnv.AWS_SHARED_CREDENTIALS_FILE"] == "/opt/k/secrets/aws-credentials"
    assert conf["spark.hadoop.fs.s3a.auth.profile.name"] == env["AWS_PROFILE"] == "kindling"
    listed = json.dumps([conf, env])
    assert not any(secret in listed for secret in ("an-access-key", "a-secret-key", "a-session-token"))


def test_the_lock_pins_hadoop_aws_at_the_hadoop_version_pyspark_bundles():
    version = jvm.bundled_hadoop_version(Path(local_spark_home()))
    pinned = jvm.locked("s3a")
    assert f"hadoop-aws-{version}.jar" in pinned
    assert any(name.startswith("bundle-2.") for name in pinned)  # the AWS SDK v2 bundle
    assert all(len(digest) == 64 for digest in pinned.values())
    assert 'name="hadoop-aws"' in jvm.ivy_module("s3a", version)


@pytest.mark.slow
def test_jars_that_differ_from_the_lock_are_refused_naming_the_jar(tmp_path, monkeypatch):
    spark_home = Path(local_spark_home())
    pinned = jvm.locked("s3a")
    lock = tmp_path / "jars.lock"
    lock.write_text("".join(f"{'0' * 64 if name.startswith('hadoop-aws') else digest}  s3a/{name}\n"
                            for name, digest in pinned.items()))
    downloaded = jvm.cache_root() / "ivy-cache"
    with jvm.one_resolver():  # no fab downloads into it meanwhile
        if downloaded.is_dir():  # Ivy resolves afresh, from the jars this machine downloaded
            shutil.copytree(downloaded, tmp_path / "cache/kindling/jars/ivy-cache",
                            copy_function=link_jars)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # resolve afresh, by Ivy
    with pytest.raises(UserError, match=r"s3a jars resolved for Hadoop \S+ differ from .*"
                                        r"\(hadoop-aws-[\d.]+\.jar\)"):
        jvm.resolve("s3a", spark_home, lock)


def link_jars(source: str, destination: str) -> None:
    """Jars (700 MB, never changed once downloaded) linked, Ivy's own files copied."""
    if source.endswith(".jar"):
        os.link(source, destination)
    else:
        shutil.copy2(source, destination)


def test_one_fab_at_a_time_resolves_jars_on_a_machine(tmp_path, monkeypatch):
    """Two fabs starting at once (two `fab wheelhouse`) would run two Ivys over one cache, each
    reading the other's half-downloaded jars: the second waits, then names the lock if the
    first never ends."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(jvm, "RESOLVE_TIMEOUT", 1)
    holding, release = threading.Event(), threading.Event()

    def first_fab():
        with jvm.one_resolver():
            holding.set()
            release.wait(timeout=30)
    first = threading.Thread(target=first_fab)
    first.start()
    try:
        assert holding.wait(timeout=30)
        with pytest.raises(UserError, match=r"another fab held .*\.resolving\.lock \(resolving "
                                            r"jars\) for over 1s; end it and retry"):
            with jvm.one_resolver():
                pass
    finally:
        release.set()
        first.join(timeout=30)
    with jvm.one_resolver():  # free again once the first has finished
        pass


@pytest.mark.slow
def test_train_ps_reads_mnist_from_s3_through_its_own_client(s3, tmp_path, assets):
    """A TF job on the local target: its processes read MNIST with pyarrow's S3 client, given
    the endpoint and credentials by fab. (classify through Spark's S3A: the multi-host e2e.)"""
    for file in (assets / "datasets" / "mnist").iterdir():
        client(s3).upload_file(str(file), BUCKET, f"mnist/{file.name}")
    env = user_env(s3, tmp_path, assets)
    started = time.monotonic()
    done = subprocess.run([FAB, "run", "train-ps", "--target", "local", "--data",
                           f"s3://{BUCKET}/mnist", "--epochs", "1", "--job-args",
                           "--steps-per-epoch 20"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = Path(REPO, done.stdout.strip().splitlines()[-1].removeprefix("results: "))
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["train_examples"] == 5000 and metrics["test_examples"] == 10000, metrics
    assert SECRET_KEY not in done.stdout + done.stderr
    print(f"train-ps from s3:// on the local target: {time.monotonic() - started:.1f}s")
