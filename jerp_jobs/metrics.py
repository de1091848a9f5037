"""Prometheus metrics, computed at scrape time from Redis: ``GET /metrics``.

:data:`router` (a FastAPI ``APIRouter``) serves them; the dashboard app includes it, and
:func:`make_app` builds a small app of its own (``uvicorn --factory jerp_jobs.metrics:make_app``).
Open by default (scrapers on the internal network); with ``JERP_METRICS_TOKEN`` set, a request
needs ``Authorization: Bearer <token>`` (compared in constant time; 401 otherwise).

Nothing is kept in the serving process: every scrape reads Redis (and asks the workers), so
any number of dashboard processes serve the same figures. Counters and histograms come from
the hashes the job store keeps as steps and jobs end (``jerp:stats:*``, one increment per end
whichever worker writes it); gauges are read from the records as they are now. What each
metric means is in docs/monitoring.md; :data:`METRICS` lists every name exported (the alert
rules and the Grafana dashboard use only these; a test checks it).

A scrape costs one pipelined HMGET per job record (``kind``, ``state``): about 0.18 s in all at
10,000 records, 0.14 s of it for the jobs (benchmarks/metrics_scrape.py, 2 cores), plus the workers' answer to one broadcast
(``JERP_WORKER_PING_TIMEOUT``, default 1 s). A section that fails (Redis lost mid-scrape, a
malformed record) is left out and ``jerp_scrape_ok{section}`` says 0; Redis down gives
``jerp_up 0`` and still answers 200.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from jerp_jobs import observe
from jerp_jobs.freshness import current_rpo, shipped_logs
from jerp_jobs.jobs import STATS_JOBS, STATS_STEPS, STEP_BUCKETS, as_text, step_stats
from jerp_jobs.log import get_logger

log = get_logger(__name__)

#: every metric family exported, with its type (a test checks the dashboard and the rules use no other)
METRICS: dict[str, str] = {
    "jerp_up": "gauge",
    "jerp_scrape_ok": "gauge",
    "jerp_scrape_duration_seconds": "gauge",
    "jerp_jobs": "gauge",
    "jerp_jobs_ended": "counter",
    "jerp_steps_ended": "counter",
    "jerp_step_duration_seconds": "histogram",
    "jerp_active_steps": "gauge",
    "jerp_backup_last_timestamp_seconds": "gauge",
    "jerp_backup_age_seconds": "gauge",
    "jerp_backup_stale": "gauge",
    "jerp_backup_rpo_seconds": "gauge",
    "jerp_drill_last_timestamp_seconds": "gauge",
    "jerp_drill_age_seconds": "gauge",
    "jerp_drill_last_passed": "gauge",
    "jerp_site_attention": "gauge",
    "jerp_site_attention_since_timestamp_seconds": "gauge",
    "jerp_queue_depth": "gauge",
    "jerp_queue_oldest_age_seconds": "gauge",
    "jerp_workers_alive": "gauge",
    "jerp_queue_consumers": "gauge",
    "jerp_worker_active_tasks": "gauge",
    "jerp_beat_lock_held": "gauge",
    "jerp_beat_next_run_timestamp_seconds": "gauge",
    "jerp_beat_last_run_timestamp_seconds": "gauge",
    "jerp_release_active": "gauge",
    "jerp_releases_waiting": "gauge",
    "jerp_release_info": "gauge",
    "jerp_release_created_timestamp_seconds": "gauge",
    "jerp_pitr_ship_interval_seconds": "gauge",
    "jerp_pitr_last_shipment_timestamp_seconds": "gauge",
    "jerp_pitr_rpo_seconds": "gauge",
}


def exported_series() -> set[str]:
    """The names a PromQL expression may use: each family's name, with ``_total`` for counters
    and ``_bucket``/``_sum``/``_count`` for histograms."""
    names = set()
    for name, kind in METRICS.items():
        if kind == "counter":
            names.add(name + "_total")
        elif kind == "histogram":
            names |= {name + "_bucket", name + "_sum", name + "_count"}
        else:
            names.add(name)
    return names


class JerpCollector(Collector):
    """Reads everything at each :meth:`collect`: the runtime (Redis, settings) and the Celery
    app (the workers' broadcast) come from factories, called on every scrape."""

    def __init__(self, runtime: Callable[[], Any], celery_app: Callable[[], Any] | None) -> None:
        self._runtime = runtime
        self._celery_app = celery_app

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: the families depend on what Redis holds

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        rt = self._runtime()
        up = GaugeMetricFamily("jerp_up", "1 when Redis (broker, job records) answered this scrape")
        try:
            rt.redis.ping()
        except Exception as exc:  # noqa: BLE001 - any failure to reach Redis is reported as down
            log.warning("metrics.redis_down", error=str(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        ok = GaugeMetricFamily("jerp_scrape_ok", "1 when the section of this scrape was read", labels=["section"])
        took = GaugeMetricFamily("jerp_scrape_duration_seconds", "seconds each section of this scrape took",
                                 labels=["section"])
        now = time.time()
        sections: list[tuple[str, Callable[[], list[Metric]]]] = [
            ("jobs", lambda: _jobs(rt)),
            ("steps", lambda: _steps(rt)),
            ("sites", lambda: _sites(rt, now)),
            ("queues", lambda: _queues(rt, now)),
            ("beat", lambda: _beat(rt)),
            ("release", lambda: _release(rt)),
            ("pitr", lambda: _pitr(rt, now)),
        ]
        if self._celery_app is not None:
            sections.append(("workers", lambda: _workers(self._celery_app(), rt.settings.worker_ping_timeout,
                                                         observe.queue_names(rt))))
        for name, read in sections:
            begun = time.monotonic()
            try:
                families = read()
            except Exception as exc:  # noqa: BLE001 - one broken section never hides the others
                log.warning("metrics.section_failed", section=name, error=f"{type(exc).__name__}: {exc}")
                ok.add_metric([name], 0)
                continue
            finally:
                took.add_metric([name], round(time.monotonic() - begun, 6))
            ok.add_metric([name], 1)
            yield from families
        took.add_metric(["total"], round(time.monotonic() - started, 6))
        yield ok
        yield took


# -- sections --------------------------------------------------------------------------------


def _jobs(rt: Any) -> list[Metric]:
    records = GaugeMetricFamily("jerp_jobs", "job records kept (JERP_JOB_TTL_DAYS), by kind and state",
                                labels=["kind", "state"])
    for (kind, state), count in sorted(observe.job_counts(rt.redis).items()):
        records.add_metric([kind, state], count)
    ended = CounterMetricFamily("jerp_jobs_ended", "jobs that reached a final state, by kind and state",
                                labels=["kind", "state"])
    for raw, value in sorted(_hash(rt.redis, STATS_JOBS).items()):
        kind, _, state = raw.partition("\t")
        ended.add_metric([kind, state], float(value))
    active = GaugeMetricFamily("jerp_active_steps", "steps of the jobs queued or running, by kind, step and state",
                               labels=["kind", "step", "state"])
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    for job in observe.active_jobs(rt):
        for step in job.steps:
            counts[(job.kind, step.name, step.state)] += 1
    for labels, count in sorted(counts.items()):
        active.add_metric(list(labels), count)
    return [records, ended, active]


def _steps(rt: Any) -> list[Metric]:
    """The step counters and histogram from ``jerp:stats:steps`` (see jerp_jobs.jobs)."""
    ended = CounterMetricFamily("jerp_steps_ended", "steps that reached a final state (skipped ones too)",
                                labels=["kind", "step", "state"])
    duration = HistogramMetricFamily("jerp_step_duration_seconds", "how long steps that ran took, by final state",
                                     labels=["kind", "step", "state"])
    series = step_stats(_hash(rt.redis, STATS_STEPS))
    labels_order = [f"{b:g}" for b in STEP_BUCKETS] + ["+Inf"]
    for labels, fields in sorted(series.items()):
        if "ended" in fields:
            ended.add_metric(list(labels), fields["ended"])
        per_bucket = [fields.get(f"le:{le}", 0.0) for le in labels_order]
        if not any(per_bucket):
            continue
        cumulative, total = [], 0.0
        for le, count in zip(labels_order, per_bucket):
            total += count
            cumulative.append((le if le == "+Inf" else floatToGoString(float(le)), total))
        duration.add_metric(list(labels), cumulative, sum_value=fields.get("sum", 0.0))
    return [ended, duration]


def _sites(rt: Any, now: float) -> list[Metric]:
    last = GaugeMetricFamily("jerp_backup_last_timestamp_seconds", "time of the newest backup, local or off-site",
                             labels=["site", "where"])
    age = GaugeMetricFamily("jerp_backup_age_seconds", "age of the backup that counts against the RPO "
                            "(off-site; local without JERP_S3_BUCKET)", labels=["site"])
    stale = GaugeMetricFamily("jerp_backup_stale", "1 when that backup is older than the RPO, or missing",
                              labels=["site"])
    rpo = GaugeMetricFamily("jerp_backup_rpo_seconds", "the RPO: JERP_BACKUP_MAX_AGE_HOURS in seconds")
    rpo.add_metric([], rt.settings.backup_max_age_hours * 3600)
    drill_at = GaugeMetricFamily("jerp_drill_last_timestamp_seconds", "time of the last restore drill",
                                 labels=["site"])
    drill_age = GaugeMetricFamily("jerp_drill_age_seconds", "age of the last restore drill", labels=["site"])
    drill_ok = GaugeMetricFamily("jerp_drill_last_passed", "1 when the last restore drill passed, 0 when it failed",
                                 labels=["site"])
    marked = GaugeMetricFamily("jerp_site_attention", "1 for a site marked as needing attention", labels=["site"])
    since = GaugeMetricFamily("jerp_site_attention_since_timestamp_seconds", "when the attention mark was set",
                              labels=["site"])
    for view in observe.sites(rt, now=now):
        if view.local_at is not None:
            last.add_metric([view.site, "local"], view.local_at)
        if view.offsite_at is not None:
            last.add_metric([view.site, "offsite"], view.offsite_at)
        if view.age_hours is not None:
            age.add_metric([view.site], round(view.age_hours * 3600, 1))
        if view.local_at is not None or view.offsite_at is not None:
            stale.add_metric([view.site], 1 if view.stale else 0)
        if view.drill_at is not None:
            drill_at.add_metric([view.site], view.drill_at)
            drill_age.add_metric([view.site], round(max(0.0, now - view.drill_at), 1))
            drill_ok.add_metric([view.site], 1 if view.drill_passed else 0)
        marked.add_metric([view.site], 1 if view.attention else 0)
        if view.attention and isinstance(view.attention.get("since"), (int, float)):
            since.add_metric([view.site], view.attention["since"])
    return [last, age, stale, rpo, drill_at, drill_age, drill_ok, marked, since]


def _pitr(rt: Any, now: float) -> list[Metric]:
    """Point-in-time recovery, while it is on: the shipping interval, the last shipment, and the
    current RPO (since the newest shipped binary log was closed; absent before the first)."""
    settings = rt.settings
    if not settings.pitr_on:
        return []
    interval = GaugeMetricFamily("jerp_pitr_ship_interval_seconds", "JERP_BINLOG_SHIP_MINUTES in seconds")
    interval.add_metric([], settings.binlog_ship_minutes * 60)
    last = GaugeMetricFamily("jerp_pitr_last_shipment_timestamp_seconds", "when binary logs were last shipped")
    rpo = GaugeMetricFamily("jerp_pitr_rpo_seconds", "seconds since the newest shipped binary log was closed: "
                            "what a loss of the database server now would lose at most")
    shipped = shipped_logs(rt.redis)
    if shipped:
        last.add_metric([], float(shipped["at"]))
    behind = current_rpo(shipped, now)
    if behind is not None:
        rpo.add_metric([], behind)
    return [interval, last, rpo]


def _queues(rt: Any, now: float) -> list[Metric]:
    depth = GaugeMetricFamily("jerp_queue_depth", "messages waiting in the broker queue", labels=["queue"])
    oldest = GaugeMetricFamily("jerp_queue_oldest_age_seconds", "age of the oldest waiting message (0: none)",
                               labels=["queue"])
    for queue in observe.queues(rt.redis, observe.queue_names(rt), now=now):
        depth.add_metric([queue.name], queue.depth)
        oldest.add_metric([queue.name], queue.oldest_age_s or 0.0)
    return [depth, oldest]


def _beat(rt: Any) -> list[Metric]:
    state = observe.beat(rt.redis)
    held = GaugeMetricFamily("jerp_beat_lock_held", "1 while a Beat holds RedBeat's scheduling lock")
    held.add_metric([], 1 if state.lock_held else 0)
    next_run = GaugeMetricFamily("jerp_beat_next_run_timestamp_seconds", "when Beat sends the entry next",
                                 labels=["entry"])
    last_run = GaugeMetricFamily("jerp_beat_last_run_timestamp_seconds", "when Beat last sent the entry",
                                 labels=["entry"])
    for entry in state.entries:
        if entry.next_run_at is not None:
            next_run.add_metric([entry.name], entry.next_run_at)
        if entry.last_run_at is not None:
            last_run.add_metric([entry.name], entry.last_run_at)
    return [held, next_run, last_run]


def _release(rt: Any) -> list[Metric]:
    view = observe.release(rt)
    active = GaugeMetricFamily("jerp_release_active", "1 while a release holds the release slot")
    active.add_metric([], 1 if view.active_job else 0)
    waiting = GaugeMetricFamily("jerp_releases_waiting", "releases waiting for the slot")
    waiting.add_metric([], len(view.waiting_jobs))
    info = GaugeMetricFamily("jerp_release_info", "the newest release (always 1): its tag and state",
                             labels=["tag", "state"])
    created = GaugeMetricFamily("jerp_release_created_timestamp_seconds", "when the newest release was requested")
    if view.latest:
        info.add_metric([str(view.latest["tag"] or ""), view.latest["state"]], 1)
        created.add_metric([], view.latest["created_at"])
    return [active, waiting, info, created]


def _workers(app: Any, timeout: float, queues: list[str]) -> list[Metric]:
    found = observe.workers(app, timeout=timeout, with_queues=True)
    alive = GaugeMetricFamily("jerp_workers_alive", "Celery workers that answered this scrape's broadcast")
    alive.add_metric([], len(found))
    tasks = GaugeMetricFamily("jerp_worker_active_tasks", "tasks the worker runs now", labels=["worker"])
    for worker in found:
        tasks.add_metric([worker.name], len(worker.tasks))
    consumers = GaugeMetricFamily("jerp_queue_consumers", "workers that answered and consume the queue "
                                  "(in a fleet: each bench's queue)", labels=["queue"])
    for queue in queues:
        consumers.add_metric([queue], sum(queue in (worker.queues or []) for worker in found))
    return [alive, tasks, consumers]


def _hash(client: Any, key: str) -> dict[str, str]:
    return {as_text(k): as_text(v) for k, v in client.hgetall(key).items()}


# -- HTTP ------------------------------------------------------------------------------------


def _default_runtime() -> Any:
    from jerp_jobs.bootstrap import get_runtime

    return get_runtime()


def _default_celery_app() -> Any:
    from jerp_jobs.celery import app

    return app


def make_router(runtime: Callable[[], Any] = _default_runtime,
                celery_app: Callable[[], Any] | None = _default_celery_app) -> APIRouter:
    """A router serving ``GET /metrics`` from ``runtime()`` and ``celery_app()`` (None: no
    workers section)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JerpCollector(runtime, celery_app))

    def authorized(request: Request) -> None:
        token = runtime().settings.metrics_token
        if token is None or not token.get_secret_value():
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 token.get_secret_value().encode()):
            raise HTTPException(status_code=401, detail="a bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})

    router = APIRouter()

    @router.get("/metrics", dependencies=[Depends(authorized)], include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


#: ``GET /metrics`` for the processes' runtime (the settings of the environment) and Celery app
router = make_router()


def make_app(runtime: Callable[[], Any] | None = None, celery_app: Callable[[], Any] | None = None) -> FastAPI:
    """A FastAPI app serving only ``/metrics`` (and ``/healthz``); no /docs. At start it reads
    the settings (a bad variable stops it there, named) and starts Sentry when configured."""
    runtime = runtime or _default_runtime

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        from jerp_jobs import log as logs
        from jerp_jobs import sentry

        settings = runtime().settings
        logs.configure(secrets=settings.secret_values())
        sentry.init(settings)
        yield

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.include_router(make_router(runtime, celery_app or _default_celery_app))

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
