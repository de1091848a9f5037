"""Point-in-time recovery proven on a real MariaDB with binary logs: a writer changes two sites'
databases continuously while a base dump is taken and the logs are shipped; restoring the first
site to each recorded instant gives exactly the rows it had then, and the second site is never
touched. A log missing or altered in the archive is refused before anything is created."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from jerp_jobs.pitr import BinlogAltered, BinlogGap, FolderArchive, OffsiteArchive, PitrError, plan, restore_to, ship
from tests.pitr_support import BinlogServer, Writer, binlog_server, make_site_database, table_digest  # noqa: F401

SITE_DB, OTHER_DB = "_0a1b2c3d4e5f6a7b", "_9f8e7d6c5b4a3f2e"


@pytest.fixture(scope="module")
def history(binlog_server: BinlogServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The writer's run: a base dump in the middle, three shipments, the recorded states."""
    db = binlog_server.client()
    make_site_database(db, SITE_DB)
    make_site_database(db, OTHER_DB)
    folder = tmp_path_factory.mktemp("pitr")
    archive = FolderArchive(folder / "archive")
    writer = Writer(db, [SITE_DB, OTHER_DB]).start()
    try:
        time.sleep(2.6)
        dumped_at = time.time()
        start = db.dump(SITE_DB, folder / "base.sql.gz")
        time.sleep(2.2)
        shipped = [ship(db, archive)]
        time.sleep(3.1)
        shipped.append(ship(db, archive))
        time.sleep(2.4)
    finally:
        writer.stop()
    began = time.monotonic()
    shipped.append(ship(db, archive))
    ship_s = time.monotonic() - began
    return {"db": db, "archive": archive, "dump": folder / "base.sql.gz", "start": start, "dumped_at": dumped_at,
            "states": dict(writer.states), "writes": writer.writes, "shipped": shipped, "ship_s": ship_s,
            "other": table_digest(db, OTHER_DB)}


def test_restoring_to_each_recorded_instant_gives_exactly_the_rows_of_that_instant(history: dict) -> None:
    db, archive = history["db"], history["archive"]
    reached = max(entry["closed_at"] for entry in archive.index())
    instants = sorted(t for t in history["states"] if history["dumped_at"] + 1 <= t <= reached)
    assert len(instants) >= 5, (instants, history["dumped_at"], reached)
    picked = [instants[0], instants[len(instants) // 3], instants[2 * len(instants) // 3], instants[-1]]
    assert len({history["states"][t] for t in picked}) == len(picked)  # the rows changed between them
    events = 0
    took = 0.0
    for number, instant in enumerate(picked):
        into = f"_pitr_{number}"
        done = restore_to(db, archive, dump=history["dump"], start=history["start"],
                          dumped_at=history["dumped_at"], database=SITE_DB, into=into, target=float(instant))
        assert table_digest(db, into) == history["states"][instant], (instant, done)
        assert db.query("SHOW TABLES", database=into) == [["tabInvoice"]]
        events += done["events"]
        took += done["replay_s"]
    # the other site of the same server: not one of its events was replayed anywhere
    assert table_digest(db, OTHER_DB) == history["other"]
    print(f"\nPITR: {history['writes']} transactions written, {len(archive.index())} logs shipped, "
          f"last shipment {history['ship_s'] * 1000:.0f} ms; replayed {events} row events in {took:.2f} s "
          f"({events / took if took else 0:.0f} row events/s)")


def test_an_instant_past_the_shipped_logs_or_before_the_base_is_refused(history: dict) -> None:
    db, archive = history["db"], history["archive"]
    reached = max(entry["closed_at"] for entry in archive.index())
    with pytest.raises(PitrError, match="the archived binary logs reach"):
        plan(archive.index(), history["start"], reached + 60)
    with pytest.raises(PitrError, match="use an older backup"):
        restore_to(db, archive, dump=history["dump"], start=history["start"], dumped_at=history["dumped_at"],
                   database=SITE_DB, into="_pitr_early", target=history["dumped_at"] - 5)
    assert db.query("SHOW DATABASES LIKE '_pitr_early'") == []


def test_an_altered_or_missing_log_is_refused_and_nothing_is_created(history: dict, tmp_path: Path) -> None:
    db, archive = history["db"], history["archive"]
    entries = archive.index()
    target = float(max(entry["closed_at"] for entry in entries))
    copy = FolderArchive(tmp_path / "copy")
    for entry in entries:
        copy.add(entry, archive.folder / entry["name"])
    victim = plan(entries, history["start"], target)[-1]["name"]
    path = copy.folder / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BinlogAltered, match=f"binary log {victim} in the archive is not the file shipped"):
        restore_to(db, copy, dump=history["dump"], start=history["start"], dumped_at=history["dumped_at"],
                   database=SITE_DB, into="_pitr_bad", target=target)
    path.unlink()
    with pytest.raises(BinlogGap, match=f"{victim} is listed in the archive's index but its file is gone"):
        restore_to(db, copy, dump=history["dump"], start=history["start"], dumped_at=history["dumped_at"],
                   database=SITE_DB, into="_pitr_bad", target=target)
    assert db.query("SHOW DATABASES LIKE '_pitr_bad'") == []
    # a hole in the index itself: the chain of logs is broken
    chain = plan(entries, history["start"], target)
    assert len(chain) >= 3, chain  # three shipments after the base dump
    holed = [entry for entry in entries if entry["name"] != chain[1]["name"]]
    with pytest.raises(BinlogGap, match=f"binary log number .* is missing from the archive"):
        plan(holed, history["start"], target)


def test_logs_shipped_off_site_encrypted_restore_the_same_and_tampering_is_refused(
    history: dict, s3_server: Any, s3_bucket: str, tmp_path: Path
) -> None:
    import pyrage

    from jerp_jobs.offsite.s3 import OffsiteStore
    from jerp_jobs.operations.offsite import list_offsite_sites

    identity = pyrage.x25519.Identity.generate()
    identity_file = tmp_path / "identity.txt"
    identity_file.write_text(f"{identity}\n")
    identity_file.chmod(0o600)
    client = s3_server.client()
    store = OffsiteStore(client, bucket=s3_bucket, prefix="backups", age_recipients=[str(identity.to_public())],
                         identity_file=identity_file, manifest_key=b"k" * 32)
    offsite = OffsiteArchive(store, "db-1")
    local = history["archive"]
    for entry in local.index():
        offsite.add(entry, local.folder / entry["name"])
    entries = offsite.index()
    assert [e["name"] for e in entries] == [e["name"] for e in local.index()]
    assert all(e["encrypted"] and e["key"].startswith("backups/_binlogs/db-1/") for e in entries)
    stored = client.get_object(Bucket=s3_bucket, Key=entries[0]["key"])["Body"].read()
    assert stored.startswith(b"age-encryption.org/v1") and b"tabInvoice" not in stored
    assert list_offsite_sites(store) == []  # the logs' area is no site

    db = history["db"]
    instant = max(t for t in history["states"]
                  if history["dumped_at"] + 1 <= t <= min(e["closed_at"] for e in entries[1:]))
    done = restore_to(db, offsite, dump=history["dump"], start=history["start"], dumped_at=history["dumped_at"],
                      database=SITE_DB, into="_pitr_s3", target=float(instant))
    assert table_digest(db, "_pitr_s3") == history["states"][instant], done

    # a log altered in the bucket: refused before anything is created
    victim = plan(entries, history["start"], float(instant))[-1]
    body = bytearray(client.get_object(Bucket=s3_bucket, Key=victim["key"])["Body"].read())
    body[-10] ^= 0xFF
    client.put_object(Bucket=s3_bucket, Key=victim["key"], Body=bytes(body))
    with pytest.raises(BinlogAltered, match=f"binary log {victim['name']} in the archive is not the file shipped"):
        restore_to(db, offsite, dump=history["dump"], start=history["start"], dumped_at=history["dumped_at"],
                   database=SITE_DB, into="_pitr_s3_bad", target=float(instant))
    assert db.query("SHOW DATABASES LIKE '_pitr_s3_bad'") == []
    # an index rewritten without the key: refused
    index_key = "backups/_binlogs/db-1/index.json"
    index = json.loads(client.get_object(Bucket=s3_bucket, Key=index_key)["Body"].read())
    index["files"][0]["sha256"] = "0" * 64
    client.put_object(Bucket=s3_bucket, Key=index_key, Body=json.dumps(index).encode())
    with pytest.raises(BinlogAltered, match="the index of shipped binary logs was altered"):
        offsite.index()
