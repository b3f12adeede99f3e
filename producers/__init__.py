"""Clients of planshift's input topics: the order systems' publisher and (later) simulators."""
