"""Reconciliation (CONTRACT.md §6 r2), pure: the checks finance runs every night.

- `ledger.py` — what one reconciliation looks at, as plain frames, and how it is put
  together (each invoice counted once, every line placed against its upgrade): the only
  join work;
- `owed.py` — the credit the contract's rules owe each upgrade, recomputed;
- `checks.py` — one function per check code, in §6's order;
- `reports.py` — the findings, upgrades and summary tables for finance.

`jobs/reconcile.py` reads the lake into these frames and writes the tables; the finance
guide (docs/FINANCE.md) explains every column and check with a worked invoice.
"""

from planshift.domain.reconciliation.checks import CHECK_CODES, INFO_CODES, run_checks
from planshift.domain.reconciliation.ledger import Ledger, build, once_per_invoice
from planshift.domain.reconciliation.reports import (
                                                     FINDING_COLUMNS,
                                                     SUMMARY_COLUMNS,
                                                     UPGRADE_COLUMNS,
                                                     findings_table,
                                                     summary_table,
                                                     upgrades_table,
)

__all__ = ["CHECK_CODES", "FINDING_COLUMNS", "INFO_CODES", "SUMMARY_COLUMNS", "UPGRADE_COLUMNS", "Ledger", "build",
           "findings_table", "once_per_invoice", "run_checks", "summary_table", "upgrades_table"]
