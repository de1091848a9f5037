"""Row counts read from a real mariadb-dump of a real database."""

from __future__ import annotations

import gzip
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from jerp_jobs.dumpstats import compare_stats, dump_stats
from tests.conftest import MARIADB_PORT
from tests.e2e_support import sql

pytestmark = pytest.mark.services


def test_counts_match_the_database_including_tricky_strings(tmp_path: Path, mariadb_root_password: str) -> None:
    db = f"stats_{uuid.uuid4().hex[:8]}"
    sql(mariadb_root_password, f"CREATE DATABASE {db}")
    try:
        sql(mariadb_root_password, "CREATE TABLE `tabNote` (name varchar(140) primary key, content longtext)", db)
        sql(mariadb_root_password, "CREATE TABLE `tab Empty` (x int)", db)
        sql(mariadb_root_password, "CREATE TABLE `tabOdd``Name` (x int)", db)
        tricky = ["plain", "with ),( inside", "quote ' and \\\\ backslash", "newline\\nand ');", "(", ")"]
        values = ",".join(f"('n{i}', '{t.replace(chr(39), chr(39) * 2)}')" for i, t in enumerate(tricky * 300))
        sql(mariadb_root_password, f"INSERT INTO `tabNote` VALUES {values}", db)
        sql(mariadb_root_password, "INSERT INTO `tabOdd``Name` VALUES (1),(2),(3)", db)
        dump = tmp_path / "db.sql.gz"
        raw = subprocess.run(
            ["mariadb-dump", "--protocol=tcp", "-h", "127.0.0.1", "-P", str(MARIADB_PORT), "-uroot",
             "--single-transaction", "--quick", "--lock-tables=false", db],
            env={**os.environ, "MYSQL_PWD": mariadb_root_password}, capture_output=True, check=True,
        ).stdout
        dump.write_bytes(gzip.compress(raw))
        assert dump_stats(dump) == {"tab Empty": 0, "tabNote": len(tricky) * 300, "tabOdd`Name": 3}
    finally:
        sql(mariadb_root_password, f"DROP DATABASE {db}")


def test_compare_names_every_difference() -> None:
    problems = compare_stats({"a": 1, "b": 2, "c": 0}, {"a": 1, "b": 3, "d": 0})
    assert problems == ["table b: 3 rows, 2 expected", "table c is missing (0 rows expected)",
                        "table d is unexpected (0 rows)"]
    assert compare_stats({"a": 1}, {"a": 1}) == []


def test_one_statement_per_line_format_of_older_dumps(tmp_path: Path) -> None:
    dump = tmp_path / "old.sql.gz"
    dump.write_bytes(gzip.compress(
        b"CREATE TABLE `tabNote` (\n  `name` varchar(140)\n);\n"
        b"INSERT INTO `tabNote` VALUES ('a','x),(y'),('b','it\\'s (1)'),('c',NULL);\n"
        b"INSERT INTO `tabNote` VALUES ('d','');\n"
        b"CREATE TABLE `tabEmpty` (`x` int);\n"
    ))
    assert dump_stats(dump) == {"tabEmpty": 0, "tabNote": 4}
