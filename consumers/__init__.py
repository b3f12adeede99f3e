"""The planshift consumers: each a small module of topics, state and a handler on the shared runtime."""
