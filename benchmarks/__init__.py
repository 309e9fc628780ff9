"""Benchmarks of calsync against the sandbox Cashfin API; run ``python -m benchmarks.sync_bench --help``."""
