"""Cluster foundations: local NATS and ZooKeeper servers (servers.py), leader election and the
shard-leader registry in ZooKeeper (election.py), journals routed per name (journals.py). The
matching shard's leader + hot followers run on them: services.matching.replica."""
