"""Every Redis key jerp-jobs writes, and the one compare-and-delete script, in one place.

All keys start with ``jerp:``, so one Redis can be shared with other programs (each keeps its
own prefix). Names ending in ``:`` are prefixes: the site, job or delivery follows.
"""

from __future__ import annotations

PREFIX = "jerp:"

# job records (jerp_jobs.jobs)
JOB = PREFIX + "job:"  # hash per job: its fields and one field per step
JOBS = PREFIX + "jobs"  # every job id, scored by creation time
JOBS_BY_SITE = PREFIX + "jobs:site:"
JOBS_BY_STATE = PREFIX + "jobs:state:"
OUTPUT = PREFIX + "output:"  # stream per job: its commands and their output lines as they run (redacted, capped)

# locks and site state (jerp_jobs.locks, jerp_jobs.sitestate)
LOCK = PREFIX + "lock:"  # heartbeat locks with an owner token
SITE_OWNER = PREFIX + "site-owner:"  # the job that owns the site while it runs
ATTENTION = PREFIX + "attention:"  # a site automation must leave alone, with the reason

# backups (jerp_jobs.freshness, jerp_jobs.operations.*)
LOCAL_BACKUPS = PREFIX + "backups:"  # sorted set per site: local backup manifests
OFFSITE_BACKUPS = PREFIX + "offsite:"  # sorted set per site: verified off-site manifests
DRILLS = PREFIX + "drills"  # hash: site -> its last restore drill

# fan-outs (jerp_jobs.operations.fanout)
FANOUT = PREFIX + "fanout:"  # per parent job: its children's entries, counts, pending and running sets

# releases (jerp_jobs.operations.release)
RELEASE_ACTIVE = PREFIX + "release:active"  # the job id of the release that holds the slot
RELEASE_WAITING = PREFIX + "release:waiting"  # releases requested and not yet holding the slot
RELEASES = PREFIX + "releases"  # every release, scored by creation time
RELEASE_GOOD = PREFIX + "release:good"  # tags that passed a release, newest first
RELEASE_BAD = PREFIX + "release:bad"  # tags never to roll back to
RELEASE_REQUESTED = PREFIX + "release:requested"  # tag -> its last request (JSON); never expires
RELEASE_LATEST = PREFIX + "release:latest"  # the newest request; never expires
RELEASE_BY_DELIVERY = PREFIX + "release:delivery:"  # webhook delivery id -> the answer given

# the webhook, the audit trail, Beat
HOOKS_RECENT = PREFIX + "hooks:recent"  # the last deliveries and what was done with them
AUDIT = PREFIX + "audit"  # stream: who started what
REDBEAT = PREFIX + "redbeat:"  # Beat's schedule and lock (RedBeat's key prefix)
REDBEAT_SCHEDULE = REDBEAT + ":schedule"  # RedBeat: sorted set of entry keys scored by their next run
REDBEAT_LOCK = REDBEAT + ":lock"  # RedBeat: the lock of the one Beat that schedules

# monitoring (jerp_jobs.jobs writes them as steps and jobs end; jerp_jobs.metrics reads them)
STATS_STEPS = PREFIX + "stats:steps"  # hash: step-duration histogram buckets, sums and counts
STATS_JOBS = PREFIX + "stats:jobs"  # hash: jobs ended, per kind and final state

# the dashboard (jerp_jobs.dashboard)
DASHBOARD_LOGIN_FAILS = PREFIX + "dashboard:login-fails:"  # failed logins per user and per client address

#: delete KEYS[1] only while it holds ARGV[1] (a lock's or a slot's owner): never a successor's
COMPARE_AND_DELETE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""
