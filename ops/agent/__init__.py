"""What runs on the cluster hosts, apart from the control side: the watcher (idle auto-stop,
spot interruption notices) and how it is laid out on a host. Standard library only.
"""
