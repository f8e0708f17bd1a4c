"""The login key: generated (ED25519) or the user's own, registered as an EC2 key pair.

The private key leaves the program only as a secret output, for the inventory's sshPrivateKey.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws
import pulumi_tls as tls

from infra.tags import cluster_tags


@dataclass(frozen=True)
class LoginKeyArgs:
    cluster_name: str
    public_key: Optional[str] = None
    """The user's own OpenSSH public key; then private_key (secret config) must be its pair."""
    private_key: Optional[pulumi.Input[str]] = None


class LoginKey(pulumi.ComponentResource):
    key_name: pulumi.Output[str]
    private_key_openssh: pulumi.Output[str]

    def __init__(self, name: str, args: LoginKeyArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("kindling:infra:LoginKey", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        if args.public_key:
            public_key, private_key = args.public_key, args.private_key
        else:
            generated = tls.PrivateKey(f"{name}-generated", algorithm="ED25519", opts=child)
            public_key, private_key = generated.public_key_openssh, generated.private_key_openssh
        pair = aws.ec2.KeyPair(f"{name}", key_name_prefix=f"{args.cluster_name}-",
                               public_key=public_key, tags=cluster_tags(args.cluster_name, "login"),
                               opts=child)
        self.key_name = pair.key_name
        self.private_key_openssh = pulumi.Output.secret(private_key)
        self.register_outputs({"keyName": pair.key_name})
