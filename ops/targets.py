"""Where fab acts: `local` (this machine), an inventory JSON file, or a Pulumi stack.

All three give one schema (ops.inventory); only `local` needs no inventory at all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from ops.inventory import Inventory, InventoryError, load_inventory, parse_inventory
from workloads.common import UserError

TARGET_ENV = "KINDLING_TARGET"
LOCAL = "local"
PULUMI_TIMEOUT = 120


def target_spec(target: str | None) -> str:
    """--target, else $KINDLING_TARGET, else the current Pulumi stack."""
    return target or os.environ.get(TARGET_ENV) or "pulumi"


def is_local(target: str | None) -> bool:
    return target_spec(target) == LOCAL


def load_target(target: str | None) -> Inventory:
    """The inventory of a remote target: `pulumi[:STACK]` or a JSON file path."""
    spec = target_spec(target)
    try:
        if spec == "pulumi" or spec.startswith("pulumi:"):
            return _from_pulumi(spec.partition(":")[2])
        return load_inventory(spec)
    except InventoryError as exc:
        raise UserError(str(exc)) from None


def _from_pulumi(stack: str) -> Inventory:
    pulumi = shutil.which("pulumi")
    if not pulumi:
        raise UserError("the pulumi CLI is not installed, so there is no stack to read; install "
                        "Pulumi, or pass --target local or --target cluster.json")
    argv = [pulumi, "stack", "output", "--json", "--show-secrets"]
    if stack:
        argv += ["--stack", stack]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PULUMI_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise UserError(f"`{' '.join(argv[1:])}` did not answer within {PULUMI_TIMEOUT}s; "
                        "check `pulumi whoami` and your backend") from None
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"could not read the Pulumi stack ({reason}); run `pulumi up` first, or "
                        "select a stack with `pulumi stack select`")
    try:
        outputs = json.loads(done.stdout or "{}")
    except json.JSONDecodeError:
        raise UserError("`pulumi stack output --json` printed something that is not JSON") from None
    if not outputs:
        raise UserError("the Pulumi stack has no outputs; run `pulumi up` first")
    return parse_inventory(outputs, source=f"pulumi stack {stack or '(current)'}")


def runs_root() -> Path:
    """Local folder that results are fetched into: runs/<id>/."""
    return Path(os.environ.get("KINDLING_RUNS_DIR", "runs"))
