#!/usr/bin/env bash
# Set-up (venv, pinned install) and the whole test suite. Multi-host end-to-end tests need root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
export KINDLING_ASSETS="${KINDLING_ASSETS:-$(cd .. && pwd)/shared}"
exec .venv/bin/python -m pytest "$@"
