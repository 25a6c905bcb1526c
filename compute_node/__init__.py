"""Compute node: a Thrift server that trains shard tasks on mlcore, simulates load, caches shards.
"""
