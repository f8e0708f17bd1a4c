"""`fab tensorboard` serves the fetched runs' training curves: a real TensorBoard, asked over HTTP
for the scalars that the training code's own summary writer logged."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from e2e.fab_cli import end_as_a_person, serving
from workloads.training import Epoch, log_epoch, summary_writer

FAB = str(Path(sys.executable).parent / "fab")
REPO = Path(__file__).resolve().parents[2]
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get_json(url: str, timeout: float = 60):
    """The JSON at url, polled until TensorBoard answers with something."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = json.loads(NO_PROXY.open(url, timeout=5).read())
            if answer:
                return answer
        except OSError:
            pass
        assert time.monotonic() < deadline, f"no answer from {url} within {timeout}s"
        time.sleep(0.5)


@pytest.mark.slow
def test_fab_tensorboard_serves_the_loss_and_accuracy_of_each_run(tmp_path):
    run = tmp_path / "runs" / "train-ps-20261205-101010-0001"
    writer = summary_writer(run)
    for number, (loss, accuracy) in enumerate([(1.3, 0.56), (0.54, 0.83)], start=1):
        log_epoch(writer, number, Epoch(loss, accuracy, 1.0))
    server = subprocess.Popen([FAB, "tensorboard", "--logdir", str(tmp_path / "runs"),
                               "--seconds", "90"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        url = re.search(r"TensorBoard: (http://127\.0\.0\.1:\d+/)", server.stdout.readline()).group(1)
        assert get_json(url + "data/runs") == [f"{run.name}/tensorboard"]
        tags = get_json(url + "data/plugin/scalars/tags")
        assert set(tags[f"{run.name}/tensorboard"]) == {"loss", "accuracy"}
        points = get_json(f"{url}data/plugin/scalars/scalars?run={run.name}/tensorboard&tag=accuracy")
        assert [(step, round(value, 2)) for _, step, value in points] == [(1, 0.56), (2, 0.83)]
    finally:
        server.terminate()  # as a user's kill or closed terminal: TensorBoard ends with fab
        server.wait(timeout=30)
    assert not [argv for argv in command_lines() if "tensorboard.main" in argv
                and str(tmp_path) in argv], "TensorBoard outlived fab tensorboard"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "hangup"])
def test_ending_fab_tensorboard_as_a_person_does_leaves_no_tensorboard(tmp_path, how):
    """Ctrl-C, a closed terminal (a `kill`: above): TensorBoard goes with fab."""
    fab, _ = serving(os.environ | {"PYTHONPATH": str(REPO)}, "tensorboard", "--logdir",
                     str(tmp_path))
    end_as_a_person(fab, how)
    assert not [argv for argv in command_lines() if "tensorboard.main" in argv
                and str(tmp_path) in argv], f"TensorBoard outlived fab tensorboard ({how})"


def command_lines() -> list[str]:
    """Every live process's command line."""
    lines = []
    for proc in Path("/proc").iterdir():
        try:
            lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return lines


def test_fab_tensorboard_without_runs_is_one_line(tmp_path):
    done = subprocess.run([FAB, "tensorboard", "--logdir", str(tmp_path / "none")], cwd=REPO,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'none'}: no such folder; run a training job first (`fab run "
        "JOB`) or pass --logdir DIR"]


def test_a_local_server_is_found_where_it_says_it_serves_and_named_when_it_fails():
    """ops.local.start_server (fab tensorboard's): the port the server picked, from its own
    announcement; one line with its last words when it exits first; killed when it stays silent."""
    from kindling import KindlingError
    from ops.local import start_server

    announcing = ("import sys, time; print('loading', file=sys.stderr, flush=True); "
                  "print('Demo 1.0 at http://127.0.0.1:43210/ (Ctrl+C)', file=sys.stderr, "
                  "flush=True); time.sleep(60)")
    server, url = start_server([sys.executable, "-c", announcing], r"Demo \S+ at (http://\S+/)", "Demo")
    try:
        assert url == "http://127.0.0.1:43210/" and server.poll() is None
    finally:
        server.kill()
        server.wait()
    failing = "import sys; print('E0 could not bind to port 6006', file=sys.stderr); sys.exit(3)"
    with pytest.raises(KindlingError, match=r"^Demo exited with code 3 before serving: E0 could "
                                            r"not bind to port 6006$"):
        start_server([sys.executable, "-c", failing], r"Demo \S+ at (http://\S+/)", "Demo")
    silent = "import time; time.sleep(60)"
    with pytest.raises(KindlingError, match=r"^Demo did not start within 1s: no output$"):
        start_server([sys.executable, "-c", silent, "kindling-silent-server"], r"at (http://\S+/)",
                     "Demo", timeout=1)
    assert not [line for line in command_lines() if "kindling-silent-server" in line]
