"""The Frappe ``bench`` CLI as data: argv builders and parsers of what bench prints.

Pure functions only, no I/O. Every builder validates the site name first and returns a list
of strings (never a shell string). Global options come before the command, as bench wants:
``bench --site SITE [--force] COMMAND ...``. The commands that need the DB root password
(``new-site``, ``restore``, ``drop-site``) and the Administrator password (``new-site``) return
a :class:`BenchCall`: the argv *without* them, and the answers to bench's own password prompts
for its standard input, in the order Frappe asks (``MySQL root password: ``, then ``Set
Administrator password: ``). No password is ever in an argv (``ps``) or an environment.

The facts these follow are in docs/bench-contract.md (printed lines, flags, exit codes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jerp_jobs.errors import InvalidInput, OutputParseError
from jerp_jobs.failures import (  # noqa: F401  (the failure classes, named from bench too)
    LOCK_HELD_BY_OTHER,
    SITE_MISSING,
    NO_SITE,
    DATABASE_UNREACHABLE,
    SERVICES_DOWN,
    RUN_AS_ROOT,
    TIMED_OUT,
    KILLED,
    FENCE_BUSY,
    NO_WORKERS,
    COMMAND_ERROR,
    FAILURE_KINDS,
    UNCHANGED,
    BenchFailure,
    classify_failure,
)
from jerp_jobs.secretnames import SECRET_OPTIONS  # noqa: F401  (named from bench too)
from jerp_jobs.sites import validate_site_name


SCHEDULER_ACTIONS = ("pause", "resume", "enable", "disable", "status")


@dataclass(frozen=True)
class BenchCall:
    """A bench argv and what its standard input carries: the answers to its password prompts."""

    argv: list[str]
    stdin: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"BenchCall(argv={self.argv!r}, stdin=<{len(self.stdin)} bytes>)"


def prompt_answers(*answers: str) -> bytes:
    """Lines for bench's password prompts (``getpass`` reads one line each from stdin)."""
    for answer in answers:
        if not isinstance(answer, str) or not answer:
            raise InvalidInput("a password for a bench prompt must be a non-empty string")
        if any(ch in answer for ch in "\r\n\x00"):
            raise InvalidInput("a password for a bench prompt cannot contain a line break or NUL: "
                               "bench reads it as one line")
    return "".join(answer + "\n" for answer in answers).encode()


def _site(bench: str, site: str, *command: str, force: bool = False) -> list[str]:
    argv = [bench, "--site", validate_site_name(site)]
    if force:
        argv.append("--force")
    argv.extend(command)
    return argv


# ---------------------------------------------------------------------------------------------
# Builders


def new_site(
    site: str,
    *,
    db_root_password: str,
    admin_password: str,
    db_name: str,
    install_apps: Sequence[str] = (),
    login_scope: str = "%",
    db_root_username: str = "root",
    bench: str = "bench",
) -> BenchCall:
    """``new-site`` asks for the DB root password (when connecting as root), then, while
    installing frappe, for the Administrator password and again to confirm it
    (``Set Administrator password: ``, ``Re-enter Administrator password: ``, frappe v15's
    ``frappe.utils.install.get_admin_password``; a mismatch asks both again): all answered on
    stdin. A Frappe that asks only once leaves the last line unread."""
    argv = [
        bench, "new-site", validate_site_name(site),
        "--db-root-username", db_root_username,
        "--db-name", _db_name(db_name),
        f"--mariadb-user-host-login-scope={login_scope}",
    ]
    for app in install_apps:
        argv += ["--install-app", validate_app_name(app)]
    return BenchCall(argv, prompt_answers(db_root_password, admin_password, admin_password))


def drop_site(site: str, *, db_root_password: str, db_root_username: str = "root", bench: str = "bench") -> BenchCall:
    argv = [
        bench, "drop-site", validate_site_name(site),
        "--db-root-username", db_root_username,
        "--no-backup", "--force",
    ]
    return BenchCall(argv, prompt_answers(db_root_password))


def install_app(site: str, app: str, *, bench: str = "bench") -> list[str]:
    return _site(bench, site, "install-app", validate_app_name(app))


def uninstall_app(site: str, app: str, *, bench: str = "bench") -> list[str]:
    """``uninstall-app APP --yes --no-backup``: no prompt, and no backup of bench's own (the
    workflow takes a verified one first). Exits 0 without uninstalling when the app is not
    installed or another installed app requires it (it only prints why): check afterwards."""
    return _site(bench, site, "uninstall-app", validate_app_name(app), "--yes", "--no-backup")


#: what ``uninstall-app`` prints (exit 0) when it refuses: another installed app requires this one
_REQUIRED_BY = re.compile(r"App (?P<app>\S+) is a dependency of (?P<by>\S+)\. Uninstall (?P=by) first\.")


def uninstall_refusal(output: str) -> str | None:
    """The reason ``uninstall-app`` gave for not uninstalling, or None."""
    match = _REQUIRED_BY.search(output)
    return match.group(0) if match else None


def list_apps(site: str, *, bench: str = "bench") -> list[str]:
    return _site(bench, site, "list-apps", "-f", "json")


def backup(
    site: str, *, with_files: bool = True, compress: bool = False, backup_path: str | None = None, bench: str = "bench"
) -> list[str]:
    argv = _site(bench, site, "backup")
    if with_files:
        argv.append("--with-files")
    if compress:
        argv.append("--compress")
    if backup_path is not None:
        argv += ["--backup-path", backup_path]
    return argv


def restore(
    site: str,
    sql_path: str,
    *,
    db_root_password: str,
    public_files: str | None = None,
    private_files: str | None = None,
    db_root_username: str = "root",
    bench: str = "bench",
) -> BenchCall:
    """``restore`` asks only for the DB root password (the restored database keeps its own
    Administrator password)."""
    argv = _site(bench, site, "restore", _path(sql_path), "--db-root-username", db_root_username, force=True)
    if public_files is not None:
        argv += ["--with-public-files", _path(public_files)]
    if private_files is not None:
        argv += ["--with-private-files", _path(private_files)]
    return BenchCall(argv, prompt_answers(db_root_password))


def migrate(site: str, *, skip_failing: bool = False, bench: str = "bench") -> list[str]:
    argv = _site(bench, site, "migrate")
    if skip_failing:
        argv.append("--skip-failing")
    return argv


def clear_cache(site: str, *, bench: str = "bench") -> list[str]:
    return _site(bench, site, "clear-cache")


def clear_website_cache(site: str, *, bench: str = "bench") -> list[str]:
    return _site(bench, site, "clear-website-cache")


def set_maintenance_mode(site: str, on: bool, *, bench: str = "bench") -> list[str]:
    return _site(bench, site, "set-maintenance-mode", "on" if on else "off")


def scheduler(site: str, action: str, *, bench: str = "bench") -> list[str]:
    if action not in SCHEDULER_ACTIONS:
        raise InvalidInput(f"scheduler action must be one of {', '.join(SCHEDULER_ACTIONS)}, not {action!r}")
    return _site(bench, site, "scheduler", action)


def ready_for_migration(site: str, *, bench: str = "bench") -> list[str]:
    return _site(bench, site, "ready-for-migration")


def ping(site: str, *, bench: str = "bench") -> list[str]:
    return _site(bench, site, "execute", "frappe.ping")


def execute(site: str, method: str, args: Sequence[str | int] = (), *, bench: str = "bench") -> list[str]:
    """``bench --site SITE execute METHOD [--args LITERAL]``. Frappe evaluates ``--args`` as Python;
    only a JSON list of strings and integers (also a Python literal) is ever passed. Bench prints
    the JSON of the result only when it is truthy (nothing for ``0``, ``""``, ``[]``, ``None``)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+", method):
        raise InvalidInput(f"invalid method {method!r}: a dotted Python name")
    argv = _site(bench, site, "execute", method)
    if args:
        if not all(isinstance(a, (str, int)) and not isinstance(a, bool) for a in args):
            raise InvalidInput("execute --args takes strings and integers only")
        argv += ["--args", json.dumps(list(args))]
    return argv


def system_timezone(site: str, *, bench: str = "bench") -> list[str]:
    """The site's time zone: ``frappe.utils.get_system_timezone`` (System Settings ``time_zone``,
    Frappe's default ``Asia/Kolkata`` when unset); prints it as a JSON string."""
    return execute(site, "frappe.utils.get_system_timezone", bench=bench)


def installed_apps_global(site: str, *, bench: str = "bench") -> list[str]:
    """``frappe.get_installed_apps``: the ``installed_apps`` global default, which install-app,
    uninstall-app and migrate keep (``list-apps`` reads the Installed Application table, which
    migrate and uninstall-app refresh and install-app does not)."""
    return execute(site, "frappe.get_installed_apps", bench=bench)


def scheduler_setting(site: str, *, bench: str = "bench") -> list[str]:
    """System Settings ``enable_scheduler`` as stored in the site's database: prints ``1``, or
    nothing when it is 0 (bench prints falsy results not at all)."""
    return execute(site, "frappe.db.get_single_value", ["System Settings", "enable_scheduler"], bench=bench)


def doctor(site: str, *, bench: str = "bench") -> list[str]:
    """``doctor`` prints the scheduler's state for the site, ``Workers online: N`` (the Frappe RQ
    workers registered in the queue Redis) and the site's queued jobs."""
    return _site(bench, site, "doctor")


#: Frappe's file locks (``frappe.utils.synchronization.filelock``): a site lock is
#: ``<bench>/sites/<site>/locks/<name>.lock``, a bench-wide one ``<bench>/config/<name>.lock``;
#: both held with ``flock(2)`` (the ``filelock`` library's Unix lock), so the kernel frees them
#: when their process ends.
SITE_LOCKS = ("bench_migrate", "site_restore", "bench_new_site", "install_app")
BENCH_LOCKS = ("bench_build",)
#: the probe's exit status when the lock is held by another process
LOCK_HELD = 76


def lock_file(name: str, site: str | None = None) -> str:
    """The lock file of a Frappe lock, relative to the bench folder."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
        raise InvalidInput(f"invalid lock name {name!r}")
    if site is None:
        return f"config/{name}.lock"
    return f"sites/{validate_site_name(site)}/locks/{name}.lock"


def lock_probe(name: str, site: str | None = None) -> list[str]:
    """Exits :data:`LOCK_HELD` while another process holds the Frappe lock, 0 when it is free.

    It takes the lock with the same kernel primitive for an instant (``flock -n``), so it never
    waits and never stands in a holder's way for longer than that instant.
    """
    return ["flock", "-n", "-E", str(LOCK_HELD), lock_file(name, site), "true"]


#: The two site switches a workflow changes, as ``grep -o`` prints them from site_config.json:
#: only these keys, never the rest of the file (which holds the site's database password).
SITE_SWITCHES = ("maintenance_mode", "pause_scheduler")
_SWITCH_PATTERN = '"(maintenance_mode|pause_scheduler)"[[:space:]]*:[[:space:]]*[^,}[:space:]]+'


def site_switches(site: str) -> list[str]:
    """Prints the site's ``maintenance_mode`` and ``pause_scheduler`` lines (grep exits 1 when
    neither is set: both off)."""
    return ["grep", "-E", "-o", _SWITCH_PATTERN, f"sites/{validate_site_name(site)}/site_config.json"]


def build(
    *, apps: Sequence[str] = (), production: bool = False, force: bool = False, bench: str = "bench"
) -> list[str]:
    argv = [bench, "build"]
    if len(apps) == 1:
        argv += ["--app", validate_app_name(apps[0])]
    elif apps:
        argv += ["--apps", ",".join(validate_app_name(a) for a in apps)]
    if production:
        argv.append("--production")
    if force:
        argv.append("--force")
    return argv


_APP = re.compile(r"[a-z][a-z0-9_-]{0,79}")
_DB_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")


def validate_app_name(app: str) -> str:
    if not isinstance(app, str) or not _APP.fullmatch(app):
        raise InvalidInput(f"invalid app name {app!r}: lowercase letters, digits, '_' and '-', starting with a letter")
    return app


def _db_name(name: str) -> str:
    if not _DB_NAME.fullmatch(name):
        raise InvalidInput(f"invalid database name {name!r}: 1-64 letters, digits or '_'")
    return name


def _path(path: str) -> str:
    if not path or path.startswith("-") or "\x00" in path:
        raise InvalidInput(f"invalid path {path!r}: empty, starting with '-', or containing NUL")
    return path


# ---------------------------------------------------------------------------------------------
# Parsers

_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4, "PiB": 1024**5}
_SUMMARY_HEAD = re.compile(r"^Backup Summary for (?P<site>\S+) at (?P<at>.+?)\s*$")
_SUMMARY_LINE = re.compile(
    r"^(?P<kind>Config|Database|Public|Private)\s*:\s*(?P<path>\S+)\s+(?P<size>[0-9.]+\s*(?:[KMGTP]i)?B)\s*$"
)
_KIND = {"Config": "config", "Database": "database", "Public": "public_files", "Private": "private_files"}


@dataclass(frozen=True)
class BackupArtifact:
    kind: str  # config | database | public_files | private_files
    path: str  # as printed: relative to the bench's sites/ folder
    size_text: str
    approx_bytes: int


@dataclass(frozen=True)
class BackupSummary:
    site: str
    taken_at: datetime | None
    artifacts: tuple[BackupArtifact, ...] = field(default_factory=tuple)

    def artifact(self, kind: str) -> BackupArtifact | None:
        return next((a for a in self.artifacts if a.kind == kind), None)

    @property
    def with_files(self) -> bool:
        return self.artifact("public_files") is not None

    @property
    def timestamp(self) -> str:
        """The ``YYYYMMDD_HHMMSS`` prefix bench gives every file of this backup."""
        database = self.artifact("database")
        assert database is not None
        return database.path.rsplit("/", 1)[-1].split("-", 1)[0]


def parse_size(text: str) -> int:
    """``1.2MiB`` -> bytes (approximate: bench rounds to one decimal)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*((?:[KMGTP]i)?B)\s*", text)
    if not match:
        raise OutputParseError(f"not a size: {text!r}")
    return round(float(match.group(1)) * _UNITS[match.group(2)])


def parse_backup_summary(output: str, site: str) -> BackupSummary:
    """Read the block bench prints after a successful backup.

    The block may be preceded or followed by other lines (warnings, the deletion of old
    backups). It must name ``site`` and list at least the database dump.
    """
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if _SUMMARY_HEAD.match(line.strip())), None)
    if start is None:
        raise OutputParseError(f"no 'Backup Summary' in the output of the backup of {site}")
    head = _SUMMARY_HEAD.match(lines[start].strip())
    assert head is not None
    if head["site"] != site:
        raise OutputParseError(f"backup summary is for {head['site']!r}, expected {site!r}")
    artifacts = []
    for line in lines[start + 1 :]:
        match = _SUMMARY_LINE.match(line.strip())
        if not match:
            break
        artifacts.append(
            BackupArtifact(
                kind=_KIND[match["kind"]],
                path=match["path"],
                size_text=match["size"].replace(" ", ""),
                approx_bytes=parse_size(match["size"]),
            )
        )
    if not any(a.kind == "database" for a in artifacts):
        raise OutputParseError(f"backup summary of {site} lists no database dump")
    return BackupSummary(site=site, taken_at=_parse_time(head["at"]), artifacts=tuple(artifacts))


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        return None


def parse_list_apps(output: str, site: str) -> list[str]:
    """Read ``list-apps -f json``: ``{"<site>": ["frappe", ...]}``, printed indented over several
    lines, possibly after other lines (warnings)."""
    decoder = json.JSONDecoder()
    lines = output.splitlines(keepends=True)
    offsets = [sum(len(line) for line in lines[:i]) for i in range(len(lines))]
    for offset, line in reversed(list(zip(offsets, lines))):
        if not line.lstrip().startswith("{"):
            continue
        try:
            data, _ = decoder.raw_decode(output[offset:].lstrip())
        except json.JSONDecodeError:
            continue
        apps = data.get(site) if isinstance(data, dict) else None
        if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps):
            raise OutputParseError(f"list-apps JSON has no app list for {site}")
        return apps
    raise OutputParseError(f"list-apps printed no JSON for {site}")


def parse_execute(output: str) -> Any:
    """The result ``bench execute`` printed: the JSON of the last line that is JSON; None when it
    printed none (bench prints nothing for a falsy result)."""
    for line in reversed(output.splitlines()):
        line = line.strip()
        if not line:
            continue
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def parse_time_zone(output: str) -> str:
    """The zone name ``frappe.utils.get_system_timezone`` printed, checked to be a known zone."""
    name = parse_execute(output)
    if not isinstance(name, str) or not name:
        raise OutputParseError(f"get_system_timezone printed no time zone name: {output[-200:]!r}")
    load_zone(name)
    return name


def load_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise OutputParseError(f"unknown time zone {name!r} (not in the tz database)") from None


def parse_installed_apps(output: str) -> list[str]:
    apps = parse_execute(output)
    if apps is None:
        return []
    if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps):
        raise OutputParseError(f"frappe.get_installed_apps printed no app list: {output[-200:]!r}")
    return apps


def parse_scheduler_setting(output: str) -> bool:
    value = parse_execute(output)
    if value is None:
        return False
    if isinstance(value, bool) or value not in (0, 1, "0", "1"):
        raise OutputParseError(f"enable_scheduler printed {value!r}, not 0 or 1")
    return bool(int(value))


STAMP_FORMAT = "%Y%m%d_%H%M%S"
#: backup file names start with their stamp (``20261204_184848-site-database.sql.gz``)
STAMP_LEN = len("YYYYMMDD_HHMMSS")


def is_stamp(text: str) -> bool:
    """``text`` is a backup stamp (``YYYYMMDD_HHMMSS``, a real date and time)."""
    try:
        datetime.strptime(text, STAMP_FORMAT)
    except ValueError:
        return False
    return len(text) == STAMP_LEN


def stamp_of(name: str) -> str | None:
    """The stamp a backup file's name starts with, or None when it starts with none."""
    stamp = name[:STAMP_LEN]
    return stamp if is_stamp(stamp) else None


def local_to_utc(local: datetime, zone_name: str, *, near: datetime | None = None) -> datetime:
    """A wall-clock time of ``zone_name`` (naive, as Frappe's ``now_datetime()`` gives it) -> an
    aware UTC datetime.

    A local time that happens twice (the hour repeated when DST ends) has two readings
    (``fold`` 0 and 1): the one nearer ``near`` (the worker's clock when bench printed it) is
    taken; without ``near``, the earlier one. A local time that never happened (skipped when
    DST starts) cannot come from a clock; it is read with the offset before the change."""
    zone = load_zone(zone_name)
    naive = local.replace(tzinfo=None)
    readings = {naive.replace(tzinfo=zone, fold=fold).astimezone(timezone.utc) for fold in (0, 1)}
    if near is not None and len(readings) > 1:
        return min(readings, key=lambda r: (abs(r - near), r))
    return min(readings)


def stamp_to_utc(stamp: str, zone_name: str, *, near: datetime | None = None) -> datetime:
    """A backup file name's ``YYYYMMDD_HHMMSS`` (the site's local time) -> aware UTC."""
    try:
        local = datetime.strptime(stamp, STAMP_FORMAT)
    except ValueError:
        raise OutputParseError(f"not a backup timestamp: {stamp!r}") from None
    return local_to_utc(local, zone_name, near=near)


def utc_stamp(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime(STAMP_FORMAT)


def backup_times(stamp: str, zone_name: str, *, near: datetime | None = None) -> dict[str, str]:
    """What a manifest records of when a backup was taken: the file names' local stamp
    (``timestamp``), its zone, and the same instant in UTC (``utc_timestamp``, ``taken_at_utc``)
    and with its offset (``taken_at_local``)."""
    utc = stamp_to_utc(stamp, zone_name, near=near)
    local = utc.astimezone(load_zone(zone_name))
    return {
        "timestamp": stamp,
        "time_zone": zone_name,
        "utc_timestamp": utc_stamp(utc),
        "taken_at_utc": utc.isoformat().replace("+00:00", "Z"),
        "taken_at_local": local.isoformat(),
    }


def parse_site_switches(output: str) -> dict[str, bool]:
    """``{"maintenance_mode": bool, "pause_scheduler": bool}`` from :func:`site_switches`' lines;
    a key that is missing is off, as Frappe reads it."""
    found = dict.fromkeys(SITE_SWITCHES, False)
    for line in output.splitlines():
        match = re.fullmatch(r'\s*"(\w+)"\s*:\s*"?([^",}\s]*)"?\s*', line)
        if not match or match[1] not in found:
            continue
        value = match[2].lower()
        if value in ("1", "true"):
            found[match[1]] = True
        elif value in ("0", "false", "null", ""):
            found[match[1]] = False
        else:
            raise OutputParseError(f"site_config.json has {match[1]} = {match[2]!r}, neither on nor off")
    return found


_WORKERS_ONLINE = re.compile(r"^Workers online:\s*(\d+)\s*$", re.MULTILINE)


def parse_workers_online(output: str) -> int:
    """``Workers online: N`` from ``bench doctor``: how many Frappe RQ workers are registered."""
    found = _WORKERS_ONLINE.findall(output)
    if not found:
        raise OutputParseError("doctor printed no 'Workers online: N' line")
    return int(found[-1])


def parse_apps_txt(text: str) -> list[str]:
    """``sites/apps.txt``: the apps present in the bench, one per line."""
    return [line.strip() for line in text.splitlines() if line.strip()]
