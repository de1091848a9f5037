"""The Beat scheduler: celery-redbeat, with first runs of cron entries at their next time.

RedBeat keeps the schedule in Redis and one lock (``jerp:redbeat::lock``) so exactly one Beat
schedules however many run; a standby takes over when the active one dies and its lock
expires. RedBeat treats an entry it has never run as due at once: for the nightly backup,
the prune and the drill that would mean a full run the first time Beat starts. This scheduler
gives a new cron entry the start time as its last run, so its first run is its next cron time.
An entry that ran before keeps its last run: a run missed while Beat was down is due once
when it comes back (and only once: the next time is computed from the run that happens).
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab
from redbeat import RedBeatScheduler


class Scheduler(RedBeatScheduler):
    def update_from_dict(self, dict_: dict[str, Any]) -> None:
        fresh = {}
        for name, entry in dict_.items():
            key = self.Entry.generate_key(self.app, name)
            if isinstance(entry.get("schedule"), crontab) and not self._known(key):
                entry = {**entry, "last_run_at": self.app.now()}
            fresh[name] = entry
        super().update_from_dict(fresh)

    def _known(self, key: str) -> bool:
        from redbeat.schedulers import get_redis

        return bool(get_redis(self.app).hexists(key, "meta"))
