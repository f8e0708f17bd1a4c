"""One fab process at a time on this machine for a step that others must not overlap."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(lock_file: Path, timeout: float, busy: Exception) -> Iterator[None]:
    """Hold an flock on lock_file (released with the file, so also when fab dies); raise busy
    when another process holds it for timeout seconds."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(lock_file, "w") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise busy from None
                time.sleep(0.2)
        yield
