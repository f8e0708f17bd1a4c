#!/usr/bin/env bash
# Creates .venv (if missing) and installs kindling with every extra, pinned by constraints.txt.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (pip skips what is installed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1) || true
if [ "${java_major:-0}" -lt 17 ]; then
  echo "error: Spark needs Java 17 or newer on PATH, found ${java_major:-none} (Debian/Ubuntu: sudo apt-get install default-jre-headless)" >&2
  exit 2
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.kindling-installed
if [ ! -f "$stamp" ] || [ constraints.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # pyspark ships as a large sdist; pip builds its wheel once and caches it (~/.cache/pip).
  # setuptools' "Editable installation" notice (pip 26 shows the backend's warnings) is not ours
  PYTHONWARNINGS="ignore:Editable installation" \
    .venv/bin/python -m pip install -q -c constraints.txt -e ".[all]"
  # pyproject.toml's [tool.kindling] no-deps (tf-keras): beside the workloads, without dependencies
  .venv/bin/python -m pip install -q --no-deps -c constraints.txt $(.venv/bin/python -c \
    'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["kindling"]["no-deps"])')
  touch "$stamp"
fi
