"""What every job shares: metrics.json holds no path of the machine that ran the job."""

from __future__ import annotations

import json

import pytest

from workloads.common import write_metrics


def test_metrics_paths_are_relative_to_the_results_folder_or_cut_to_their_name(tmp_path):
    run = tmp_path / "runs" / "train-mnist-1"
    run.mkdir(parents=True)
    write_metrics(run, {"accuracy": 0.9, "model": str(run / "model.keras"),
                        "weights": str(tmp_path / "models" / "mobilenet.h5"),
                        "nested": {"data": [str(tmp_path / "datasets" / "mnist"), "imagenet"]},
                        "relative": "model/stages", "count": 3})
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == {"accuracy": 0.9, "model": "model.keras", "weights": "mobilenet.h5",
                       "nested": {"data": ["mnist", "imagenet"]}, "relative": "model/stages",
                       "count": 3}
    assert str(tmp_path) not in (run / "metrics.json").read_text()


def test_metrics_need_an_accuracy_in_0_1(tmp_path):
    with pytest.raises(ValueError, match="accuracy in 0..1"):
        write_metrics(tmp_path, {"accuracy": 97.5})
