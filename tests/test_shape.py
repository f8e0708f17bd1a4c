"""The house rules a new contributor relies on: where a thing goes, and that it stays small.

Storage schemes are named only by the storage seam (ops/storage/, and workloads/stored.py on the
jobs' side); functions stay short; ops modules stay readable; the host agent is standard library
only (it runs on hosts before anything else is installed); the schema docstring names every key.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import kindling

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ops", "workloads", "infra", "sparkdl")
MAX_FUNCTION_LINES = 60
MAX_OPS_MODULE_LINES = 400
MAX_SCHEME_LINES_OUTSIDE_STORAGE = 3
SCHEME = re.compile(r"\b(?:s3a?|hdfs)://")


def sources(*packages: str) -> list[Path]:
    return sorted(path for package in packages for path in (REPO / package).rglob("*.py"))


def test_no_function_is_longer_than_60_lines():
    long = [f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
            for path in sources(*PACKAGES) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def test_no_ops_module_is_longer_than_400_lines():
    long = {str(path.relative_to(REPO)): lines for path in sources("ops")
            if (lines := len(path.read_text().splitlines())) > MAX_OPS_MODULE_LINES}
    assert not long, long


def test_only_the_storage_seam_names_a_storage_scheme():
    seam = [REPO / "ops" / "storage", REPO / "workloads" / "stored.py"]
    outside = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
               for path in [*sources(*PACKAGES), REPO / "kindling.py"]
               if not any(path == part or part in path.parents for part in seam)
               for number, line in enumerate(path.read_text().splitlines(), 1)
               if SCHEME.search(line)]
    assert len(outside) <= MAX_SCHEME_LINES_OUTSIDE_STORAGE, "\n".join(outside)


def test_the_host_agent_imports_only_the_standard_library():
    agent = sources("ops/agent")
    assert len(agent) >= 3
    for path in agent:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                allowed = top in sys.stdlib_module_names or name.startswith("ops.agent") \
                    or (top == "boto3" and node.col_offset > 0)  # the stop call, imported late
                assert allowed, f"{path.relative_to(REPO)}:{node.lineno} imports {name}"


def test_the_schema_docstring_names_every_inventory_key():
    doc = kindling.__doc__
    missing = [key for key in (*kindling.SCHEMA_KEYS, *kindling.HOST_KEYS)
               if f'"{key}"' not in doc]
    assert not missing, missing
