"""cloud-init user data: only what must exist at first boot (name, pinned host key, base packages).

Everything else (Python env, Spark, TensorFlow) is ops' job, so `fab deploy` never redoes this.
"""

from __future__ import annotations

import yaml

BASE_PACKAGES = ("python3-venv", "openjdk-17-jre-headless")


class _BlockStyleDumper(yaml.SafeDumper):
    """Multi-line strings (the host key) as `|` blocks, so the user data reads like the file it writes."""


_BlockStyleDumper.add_representer(
    str, lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def cloud_config(hostname: str, host_private_key: str, host_public_key: str) -> str:
    """#cloud-config installing the given ED25519 host key as the host's only SSH host key."""
    config = {
        "hostname": hostname,
        "preserve_hostname": False,
        # Drop the image's keys and generate none: the pinned key in knownHosts is the only one.
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {"ed25519_private": host_private_key, "ed25519_public": host_public_key.strip()},
        "package_update": True,
        "packages": list(BASE_PACKAGES),
    }
    return "#cloud-config\n" + yaml.dump(config, Dumper=_BlockStyleDumper, sort_keys=False)
