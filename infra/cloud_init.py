"""cloud-init user data: only what must exist at first boot (name, pinned host key, base packages,
the armed watcher).

Everything else (Python env, Spark, TensorFlow) is ops' job, so `fab deploy` never redoes this.
The packages are named as both Ubuntu 24.04 and Debian 13 call them (OpenJDK 21 on both).
The watcher (ops/agent/install.py: idle auto-stop, spot notices) is written and started here, so a
cluster stops itself even if no `fab deploy` ever runs; its code goes gzipped (EC2 takes at most
16 KB of user data), its settings and unit as the text they are.
"""

from __future__ import annotations

import base64
import gzip

import yaml

from ops.agent import install

USER_DATA_LIMIT = 16 * 1024
"""EC2's limit on user data, in bytes before base64."""

BASE_PACKAGES = ("python3-venv", "default-jre-headless")
HOST_KEY_FILE = "/etc/ssh/ssh_host_ed25519_key"  # where cloud-init writes ssh_keys.ed25519_private
# sshd reads sshd_config.d/*.conf before its own settings; once any HostKey is named, it offers only
# the named keys, so keys an openssh-server upgrade generates (its postinst looks for HostKey in
# sshd_config only) are never offered.
SSHD_HOST_KEY_DROP_IN = "/etc/ssh/sshd_config.d/00-kindling-host-key.conf"


class _BlockStyleDumper(yaml.SafeDumper):
    """Multi-line strings (the host key) as `|` blocks, so the user data reads like the file it writes."""


_BlockStyleDumper.add_representer(
    str, lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def cloud_config(hostname: str, host_private_key: str, host_public_key: str,
                 watcher: dict) -> str:
    """#cloud-config installing the given ED25519 host key as the host's only SSH host key and
    starting the watcher with the given settings (ops.agent.install.settings)."""
    code = install.code()
    watcher_files = [{"path": path, "permissions": "0644", "encoding": "gz+b64",
                      "content": base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()}
                     for path, text in code.items()]
    watcher_files += [{"path": path, "permissions": "0644", "content": text}
                      for path, text in install.files(watcher).items() if path not in code]
    config = {
        "hostname": hostname,
        "preserve_hostname": False,
        # Drop the image's keys; with ssh_keys given, cloud-init generates none (cc_ssh).
        "ssh_deletekeys": True,
        "ssh_keys": {"ed25519_private": host_private_key, "ed25519_public": host_public_key.strip()},
        "write_files": [{"path": SSHD_HOST_KEY_DROP_IN, "permissions": "0644",
                         "content": f"HostKey {HOST_KEY_FILE}\n"}, *watcher_files],
        "package_update": True,
        "packages": list(BASE_PACKAGES),
        "runcmd": [["sh", "-c", install.restart_command()]],
    }
    return "#cloud-config\n" + yaml.dump(config, Dumper=_BlockStyleDumper, sort_keys=False)
