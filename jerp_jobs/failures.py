"""Why a bench command failed: the classes workflows decide their recovery from, and
:func:`classify_failure`, which reads the class from a command's exit status and output.

Pure and at the bottom of the project (no project imports): errors carry a
:class:`BenchFailure`, and the bench helpers, executors and workflows read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


#: The classes of a failed bench command. Workflows decide their recovery from these.
LOCK_HELD_BY_OTHER = "lock-held"  # a Frappe file lock is held by another process (names the lock)
SITE_MISSING = "site-missing"  # "Site X does not exist!"
NO_SITE = "no-site"  # "Please specify --site sitename"
DATABASE_UNREACHABLE = "database-unreachable"  # MariaDB refused or dropped the connection
SERVICES_DOWN = "services-down"  # Redis not reachable ("Cannot run bench migrate without the services running")
RUN_AS_ROOT = "run-as-root"  # bench refuses to run as root
TIMED_OUT = "timed-out"  # killed at the command's timeout
KILLED = "killed"  # ended by a signal
FENCE_BUSY = "fence-busy"  # another command of this platform still works on the site
NO_WORKERS = "no-workers"  # no Frappe worker consumes the queues (readiness)
COMMAND_ERROR = "command-error"  # anything else: the command itself failed

FAILURE_KINDS = (LOCK_HELD_BY_OTHER, SITE_MISSING, NO_SITE, DATABASE_UNREACHABLE, SERVICES_DOWN, RUN_AS_ROOT,
                 TIMED_OUT, KILLED, FENCE_BUSY, NO_WORKERS, COMMAND_ERROR)

#: classes in which the command stopped before it changed anything
UNCHANGED = frozenset({LOCK_HELD_BY_OTHER, SITE_MISSING, NO_SITE, SERVICES_DOWN, RUN_AS_ROOT, FENCE_BUSY})


@dataclass(frozen=True)
class BenchFailure:
    """What a failed bench command met: its class, a one-line summary, and for a held lock
    which lock (and the file Frappe named)."""

    kind: str
    summary: str
    lock: str | None = None
    lock_path: str | None = None

    @property
    def changed_nothing(self) -> bool:
        """The command stopped before it changed anything (it never got past its checks)."""
        return self.kind in UNCHANGED

    def as_dict(self) -> dict[str, str]:
        shown = {"class": self.kind, "summary": self.summary}
        if self.lock:
            shown["lock"] = self.lock
        if self.lock_path:
            shown["lock_path"] = self.lock_path
        return shown


_LOCK_TIMEOUT = re.compile(
    r"LockTimeoutError: Failed to ac?quire lock: (?P<name>[\w-]+)"
    r"(?:[^\n]*?You can manually remove the lock if you think it's safe: (?P<path>[^\s<]+))?"
)
_SITE_MISSING = re.compile(r"^Site (?P<site>\S+) does not exist!?\s*$", re.MULTILINE)
_DB_DOWN = re.compile(
    r"(?:OperationalError|InterfaceError|ERROR)\W+(?:2002|2003|2005|2006|2013)\b"
    r"|Can't connect to (?:local )?(?:MySQL |MariaDB )?server"
    r"|Lost connection to (?:MySQL |MariaDB )?server"
    r"|(?:MySQL|MariaDB) server has gone away"
)
_SERVICES_DOWN = re.compile(
    r"Cannot run bench migrate without the services running"
    r"|redis\.exceptions\.(?:ConnectionError|TimeoutError)"
    r"|^Service redis_\w+ is not running",
    re.MULTILINE,
)
_ROOT = re.compile(r"You should not run this command as root")
_SIGNALS = {9: "SIGKILL", 15: "SIGTERM", 2: "SIGINT", 6: "SIGABRT"}
#: flock's exit status when the platform's own fence stayed busy (see jerp_jobs.workflow)
_FENCE_EXIT = 75


def classify_failure(exit_code: int | None, output: str, *, timed_out: bool = False) -> BenchFailure:
    """The class of a failed bench command, from its exit status and what it printed.

    Frappe's own messages decide first (a held lock, a missing site, an unreachable database or
    Redis, the refusal to run as root); then how the command ended (a timeout, a signal, the
    platform's fence); anything else is a ``command-error``. Pure: no I/O.
    """
    text = output or ""
    lock = _LOCK_TIMEOUT.search(text)
    if lock:
        name = lock["name"]
        return BenchFailure(LOCK_HELD_BY_OTHER, f"another process holds {name}", lock=name,
                            lock_path=lock["path"] or None)
    missing = _SITE_MISSING.search(text)
    if missing:
        return BenchFailure(SITE_MISSING, f"site {missing['site']} does not exist")
    if "Please specify --site sitename" in text:
        return BenchFailure(NO_SITE, "no site was given and the bench has no default site")
    if _ROOT.search(text):
        return BenchFailure(RUN_AS_ROOT, "bench refuses to run as root")
    if _SERVICES_DOWN.search(text):
        return BenchFailure(SERVICES_DOWN, "Redis is not reachable (bench needs its services running)")
    if _DB_DOWN.search(text):
        return BenchFailure(DATABASE_UNREACHABLE, "the database server could not be reached")
    if timed_out:
        return BenchFailure(TIMED_OUT, "the command ran past its timeout and was killed")
    if exit_code is not None and (exit_code < 0 or exit_code - 128 in _SIGNALS):
        number = -exit_code if exit_code < 0 else exit_code - 128
        return BenchFailure(KILLED, f"the command was ended by {_SIGNALS.get(number, f'signal {number}')}")
    if exit_code == _FENCE_EXIT:
        return BenchFailure(FENCE_BUSY, "another command of this platform still works on the site")
    return BenchFailure(COMMAND_ERROR, f"the command failed (exit {exit_code})")
