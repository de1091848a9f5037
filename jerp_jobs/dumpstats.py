"""Tables and row counts of a ``mariadb-dump`` SQL file (gzip), read as a stream.

A backup's manifest carries these statistics; a restore drill compares them with a dump taken
from the restored copy, so "the restore worked" means the same tables with the same number of
rows, not only an exit code. mariadb-dump writes one ``CREATE TABLE `t``` per table and its
rows as extended inserts, ``INSERT INTO `t` VALUES (...),(...);``, one statement per line;
string literals are single-quoted with backslash escapes, so they are removed before the row
tuples are counted.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

_CREATE = re.compile(rb"^CREATE TABLE `((?:[^`]|``)+)`")
_INSERT = re.compile(rb"^INSERT INTO `((?:[^`]|``)+)` (?:\([^)]*\) )?VALUES\s?")
_STRING = re.compile(rb"'(?:[^'\\]|\\.|'')*'")


def dump_stats(path: Path) -> dict[str, int]:
    """``{table: rows}`` for every table created in the dump (0 for empty tables)."""
    stats: dict[str, int] = {}
    table: str | None = None  # inside an INSERT statement of this table
    with gzip.open(path, "rb") as dump:
        for line in dump:
            if table is None:
                if line.startswith(b"CREATE TABLE"):
                    match = _CREATE.match(line)
                    if match:
                        stats.setdefault(_name(match.group(1)), 0)
                    continue
                if not line.startswith(b"INSERT INTO"):
                    continue
                match = _INSERT.match(line)
                if not match:
                    continue
                table = _name(match.group(1))
                line = line[match.end():]
            values = _STRING.sub(b"''", line).rstrip()
            stats[table] = stats.get(table, 0) + values.count(b"(")
            if values.endswith(b";"):
                table = None
    return dict(sorted(stats.items()))


def _name(raw: bytes) -> str:
    return raw.replace(b"``", b"`").decode("utf-8", errors="replace")


def compare_stats(expected: dict[str, int], actual: dict[str, int]) -> list[str]:
    """The differences, one line each; empty when the tables and row counts agree."""
    problems = []
    for table in sorted(set(expected) | set(actual)):
        if table not in actual:
            problems.append(f"table {table} is missing ({expected[table]} rows expected)")
        elif table not in expected:
            problems.append(f"table {table} is unexpected ({actual[table]} rows)")
        elif expected[table] != actual[table]:
            problems.append(f"table {table}: {actual[table]} rows, {expected[table]} expected")
    return problems
