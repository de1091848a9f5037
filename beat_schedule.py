"""The periodic jobs Celery Beat sends (``celery -A jerp_jobs beat``), in UTC.

Built from the settings when the app is configured, so timings are configuration:

- ``nightly-backup`` (``JERP_NIGHTLY_BACKUP_CRON``, default 03:00): backup-all with the
  off-site copy, bounded by ``JERP_FANOUT_CONCURRENCY`` and ``JERP_NIGHTLY_SITE_LIMIT``;
- ``retention-prune`` (``JERP_PRUNE_CRON``, default 05:30): the retention policy, per site;
- ``restore-drill`` (``JERP_DRILL_CRON``, default Sundays 06:00): drills the sites drilled
  longest ago, enough of them that every site is drilled at least once a quarter;
- ``ship-binlogs`` (every ``JERP_BINLOG_SHIP_MINUTES``, default 5; 0: none), when an off-site
  store is set (``JERP_S3_BUCKET``) and point-in-time recovery is on (``JERP_PITR_WINDOW_DAYS``,
  default 7; 0: off): the platform MariaDB's closed binary logs to it, and the logs no base
  inside the window needs any more removed (docs/pitr.md);
- ``list-sites`` (every ``JERP_FLEET_LIST_MINUTES``, default 15; 0: none), in a declared fleet
  (``JERP_FLEET_FILE``): each bench's worker lists its sites into the site-to-bench map;
- ``resume-stalled-steps`` (every ``JERP_RESUME_INTERVAL`` s) and ``reap-stuck-jobs``
  (every 5 minutes): recovery of lost workers, and failure of jobs past their deadline.

Beat runs with celery-redbeat: the schedule lives in Redis and one lock makes sure exactly one
Beat schedules, however many are started; a cron run missed while Beat was down runs once
when it comes back, not once per missed period.
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from jerp_jobs.fleet import load_fleet


def cron(expression: str, variable: str) -> crontab:
    """``"M H DoM Mon DoW"`` -> crontab; a malformed expression names its variable."""
    from jerp_jobs.errors import ConfigError

    parts = expression.split()
    if len(parts) != 5:
        raise ConfigError(variable, f"must be a cron expression of 5 fields (minute hour day month weekday), not {expression!r}")
    minute, hour, day_of_month, month_of_year, day_of_week = parts
    try:
        return crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year,
                       day_of_week=day_of_week)
    except ValueError as exc:
        raise ConfigError(variable, f"is not a valid cron expression ({expression!r}): {exc}") from exc


def beat_schedule(settings: Any) -> dict[str, dict[str, Any]]:
    control = {"queue": "jerp.control"}
    schedule = {
        "nightly-backup": {
            "task": "jerp.nightly_backup",
            "schedule": cron(settings.nightly_backup_cron, "JERP_NIGHTLY_BACKUP_CRON"),
            "options": control,
        },
        "retention-prune": {
            "task": "jerp.prune_all",
            "schedule": cron(settings.prune_cron, "JERP_PRUNE_CRON"),
            "options": control,
        },
        "restore-drill": {
            "task": "jerp.drill_rotation",
            "schedule": cron(settings.drill_cron, "JERP_DRILL_CRON"),
            "options": control,
        },
        "resume-stalled-steps": {
            "task": "jerp.resume",
            "schedule": float(settings.resume_interval),
            "options": {**control, "expires": float(settings.resume_interval)},
        },
        "reap-stuck-jobs": {
            "task": "jerp.reap",
            "schedule": 300.0,
            "options": {**control, "expires": 300.0},
        },
    }
    fleet = load_fleet(settings)
    if settings.pitr_on:
        every = float(settings.binlog_ship_minutes) * 60
        # the site queue: the shipment runs the MariaDB tools where bench runs (in a declared
        # fleet, the first production bench's: shipping is per platform MariaDB, docs/fleet.md)
        queue = fleet.with_role("production")[0].queue
        schedule["ship-binlogs"] = {"task": "jerp.ship_binlogs", "schedule": every,
                                    "options": {"queue": queue, "expires": every}}
    if fleet.declared and settings.fleet_list_minutes > 0:
        every = float(settings.fleet_list_minutes) * 60
        schedule["list-sites"] = {"task": "jerp.list_sites", "schedule": every, "options": {**control, "expires": every}}
    return schedule
