"""Kafka plumbing: clients, topics, plain readers, partitioning, the group assignor, and (quarantined)
the fast paths through kafka-python's internals."""
