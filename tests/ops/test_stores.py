"""The storage seam (ops.storage) and the results fetch (ops.results), without root: each store
against a real server (moto's S3, the tests' one-host HDFS), host staging and fetching against
this machine standing in for a host (its commands run here, its files copied here)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from invoke import Context

from kindling import Host, Inventory, UserError
from ops import results
from ops.cluster import Cluster
from ops.storage import Storage, for_cluster, staging
from ops.storage.hdfs import HdfsStore
from ops.storage.s3 import ObjectStore, local_endpoint
from workloads import stored

HERE = Host(name="master", hostname="localhost", privateIp="127.0.0.1")


class ThisMachine:
    """Stands in for a Fabric Connection to a host whose files live on this machine."""

    where = ("master", "master")

    def run(self, command: str, **kwargs):
        return Context().run(command, **kwargs)

    def put(self, local: str, remote: str) -> None:
        shutil.copy(local, remote)

    def get(self, remote: str, local: str) -> None:
        shutil.copy(remote, local)


def this_machine_cluster() -> Cluster:
    inventory = Inventory("test", "local", "", "", "", HERE, (HERE,))
    return Cluster(inventory, lambda inventory, host: ThisMachine())


def photos(tmp_path: Path, assets: Path, name: str = "vehicles") -> Path:
    folder = tmp_path / name
    shutil.copytree(assets / "datasets" / "buses-cars" / "buses", folder / "bus")
    return folder


def listed(root: str) -> list[str]:
    filesystem, path = stored.filesystem(root)
    from pyarrow import fs
    return sorted(info.path.removeprefix(path + "/")
                  for info in filesystem.get_file_info(fs.FileSelector(path, recursive=True))
                  if info.type == fs.FileType.File)


@pytest.fixture
def host_paths(tmp_path, monkeypatch):
    """Host paths (/srv/kindling/data, the hosts' venv) moved below tmp_path / this Python."""
    monkeypatch.setattr(staging, "DATA", str(tmp_path / "host-data"))
    monkeypatch.setattr("ops.storage.hdfs.PYTHON", sys.executable)
    staging.remote_path.cache_clear()
    yield tmp_path / "host-data"
    staging.remote_path.cache_clear()


def test_a_local_folder_goes_into_the_bucket_once_at_its_content_address(s3_root, tmp_path,
                                                                           assets, capsys):
    storage = Storage((ObjectStore(local_endpoint(), "us-east-1"),), s3_root)
    folder = photos(tmp_path, assets)
    location = storage.put(folder)
    assert location == f"{s3_root}/data/{staging.content_digest(folder)}/vehicles"
    assert listed(location) == sorted(f"bus/{p.name}" for p in (folder / "bus").iterdir())
    assert "uploaded once" in capsys.readouterr().out
    assert storage.put(folder) == location
    assert f"already in {location}" in capsys.readouterr().out
    (folder / "bus" / "new.txt").write_text("changed")
    assert storage.put(folder) != location


def test_fetched_results_are_kept_in_the_bucket_and_a_failed_copy_is_a_warning(
        s3_root, tmp_path, capsys):
    run = tmp_path / "train-x-1"
    (run / "logs").mkdir(parents=True)
    (run / "metrics.json").write_text('{"accuracy": 1}')
    (run / "logs" / "driver.log").write_text("done")
    Storage((ObjectStore(local_endpoint(), "us-east-1"),), s3_root).keep(run, "train-x-1")
    assert listed(f"{s3_root}/runs/train-x-1") == ["logs/driver.log", "metrics.json"]
    assert f"results also in {s3_root}/runs/train-x-1/ (2 files)" in capsys.readouterr().out
    closed = ObjectStore("http://127.0.0.1:9", "us-east-1")
    Storage((closed,), s3_root).keep(run, "train-x-2")
    warning = capsys.readouterr().err.strip()
    assert warning.startswith(f"warning: results not copied to {s3_root}/runs/train-x-2/"), warning


def test_a_cluster_run_reaches_its_stores_with_their_confs_and_environment():
    master = Host(name="master", hostname="ip-10-0-0-5", privateIp="10.0.0.5")
    inventory = Inventory("c", "us-east-1", "ubuntu", "key", "", master, (master,),
                          bucket="photos", hdfs=True)
    storage = for_cluster(inventory, connect_master=None)
    assert (storage.root, storage.data_root) == ("s3://photos", "hdfs://10.0.0.5:8020/kindling")
    conf, env, private = storage.access(["hdfs:///mnist"], storage.run_location("r1"))
    assert private == {}  # AWS itself: the instance role, no key on the hosts
    assert conf["spark.hadoop.fs.defaultFS"] == "hdfs://10.0.0.5:8020"
    assert conf["spark.executor.extraClassPath"] == "/opt/kindling/jars/s3a/*"  # the run store
    assert env[stored.RUN_STORE_ENV] == "s3://photos/runs/r1" and env["AWS_REGION"] == "us-east-1"
    assert storage.jars(["s3a://photos/x"]) == {"s3a"} and storage.jars(["hdfs:///x"]) == set()
    assert storage.store("hdfs:///mnist").on_hosts("hdfs:///mnist") == "hdfs://10.0.0.5:8020/mnist"
    with pytest.raises(UserError, match=r"^gs://b/x: kindling reads s3:// \(or s3a://\) and "):
        storage.check(["gs://b/x"])
    without_storage = for_cluster(Inventory("c", "r", "u", "k", "", master, (master,)), None)
    assert (without_storage.root, without_storage.run_location("r1")) == ("", "")
    with pytest.raises(UserError, match=r"cluster 'c' runs no HDFS; `pulumi config set hdfs true`"):
        without_storage.check(["hdfs:///mnist"])


def test_hdfs_is_checked_and_filled_through_the_master(hdfs_root, host_paths, tmp_path, assets,
                                                       capsys):
    store = HdfsStore(hdfs_root, HERE, ThisMachine, "test")
    storage = Storage((store,), f"{hdfs_root}/kindling")
    folder = photos(tmp_path, assets)
    location = storage.put(folder)
    assert location.startswith(f"{hdfs_root}/kindling/data/") and location.endswith("/vehicles")
    assert "copied once into hdfs:///kindling/data/" in capsys.readouterr().out
    assert listed(location) == sorted(f"bus/{p.name}" for p in (folder / "bus").iterdir())
    assert storage.put(folder) == location and "already in" in capsys.readouterr().out
    store.check(location)  # there: no error
    with pytest.raises(UserError, match=r"no such path in the cluster's HDFS; put the data"):
        store.check(f"{hdfs_root}/nothing-here")
    assert store.on_hosts("hdfs:///kindling") == f"{hdfs_root}/kindling"


def test_staged_data_is_pushed_once_and_a_half_staged_copy_is_replaced(host_paths, tmp_path,
                                                                        assets):
    cluster = this_machine_cluster()
    folder = photos(tmp_path, assets)
    remote = staging.remote_path(folder)
    assert remote.startswith(str(host_paths)) and remote.endswith("/vehicles")
    staging.stage(cluster, {folder: remote})
    copied = sorted(p.name for p in Path(remote, "bus").iterdir())
    assert copied == sorted(p.name for p in (folder / "bus").iterdir())
    marker = Path(remote).parent / ".complete"
    pushed_at = marker.stat().st_mtime_ns
    staging.stage(cluster, {folder: remote})
    assert marker.stat().st_mtime_ns == pushed_at  # present: not pushed again
    marker.unlink()
    shutil.rmtree(Path(remote, "bus"))
    staging.stage(cluster, {folder: remote})
    assert sorted(p.name for p in Path(remote, "bus").iterdir()) == copied and marker.exists()


def test_results_come_back_with_logs_by_host_and_no_pid_or_exit_code_files(tmp_path):
    run_dir = tmp_path / "host-runs" / "train-x-1"
    (run_dir / "model").mkdir(parents=True)
    for name, text in {"metrics.json": "{}", "driver.log": "log", "driver.pid": "1",
                       "driver.rc": "0", "model/weights.h5": "w"}.items():
        (run_dir / name).write_text(text)
    local = tmp_path / "runs" / "train-x-1"
    results.fetch(this_machine_cluster(), str(run_dir), local, since=0)
    fetched = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert fetched == ["logs/master/driver.log", "metrics.json", "model/weights.h5"]
