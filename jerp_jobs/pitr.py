"""Point-in-time recovery of one site's database, from MariaDB's binary logs.

Three parts, each a plain function of this module:

- **A base dump that knows where it stands.** :meth:`MariaDB.dump` takes one database with
  ``mariadb-dump --single-transaction --master-data=2``. MariaDB starts the dump's transaction
  ``WITH CONSISTENT SNAPSHOT`` and reads ``binlog_snapshot_file`` / ``binlog_snapshot_position``
  in it: the binary log position of exactly that snapshot, taken without a global read lock
  (the commit order of InnoDB and of the binary log is the same in MariaDB's group commit). The
  dump holds the position as a ``CHANGE MASTER`` comment, read back into :class:`Coordinates`.
- **The binary logs shipped as closed files.** :func:`ship` closes the current log
  (``FLUSH BINARY LOGS``), fetches every closed log not yet archived over the replication
  protocol (``mariadb-binlog --read-from-remote-server --raw``: no access to the database's
  volume is needed), and records each in the archive's index with its size, SHA-256 and the
  time it was closed: every event of a file is older than its ``closed_at``.
- **A replay of one database up to an instant.** :func:`restore_to` checks every file it needs
  (present, contiguous, the digest the index recorded) before it touches anything, loads the
  base dump into the target database and replays only the site's database events
  (``--database``, renamed with ``--rewrite-db``) from the dump's position up to the instant
  (``--stop-datetime``, UTC): the state as of that instant. A transaction cut by the instant was
  not committed at it and is rolled back.

The client tools run through an executor, where bench runs; the password reaches them as an
option file on their standard input: never an argv, never the environment.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jerp_jobs import keys
from jerp_jobs.backupfiles import give_to_owner
from jerp_jobs.errors import CommandFailed, InvalidInput, JerpError
from jerp_jobs.offsite import ChecksumMismatch, OffsiteError
from jerp_jobs.offsite.s3 import OffsiteStore
from jerp_jobs.sites import sites_dir

#: a binary log file name: ``<basename>.<6 digits>``
BINLOG_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.[0-9]{6}")
#: a database name Frappe makes (``_`` and 16 hex digits), or any plain identifier
DATABASE_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
_COORDINATES = re.compile(r"CHANGE MASTER TO MASTER_LOG_FILE='([^']+)', MASTER_LOG_POS=([0-9]+)")
_ROW_EVENT = re.compile(rb"\t(?:Write|Update|Delete)_rows(?:_v1|_compressed)?: table id")
#: an event's header line in mariadb-binlog's output: ``#261204 16:59:30 server id 1 ...``
_EVENT_TIME = re.compile(rb"#(\d{2})(\d{2})(\d{2}) +(\d{1,2}):(\d{2}):(\d{2}) ")
#: how many bytes of a dump's head are searched for its coordinates
_HEAD_BYTES = 64 * 1024


class PitrError(JerpError):
    """A point-in-time recovery cannot be made as asked; nothing was changed."""


class BinlogGap(PitrError):
    """A binary log the replay needs is missing from the archive."""


class BinlogAltered(PitrError):
    """An archived binary log is not the file that was shipped (digest or size differs)."""


class NotReached(PitrError):
    """The shipped binary logs do not reach the instant (or the base's log) yet: a shipment
    now may bring them."""


@dataclass(frozen=True)
class Coordinates:
    """A position in the binary logs: the file and the byte offset of the next event."""

    file: str
    position: int

    def __post_init__(self) -> None:
        if not BINLOG_NAME.fullmatch(self.file) or self.position < 4:
            raise InvalidInput(f"{self.file}:{self.position} is not a binary log position")

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "position": self.position}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Coordinates:
        return cls(str(data["file"]), int(data["position"]))


@dataclass(frozen=True)
class DatabaseServer:
    host: str
    port: int
    user: str
    password: str = field(repr=False)


def sequence(name: str) -> int:
    """The number of a binary log file (``binlog.000042`` -> 42)."""
    if not BINLOG_NAME.fullmatch(name):
        raise InvalidInput(f"{name!r} is not a binary log file name")
    return int(name.rsplit(".", 1)[1])


def _database(name: str) -> str:
    if not DATABASE_NAME.fullmatch(name):
        raise InvalidInput(f"{name!r} is not a database name (letters, digits and _ only)")
    return name


def utc_text(at: float) -> str:
    """``YYYY-MM-DD HH:MM:SS`` of ``at`` in UTC (what ``--stop-datetime`` reads under TZ=UTC)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


class MariaDB:
    """The MariaDB client tools (``mariadb``, ``mariadb-dump``, ``mariadb-binlog``) aimed at one
    server, run through an executor where bench runs (their image has them; the platform's
    database network is reachable from there), each an argv list with a time limit.

    Files go through a work folder both sides see: ``here`` as this process sees it, ``there``
    as the executor's commands see it (relative to their working folder), e.g. the sites
    volume's ``.jerp-pitr`` folder as ``JERP_SITES_DIR/.jerp-pitr`` and ``sites/.jerp-pitr``.
    The connection, password included, reaches each tool as an option file on its standard
    input (``--defaults-extra-file=/dev/stdin``): never an argv, never the environment.
    """

    def __init__(self, server: DatabaseServer, executor: Any, *, here: Path, there: str,
                 timeout: float = 3600.0) -> None:
        self.server = server
        self.executor = executor
        self.here = Path(here)
        self.there = there.rstrip("/")
        self.timeout = timeout

    def workdir(self) -> Path:
        """The work folder, made when missing, owned as its parent is (the tools may run as the
        bench's user where a root worker made it)."""
        missing = [p for p in (self.here.parent, self.here) if not p.exists()]
        self.here.mkdir(parents=True, exist_ok=True)
        for made in missing:
            give_to_owner(made, made.parent)
        return self.here

    def _options(self) -> bytes:
        password = self.server.password.replace("\\", "\\\\").replace('"', '\\"')
        return (f'[client]\nhost={self.server.host}\nport={self.server.port}\nprotocol=tcp\n'
                f'user={self.server.user}\npassword="{password}"\n').encode()

    def within(self, name: str) -> MariaDB:
        """The same tools with a work folder of their own, ``name`` inside this one (one per job
        or shipment: two never read or remove each other's files)."""
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise InvalidInput(f"{name!r} is not a work folder name")
        return MariaDB(self.server, self.executor, here=self.here / name, there=f"{self.there}/{name}",
                       timeout=self.timeout)

    def clear(self) -> None:
        """Remove the work folder and what is in it (plain dumps, logs, replay scripts)."""
        shutil.rmtree(self.here, ignore_errors=True)

    def _run(self, argv: list[str], *, connect: bool = True, unlogged: bool = False) -> list[str]:
        """Run ``argv`` (the tool first); its output lines. CommandFailed when it fails.

        ``unlogged``: the ``mariadb`` client's session writes nothing to the binary logs
        (``sql_log_bin=0``): making, loading, replaying and dropping scratch databases must not
        grow the logs that are shipped, nor log replayed transactions a second time."""
        if connect:
            extra = ["--init-command=SET SESSION sql_log_bin=0"] if unlogged else []
            argv = [argv[0], "--defaults-extra-file=/dev/stdin", *extra, *argv[1:]]
        lines: list[str] = []
        result = self.executor.run(argv, timeout=self.timeout, on_output=lines.append,
                                   stdin=self._options() if connect else None)
        if not result.ok:
            tail = "\n".join(lines[-20:])
            tool = next((word for word in argv if word.startswith("mariadb")), argv[0])
            raise CommandFailed(f"{tool} exited {result.exit_code}: {tail[-1000:]}", exit_code=result.exit_code,
                                output_tail=tail)
        return lines

    def _work_file(self, suffix: str) -> tuple[Path, str]:
        """A new file name in the work folder: (as seen here, as seen there)."""
        self.workdir()
        name = f"{int(time.time())}-{os.urandom(4).hex()}{suffix}"
        return self.here / name, f"{self.there}/{name}"

    def query(self, sql: str, *, database: str | None = None, unlogged: bool = False) -> list[list[str]]:
        argv = ["mariadb", "--batch", "--skip-column-names", "-e", sql]
        if database is not None:
            argv.append(_database(database))
        return [line.split("\t") for line in self._run(argv, unlogged=unlogged)]

    def clock(self) -> int:
        """The server's clock (``UNIX_TIMESTAMP()``): the clock of the binary logs' events."""
        return int(self.query("SELECT UNIX_TIMESTAMP()")[0][0])

    def binary_logs(self) -> list[tuple[str, int]]:
        """``SHOW BINARY LOGS``: every log the server keeps, oldest first; the last is open."""
        return [(row[0], int(row[1])) for row in self.query("SHOW BINARY LOGS")]

    def flush(self) -> None:
        """Close the current binary log and open the next."""
        self.query("FLUSH BINARY LOGS")

    def download(self, name: str) -> Path:
        """Fetch binary log ``name`` as it is on the server into the work folder (here)."""
        sequence(name)
        self.workdir()
        self._run(["mariadb-binlog", "--read-from-remote-server", "--raw", f"--result-file={self.there}/", name])
        path = self.here / name
        if not path.is_file():
            raise CommandFailed(f"mariadb-binlog wrote no {name} into {self.there}")
        return path

    def dump(self, database: str, dest: Path) -> Coordinates:
        """A consistent dump of ``database`` (gzip, at ``dest``) and the binary log position
        it stands at."""
        found = self._dump(database, dest, ["--master-data=2"])
        if found is None:
            raise CommandFailed("mariadb-dump printed no binary log position: is log_bin on on the server?")
        return Coordinates(found.group(1), int(found.group(2)))

    def export(self, database: str, dest: Path) -> None:
        """A consistent dump of ``database`` (gzip, at ``dest``), as ``bench backup`` makes one:
        no binary log position in it."""
        self._dump(database, dest, [])

    def _dump(self, database: str, dest: Path, extra: list[str]) -> re.Match[str] | None:
        database = _database(database)
        plain, plain_there = self._work_file(".sql")
        partial = dest.with_name(f".{dest.name}.{os.urandom(4).hex()}.partial")
        try:
            self._run(["mariadb-dump", "--single-transaction", *extra, "--routines", "--triggers",
                       "--hex-blob", f"--result-file={plain_there}", database])
            with plain.open("rb") as raw:
                found = _COORDINATES.search(raw.read(_HEAD_BYTES).decode("utf-8", "replace"))
                raw.seek(0)
                with gzip.open(partial, "wb") as out:
                    shutil.copyfileobj(raw, out, 1 << 20)
            partial.replace(dest)
        finally:
            plain.unlink(missing_ok=True)
            partial.unlink(missing_ok=True)
        return found

    def drop(self, database: str) -> None:
        """``DROP DATABASE IF EXISTS``."""
        self.query(f"DROP DATABASE IF EXISTS `{_database(database)}`", unlogged=True)

    def load(self, dump: Path, database: str) -> None:
        """Load a gzip dump into ``database`` (which must exist)."""
        plain, plain_there = self._work_file(".sql")
        try:
            with gzip.open(dump, "rb") as src, plain.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            self._run(["mariadb", _database(database), "-e", f"source {plain_there}"], unlogged=True)
        finally:
            plain.unlink(missing_ok=True)

    def replay(self, names: Sequence[str], *, start: Coordinates, stop_at: float, database: str,
               into: str) -> int:
        """Apply ``database``'s events of the logs ``names`` (in the work folder; consecutive, the
        first being ``start.file``) from ``start`` up to ``stop_at`` to database ``into``; returns
        the number of row events applied (each the rows one statement wrote, changed or deleted)."""
        database, into = _database(database), _database(into)
        if not names or names[0] != start.file:
            raise InvalidInput(f"a replay from {start.file} must begin with that file")
        script, script_there = self._work_file(".sql")
        try:
            # the instant is read in the tool's time zone: UTC, whatever the container's is
            self._run(["env", "TZ=UTC", "mariadb-binlog", "--database", database,
                       f"--rewrite-db={database}->{into}", f"--start-position={start.position}",
                       f"--stop-datetime={utc_text(stop_at)}", f"--result-file={script_there}",
                       *(f"{self.there}/{sequence_name(name)}" for name in names)], connect=False)
            with script.open("ab") as out:
                out.write(b"\nROLLBACK;\n")  # a transaction the instant cut was not committed at it
            events = 0
            named = database.encode()
            when = "an unknown time"
            with script.open("rb") as src:
                for number, line in enumerate(src, 1):
                    if _ROW_EVENT.search(line):
                        events += 1
                    elif (stamp := _EVENT_TIME.match(line)) is not None:
                        when = _event_time(stamp)
                    elif named in line and not line.startswith(b"#"):
                        # --rewrite-db renames row events and USE, never a name written in a
                        # statement (DROP DATABASE `db`, `db`.`table`): replayed as it stands,
                        # it would act on the live database
                        raise PitrError(
                            f"the binary logs hold a statement naming the database {database} itself, written "
                            f"at {when} (line {number} of the replay: "
                            f"{line[:120].decode('utf-8', 'replace').strip()!r}); replaying it would act on the "
                            "live database, so nothing was replayed. Choose an instant before it, or one after "
                            "the first backup taken after it")
            self._run(["mariadb", into, "-e", f"source {script_there}"], unlogged=True)
        finally:
            script.unlink(missing_ok=True)
        return events


def _event_time(found: re.Match[bytes]) -> str:
    """``YYYY-MM-DD HH:MM:SS UTC`` of an event header (the replay runs with TZ=UTC)."""
    year, month, day, hour, minute, second = (int(part) for part in found.groups())
    return f"20{year:02d}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{second:02d} UTC"


def sequence_name(name: str) -> str:
    """``name`` if it is a binary log file name (InvalidInput otherwise)."""
    sequence(name)
    return name


# -- the archive of shipped binary logs --------------------------------------------------------


class FolderArchive:
    """Shipped binary logs in a folder, with ``index.json`` listing them. Stands for the
    off-site store in tests and for a local copy; the same index rules apply to both."""

    INDEX = "index.json"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def index(self) -> list[dict[str, Any]]:
        path = self.folder / self.INDEX
        if not path.exists():
            return []
        return list(json.loads(path.read_text(encoding="utf-8"))["files"])

    def add(self, entry: dict[str, Any], src: Path) -> None:
        shutil.copyfile(src, self.folder / entry["name"])
        files = [e for e in self.index() if e["name"] != entry["name"]] + [entry]
        files.sort(key=lambda e: sequence(e["name"]))
        self._write_index(files)

    def remove(self, names: set[str]) -> None:
        """Take ``names`` out of the index first (no replay plans them any more), then delete them."""
        self._write_index([e for e in self.index() if e["name"] not in names])
        for name in names:
            (self.folder / sequence_name(name)).unlink(missing_ok=True)

    def _write_index(self, files: list[dict[str, Any]]) -> None:
        tmp = self.folder / (self.INDEX + ".tmp")
        tmp.write_text(json.dumps({"files": files}, sort_keys=True, indent=1), encoding="utf-8")
        tmp.replace(self.folder / self.INDEX)

    def fetch(self, entry: dict[str, Any], dest: Path) -> Path:
        src = self.folder / entry["name"]
        if not src.is_file():
            raise BinlogGap(f"binary log {entry['name']} is listed in the archive's index but its file is gone")
        target = dest / entry["name"]
        shutil.copyfile(src, target)
        return target


class OffsiteArchive:
    """Shipped binary logs in the off-site store, beside the backups: each log encrypted as
    backups are (``JERP_BACKUP_AGE_RECIPIENTS``) under ``<prefix>/_binlogs/<server>/``, and
    ``index.json`` listing them, signed with ``JERP_MANIFEST_KEY`` when it is set. One shipper
    writes the index at a time (Beat's entry runs alone)."""

    def __init__(self, store: Any, server: str) -> None:
        self.store = store
        self.prefix = store.area("_binlogs", server)

    @property
    def _index_key(self) -> str:
        return f"{self.prefix}/index.json"

    def index(self) -> list[dict[str, Any]]:
        try:
            data = self.store.get_json(self._index_key)
        except ChecksumMismatch as exc:
            raise BinlogAltered(f"the index of shipped binary logs was altered: {exc}") from None
        return [] if data is None else list(data["files"])

    def add(self, entry: dict[str, Any], src: Path) -> None:
        stored = self.store.put_file(src, f"{self.prefix}/{entry['name']}", kind="binlog", size=entry["size"],
                                     sha256=entry["sha256"])
        record = {**entry, **{k: stored[k] for k in ("key", "stored_size", "stored_sha256", "encrypted")}}
        files = [e for e in self.index() if e["name"] != entry["name"]] + [record]
        files.sort(key=lambda e: sequence(e["name"]))
        self.store.put_json(self._index_key, {"files": files})

    def remove(self, names: set[str]) -> None:
        """Take ``names`` out of the index first (no replay plans them any more), then delete them."""
        index = self.index()
        self.store.put_json(self._index_key, {"files": [e for e in index if e["name"] not in names]})
        for entry in index:
            if entry["name"] in names:
                self.store.delete_file(entry)

    def fetch(self, entry: dict[str, Any], dest: Path) -> Path:
        try:
            return self.store.get_file(entry, dest / entry["name"])
        except ChecksumMismatch as exc:
            raise BinlogAltered(f"binary log {entry['name']} in the archive is not the file shipped: {exc}; "
                                "refusing to replay it") from None
        except OffsiteError as exc:
            raise BinlogGap(f"binary log {entry['name']} is listed in the archive's index but cannot be read: "
                            f"{exc}") from None


def digest(path: Path) -> tuple[int, str]:
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as src:
        while chunk := src.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def opened_at(path: Path) -> int:
    """When a binary log was opened: its first event's time (the server's clock, whole seconds).
    Every event of the log before it happened at or before that second."""
    with path.open("rb") as src:
        head = src.read(8)
    if len(head) < 8 or head[:4] != b"\xfebin":
        raise PitrError(f"{path.name} is not a binary log (no header)")
    return int.from_bytes(head[4:8], "little")


def ship(db: MariaDB, archive: Any, *, still_mine: Any = None) -> list[dict[str, Any]]:
    """Close the current binary log and archive every closed one not archived yet, in order;
    returns the new index entries (``name``, ``size``, ``sha256``, ``closed_at``).

    ``closed_at`` of a log is, in the server's clock, a time no later than the first event of
    the next log: the next log's opening time when it is archived in the same run, and for the
    newest (followed by the open log) the server's clock read just before the flush. So a
    replay up to an instant needs no log after the first whose ``closed_at`` reaches it. A log
    whose size on the server differs from the one archived (a server re-created, its logs
    numbered from 1 again) or from the file fetched is refused. ``still_mine`` (optional) is
    called after each log archived, and must answer whether this shipment may go on (its lock
    still held, and kept)."""
    before = db.clock()
    db.flush()
    logs = db.binary_logs()
    have = {entry["name"]: entry for entry in archive.index()}
    for name, size in logs[:-1]:
        if name in have and int(have[name]["size"]) != size:
            raise PitrError(f"the server's {name} ({size} B) is not the archived {name} ({have[name]['size']} B): "
                            "was the database server re-created? Its logs cannot join this archive")
    todo = [(name, size) for name, size in logs[:-1] if name not in have]
    work = db.within(f"ship-{os.urandom(6).hex()}")
    shipped: list[dict[str, Any]] = []
    try:
        pending: tuple[str, Path] | None = None
        for name, size in todo:
            path = work.download(name)
            if path.stat().st_size != size:
                raise PitrError(f"{name} was fetched with {path.stat().st_size} B, the server lists {size} B")
            if pending is not None:
                shipped.append(_archive_one(archive, *pending, closed_at=float(opened_at(path))))
                if still_mine is not None and not still_mine():
                    raise PitrError("the shipment lost its lock (it ran too long); the next one goes on")
            pending = (name, path)
        if pending is not None:
            shipped.append(_archive_one(archive, *pending, closed_at=float(before)))
    finally:
        work.clear()
    return shipped


def _archive_one(archive: Any, name: str, path: Path, *, closed_at: float) -> dict[str, Any]:
    size, sha = digest(path)
    entry = {"name": name, "size": size, "sha256": sha, "closed_at": closed_at}
    archive.add(entry, path)
    path.unlink(missing_ok=True)
    return entry


def plan(index: Sequence[dict[str, Any]], start: Coordinates, target: float) -> list[dict[str, Any]]:
    """The archived logs a replay from ``start`` to ``target`` reads, in order: from
    ``start.file`` through the first closed at or after ``target``. BinlogGap when one is
    missing; PitrError when no archived log reaches ``target`` yet."""
    by_number = {sequence(entry["name"]): entry for entry in index}
    number = sequence(start.file)
    if number not in by_number:
        if not by_number or max(by_number) < number:
            raise NotReached(f"the binary log {start.file}, where the base backup stands, is not shipped yet")
        raise BinlogGap(f"the binary log {start.file}, where the base backup stands, is not in the archive")
    chosen = []
    newest = max(by_number)
    while True:
        entry = by_number.get(number)
        if entry is None:
            if number > newest:
                reached = by_number[newest]["closed_at"]
                raise NotReached(f"the archived binary logs reach {utc_text(reached)} UTC; {utc_text(target)} UTC "
                                 f"is after that (ship again, or choose an earlier instant)")
            raise BinlogGap(f"binary log number {number:06d} is missing from the archive: the events between "
                            f"{chosen[-1]['name'] if chosen else start.file} and the next log cannot be replayed")
        chosen.append(entry)
        if entry["closed_at"] >= target:
            return chosen
        number += 1


DAY = 86400.0


def needed_from(bases: Sequence[dict[str, Any]], *, now: float, window_days: float) -> int | None:
    """The number of the oldest binary log some restore inside the window can need: for each
    database, its newest base taken at or before the window's start (or, when it has none so
    old, its oldest base) reads the logs from its position on. None when there is no base."""
    start = now - window_days * DAY
    by_database: dict[str, list[dict[str, Any]]] = {}
    for base in bases:
        by_database.setdefault(f"{base.get('server')}/{base.get('database')}", []).append(base)
    needed = []
    for found in by_database.values():
        old = [b for b in found if b["dumped_at"] <= start]
        chosen = max(old, key=lambda b: b["dumped_at"]) if old else min(found, key=lambda b: b["dumped_at"])
        needed.append(sequence(Coordinates.from_dict(chosen["coordinates"]).file))
    return min(needed) if needed else None


def prune(archive: Any, bases: Sequence[dict[str, Any]], *, now: float, window_days: float) -> list[str]:
    """Remove the archived logs no restore inside the window needs: numbered below
    :func:`needed_from` and closed before the window began (a base being taken now stands in a
    recent log, so recent logs stay whatever the bases say). Returns the names removed."""
    first = needed_from(bases, now=now, window_days=window_days)
    start = now - window_days * DAY
    gone = {e["name"] for e in archive.index()
            if e["closed_at"] < start and (first is None or sequence(e["name"]) < first)}
    if gone:
        archive.remove(gone)
    return sorted(gone)


def restore_to(db: MariaDB, archive: Any, *, dump: Path, start: Coordinates, dumped_at: float,
               database: str, into: str, target: float) -> dict[str, Any]:
    """Database ``into`` (created here; it must not exist) as ``database`` was at ``target``:
    the base dump (taken at ``dumped_at``, before ``target``), then ``database``'s events up to
    ``target``. Every log is checked before anything is created."""
    into = _database(into)
    if target < dumped_at:
        raise PitrError(f"the base backup was taken at {utc_text(dumped_at)} UTC, after {utc_text(target)} UTC: "
                        f"use an older backup")
    chosen = plan(archive.index(), start, target)
    db.workdir()
    files: list[Path] = []
    try:
        for entry in chosen:
            path = archive.fetch(entry, db.here)
            files.append(path)
            size, sha = digest(path)
            if (size, sha) != (entry["size"], entry["sha256"]):
                raise BinlogAltered(f"binary log {entry['name']} in the archive is not the file shipped "
                                    f"({size} B sha256 {sha[:12]}…, shipped {entry['size']} B "
                                    f"sha256 {entry['sha256'][:12]}…); refusing to replay it")
        if db.query(f"SHOW DATABASES LIKE '{into}'"):
            raise PitrError(f"database {into} exists already; a point-in-time restore makes a new one")
        db.query(f"CREATE DATABASE `{into}`", unlogged=True)
        try:
            began = time.monotonic()
            db.load(dump, into)
            loaded = time.monotonic()
            events = db.replay([path.name for path in files], start=start, stop_at=target, database=database,
                               into=into)
            ended = time.monotonic()
        except BaseException:
            db.drop(into)  # no half-made database is left behind
            raise
    finally:
        for path in files:
            path.unlink(missing_ok=True)
    return {"binlogs": [entry["name"] for entry in chosen], "events": events,
            "load_s": round(loaded - began, 3), "replay_s": round(ended - loaded, 3)}


#: the work folder of point-in-time recovery in the sites volume (no site has a name like it)
WORK_FOLDER = ".jerp-pitr"
#: how often a shipment also removes the logs the window no longer needs (it lists every base)
PRUNE_EVERY_S = 3600


def configured_database(settings: Any, executor: Any) -> MariaDB:
    """The platform's MariaDB (``JERP_DB_HOST``/``JERP_DB_PORT``, as root), its tools run
    through ``executor``, the work folder ``.jerp-pitr`` of the sites volume."""
    server = DatabaseServer(settings.db_host, settings.db_port, "root", settings.secret("mariadb_root_password"))
    return MariaDB(server, executor, here=sites_dir(settings) / WORK_FOLDER, there=f"sites/{WORK_FOLDER}",
                   timeout=float(settings.command_timeout))


def site_database(sites: Path, site: str) -> str:
    """The database name in ``sites/<site>/site_config.json`` (read here; nothing else of the
    file, which holds the database password, is kept). PitrError when it cannot be read."""
    path = Path(sites) / site / "site_config.json"
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("db_name")
    except (OSError, ValueError, AttributeError) as exc:
        raise PitrError(f"cannot read the database name of {site} from {path}: {exc}") from None
    if not isinstance(name, str):
        raise PitrError(f"{path} names no db_name")
    return _database(name)


_INSTANT = re.compile(r"(?P<when>\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)?)"
                      r"(?P<offset>Z|z|[+-]\d{2}:?\d{2})?(?:\s+(?P<zone>\S+))?")


def parse_instant(text: str, *, now: float | None = None) -> float:
    """The instant of ``--to``: ``YYYY-MM-DD HH:MM:SS`` (or ISO ``T``), UTC unless an offset
    follows (``Z``, ``+01:00``) or a time zone name after a space (``Europe/Lisbon``, ``UTC``);
    whole seconds (binary log events have no finer time). A local time a zone's clock change
    makes ambiguous (the hour repeated in autumn) or skips (spring) is refused: give the offset.
    InvalidInput naming the problem, also for an instant in the future."""
    raw = text.strip() if isinstance(text, str) else ""
    found = _INSTANT.fullmatch(raw)
    if found is None:
        raise InvalidInput(f"--to {text!r}: expected 'YYYY-MM-DD HH:MM:SS', UTC unless an offset (+01:00) or a "
                           "time zone name (Europe/Lisbon) follows")
    if "." in found["when"]:
        raise InvalidInput(f"--to {text!r}: whole seconds only (binary log events carry whole seconds)")
    if found["offset"] and found["zone"]:
        raise InvalidInput(f"--to {text!r}: an offset and a time zone name both given; give one")
    try:
        local = datetime.fromisoformat(found["when"].replace(" ", "T"))
    except ValueError:
        raise InvalidInput(f"--to {text!r}: {found['when']} is not a date and time") from None
    if found["offset"]:
        offset = found["offset"].upper().replace("Z", "+00:00")
        when = datetime.fromisoformat(found["when"].replace(" ", "T") + offset)
    elif found["zone"] and found["zone"].upper() != "UTC":
        try:
            zone = ZoneInfo(found["zone"])
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidInput(f"--to {text!r}: unknown time zone {found['zone']!r} (an IANA name such as "
                               "Europe/Lisbon, or an offset such as +01:00)") from None
        when = local.replace(tzinfo=zone)
        back = when.astimezone(timezone.utc).astimezone(zone).replace(tzinfo=None)
        if back != local:
            raise InvalidInput(f"--to {text!r}: {found['when']} does not exist in {found['zone']} (the clocks go "
                               "forward); give the offset instead")
        if when.utcoffset() != local.replace(tzinfo=zone, fold=1).utcoffset():
            raise InvalidInput(f"--to {text!r}: {found['when']} happens twice in {found['zone']} (the clocks go back); "
                               "give the offset instead, e.g. +01:00 or +00:00")
    else:
        when = local.replace(tzinfo=timezone.utc)
    instant = when.timestamp()
    current = time.time() if now is None else now
    if instant > current:
        raise InvalidInput(f"--to {text!r} is {utc_text(instant)} UTC, in the future (now {utc_text(current)} UTC)")
    return instant


def iso_utc(at: float) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` of ``at``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def not_shipped(record: dict[str, Any]) -> str | None:
    """Why :func:`ship_configured` shipped nothing (None when it shipped)."""
    return record.get("skipped")


def ship_configured(settings: Any, executor: Any, client: Any) -> dict[str, Any]:
    """Beat's shipment (``JERP_BINLOG_SHIP_MINUTES``): the platform's MariaDB
    (``JERP_DB_HOST``/``JERP_DB_PORT``, as root) through the executor, its logs to the off-site
    store. One shipment at a time (a Redis lock); the last one is recorded in
    ``jerp:pitr:shipped``. Without an off-site store there is nothing to ship to."""
    if not settings.s3_bucket:
        return {"skipped": "JERP_S3_BUCKET is not set: binary logs go to the off-site store"}
    if settings.pitr_window_days <= 0:
        return {"skipped": "point-in-time recovery is off (JERP_PITR_WINDOW_DAYS=0)"}
    token = os.urandom(8).hex()
    hold = max(600, int(settings.binlog_ship_minutes * 60 * 2))
    if not client.set(keys.PITR_SHIP_LOCK, token, nx=True, ex=hold):
        return {"skipped": "another shipment is under way"}
    try:
        db = configured_database(settings, executor)
        archive = OffsiteArchive(OffsiteStore.from_settings(settings), settings.db_host)

        def still_mine() -> bool:  # kept while logs go on being archived, one at a time
            if client.get(keys.PITR_SHIP_LOCK) not in (token, token.encode()):
                return False
            return bool(client.expire(keys.PITR_SHIP_LOCK, hold))

        shipped = ship(db, archive, still_mine=still_mine)
        removed: list[str] = []
        now = time.time()
        if client.set(keys.PITR_PRUNED, int(now), nx=True, ex=PRUNE_EVERY_S):
            store = archive.store
            bases = [{**m["pitr"]} for site in store.sites() for m in store.list_backups(site)
                     if m.get("verified") and isinstance(m.get("pitr"), dict) and m["pitr"].get("server") == settings.db_host]
            removed = prune(archive, bases, now=now, window_days=settings.pitr_window_days)
        index = archive.index()
        newest = index[-1] if index else None
        record = {"at": now, "shipped": [entry["name"] for entry in shipped], "removed": removed,
                  "oldest": index[0]["name"] if index else None,
                  "newest": newest and {"name": newest["name"], "closed_at": newest["closed_at"]}}
        client.set(keys.PITR_SHIPPED, json.dumps(record, sort_keys=True))
        return record
    finally:
        client.eval(keys.COMPARE_AND_DELETE, 1, keys.PITR_SHIP_LOCK, token)
