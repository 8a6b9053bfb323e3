"""Measuring tools behind the CLI: ``rayagg bench`` (Ray against the in-process driver,
critical path, overhead) and ``rayagg balance-test`` (balancing policies compared)."""
