"""Point-in-time recovery: shipping cost, storage per day, achieved RPO and replay speed.

Starts a private MariaDB with binary logs as the platform's (tests/pitr_support.py), lets a
writer commit transactions to two sites' databases for ``--seconds`` while the logs are shipped
every ``--ship-seconds`` (jerp_jobs.pitr.ship into a folder archive), then restores the first
site to the last recorded instant twice, on the same logs and base dump:

- jerp-jobs: ``pitr.restore_to`` (logs checked, dump loaded, one database's events replayed
  through the executor);
- the reference: the runbook's manual way, ``mariadb-binlog --database ... | mariadb`` on the
  same files, after the same dump was loaded by hand.

Prints the figures (``--json`` for a machine-readable copy). The RPO with the default interval
is the interval plus the slowest shipment measured (a change waits at most one interval to be in
a closed log, then one shipment to be off-site).

    .venv/bin/python benchmarks/pitr.py                 # 30 s of writes, a shipment every 10 s
    .venv/bin/python benchmarks/pitr.py --seconds 60 --json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jerp_jobs.pitr import FolderArchive, plan, restore_to, ship, utc_text  # noqa: E402
from tests.pitr_support import Writer, make_site_database, start_binlog_server, table_digest  # noqa: E402

SITE_DB, OTHER_DB = "_bench0site0a", "_bench0site0b"
DEFAULT_INTERVAL_S = 300.0


def reference_restore(server: object, files: list[Path], dump: Path, start: object, target: float,
                      into: str) -> float:
    """The manual way, timed: load the dump, then mariadb-binlog piped into mariadb."""
    env = {**os.environ, "MYSQL_PWD": server.password, "TZ": "UTC"}  # type: ignore[attr-defined]
    client = ["mariadb", "--protocol=tcp", "-h", "127.0.0.1", "-P", str(server.port), "-uroot"]  # type: ignore[attr-defined]
    subprocess.run([*client, "-e", f"CREATE DATABASE `{into}`"], env=env, check=True)
    with gzip.open(dump, "rb") as src:
        subprocess.run([*client, into], input=src.read(), env=env, check=True)
    loaded = time.monotonic()
    binlog = subprocess.Popen(["mariadb-binlog", "--database", SITE_DB, f"--rewrite-db={SITE_DB}->{into}",
                               f"--start-position={start.position}",  # type: ignore[attr-defined]
                               f"--stop-datetime={utc_text(target)}", *map(str, files)],
                              stdout=subprocess.PIPE, env=env)
    subprocess.run([*client, into], stdin=binlog.stdout, env=env, check=True)
    assert binlog.stdout is not None
    binlog.stdout.close()
    if binlog.wait() != 0:
        raise SystemExit("mariadb-binlog failed in the reference run")
    return time.monotonic() - loaded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the writer writes")
    parser.add_argument("--ship-seconds", type=float, default=10.0, help="interval between two shipments")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="jerp-pitr-bench-"))
    server = start_binlog_server(work / "mariadb")
    try:
        db = server.client(work / "frappe-bench")
        make_site_database(db, SITE_DB)
        make_site_database(db, OTHER_DB)
        archive = FolderArchive(work / "archive")
        writer = Writer(db, [SITE_DB, OTHER_DB]).start()
        ships: list[float] = []
        began = time.time()
        time.sleep(min(2.0, args.seconds / 4))
        dumped_at = time.time()
        start = db.dump(SITE_DB, work / "base.sql.gz")
        next_ship = time.monotonic() + args.ship_seconds
        while time.time() - began < args.seconds:
            time.sleep(max(0.0, min(next_ship - time.monotonic(), began + args.seconds - time.time())))
            if time.monotonic() >= next_ship:
                t0 = time.monotonic()
                ship(db, archive)
                ships.append(time.monotonic() - t0)
                next_ship += args.ship_seconds
        writer.stop()
        wrote_s = time.time() - began
        t0 = time.monotonic()
        ship(db, archive)
        ships.append(time.monotonic() - t0)

        index = archive.index()
        shipped_bytes = sum(entry["size"] for entry in index)
        reached = max(entry["closed_at"] for entry in index)
        target = float(max(t for t in writer.states if t <= reached))
        ours = restore_to(db, archive, dump=work / "base.sql.gz", start=start, dumped_at=dumped_at,
                          database=SITE_DB, into="_bench_ours", target=target)
        assert table_digest(db, "_bench_ours") == writer.states[int(target)], "jerp-jobs' restore differs"
        files = [archive.folder / entry["name"] for entry in plan(index, start, target)]
        reference_s = reference_restore(server, files, work / "base.sql.gz", start, target, "_bench_ref")
        assert table_digest(db, "_bench_ref") == writer.states[int(target)], "the reference restore differs"

        rate = writer.writes / wrote_s
        per_txn = shipped_bytes / max(1, writer.writes)
        result = {
            "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                        "mariadb": db.query("SELECT @@version")[0][0]},
            "writes": {"transactions": writer.writes, "seconds": round(wrote_s, 1), "per_s": round(rate, 1),
                       "rows_per_transaction": 3, "sites": 2},
            "shipping": {"shipments": len(ships), "median_s": round(statistics.median(ships), 3),
                         "max_s": round(max(ships), 3), "logs": len(index), "bytes": shipped_bytes},
            "storage": {"bytes_per_transaction": round(per_txn), "per_day_at_this_rate_mib": round(
                per_txn * rate * 86400 / 2**20, 1), "per_day_at_1_tx_per_s_mib": round(per_txn * 86400 / 2**20, 1)},
            "rpo": {"default_interval_s": DEFAULT_INTERVAL_S,
                    "worst_case_s": round(DEFAULT_INTERVAL_S + max(ships), 1)},
            "replay": {"row_events": ours["events"], "jerp_jobs_s": ours["replay_s"],
                       "jerp_jobs_row_events_per_s": round(ours["events"] / ours["replay_s"]) if ours["replay_s"] else None,
                       "reference_s": round(reference_s, 3),
                       "reference_row_events_per_s": round(ours["events"] / reference_s) if reference_s else None,
                       "load_s": ours["load_s"]},
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            w, sh, st, rp, rr = (result[k] for k in ("writes", "shipping", "storage", "rpo", "replay"))
            print(f"machine: {result['machine']}")
            print(f"writes: {w['transactions']} transactions in {w['seconds']} s ({w['per_s']}/s, 2 sites, 3 rows each)")
            print(f"shipping: {sh['shipments']} shipments, median {sh['median_s'] * 1000:.0f} ms, max "
                  f"{sh['max_s'] * 1000:.0f} ms; {sh['logs']} logs, {sh['bytes']:,} B")
            print(f"storage: {st['bytes_per_transaction']} B per transaction (both sites' events); per day "
                  f"{st['per_day_at_this_rate_mib']} MiB at this rate, {st['per_day_at_1_tx_per_s_mib']} MiB at 1/s")
            print(f"RPO with the default {rp['default_interval_s']:.0f} s interval: at most {rp['worst_case_s']} s")
            print(f"replay of {rr['row_events']} row events: jerp-jobs {rr['jerp_jobs_s']:.3f} s "
                  f"({rr['jerp_jobs_row_events_per_s']}/s), reference mariadb-binlog | mariadb "
                  f"{rr['reference_s']:.3f} s ({rr['reference_row_events_per_s']}/s); dump load {rr['load_s']} s")
        return 0
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
