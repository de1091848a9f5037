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
from jerp_jobs.pitr import DatabaseServer, MariaDB
from tests.pitr_support import BinlogServer, Writer, binlog_server, make_site_database, table_digest  # noqa: F401

SITE_DB, OTHER_DB = "_0a1b2c3d4e5f6a7b", "_9f8e7d6c5b4a3f2e"


@pytest.fixture(scope="module")
def history(binlog_server: BinlogServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The writer's run: a base dump in the middle, three shipments, the recorded states."""
    folder = tmp_path_factory.mktemp("pitr")
    db = binlog_server.client(folder / "frappe-bench")
    make_site_database(db, SITE_DB)
    make_site_database(db, OTHER_DB)
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
            "other": table_digest(db, OTHER_DB), "bench": folder / "frappe-bench"}


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
    # nothing left in the work folder of the sites volume (dumps, logs, replay scripts)
    assert list((history["bench"] / "sites" / ".jerp-pitr").iterdir()) == []
    # making, loading and replaying the restored copies wrote nothing to the binary logs
    current = db.binary_logs()[-1][0]
    db.flush()
    written = db.download(current).read_bytes()
    assert b"_pitr_" not in written and b"tabInvoice" not in written, current
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


def test_a_statement_naming_the_database_itself_is_never_replayed(binlog_server: BinlogServer,
                                                                  tmp_path: Path) -> None:
    """--rewrite-db renames row events and USE only: a statement that names the site's database
    (``CREATE TABLE `db`.`t```, a restore's ``DROP DATABASE `db```) would act on the live database
    if replayed, so the replay refuses and leaves no database behind."""
    db = binlog_server.client(tmp_path / "frappe-bench")
    name = "_5e5e5e5e5e5e5e5e"
    make_site_database(db, name)
    start = db.dump(name, tmp_path / "base.sql.gz")
    dumped_at = time.time()
    time.sleep(1.1)
    db.query("INSERT INTO `tabInvoice` VALUES (1, 1, 'a')", database=name)
    db.query(f"CREATE TABLE `{name}`.`tabExtra` (id INT PRIMARY KEY)", database=name)
    time.sleep(1.1)
    archive = FolderArchive(tmp_path / "archive")
    ship(db, archive)
    target = max(entry["closed_at"] for entry in archive.index())
    with pytest.raises(PitrError, match=f"naming the database {name} itself, written at 20[0-9-]+ [0-9:]+ UTC"):
        restore_to(db, archive, dump=tmp_path / "base.sql.gz", start=start, dumped_at=dumped_at, database=name,
                   into="_pitr_named", target=target)
    assert db.query("SHOW DATABASES LIKE '_pitr_named'") == []
    assert db.query("SELECT COUNT(*) FROM `tabInvoice`", database=name) == [["1"]]  # the live one as it was


def test_logs_closed_before_a_shipment_keep_their_own_close_times(binlog_server: BinlogServer,
                                                                   tmp_path: Path) -> None:
    """Logs rotated between shipments (a backlog, a restart, a size rotation) arrive in one
    shipment: each keeps the time the next log opened, in the server's clock, so a replay to an
    instant inside the second one reads it."""
    db = binlog_server.client(tmp_path / "frappe-bench")
    name = "_7b7b7b7b7b7b7b7b"
    make_site_database(db, name)
    start = db.dump(name, tmp_path / "base.sql.gz")
    dumped_at = db.clock() + 1
    marks = []
    for row in (1, 2, 3):
        time.sleep(1.2)
        db.query(f"INSERT INTO `tabInvoice` VALUES ({row}, {row}, 'r{row}')", database=name)
        time.sleep(1.2)
        marks.append(db.clock())  # after row `row`, before the rotation
        if row < 3:
            db.flush()  # rotated, not shipped
    archive = FolderArchive(tmp_path / "archive")
    shipped = ship(db, archive)
    assert len(shipped) >= 3
    closes = [entry["closed_at"] for entry in shipped]
    # in order; the three logs of this test (the server's earlier ones, other tests', may open
    # within one second of each other) each keep a close time of their own
    assert closes == sorted(closes) and closes[-3] < closes[-2] < closes[-1], closes
    restore_to(db, archive, dump=tmp_path / "base.sql.gz", start=start, dumped_at=dumped_at, database=name,
               into="_pitr_rotated", target=float(marks[1]))
    try:
        assert db.query("SELECT id FROM `tabInvoice` ORDER BY id", database="_pitr_rotated") == [["1"], ["2"]]
    finally:
        db.drop("_pitr_rotated")


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


def test_a_password_with_quotes_and_backslashes_reaches_the_tools_only_on_stdin(
    binlog_server: BinlogServer, tmp_path: Path
) -> None:
    from tests.test_bench_secrets import CmdlineSampler

    db = binlog_server.client(tmp_path / "frappe-bench")
    password = 'p"w\\d #x y'
    quoted = "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"
    for host in ("localhost", "127.0.0.1"):
        db.query(f"CREATE USER IF NOT EXISTS 'shipper'@'{host}' IDENTIFIED BY {quoted}")
        db.query(f"GRANT REPLICATION SLAVE, REPLICATION CLIENT, RELOAD ON *.* TO 'shipper'@'{host}'")
    shipper = MariaDB(DatabaseServer("127.0.0.1", binlog_server.port, "shipper", password), db.executor,
                      here=db.here, there=db.there)
    sampler = CmdlineSampler([password])
    sampler.start()
    try:
        assert shipper.binary_logs()
        shipper.flush()
    finally:
        sampler.stop.set()
        sampler.join()
    assert sampler.samples > 0 and sampler.leaks == [], sampler.leaks


def test_beats_shipment_uses_the_settings_runs_alone_and_records_the_newest_log(
    binlog_server: BinlogServer, s3_server: Any, s3_bucket: str, real_redis: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jerp_jobs import keys
    from jerp_jobs.executors.local import LocalExecutor
    from jerp_jobs.offsite.s3 import OffsiteStore
    from jerp_jobs.pitr import ship_configured
    from jerp_jobs.settings import load_settings
    from tests.s3_server import ACCESS_KEY, SECRET_KEY

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    bench = tmp_path / "frappe-bench"
    (bench / "sites").mkdir(parents=True)
    settings = load_settings(_env_file=None, executor="local", bench_dir=bench, db_host="127.0.0.1",
                             db_port=binlog_server.port, mariadb_root_password=binlog_server.password,
                             s3_bucket=s3_bucket, s3_endpoint_url=s3_server.endpoint_url, s3_region=s3_server.region)
    executor = LocalExecutor(bench)
    assert ship_configured(settings.model_copy(update={"s3_bucket": None}), executor, real_redis) == {
        "skipped": "JERP_S3_BUCKET is not set: binary logs go to the off-site store"}

    first = ship_configured(settings, executor, real_redis)
    assert first["shipped"] and first["newest"]["name"] == first["shipped"][-1]
    assert json.loads(real_redis.get(keys.PITR_SHIPPED))["newest"] == first["newest"]
    binlog_server.client(tmp_path / "other").query("CREATE DATABASE IF NOT EXISTS `_ship_probe`")
    second = ship_configured(settings, executor, real_redis)
    assert second["shipped"] and not set(second["shipped"]) & set(first["shipped"])  # only the new ones
    archive = OffsiteArchive(OffsiteStore.from_settings(settings), "127.0.0.1")
    assert [e["name"] for e in archive.index()][-len(second["shipped"]):] == second["shipped"]
    assert real_redis.get(keys.PITR_SHIP_LOCK) is None
    assert list((bench / "sites" / ".jerp-pitr").iterdir()) == []

    real_redis.set(keys.PITR_SHIP_LOCK, "someone-else", ex=60)
    assert ship_configured(settings, executor, real_redis) == {"skipped": "another shipment is under way"}
    assert real_redis.get(keys.PITR_SHIP_LOCK) == b"someone-else"


def test_beat_ships_every_few_minutes_unless_switched_off() -> None:
    from beat_schedule import beat_schedule
    from jerp_jobs.settings import load_settings

    entry = beat_schedule(load_settings(_env_file=None, s3_bucket="backups"))["ship-binlogs"]
    assert entry["task"] == "jerp.ship_binlogs" and entry["schedule"] == 300.0
    assert entry["options"]["queue"] == "jerp.site"
    assert "ship-binlogs" not in beat_schedule(load_settings(_env_file=None, s3_bucket="backups",
                                                             binlog_ship_minutes=0))
    assert "ship-binlogs" not in beat_schedule(load_settings(_env_file=None))  # nowhere to ship to
