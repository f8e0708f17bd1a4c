#!/usr/bin/env bash
# The whole test suite: machine packages (installed when run as root), the venv, then pytest.
# Multi-host tests need root; without it they skip and the run ends saying how many did not run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/system-packages.sh
bash scripts/bootstrap.sh
export KINDLING_ASSETS="${KINDLING_ASSETS:-$(cd .. && pwd)/shared}"
exec .venv/bin/python -m pytest "$@"
