"""SparkCluster: the whole cluster as one component, whose outputs are the ops inventory."""

from __future__ import annotations

from typing import Optional

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from infra.ami import ubuntu_ami
from infra.config import SparkClusterArgs
from infra.host import ClusterHost, ClusterHostArgs
from infra.iam import InstanceRole, InstanceRoleArgs
from infra.keys import LoginKey, LoginKeyArgs
from infra.network import ClusterNetwork, ClusterNetworkArgs
from infra.plan import plan_cluster
from infra.security import ClusterFirewall, ClusterFirewallArgs
from infra.storage import DataBucket, DataBucketArgs
from infra.tags import cluster_tags
from kindling import spark_master_url

SSH_USER = "ubuntu"  # the login user of Ubuntu cloud images
SPARK_SECRET_LENGTH = 48
"""Letters and digits only (no quoting in spark-defaults.conf or a shell): 48 of them are ~285 bits."""


def spark_secret(name: str, opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
    """The cluster's spark.authenticate secret: generated once and kept in the stack's state
    (encrypted), so every deploy agrees on it; it leaves the program only as a secret output."""
    password = random.RandomPassword(name, length=SPARK_SECRET_LENGTH, special=False, opts=opts)
    return pulumi.Output.secret(password.result)


class SparkCluster(pulumi.ComponentResource):
    inventory: dict[str, pulumi.Output]
    """One output per kindling.SCHEMA_KEYS key; sshPrivateKey and sparkSecret are secrets."""

    def __init__(self, name: str, args: SparkClusterArgs, opts: Optional[pulumi.ResourceOptions] = None):
        plan = plan_cluster(args)  # may refuse the config: before any resource, even this component
        super().__init__("kindling:infra:SparkCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        cluster = args.cluster_name
        network = ClusterNetwork(f"{name}-network", ClusterNetworkArgs(
            cluster, plan.availability_zone, plan.zone_picked, args.subnet_id, plan.vpc_id), child)
        firewall = ClusterFirewall(f"{name}-firewall", ClusterFirewallArgs(
            cluster, network.vpc_id, args.ssh_cidr), child)
        login = LoginKey(f"{name}-login", LoginKeyArgs(cluster, args.ssh_public_key, args.ssh_private_key), child)
        data = DataBucket(f"{name}-data", DataBucketArgs(cluster), child)
        role = InstanceRole(f"{name}-role", InstanceRoleArgs(cluster, data.arn, args.spot_workers),
                            child)
        placement = aws.ec2.PlacementGroup(
            f"{name}-placement", strategy="cluster", tags=cluster_tags(cluster, "placement"),
            opts=child) if args.placement_group else None
        ami = args.ami or ubuntu_ami(pulumi.InvokeOutputOptions(parent=self))

        def host(host_name: str, role_name: str, instance_type: str, spot: bool = False) -> ClusterHost:
            is_master = role_name == "master"  # the SSH jump host: reachable from sshCidr, Elastic IP
            groups = [firewall.members_group_id, *([firewall.ssh_group_id] if is_master else [])]
            return ClusterHost(f"{name}-{host_name}", ClusterHostArgs(
                cluster_name=cluster, host_name=host_name, role=role_name, instance_type=instance_type,
                ami=ami, pin_ami=args.ami is not None, subnet_id=network.subnet_id,
                private_ip=plan.addresses[host_name], security_group_ids=groups, key_name=login.key_name,
                instance_profile=role.instance_profile_name, root_volume_gib=args.root_volume_gib,
                running=args.running, hdfs=args.hdfs, elastic_ip=is_master, spot=spot,
                spot_max_price=args.spot_max_price, placement_group=placement.name if placement else None,
                ready=[*network.internet_route, *firewall.members_rules, *(firewall.ssh_rules if is_master else [])]),
                child)

        master = host("master", "master", args.master_instance_type)
        workers = [host(f"worker-{i}", "worker", args.worker_instance_type, spot=args.spot_workers)
                   for i in range(args.worker_count)]
        ps = [host(f"ps-{i}", "ps", args.ps_type) for i in range(args.ps_count)]
        every_host = [master, *workers, *ps]
        self.inventory = {
            "clusterName": pulumi.Output.from_input(cluster),
            "region": pulumi.Output.from_input(args.region),
            "sshUser": pulumi.Output.from_input(SSH_USER),
            "sshPrivateKey": login.private_key_openssh,
            "knownHosts": pulumi.Output.all(*[h.known_hosts for h in every_host]).apply(
                lambda lines: "\n".join(lines) + "\n"),
            "master": master.entry,
            "workers": pulumi.Output.all(*[w.entry for w in workers]),
            "ps": pulumi.Output.all(*[p.entry for p in ps]),
            "bucket": data.bucket_name,
            "sparkMasterUrl": master.entry.apply(lambda entry: spark_master_url(entry["privateIp"])),
            "s3Endpoint": pulumi.Output.from_input(""),  # AWS S3 itself (the hosts' region)
            "hdfs": pulumi.Output.from_input(args.hdfs),
            "idleStopMinutes": pulumi.Output.from_input(float(args.idle_stop_minutes)),
            "maxHours": pulumi.Output.from_input(float(args.max_hours)),
            "ec2Endpoint": pulumi.Output.from_input(""),  # AWS EC2 itself
            "imdsEndpoint": pulumi.Output.from_input(""),  # the instances' own metadata service
            "hourlyCostUsd": pulumi.Output.from_input(plan.hourly_cost_usd),
            "sparkSecret": spark_secret(f"{name}-spark-secret", child),
        }
        self.register_outputs(self.inventory)
