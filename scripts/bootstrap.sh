#!/usr/bin/env bash
# Creates .venv (if missing) and installs kindling with every extra, pinned by constraints.txt.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (pip skips what is installed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if ! command -v java >/dev/null 2>&1; then
  echo "error: java not found; Spark needs a JDK 17 or 21 (Debian/Ubuntu: sudo apt-get install default-jdk-headless)" >&2
  exit 2
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.kindling-installed
if [ ! -f "$stamp" ] || [ constraints.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # pyspark ships as a large sdist; pip builds its wheel once and caches it (~/.cache/pip).
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[all]"
  touch "$stamp"
fi
