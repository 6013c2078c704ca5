"""Cluster foundations: local NATS and ZooKeeper servers (servers.py), leader election and the
shard-leader registry in ZooKeeper (election.py)."""
