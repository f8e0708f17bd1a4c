"""The job registry: what `fab jobs` lists and what ops needs to launch a job anywhere.

No TensorFlow or Spark import here: ops reads this on the control machine.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from workloads.common import UserError, asset


@dataclass(frozen=True)
class Job:
    name: str
    module: str
    launcher: str
    """'spark': spark-submit on the master. 'tf': one process per role (`ps 0`, `worker i`,
    `chief 0`) on the hosts of the cluster spec."""
    summary: str
    offline_defaults: tuple[tuple[str, str], ...] = ()
    """(flag, value) pairs used when the user omits the flag and $KINDLING_ASSETS is set;
    a value starting with `assets:` is a path below $KINDLING_ASSETS."""
    path_flags: tuple[str, ...] = ()
    """Flags whose values are local files/folders that ops stages on every host."""

    @property
    def script(self) -> str:
        """The module's file, as spark-submit wants it."""
        spec = importlib.util.find_spec(self.module)
        assert spec is not None and spec.origin, self.module
        return spec.origin

    def with_offline_defaults(self, args: list[str]) -> list[str]:
        """args plus any offline default the user did not override (none without $KINDLING_ASSETS)."""
        given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
        extra: list[str] = []
        for flag, value in self.offline_defaults:
            if flag in given:
                continue
            if value.startswith("assets:"):
                value = asset(value.removeprefix("assets:"))
                if value is None:
                    continue
            elif asset("") is None:
                continue
            extra += [flag, value]
        return [*args, *extra]


JOBS: dict[str, Job] = {job.name: job for job in (
    Job("train-ps", "workloads.train_ps", "tf",
        "Distributed TensorFlow MNIST CNN: parameter servers + workers + chief (or --strategy sync)",
        offline_defaults=(("--data", "assets:datasets/mnist"),),
        path_flags=("--data",)),
    Job("train-mnist", "workloads.train_mnist", "spark",
        "TensorFlowOnSpark MNIST CNN on the Spark cluster (InputMode SPARK or TENSORFLOW)",
        offline_defaults=(("--data", "assets:datasets/mnist"),),
        path_flags=("--data",)),
    Job("classify", "workloads.classify", "spark",
        "Transfer learning: DeepImageFeaturizer + LogisticRegression on a folder of labelled images",
        offline_defaults=(("--data", "assets:datasets/buses-cars"),
                          ("--model", "MobileNet"),
                          ("--weights", "assets:models/mobilenet_v1_0.25_224.h5")),
        path_flags=("--data", "--weights")),
)}


def get_job(name: str) -> Job:
    try:
        return JOBS[name]
    except KeyError:
        raise UserError(f"unknown job {name!r}; choose one of: {', '.join(JOBS)} "
                        "(`fab jobs` lists them)") from None
