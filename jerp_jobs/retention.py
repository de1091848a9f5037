"""Retention of off-site backups: which backups of one site to delete.

A pure policy: it sees a list of backups and a clock reading and answers with a
:class:`Decision`; listing and deleting the objects in S3 is someone else's job.

Configuration
=============

One variable, ``JERP_RETENTION``, read by :func:`parse_policy`:

``gfs:D/W/M/Y``
    Grandfather-father-son: keep D daily, W weekly, M monthly and Y yearly backups.
    ``gfs:7/4/12/10`` is the default (the schedule Frappe Cloud uses). A count may be 0;
    at least one must not be.
``last:N``
    Keep the N newest verified backups, N >= 1.

Case and surrounding whitespace are ignored; an unset or blank value means the default.
Anything else raises :class:`~jerp_jobs.errors.InvalidInput`.

Semantics
=========

Periods are calendar periods of the backup's timestamp in UTC: the day (``2026-11-29``),
the ISO 8601 week (``2026-W48``; the ISO year, so 2021-01-01 is in ``2020-W53``), the month
(``2026-11``) and the year (``2026``).

Only **verified** backups fill buckets. For each kind of period, the periods are those that
contain at least one verified backup, ranked newest first; the D (W, M, Y) most recent of
them each keep their newest verified backup. Periods are counted among those that *have*
backups, not as calendar periods back from ``now`` (the convention of restic's
``forget --keep-daily``): a site whose backups stopped a month ago still keeps D daily
backups rather than none. Each bucket kind is filled independently, so one backup may be
kept for several reasons ("daily 2026-11-30", "weekly 2026-W49", "monthly 2026-11", ...).

``last:N`` keeps the N newest verified backups ("last 1/N" ... "last N/N").

"Newest" orders by timestamp, then by key (the larger key wins a tie), so the outcome does
not depend on the order of the input.

Protections, whatever the policy:

* the newest verified backup is always kept ("newest verified");
* every backup, verified or not, younger than the **safety window** is kept: D days for
  ``gfs`` (at least one day, also when D is 0), one day for ``last:N``. "Younger" means
  ``now - timestamp < window``; a timestamp after ``now`` counts as young.

Unverified backups never fill a bucket. Inside the safety window they are kept (the upload
or the verification may still be running); outside it they are deleted.

Properties this gives, for every input: the newest verified backup and everything inside the
safety window survive; keep and delete partition the input; the answer does not depend on
input order; and it is stable -- applying the decision and planning again with the same
``now`` deletes nothing more, because removing backups outside the chosen periods changes
neither which periods rank first nor the newest backup of each of them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from jerp_jobs.errors import InvalidInput

VARIABLE = "JERP_RETENTION"
DEFAULT = "gfs:7/4/12/10"
ACCEPTED_FORMS = (
    "'gfs:D/W/M/Y' (daily/weekly/monthly/yearly counts, at least one non-zero) or 'last:N' (N >= 1)"
)

_GFS = re.compile(r"gfs:(\d{1,6})/(\d{1,6})/(\d{1,6})/(\d{1,6})")
_LAST = re.compile(r"last:(\d{1,6})")


@dataclass(frozen=True)
class Policy:
    """A parsed retention policy: ``kind`` is ``"gfs"`` or ``"last"``.

    For ``gfs`` the four counts are used and ``last`` is 0; for ``last`` only ``last`` is.
    ``str(policy)`` gives back the canonical text.
    """

    kind: str
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    last: int = 0

    def __post_init__(self) -> None:
        counts = (self.daily, self.weekly, self.monthly, self.yearly, self.last)
        if self.kind not in ("gfs", "last") or min(counts) < 0:
            raise InvalidInput(f"not a retention policy: {self!r}")

    def __str__(self) -> str:
        if self.kind == "gfs":
            return f"gfs:{self.daily}/{self.weekly}/{self.monthly}/{self.yearly}"
        return f"last:{self.last}"

    @property
    def safety_window(self) -> timedelta:
        """How young a backup must be to be kept unconditionally."""
        if self.kind == "gfs":
            return timedelta(days=max(self.daily, 1))
        return timedelta(days=1)


def parse_policy(text: str | None) -> Policy:
    """Parse the value of ``JERP_RETENTION``; ``None`` or blank gives the default policy."""
    if text is None or not text.strip():
        text = DEFAULT
    value = text.strip().lower()
    if match := _GFS.fullmatch(value):
        daily, weekly, monthly, yearly = (int(group) for group in match.groups())
        if daily + weekly + monthly + yearly > 0:
            return Policy("gfs", daily=daily, weekly=weekly, monthly=monthly, yearly=yearly)
        problem = "keeps nothing (all counts are 0)"
    elif match := _LAST.fullmatch(value):
        if int(match.group(1)) >= 1:
            return Policy("last", last=int(match.group(1)))
        problem = "keeps nothing (N must be at least 1)"
    else:
        problem = "is not a retention policy"
    raise InvalidInput(
        f"{VARIABLE}={text!r} {problem}; accepted forms: {ACCEPTED_FORMS}",
        variable=VARIABLE,
        value=text,
    )


@dataclass(frozen=True)
class Backup:
    """One off-site backup of a site.

    ``timestamp`` must be timezone-aware and is normalised to UTC; ``key`` identifies the
    backup (e.g. its ``YYYYMMDD_HHMMSS``) and must be unique within one planning call;
    ``verified`` says whether the copy was checked to be complete and restorable.
    """

    timestamp: datetime
    key: str
    verified: bool

    def __post_init__(self) -> None:
        if self.timestamp.tzinfo is None or self.timestamp.utcoffset() is None:
            raise InvalidInput(
                f"backup {self.key!r} has a naive timestamp; a timezone is required", key=self.key
            )
        object.__setattr__(self, "timestamp", self.timestamp.astimezone(timezone.utc))


@dataclass(frozen=True)
class Decision:
    """What to keep and what to delete, each newest first.

    ``reasons`` maps the key of every kept backup to why it is kept, e.g.
    ``("newest verified", "daily 2026-11-30", "weekly 2026-W49")``.
    """

    policy: Policy
    keep: tuple[Backup, ...]
    delete: tuple[Backup, ...]
    reasons: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def as_record(self) -> dict[str, object]:
        """A JSON-ready summary for a job record."""
        return {
            "policy": str(self.policy),
            "keep": {backup.key: list(self.reasons[backup.key]) for backup in self.keep},
            "delete": [backup.key for backup in self.delete],
        }


def _day(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%d")


def _week(ts: datetime) -> str:
    year, week, _ = ts.isocalendar()
    return f"{year}-W{week:02d}"


def _month(ts: datetime) -> str:
    return ts.strftime("%Y-%m")


def _year(ts: datetime) -> str:
    return f"{ts.year:04d}"


#: Each GFS bucket: the Policy attribute holding its count (also its label), and its period.
_BUCKETS: tuple[tuple[str, Callable[[datetime], str]], ...] = (
    ("daily", _day),
    ("weekly", _week),
    ("monthly", _month),
    ("yearly", _year),
)


def _fill_buckets(
    newest_first: Sequence[Backup], count: int, label: str, period_of: Callable[[datetime], str]
) -> dict[str, str]:
    """Keep the newest backup of each of the ``count`` most recent periods that have one."""
    chosen: dict[str, str] = {}
    seen: set[str] = set()
    for backup in newest_first:
        if len(seen) >= count:
            break
        period = period_of(backup.timestamp)
        if period not in seen:
            seen.add(period)
            chosen[backup.key] = f"{label} {period}"
    return chosen


def plan_deletions(backups: Sequence[Backup], policy: Policy, *, now: datetime) -> Decision:
    """Decide which of one site's ``backups`` to delete under ``policy`` at time ``now``.

    Pure: no I/O, no clock reading. Raises InvalidInput for a naive ``now`` or duplicate keys.
    See the module docstring for the exact rules.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidInput("now must be a timezone-aware datetime")
    duplicates = sorted(key for key, n in Counter(backup.key for backup in backups).items() if n > 1)
    if duplicates:
        raise InvalidInput(f"duplicate backup keys: {', '.join(duplicates)}", keys=duplicates)

    ordered = sorted(backups, key=lambda b: (b.timestamp, b.key), reverse=True)
    verified = [backup for backup in ordered if backup.verified]
    reasons: dict[str, list[str]] = {backup.key: [] for backup in ordered}

    if verified:
        reasons[verified[0].key].append("newest verified")
    if policy.kind == "gfs":
        for name, period_of in _BUCKETS:
            for key, reason in _fill_buckets(verified, getattr(policy, name), name, period_of).items():
                reasons[key].append(reason)
    else:
        for rank, backup in enumerate(verified[: policy.last], start=1):
            reasons[backup.key].append(f"last {rank}/{policy.last}")

    window = policy.safety_window
    window_text = f"{window.days}d"
    for backup in ordered:
        if now - backup.timestamp < window:
            prefix = "" if backup.verified else "unverified, "
            reasons[backup.key].append(f"{prefix}within {window_text} safety window")

    keep = tuple(backup for backup in ordered if reasons[backup.key])
    delete = tuple(backup for backup in ordered if not reasons[backup.key])
    return Decision(
        policy=policy,
        keep=keep,
        delete=delete,
        reasons={backup.key: tuple(reasons[backup.key]) for backup in keep},
    )
