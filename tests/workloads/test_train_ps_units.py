"""train-ps without TensorFlow: cluster specs, TF_CONFIG, topology errors, argvs, peer liveness,
and the one-line CLI errors (real `python -m workloads.train_ps` processes that stop early)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from kindling import UserError
from workloads.train_ps import peer_watch
from workloads.train_ps.job import JOB
from workloads.train_ps.main import parse_args, resolve_cluster
from workloads.train_ps.peer_watch import PeerWatch
from workloads.train_ps.tf_cluster import (check_task, cluster_spec, host_list, load_cluster_spec,
                                           parse_tf_config, process_argvs, tf_error_line,
                                           validate_cluster_spec)

SPEC = {"chief": ["10.0.0.5:2224"], "worker": ["10.0.1.1:2223", "10.0.1.2:2223"],
        "ps": ["10.0.0.5:2222"]}


def test_cluster_spec_gives_each_task_on_a_shared_host_its_own_port():
    spec = cluster_spec(workers=["w0", "w1:3000"], ps=["m"], chief="m", port=2222)
    assert spec == {"chief": ["m:2222"], "worker": ["w0:2222", "w1:3000"], "ps": ["m:2223"]}
    assert cluster_spec(workers=["w0"]) == {"worker": ["w0:2222"]}


def test_host_list_splits_the_chapter_style_flags():
    assert host_list(" a:1, b:2 ,") == ["a:1", "b:2"]
    assert host_list("") == []


def test_a_valid_spec_passes_and_empty_roles_are_dropped():
    assert validate_cluster_spec({**SPEC, "chief": SPEC["chief"]}, "ps") == SPEC
    assert validate_cluster_spec({"worker": ["a:1", "b:1"], "ps": []}, "sync") == \
        {"worker": ["a:1", "b:1"]}


@pytest.mark.parametrize("spec, strategy, expected", [
    ([1], "ps", "JSON object"),
    ({**SPEC, "evaluator": ["e:1"]}, "ps", "unknown role(s) evaluator"),
    ({**SPEC, "worker": "a:1"}, "ps", "'worker' must be a list"),
    ({**SPEC, "worker": ["a"]}, "ps", "worker 0: 'a' is not host:port"),
    ({**SPEC, "worker": ["a:0"]}, "ps", "port in 1..65535"),
    ({**SPEC, "worker": ["a:99999"]}, "ps", "port in 1..65535"),
    ({**SPEC, "worker": ["10.0.0.5:2222"]}, "ps", "both ps 0 and worker 0"),
    ({**SPEC, "chief": ["c:1", "d:1"]}, "ps", "more than one chief"),
    ({"chief": ["c:1"], "ps": ["p:1"]}, "ps", "no worker"),
    ({"chief": ["c:1"], "worker": ["w:1"]}, "ps", "needs at least one ps and one chief"),
    ({"worker": ["w:1"], "ps": ["p:1"]}, "ps", "needs at least one ps and one chief"),
    (SPEC, "sync", "uses no parameter servers"),
])
def test_topology_errors_name_the_problem(spec, strategy, expected):
    with pytest.raises(UserError) as error:
        validate_cluster_spec(spec, strategy)
    assert expected in str(error.value)


def test_check_task_rejects_bad_roles_and_indices():
    assert check_task(SPEC, "worker", 1) == "10.0.1.2:2223"
    with pytest.raises(UserError, match="unknown role 'boss'"):
        check_task(SPEC, "boss", 0)
    with pytest.raises(UserError, match=r"worker 2 is not in the cluster spec, which has 2 "
                                        r"worker task\(s\) \(indices 0..1\)"):
        check_task(SPEC, "worker", 2)
    with pytest.raises(UserError, match="which has no chief"):
        check_task({"worker": ["a:1"]}, "chief", 0)


def test_load_cluster_spec_reports_malformed_json_and_missing_files(tmp_path):
    bad = tmp_path / "spec.json"
    bad.write_text('{"worker": ["a:1",]}')
    with pytest.raises(UserError, match=r"spec.json is not valid JSON \(.* line 1 column"):
        load_cluster_spec(str(bad))
    with pytest.raises(UserError, match="cluster spec file not found"):
        load_cluster_spec(str(tmp_path / "missing.json"))


def test_parse_tf_config():
    config = {"cluster": SPEC, "task": {"type": "worker", "index": 1}}
    assert parse_tf_config(json.dumps(config)) == (SPEC, ("worker", 1))
    assert parse_tf_config(json.dumps({"cluster": SPEC})) == (SPEC, None)
    with pytest.raises(UserError, match="TF_CONFIG is not valid JSON"):
        parse_tf_config("{cluster")
    with pytest.raises(UserError, match="TF_CONFIG has no 'cluster'"):
        parse_tf_config('{"task": {"type": "worker", "index": 0}}')
    with pytest.raises(UserError, match="'task' must look like"):
        parse_tf_config('{"cluster": {}, "task": {"index": 0}}')
    with pytest.raises(UserError, match="'task' must look like"):
        parse_tf_config('{"cluster": {}, "task": {"type": "worker", "index": "one"}}')


def resolve(argv, environ=None):
    return resolve_cluster(parse_args(argv), environ or {})


def test_the_cluster_comes_from_a_file_the_host_flags_or_tf_config(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(SPEC))
    assert resolve(["worker", "1", "--cluster-spec", str(path)]) == (SPEC, "worker", 1)
    flags = ["--chief-host", "10.0.0.5:2224", "--worker-hosts", "10.0.1.1:2223,10.0.1.2:2223",
             "--ps-hosts", "10.0.0.5:2222"]
    assert resolve(["ps", "0", *flags]) == (SPEC, "ps", 0)
    tf_config = json.dumps({"cluster": SPEC, "task": {"type": "chief", "index": 0}})
    assert resolve([], {"TF_CONFIG": tf_config}) == (SPEC, "chief", 0)
    # argv's task wins over TF_CONFIG's; TF_CONFIG's cluster still counts
    assert resolve(["worker", "0"], {"TF_CONFIG": tf_config}) == (SPEC, "worker", 0)


@pytest.mark.parametrize("argv, environ, expected", [
    (["worker", "0"], {}, "no cluster given"),
    (["worker", "0", "--cluster-spec", "x.json", "--worker-hosts", "a:1"], {},
     "give the cluster once"),
    (["worker"], {"TF_CONFIG": json.dumps({"cluster": SPEC})}, "give the task index"),
    ([], {"TF_CONFIG": json.dumps({"cluster": SPEC})}, "no task given"),
    (["worker", "5", "--worker-hosts", "a:1", "--strategy", "sync"], {},
     "worker 5 is not in the cluster spec"),
    (["worker", "x"], {}, "argument index: invalid int value"),
    (["worker", "0", "--strategy", "async"], {}, "argument --strategy: invalid choice"),
    (["worker", "0", "--epochs", "0"], {}, "--epochs must be at least 1"),
])
def test_task_and_flag_errors(argv, environ, expected):
    with pytest.raises(UserError) as error:
        resolve(argv, environ)
    assert expected in str(error.value)


def test_process_argvs_are_the_exact_commands_for_every_host():
    argvs = process_argvs(SPEC, JOB.module, ["--epochs", "2"], "/runs/r1/spec.json",
                          python="/venv/python")
    command = ["-m", "workloads.train_ps"]  # the job's declared module, not a constant
    assert argvs == [
        ("ps", 0, "10.0.0.5", ["/venv/python", *command, "ps", "0", "--cluster-spec",
                               "/runs/r1/spec.json", "--epochs", "2"]),
        ("worker", 0, "10.0.1.1", ["/venv/python", *command, "worker", "0", "--cluster-spec",
                                   "/runs/r1/spec.json", "--epochs", "2"]),
        ("worker", 1, "10.0.1.2", ["/venv/python", *command, "worker", "1", "--cluster-spec",
                                   "/runs/r1/spec.json", "--epochs", "2"]),
        ("chief", 0, "10.0.0.5", ["/venv/python", *command, "chief", "0", "--cluster-spec",
                                  "/runs/r1/spec.json", "--epochs", "2"]),
    ]


def test_tf_errors_become_one_line_naming_the_other_task():
    message = ("Collective ops is aborted by: recvmsg:Connection reset by peer\n"
               "[[node /job:worker/replica:0/task:0/device:CPU:0]] Additional GRPC error "
               "information from remote target /job:worker/replica:0/task:1 while calling")
    assert tf_error_line(SPEC, message, ("worker", 0)) == (
        "worker 1 at 10.0.1.2:2223 failed: Collective ops is aborted by: "
        "recvmsg:Connection reset by peer")
    assert tf_error_line(SPEC, "boom", ("chief", 0)) == "training failed: boom"


@pytest.fixture
def listener():
    """A real TCP port that accepts, standing in for a peer's TF server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def test_peer_watch_reports_a_peer_that_never_came_up(listener):
    spec = {"chief": [f"127.0.0.1:{listener.getsockname()[1]}"], "worker": ["127.0.0.1:1"]}
    watch = PeerWatch(spec, [("chief", 0), ("worker", 0)], timeout=0)
    assert watch.problem() == ("worker 0 at 127.0.0.1:1 not reachable within 0s; start every "
                               "task with the same cluster spec, or fix the spec (--timeout "
                               "waits longer)")


def test_peer_watch_reports_a_lost_peer_and_a_cluster_that_never_formed(listener, monkeypatch):
    spec = {"worker": [f"127.0.0.1:{listener.getsockname()[1]}"]}
    watch = PeerWatch(spec, [("worker", 0)], timeout=60)
    assert watch.problem() is None
    watch.deadline = 0
    assert "the cluster did not form within 60s" in watch.problem()
    watch.formed()
    assert watch.problem() is None
    listener.close()
    problems = [watch.problem() for _ in range(peer_watch.MISSES_TO_LOSE)]
    assert problems[:-1] == [None] * (peer_watch.MISSES_TO_LOSE - 1)
    assert problems[-1].startswith(f"worker 0 at {spec['worker'][0]} stopped answering")


@pytest.mark.parametrize("argv, expected", [
    (["boss", "0", "--worker-hosts", "a:1", "--strategy", "sync"],
     "error: unknown role 'boss'; the role is one of chief, worker, ps"),
    (["worker", "3", "--worker-hosts", "a:1,b:1", "--strategy", "sync"],
     "error: worker 3 is not in the cluster spec, which has 2 worker task(s) (indices 0..1)"),
    (["chief", "0", "--cluster-spec", "{spec}"], "error: cluster spec {spec} is not valid JSON"),
    (["worker", "0", "--worker-hosts", "a:1,b:1", "--strategy", "sync", "--batch-size", "63"],
     "error: --batch-size 63 does not split evenly over the 2 sync trainers"),
    (["worker", "0", "--worker-hosts", "127.0.0.1:1", "--strategy", "sync", "--data",
      "{tmp}/nowhere"], "error: MNIST data not found: {tmp}/nowhere; pass --data"),
])
def test_cli_errors_are_one_line_and_exit_2(tmp_path, argv, expected):
    spec = tmp_path / "spec.json"
    spec.write_text("{not json")
    argv = [a.format(spec=spec, tmp=tmp_path) for a in argv]
    result = subprocess.run([sys.executable, "-m", "workloads.train_ps", *argv],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(expected.format(spec=spec, tmp=tmp_path)), result.stderr
