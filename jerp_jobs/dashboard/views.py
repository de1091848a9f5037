"""What each page shows, read from the same records and functions jerpctl reads.

Plain functions of a runtime returning dicts for the templates: the jobs list (the store's
indexes, :meth:`~jerp_jobs.jobs.JobStore.page`), one job with its timeline, recovery path and
fan-out progress (:func:`jerp_jobs.operations.fanout.progress`), the sites
(:func:`jerp_jobs.freshness.site_states`, :func:`~jerp_jobs.freshness.sites_freshness`, the
drills of :func:`jerp_jobs.operations.drill.last_drills`), releases
(:func:`jerp_jobs.releases.list_releases`) and fan-outs. Nothing here writes.
"""

from __future__ import annotations

import json
import time
from typing import Any

from jerp_jobs import observe
from jerp_jobs.errors import JerpError
from jerp_jobs.freshness import current_rpo, fleet_site_states, shipped_logs, site_states, sites_freshness
from jerp_jobs.jobs import FINAL_JOB_STATES, JOB_STATES, Job, Step
from jerp_jobs.log import get_logger
from jerp_jobs.operations.drill import last_drills
from jerp_jobs.operations.fanout import CHILD_KIND, progress
from jerp_jobs.releases import list_releases
from jerp_jobs.runtime import Runtime
from jerp_jobs.sites import bench_app_names
from jerp_jobs.backupfiles import sites_root

log = get_logger(__name__)

FANOUT_KINDS = tuple(sorted(CHILD_KIND))
#: the time windows the jobs list offers, in hours
WINDOWS = {"1h": 1, "24h": 24, "7d": 168, "30d": 720}
PAGE_SIZE = 50


def job_kinds(rt: Runtime) -> list[str]:
    """Every job kind the catalog knows."""
    return sorted(rt.workflows)


def jobs_list(rt: Runtime, *, kind: str | None, state: str | None, site: str | None, window: str | None,
              before: float | None, limit: int = PAGE_SIZE) -> dict[str, Any]:
    """One page of the jobs list, newest first, and the next page's cursor."""
    since = time.time() - WINDOWS[window] * 3600 if window in WINDOWS else None
    rows, cursor = rt.store.page(site=site, state=state, kind=kind, since=since, before=before, limit=limit)
    counts = {s: rt.store.count(state=s) for s in JOB_STATES}
    return {"rows": rows, "cursor": cursor, "counts": counts, "total": rt.store.count()}


def _step_view(step: Step, *, recovery: bool, origin: float, span: float) -> dict[str, Any]:
    start = step.started_at
    end = step.ended_at or (time.time() if step.state == "running" else None)
    bar = None
    if start is not None and end is not None and span > 0:
        bar = {"left": round(100 * (start - origin) / span, 2), "width": max(0.5, round(100 * (end - start) / span, 2))}
    return {**step.__dict__, "recovery": recovery, "bar": bar,
            "elapsed_s": round(end - start, 1) if start is not None and end is not None else None}


def job_view(rt: Runtime, job_id: str) -> dict[str, Any]:
    """A job as its page shows it: steps as a timeline, the recovery path, fan-out progress."""
    job = rt.store.get(job_id)
    if job.kind in CHILD_KIND:
        live = progress(rt.redis, job.id)
        if live is not None:
            job.result.update(live)
    def is_recovery(step: str) -> bool:
        try:
            return rt.workflow(job.kind).is_recovery(step)
        except JerpError:
            return False

    starts = [s.started_at for s in job.steps if s.started_at]
    ends = [s.ended_at for s in job.steps if s.ended_at]
    origin = min(starts) if starts else job.created_at
    finish = max([*ends, time.time() if job.state == "running" else 0, origin])
    span = finish - origin
    steps = [_step_view(s, recovery=is_recovery(s.name), origin=origin, span=span) for s in job.steps]
    recovery = [s for s in steps if s["recovery"] and s["state"] not in ("pending", "skipped")]
    result = {k: v for k, v in job.result.items() if k not in ("sites", "counts", "order")}
    return {
        "job": job,
        "steps": steps,
        "recovery": recovery,
        "recovered": job.result.get("recovered"),
        "result_json": json.dumps(result, indent=2, sort_keys=True, default=str) if result else "",
        "fanout": _fanout(job),
        "running": next((s for s in steps if s["state"] == "running"), None),
        "live_output": _live_output(rt, job, steps),
        "finished": job.state in FINAL_JOB_STATES,
        "duration_s": round((job.ended_at or time.time()) - job.started_at, 1) if job.started_at else None,
    }


#: lines of a running step's live output a job's page shows (the newest)
LIVE_LINES = 200


def _live_output(rt: Runtime, job: Job, steps: list[dict[str, Any]]) -> dict[str, str]:
    """The live output of each running step (its commands and their lines so far, from the job's
    output stream, :meth:`~jerp_jobs.jobs.JobStore.output_since`), the newest lines, by step."""
    running = {s["name"] for s in steps if s["state"] == "running"}
    if not running:
        return {}
    found: dict[str, list[str]] = {name: [] for name in running}
    for line in rt.store.output_since(job.id, limit=5000):
        if line.step in found:
            found[line.step].append(f"$ {line.text}" if line.kind == "command" else line.text)
    return {name: "\n".join(lines[-LIVE_LINES:]) for name, lines in found.items() if lines}


def _fanout(job: Job) -> dict[str, Any] | None:
    sites = job.result.get("sites")
    if not isinstance(sites, dict):
        return None
    counts: dict[str, int] = {}
    for entry in sites.values():
        counts[entry.get("state", "?")] = counts.get(entry.get("state", "?"), 0) + 1
    done = sum(n for state, n in counts.items() if state not in ("pending", "running", "queued"))
    return {"sites": sites, "counts": dict(sorted(counts.items())), "total": len(sites), "done": done,
            "canary": job.result.get("canary")}


def fingerprint(view: dict[str, Any]) -> str:
    """What changes on a job's page when anything shown changes (for the live stream)."""
    job = view["job"]
    steps = [(s["name"], s["state"], s["ended_at"], len(s["output"] or "")) for s in view["steps"]]
    steps.append(sorted((k, len(v)) for k, v in view["live_output"].items()))
    fanout = view["fanout"] and sorted((site, e.get("state")) for site, e in view["fanout"]["sites"].items())
    return json.dumps([job.state, job.updated_at, job.cancel_requested, steps, fanout], default=str)


def fanouts_list(rt: Runtime, *, limit: int = PAGE_SIZE) -> list[dict[str, Any]]:
    """The newest fan-outs (migrate-all, backup-all, ...) with their per-site counts."""
    rows, _ = rt.store.page(kind=FANOUT_KINDS, limit=limit)
    for row in rows:
        live = progress(rt.redis, row["id"])
        if live is None:
            try:
                live = rt.store.get(row["id"]).result
            except JerpError:
                live = {}
        sites = live.get("sites") or {}
        counts: dict[str, int] = {}
        for entry in sites.values():
            counts[entry.get("state", "?")] = counts.get(entry.get("state", "?"), 0) + 1
        row["counts"] = dict(sorted(counts.items()))
        row["total"] = len(sites)
    return rows


def releases_list(rt: Runtime, *, limit: int = PAGE_SIZE) -> list[dict[str, Any]]:
    """Releases newest first: tags, state, timings, the rollback reason."""
    rows = []
    for job in list_releases(rt, limit=limit):
        ended = job.finished
        end = (job.ended_at or job.updated_at) if ended else None
        rows.append({
            "job_id": job.id,
            "tag": job.result.get("tag") or job.params.get("tag"),
            "previous_tag": job.result.get("previous_tag"),
            "rollback_to": job.result.get("rollback_to"),
            "rollback": bool(job.params.get("rollback")),
            "source": job.params.get("source"),
            "state": job.state,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "ended_at": end,
            "duration_s": round(end - job.created_at, 1) if end else None,
            "steps": [(s.name, s.state, s.duration_s) for s in job.steps],
            "detail": job.error or job.result.get("rollback_reason"),
        })
    return rows


def sites_view(rt: Runtime, *, now: float | None = None) -> dict[str, Any]:
    """Every site: its state and attention mark (as ``jerpctl sites``), last local and off-site
    backup and their age against the RPO (``JERP_BACKUP_MAX_AGE_HOURS``, as ``jerpctl
    backups``), its last drill and last migrate. In a fleet (JERP_FLEET_FILE) the sites are those
    of the site-to-bench map, each with its bench (as ``jerpctl sites``). When the bench cannot be
    asked (the dashboard sees no executor), the sites known from the records are shown, with the
    reason."""
    now = time.time() if now is None else now
    rpo = rt.settings.backup_max_age_hours
    problem = None
    fleet = rt.fleet
    try:
        rows_now = fleet_site_states(rt, fleet, now=now) if fleet.declared else site_states(rt, now=now)
        states = {row["site"]: row for row in rows_now}
    except (JerpError, OSError) as exc:
        problem = f"the bench could not be asked for its sites ({exc}); sites known from the records are shown"
        marks = rt.sites.attention_marks()
        states = {}
        for site, mark in marks.items():
            states[site] = {"site": site, "state": "needs attention", "exists": None, "attention": mark,
                            "maintenance": None, "owner_job": None}
    local = {r["site"]: r for r in sites_freshness(rt.redis, max_age_hours=rpo, now=now, offsite=False)}
    offsite = {r["site"]: r for r in sites_freshness(rt.redis, max_age_hours=rpo, now=now, offsite=True)}
    drills = last_drills(rt.redis)
    names = sorted(set(states) | set(local) | set(offsite))
    migrates = rt.store.latest_of_kind(names, "migrate")
    offsite_on = bool(rt.settings.s3_bucket)
    pitr_on = rt.settings.pitr_on
    shipped = shipped_logs(rt.redis) if pitr_on else None
    behind = current_rpo(shipped, now)
    rows = []
    for site in names:
        base = states.get(site) or {"site": site, "state": "unknown" if problem else "no site folder",
                                    "exists": None if problem else False, "attention": None, "maintenance": None,
                                    "owner_job": None}
        drill = drills.get(site)
        rows.append({
            **base,
            "local": local.get(site),
            "offsite": offsite.get(site),
            "stale": (offsite if offsite_on else local).get(site, {"stale": True})["stale"],
            "drill": drill,
            "drill_age_h": round((now - float(drill["at"])) / 3600, 1) if drill and drill.get("at") else None,
            "migrate": migrates.get(site),
            "pitr": _pitr_cell(offsite.get(site), behind, now) if pitr_on else None,
        })
    return {"rows": rows, "problem": problem, "rpo_hours": rpo, "offsite_on": offsite_on, "pitr_on": pitr_on,
            "fleet": fleet.declared,
            "pitr_days": rt.settings.pitr_window_days, "ship_minutes": f"{rt.settings.binlog_ship_minutes:g}",
            "shipped_at": (shipped or {}).get("at"),
            "apps": sorted(bench_app_names(sites_root(rt.settings))), "tag": _current_tag(rt)}


def _pitr_cell(offsite: dict[str, Any] | None, behind: float | None, now: float) -> dict[str, Any]:
    """A site's point-in-time recovery at a glance: its newest base (with its newest off-site
    copy) and the current RPO (:func:`jerp_jobs.freshness.current_rpo`), for a site with a base."""
    base_at = (offsite or {}).get("pitr_base_at")
    return {"base_age_h": round((now - float(base_at)) / 3600, 1) if base_at else None,
            "rpo_s": behind if base_at else None}


def _current_tag(rt: Runtime) -> str | None:
    """The tag of the newest release that succeeded, if any."""
    for job in list_releases(rt, limit=20):
        if job.state == "succeeded":
            return job.result.get("tag") or job.params.get("tag")
    return None


def workers_view(rt: Runtime, celery_app: Any | None) -> dict[str, Any]:
    """Alive workers and what each runs, queue depths and their oldest message, Beat's next runs
    (:func:`jerp_jobs.observe.overview`, as ``jerpctl workers``). Workers are asked by a
    broadcast that waits ``JERP_WORKER_PING_TIMEOUT`` seconds for answers."""
    seen = observe.overview(rt, celery_app, timeout=rt.settings.worker_ping_timeout)
    workers = []
    for worker in seen.workers or []:
        running = [{"job_id": t.job_id, "label": " ".join(x for x in (t.step, t.site) if x) or t.name,
                    "started_at": t.started_at} for t in worker.tasks]
        workers.append({"name": worker.name, "queues": worker.queues or [], "running": running})
    beat = [{"name": e.name, "task": e.task, "next_run_at": e.next_run_at, "last_run_at": e.last_run_at,
             "schedule": e.task or ""} for e in seen.beat.entries]
    problem = None
    if celery_app is not None and not workers:
        problem = "no worker answered: jobs wait in their queues until one runs"
    return {"workers": workers, "queues": [q.__dict__ for q in seen.queues], "beat": beat,
            "beat_lock": seen.beat.lock_held, "problem": problem}
