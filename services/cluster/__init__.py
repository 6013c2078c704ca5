"""Cluster foundations: local NATS and ZooKeeper servers (servers.py), leader election and the
shard-leader registry in ZooKeeper (election.py), journals routed per name (journals.py), and one
replica of a state-machine shard as leader or hot follower (replica.py), which the matching shards
(services.matching.replica) and the accounts shards (services.accounts.replica) run on."""
