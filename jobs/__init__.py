"""Batch jobs: the nightly reconciliation for finance."""
