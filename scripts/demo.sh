#!/usr/bin/env bash
# Set-up (venv, pinned install), then train-mnist and classify on the local target: a Spark
# standalone master + 2 workers on 127.0.0.1. Prints each job's accuracy and results folder.
# Offline: KINDLING_ASSETS=../shared scripts/demo.sh (data and weights from that folder).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
fab run train-mnist --target local "$@"
fab run classify --target local
