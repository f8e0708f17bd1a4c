"""What runs on the cluster hosts, apart from the control side: the watcher (idle auto-stop,
spot interruption notices). Standard library only (boto3 imported for the stop call).
"""
