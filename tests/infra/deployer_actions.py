"""What the deployer's credentials must be allowed, per resource type and per invoke the program uses.

Read from the AWS provider's behaviour (create, read on refresh, update, delete) and AWS's Service
Authorization Reference; not traced against an account (docs/ec2.md says so). A type or invoke
missing here fails tests/infra/test_deployer_policy.py: whoever adds one to the program says here
what it calls, and the documented policy must then grant it.

For EC2 types, the first action is the one that creates the resource (and tags it on creation:
the policy's ec2:CreateTags is conditioned on ec2:CreateAction).
"""

from __future__ import annotations

ENDPOINT = ("ec2:ModifyVpcEndpoint", "ec2:DescribeVpcEndpoints")
SECURITY_GROUP_RULE = ("ec2:RevokeSecurityGroupIngress", "ec2:RevokeSecurityGroupEgress",
                       "ec2:ModifySecurityGroupRules", "ec2:DescribeSecurityGroupRules")

RESOURCE_ACTIONS: dict[str, tuple[str, ...]] = {
    "aws:ec2/vpc:Vpc": (
        "ec2:CreateVpc", "ec2:DeleteVpc", "ec2:ModifyVpcAttribute", "ec2:DescribeVpcs",
        "ec2:DescribeVpcAttribute", "ec2:DescribeRouteTables", "ec2:DescribeNetworkAcls",
        "ec2:DescribeSecurityGroups"),
    "aws:ec2/internetGateway:InternetGateway": (
        "ec2:CreateInternetGateway", "ec2:AttachInternetGateway", "ec2:DetachInternetGateway",
        "ec2:DeleteInternetGateway", "ec2:DescribeInternetGateways"),
    "aws:ec2/subnet:Subnet": (
        "ec2:CreateSubnet", "ec2:DeleteSubnet", "ec2:ModifySubnetAttribute", "ec2:DescribeSubnets"),
    "aws:ec2/routeTable:RouteTable": (
        "ec2:CreateRouteTable", "ec2:DeleteRouteTable", "ec2:CreateRoute", "ec2:DeleteRoute",
        "ec2:ReplaceRoute", "ec2:DescribeRouteTables"),
    "aws:ec2/routeTableAssociation:RouteTableAssociation": (
        "ec2:AssociateRouteTable", "ec2:DisassociateRouteTable", "ec2:DescribeRouteTables"),
    "aws:ec2/vpcEndpoint:VpcEndpoint": (
        "ec2:CreateVpcEndpoint", "ec2:DeleteVpcEndpoints", *ENDPOINT, "ec2:DescribePrefixLists"),
    "aws:ec2/vpcEndpointRouteTableAssociation:VpcEndpointRouteTableAssociation": ENDPOINT,
    "aws:ec2/securityGroup:SecurityGroup": (
        "ec2:CreateSecurityGroup", "ec2:DeleteSecurityGroup", "ec2:DescribeSecurityGroups",
        "ec2:RevokeSecurityGroupEgress"),  # the provider strips AWS's default egress rule
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": (
        "ec2:AuthorizeSecurityGroupIngress", *SECURITY_GROUP_RULE),
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": (
        "ec2:AuthorizeSecurityGroupEgress", *SECURITY_GROUP_RULE),
    "aws:ec2/keyPair:KeyPair": ("ec2:ImportKeyPair", "ec2:DeleteKeyPair", "ec2:DescribeKeyPairs"),
    "aws:ec2/networkInterface:NetworkInterface": (
        "ec2:CreateNetworkInterface", "ec2:DeleteNetworkInterface",
        "ec2:ModifyNetworkInterfaceAttribute", "ec2:DescribeNetworkInterfaces"),
    "aws:ec2/eip:Eip": (
        "ec2:AllocateAddress", "ec2:ReleaseAddress", "ec2:AssociateAddress",
        "ec2:DisassociateAddress", "ec2:DescribeAddresses", "ec2:DescribeAddressesAttribute"),
    "aws:ec2/instance:Instance": (
        "ec2:RunInstances", "ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances",
        "ec2:ModifyInstanceAttribute", "ec2:ModifyInstanceMetadataOptions",
        "ec2:ModifyInstanceCreditSpecification", "ec2:ModifyVolume",
        "ec2:AssociateIamInstanceProfile", "ec2:ReplaceIamInstanceProfileAssociation",
        "ec2:DisassociateIamInstanceProfile",  # a new profile for a stopped instance: off, then on
        "ec2:DescribeInstances", "ec2:DescribeInstanceAttribute",
        "ec2:DescribeInstanceCreditSpecifications", "ec2:DescribeInstanceTypes", "ec2:DescribeVolumes",
        "ec2:DescribeIamInstanceProfileAssociations", "ec2:DescribeSpotInstanceRequests",
        "iam:PassRole"),  # the instance profile's role, handed to EC2
    "aws:ec2transitgateway/instanceState:InstanceState": (
        "ec2:StopInstances", "ec2:StartInstances", "ec2:DescribeInstances", "ec2:DescribeInstanceStatus"),
    "aws:ec2/placementGroup:PlacementGroup": (
        "ec2:CreatePlacementGroup", "ec2:DeletePlacementGroup", "ec2:DescribePlacementGroups"),
    "aws:s3/bucket:Bucket": (
        "s3:CreateBucket", "s3:DeleteBucket", "s3:ListBucket", "s3:PutBucketTagging",
        # what the provider reads back on every refresh
        "s3:GetBucketLocation", "s3:GetBucketTagging", "s3:GetBucketAcl", "s3:GetBucketPolicy", "s3:GetBucketCORS",
        "s3:GetBucketWebsite", "s3:GetBucketLogging", "s3:GetBucketRequestPayment",
        "s3:GetBucketObjectLockConfiguration", "s3:GetBucketOwnershipControls",
        "s3:GetAccelerateConfiguration", "s3:GetReplicationConfiguration",
        "s3:GetEncryptionConfiguration", "s3:GetLifecycleConfiguration", "s3:GetBucketVersioning"),
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": (
        "s3:PutBucketPublicAccessBlock", "s3:GetBucketPublicAccessBlock"),
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration": (
        "s3:PutEncryptionConfiguration", "s3:GetEncryptionConfiguration"),
    "aws:s3/bucketVersioning:BucketVersioning": ("s3:PutBucketVersioning", "s3:GetBucketVersioning"),
    "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration": (
        "s3:PutLifecycleConfiguration", "s3:GetLifecycleConfiguration"),
    "aws:iam/role:Role": (
        "iam:CreateRole", "iam:GetRole", "iam:DeleteRole", "iam:TagRole", "iam:UntagRole",
        "iam:UpdateRole", "iam:UpdateRoleDescription", "iam:UpdateAssumeRolePolicy",
        "iam:ListRolePolicies", "iam:ListAttachedRolePolicies", "iam:ListInstanceProfilesForRole"),
    "aws:iam/rolePolicy:RolePolicy": ("iam:PutRolePolicy", "iam:GetRolePolicy", "iam:DeleteRolePolicy"),
    "aws:iam/instanceProfile:InstanceProfile": (
        "iam:CreateInstanceProfile", "iam:GetInstanceProfile", "iam:DeleteInstanceProfile",
        "iam:AddRoleToInstanceProfile", "iam:RemoveRoleFromInstanceProfile",
        "iam:TagInstanceProfile", "iam:UntagInstanceProfile",
        "iam:PassRole"),  # AddRoleToInstanceProfile needs it on the role
    # Made on the control machine by the providers: no AWS call.
    "tls:index/privateKey:PrivateKey": (),
    "random:index/randomPassword:RandomPassword": (),
}

SPOT_ACTIONS = ("iam:CreateServiceLinkedRole",)
"""The first spot launch of an account creates AWSServiceRoleForEC2Spot with the caller's rights."""

INVOKE_ACTIONS: dict[str, tuple[str, ...]] = {
    "aws:ec2/getAmi:getAmi": ("ec2:DescribeImages",),
    "aws:ec2/getSubnet:getSubnet": ("ec2:DescribeSubnets",),
    "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings": ("ec2:DescribeInstanceTypeOfferings",),
    "aws:ec2/getInstanceType:getInstanceType": ("ec2:DescribeInstanceTypes",),
    "aws:servicequotas/getServiceQuota:getServiceQuota": ("servicequotas:GetServiceQuota",),
    "aws:index/getAvailabilityZones:getAvailabilityZones": ("ec2:DescribeAvailabilityZones",),
    "aws:ec2/getVpcEndpointService:getVpcEndpointService": ("ec2:DescribeVpcEndpointServices",),
}
