"""Shared fixtures: where the offline data and weights live (../shared beside the repo, or
$KINDLING_ASSETS), so no test hard-codes a machine path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("KINDLING_ASSETS") or REPO.parent / "shared").resolve()


@pytest.fixture(scope="session")
def assets() -> Path:
    """The folder laid out like ../shared: datasets/mnist, datasets/buses-cars, models/."""
    if not (ASSETS / "datasets").is_dir():
        pytest.fail(f"offline assets not found at {ASSETS}; set KINDLING_ASSETS to the shared folder")
    return ASSETS


def pytest_terminal_summary(terminalreporter) -> None:
    """One closing line when multi-host tests were skipped: easy to miss in a long -ra list."""
    skipped = [report for report in terminalreporter.stats.get("skipped", [])
               if "netns" in report.keywords]
    if skipped:
        reasons = sorted({str(report.longrepr[-1]).removeprefix("Skipped: ") for report in skipped
                          if isinstance(report.longrepr, tuple)})
        terminalreporter.write_line(f"{len(skipped)} multi-host tests did not run: "
                                    f"{'; '.join(reasons)}", yellow=True, bold=True)
