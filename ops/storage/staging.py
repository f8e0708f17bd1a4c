"""Staging a job's local data and weights on every host, at a path named by content hash.

The same content always lands at the same remote path, so a second deploy finds it there and
skips the upload, and a changed dataset never mixes with the old one.
"""

from __future__ import annotations

import functools
import hashlib
import shlex
import tarfile
import tempfile
from pathlib import Path

from fabric import Connection

from ops.remote import DATA, ok, sh

TRANSFER_TIMEOUT = 600


def content_digest(path: Path) -> str:
    """sha256 over relative names and bytes of a file or every file below a folder."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path.parent if path.is_file() else path)).encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


@functools.cache
def remote_path(local: Path) -> str:
    """Where local lands on every host: /srv/kindling/data/<digest>/<name>. Hashed once per
    fab command: `fab deploy` stages the same data in its deploy and in its run."""
    return f"{DATA}/{content_digest(local)}/{local.name}"


def push_path(cxn: Connection, local: Path, remote: str) -> None:
    """Upload local (file or folder) to remote as one tarball, then mark it complete."""
    parent = remote.rsplit("/", 1)[0]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "stage.tar.gz"
        with tarfile.open(bundle, "w:gz") as tar:
            tar.add(local, arcname=local.name)
        # a half-staged copy goes first, read-only folders (as tar keeps them) included
        sh(cxn, f"chmod -R u+w {shlex.quote(parent)} 2>/dev/null; rm -rf {shlex.quote(parent)} "
                f"&& mkdir -p {shlex.quote(parent)}")
        cxn.put(str(bundle), f"{parent}/stage.tar.gz")
    sh(cxn, f"cd {shlex.quote(parent)} && tar -xzf stage.tar.gz && rm stage.tar.gz && "
            "touch .complete", timeout=TRANSFER_TIMEOUT, what=f"unpacking {local.name}")


def staged_check(remote: str) -> str:
    """Shell test that succeeds when remote was completely staged before."""
    return f"test -e {shlex.quote(remote.rsplit('/', 1)[0])}/.complete"


def push_missing(cxn: Connection, staged: dict[Path, str]) -> None:
    """Each local path to its remote path, only where it is not staged yet (the rest may be in
    use by a run)."""
    for local, remote in staged.items():
        if not ok(cxn, staged_check(remote)):
            push_path(cxn, local, remote)


def stage(cluster, staged: dict[Path, str]) -> None:
    """Each local path at its remote path on every host, where it is not staged yet."""
    if staged:
        cluster.parallel(lambda host, cxn: push_missing(cxn, staged))
