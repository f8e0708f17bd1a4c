"""The default machine image: the latest Ubuntu 24.04 LTS (amd64) published by Canonical."""

from __future__ import annotations

from typing import Optional

import pulumi
import pulumi_aws as aws

CANONICAL_OWNER = "099720109477"
UBUNTU_NOBLE_AMD64 = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"


def ubuntu_ami(opts: Optional[pulumi.InvokeOutputOptions] = None) -> pulumi.Output[str]:
    """The newest image id at this `pulumi up` (hosts ignore later ones: see ClusterHost)."""
    image = aws.ec2.get_ami_output(
        owners=[CANONICAL_OWNER], most_recent=True,
        filters=[aws.ec2.GetAmiFilterArgs(name="name", values=[UBUNTU_NOBLE_AMD64]),
                 aws.ec2.GetAmiFilterArgs(name="architecture", values=["x86_64"]),
                 aws.ec2.GetAmiFilterArgs(name="virtualization-type", values=["hvm"])],
        opts=opts)
    return image.id
