"""What runs on the cluster hosts, apart from the control side: the watcher (idle auto-stop,
spot interruption notices) and how it is laid out on a host. Standard library only.
"""

from __future__ import annotations

import os


def as_user(argv: list[str], user: str = "root") -> list[str]:
    """argv to run as user: through sudo, whose rules (ops.agent.install.sudoers) let the
    unprivileged watcher run exactly its commands, or as it is where this process is root."""
    return list(argv) if os.geteuid() == 0 else ["sudo", "-n", "-u", user, "--", *argv]
