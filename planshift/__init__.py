"""planshift — carries out SaaS subscription-plan upgrades over Apache Kafka.

This package is the shared core: the contract's names, settings, logging, schema
validation, the local broker, the processing runtime, the licence directory and the
pure domain logic. The CLI (`cli`) and the top-level `consumers`,
`producers` and `jobs` packages depend on it; nothing here imports them.
"""

__version__ = "0.1.0"
