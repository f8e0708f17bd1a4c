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
