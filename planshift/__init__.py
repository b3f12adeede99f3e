"""planshift — carries out SaaS subscription-plan upgrades over Apache Kafka.

This package is the shared core, grouped by concern:

- at the top: the contract's names (`contract`), settings, logging, errors, schema
  validation, the plan catalogue, and one builder per event type (`events`);
- `domain/`: the pure rules (lifecycle, validity, eligibility, money, settlement,
  reconciliation);
- `kafka/`: clients, topics, the plain reader, partitioning, the assignor, and the one
  module that touches kafka-python's private parts (`fastpath`);
- `storage/`: the licence directory, the Parquet lake, the reports;
- `runtime/`: the processing runtime every consumer runs on;
- `ops/`: the local broker or cluster, dead letters and their re-drive, replays.

The CLI (`cli`) and the top-level `consumers`, `producers` and `jobs` packages depend on
it; nothing here imports them (`tests/test_layout.py`).
"""

__version__ = "0.1.0"
