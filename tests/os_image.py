"""A fresh OS for the rehearsal hosts: a minimal Debian 13 "trixie" root filesystem, cached outside the repo.

Why: hosts that share this machine's root filesystem already have Java, this machine's Python and
no cloud-init, so nothing tests what differs on EC2. This image is what a cloud image is before
first boot: Debian packages only (cloud-init, sshd, sudo, python3; no Java, no python3-venv: the
user data must install those), no hostname of its own, cloud-init told to read the NoCloud seed
and to leave networking alone, and a default user `ubuntu` with passwordless sudo as on the Ubuntu
AMI. mmdebstrap builds it from the Debian mirror this machine's apt is configured with.

The unpacked tree is the read-only lower layer of every host's overlayfs; it lives under
CACHE_ROOT/<hash of the recipe>/rootfs and is built once (under a lock), then reused.
`python tests/os_image.py` builds (or reuses) it and prints how long that took.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from kindling import UserError
from workloads.common import run_cli

CACHE_ROOT = Path(os.environ.get("KINDLING_REHEARSAL_CACHE", "/var/cache/kindling-rehearsal"))
SUITE = "trixie"
PACKAGES = ("cloud-init", "openssh-server", "sudo", "python3", "ca-certificates", "iproute2")
"""iproute2: cloud images have it, and cloud-init reports its absence as a warning (status degraded)."""
APT_PACKAGES = "mmdebstrap debian-archive-keyring"
BUILD_TIMEOUT = 900

# cloud-init without systemd: only the NoCloud seed (then None), never touch the network (the test
# harness owns it), and the Ubuntu AMI's login user.
CLOUD_CFG = """\
# written by tests/os_image.py: a rehearsal host is configured like an EC2 Ubuntu instance
datasource_list: [NoCloud, None]
network: {config: disabled}
system_info:
  default_user:
    name: ubuntu
    lock_passwd: true
    gecos: Ubuntu
    groups: [adm, sudo]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
"""

# mmdebstrap copies the builder's hostname and resolv.conf into the image: a host must start with
# neither (cloud-init sets the name; the hosts have no DNS, apt goes through the proxy). apt deletes
# the .debs it installed (as Debian's container images do): they were most of a host's disk.
CUSTOMIZE = (
    'echo localhost > "$1/etc/hostname"',
    ': > "$1/etc/resolv.conf"',
    'echo \'APT::Keep-Downloaded-Packages "false";\' > "$1/etc/apt/apt.conf.d/90kindling-no-deb-cache"',
    'printf "%s" "$KINDLING_CLOUD_CFG" > "$1/etc/cloud/cloud.cfg.d/90_kindling_rehearsal.cfg"',
)


def debian_mirrors() -> list[str]:
    """The mirror URIs this machine's apt uses for Debian and Debian-Security (`apt-get indextargets`)."""
    listed = subprocess.run(["apt-get", "indextargets", "--format", "$(LABEL) $(REPO_URI)"],
                            capture_output=True, text=True, timeout=60)
    uris = dict(line.split(" ", 1) for line in reversed(listed.stdout.splitlines()) if " " in line)
    if "Debian" not in uris:
        raise UserError("this machine's apt has no Debian mirror configured (apt-get indextargets lists none); "
                        "add one to /etc/apt/sources.list.d and run apt-get update")
    return [uris["Debian"], uris.get("Debian-Security", "")]


def sources(mirrors: list[str]) -> list[str]:
    """The image's apt sources: the suite, its updates and its security suite, from those mirrors."""
    debian, security = mirrors
    return [f"deb {debian} {SUITE} main", f"deb {debian} {SUITE}-updates main",
            *([f"deb {security} {SUITE}-security main"] if security else [])]


def recipe() -> dict:
    """Everything the image is made of; its hash names the cache folder."""
    return {"suite": SUITE, "variant": "apt", "packages": PACKAGES, "sources": sources(debian_mirrors()),
            "customize": CUSTOMIZE, "cloud_cfg": CLOUD_CFG}


def image_dir(spec: dict | None = None) -> Path:
    spec = spec or recipe()
    return CACHE_ROOT / f"{SUITE}-{hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]}"


def missing_prerequisites() -> str | None:
    """Why the image cannot be built here, or None."""
    if os.geteuid() != 0:
        return "root (mmdebstrap builds the image as root; CI runs as root)"
    if not shutil.which("mmdebstrap"):
        return f"mmdebstrap (apt-get install {APT_PACKAGES})"
    if not Path(f"/usr/share/keyrings/debian-archive-{SUITE}-stable.gpg").exists():
        return f"the {SUITE} archive keys (apt-get install --only-upgrade debian-archive-keyring)"
    return None


def rootfs() -> Path:
    """The unpacked image (overlay lower dir), built now if this recipe has none yet."""
    reason = missing_prerequisites()
    if reason:
        raise UserError(f"the rehearsal image needs {reason}")
    spec = recipe()
    folder = image_dir(spec)
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with _lock(CACHE_ROOT / f"{folder.name}.lock"):
        if not (folder / "complete").exists():
            _build(spec, folder)
    return folder / "rootfs"


def _build(spec: dict, folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    partial = Path(tempfile.mkdtemp(prefix=folder.name + ".partial-", dir=folder.parent))
    try:
        started = time.monotonic()
        built = subprocess.run(
            ["mmdebstrap", "--quiet", "--variant=apt", f"--include={','.join(spec['packages'])}",
             *(f"--customize-hook={hook}" for hook in spec["customize"]),
             spec["suite"], str(partial / "rootfs"), *spec["sources"]],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT,
            env={**os.environ, "KINDLING_CLOUD_CFG": spec["cloud_cfg"]})
        if built.returncode:
            raise UserError(f"mmdebstrap of {SUITE} failed: {built.stderr.strip().splitlines()[-3:]}; "
                            "check that apt can reach the Debian mirror (apt-get update)")
        (partial / "recipe.json").write_text(json.dumps(spec, indent=1) + "\n")
        (partial / "complete").write_text(f"built in {time.monotonic() - started:.1f} s\n")
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


@contextlib.contextmanager
def _lock(path: Path):
    """One builder at a time per recipe (concurrent test sessions wait for the first)."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def main(argv: list[str] | None = None) -> None:
    """Build or reuse the image; no options."""
    started = time.monotonic()
    tree = rootfs()
    print(f"image {tree} ready in {time.monotonic() - started:.1f} s "
          f"({(tree.parent / 'complete').read_text().strip()})")


if __name__ == "__main__":
    run_cli(main)
