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
#: set: every site with a local or off-site backup record (kept where backups are recorded), plus
#: the member "" once it was built from a SCAN (jerp_jobs.freshness rebuilds it when "" is missing)
BACKUP_SITES = PREFIX + "backup-sites"

# fan-outs (jerp_jobs.operations.fanout)
FANOUT = PREFIX + "fanout:"  # per parent job: its children's entries, counts, pending and running sets

# the fleet (jerp_jobs.placement): where each site lives
SITE_BENCH = PREFIX + "fleet:site-bench"  # hash: site -> the bench it lives on
BENCH_SITES = PREFIX + "fleet:bench-sites:"  # set per bench: the sites its last listing found
BENCH_LISTED = PREFIX + "fleet:listed"  # hash: bench -> when its sites were last listed (epoch seconds)
BENCH_LISTING = PREFIX + "fleet:listing:"  # per bench: the job id of its last list-sites job
SITE_CONFLICT = PREFIX + "fleet:conflict"  # hash: site -> the benches that both list it (comma-separated)

# the broker's queues (kombu's Redis transport: a list per queue and priority step above 0; not
# under jerp:, their names are the queues' own)
BROKER_PRIORITY_SEP = "\x06\x16"
BROKER_PRIORITY_STEPS = (0, 3, 6, 9)


def broker_queue_keys(queue: str) -> list[str]:
    """The broker lists holding the messages waiting in ``queue``."""
    return [queue if step == 0 else f"{queue}{BROKER_PRIORITY_SEP}{step}" for step in BROKER_PRIORITY_STEPS]

# releases (jerp_jobs.operations.release; read by jerp_jobs.releases)
RELEASE_ACTIVE = PREFIX + "release:active"  # the job id of the release that holds the slot
RELEASE_ACTIVE_ON = PREFIX + "release:active:"  # + bench: the slot of one bench of a declared fleet
RELEASE_STAGED = PREFIX + "release:staged"  # tag -> its passed staging release (JSON); never expires
RELEASE_WAITING = PREFIX + "release:waiting"  # releases requested and not yet holding the slot
RELEASES = PREFIX + "releases"  # every release, scored by creation time
RELEASE_GOOD = PREFIX + "release:good"  # tags that passed a release, newest first
RELEASE_BAD = PREFIX + "release:bad"  # tags never to roll back to
RELEASE_REQUESTED = PREFIX + "release:requested"  # tag -> its last request (JSON); never expires
RELEASE_LATEST = PREFIX + "release:latest"  # the newest request; never expires
RELEASE_BY_DELIVERY = PREFIX + "release:delivery:"  # webhook delivery id -> the answer given

# point-in-time recovery (jerp_jobs.pitr)
PITR_SHIP_LOCK = PREFIX + "pitr:ship-lock"  # held by the one shipment of binary logs under way
PITR_PRUNED = PREFIX + "pitr:pruned"  # set for an hour after logs were pruned: one pruning an hour
PITR_SHIPPED = PREFIX + "pitr:shipped"  # the last shipment: when, and the newest log archived (JSON)

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


#: one page of the backup sites (KEYS[1], BACKUP_SITES) with the newest record of each in one
#: source; ARGV: SSCAN cursor, page size, local prefix, off-site prefix, the source's prefix.
#: Returns {next cursor, JSON [[site, newest member or "", its score or ""], ...]}; a site with
#: neither sorted set (pruned, offboarded) is left out, as a SCAN of the keys would.
NEWEST_BACKUPS = """
local page = redis.call('SSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local out = {}
for _, site in ipairs(page[2]) do
    if site ~= '' then
        local newest = redis.call('ZREVRANGE', ARGV[5] .. site, 0, 0, 'WITHSCORES')
        if newest[1] or redis.call('EXISTS', ARGV[3] .. site, ARGV[4] .. site) > 0 then
            out[#out + 1] = {site, newest[1] or '', newest[2] or ''}
        end
    end
end
if #out == 0 then return {page[1], '[]'} end
return {page[1], cjson.encode(out)}
"""

#: for each site of ARGV[4] (names joined by newlines): the score of its newest local backup
#: (prefix ARGV[1]), of its newest off-site copy (ARGV[2]) and its owner job (ARGV[3]), "" when
#: none; returned as one JSON list of [local, off-site, owner], in the order given
SITES_BACKUPS_OWNERS = """
local out = {}
for site in string.gmatch(ARGV[4], '[^\\n]+') do
    local l = redis.call('ZREVRANGE', ARGV[1] .. site, 0, 0, 'WITHSCORES')
    local o = redis.call('ZREVRANGE', ARGV[2] .. site, 0, 0, 'WITHSCORES')
    out[#out + 1] = {l[2] or '', o[2] or '', redis.call('GET', ARGV[3] .. site) or ''}
end
if #out == 0 then return '[]' end
return cjson.encode(out)
"""
