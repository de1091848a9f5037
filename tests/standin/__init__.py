"""A stand-in for the Frappe ``bench`` CLI, with real effects on MariaDB, for the test suite."""

from tests.standin.layout import (
    BENCH_SCRIPT,
    create_bench,
    read_calls,
    read_violations,
    set_app_version,
    site_config,
    write_faults,
)

__all__ = [
    "BENCH_SCRIPT",
    "create_bench",
    "read_calls",
    "read_violations",
    "set_app_version",
    "site_config",
    "write_faults",
]
