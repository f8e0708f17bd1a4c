"""What every job shares: user errors as one line, offline assets, the results folder."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

from kindling import KindlingError, UserError

ASSETS_ENV = "KINDLING_ASSETS"
"""Folder laid out like ../shared (datasets/, models/): offline data and weights for the jobs."""
OFFLINE_MOBILENET = "models/mobilenet_v1_0.25_224.h5"
"""Below $KINDLING_ASSETS: a MobileNet (alpha 0.25) with its ImageNet weights, the offline
weights of classify and of the image transformers' MobileNet."""
SPOT_NOTICE_ENV = "KINDLING_SPOT_NOTICE"
"""The file where the host's watcher (ops.spot) writes EC2's spot interruption notice."""


class SpotInterruptionError(RuntimeError):
    """EC2 is taking this host back within two minutes: a TF job cannot finish with it."""


def describe_notice(notice: dict) -> str:
    """A spot interruption notice in one line: which host, what EC2 does to it, when."""
    return (f"{notice.get('host', '?')} ({notice.get('address', '?')}) got a spot interruption "
            f"notice: EC2 will {notice.get('action', 'terminate')} it at "
            f"{notice.get('time', 'an unknown time')}")


def spot_notice() -> str | None:
    """The spot interruption notice this host got, in one line; None when there is none (or
    this is not a cluster host)."""
    path = os.environ.get(SPOT_NOTICE_ENV)
    if not path:
        return None
    try:
        return describe_notice(json.loads(Path(path).read_text()))
    except (OSError, ValueError, AttributeError):
        return None


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are UserErrors: one `error:` line and exit 2, like the rest."""

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a job's main(); an expected failure becomes one `error: ...` line, not a traceback."""
    try:
        main(argv)
    except KindlingError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)


def asset(relative: str) -> str | None:
    """Path of an offline asset under $KINDLING_ASSETS, or None when the variable is unset."""
    root = os.environ.get(ASSETS_ENV)
    if not root:
        return None
    path = Path(root).expanduser().resolve() / relative
    if not path.exists():
        raise UserError(f"{ASSETS_ENV}={root} has no {relative}; point it at a folder laid out "
                        "like ../shared (datasets/, models/) or unset it")
    return str(path)


def new_run_id(job: str) -> str:
    """A run's id, `<job>-<YYYYmmdd-HHMMSS>-<pid>`: its results folder's name (runs/<id>), for
    fab's runs and a job run on its own without --output alike."""
    return f"{job}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid() % 10000:04d}"


def results_dir(output: str | None, job: str) -> Path:
    """The job's results folder: --output if given, else runs/<job>-<timestamp>."""
    path = Path(output) if output else Path("runs") / new_run_id(job)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_metrics(folder: Path, metrics: dict) -> Path:
    """metrics.json; its top-level `accuracy` (0..1) is what ops and the README report.

    Paths in it are made portable (the results folder travels: fetched, shared, compared)."""
    accuracy = metrics.get("accuracy")
    if not isinstance(accuracy, (int, float)) or not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"metrics need a top-level accuracy in 0..1, got {accuracy!r}")
    path = Path(folder) / "metrics.json"
    path.write_text(json.dumps(portable(metrics, Path(folder).resolve()), indent=2,
                               sort_keys=True) + "\n")
    return path


def portable(value, folder: Path):
    """value with every absolute path made relative to folder, or cut to its name when outside
    it: no path of the machine that ran the job."""
    if isinstance(value, dict):
        return {key: portable(item, folder) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(item, folder) for item in value]
    if isinstance(value, str) and os.path.isabs(value):
        path = Path(value).resolve()
        return str(path.relative_to(folder)) if path.is_relative_to(folder) else path.name
    return value
