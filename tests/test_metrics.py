"""/metrics: what the collector reads from Redis at scrape time, the counters the job store keeps
as steps and jobs end (once per end, whoever writes it), and the bearer token."""

from __future__ import annotations

import calendar
import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from jerp_jobs import keys, metrics
from jerp_jobs.runtime import Runtime

SITE = "acme.example.com"


class FakeControl:
    """Celery's remote control as a worker answers it: one worker running one step."""

    def __init__(self, active: dict[str, list[dict[str, Any]]]) -> None:
        self._active = active

    def inspect(self, timeout: float) -> Any:
        return SimpleNamespace(active=lambda: self._active, active_queues=lambda: {
            name: [{"name": "jerp.site"}, {"name": "jerp.control"}] for name in self._active})

    def ping(self, timeout: float, limit: int | None = None) -> list[dict[str, Any]]:
        return [{name: {"ok": "pong"}} for name in self._active][:limit]


def _app(active: dict[str, list[dict[str, Any]]] | None = None) -> Any:
    return SimpleNamespace(control=FakeControl(active or {}))


def scrape(rt: Runtime, *, app: Any = None, headers: dict[str, str] | None = None) -> dict[str, list[Any]]:
    """GET /metrics on a small app built around ``rt``: samples by name (status asserted 200)."""
    client = TestClient(metrics.make_app(runtime=lambda: rt, celery_app=lambda: app or _app()))
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.text
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    found = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def _ran(rt: Runtime, job_id: str, step: str, state: str, seconds: float) -> None:
    """Start ``step`` and end it ``state`` after ``seconds`` (its start moved back)."""
    record = rt.store.start_step(job_id, step, worker="w")
    record.started_at = time.time() - seconds
    rt.store.finish_step(job_id, record, state, exit_code=0 if state == "success" else 1)


def test_a_step_end_counts_once_in_the_histogram_and_a_job_end_once(fake_runtime: Runtime) -> None:
    rt = fake_runtime
    job = rt.store.create("backup", ["backup", "upload"], site=SITE)
    _ran(rt, job.id, "backup", "success", 42.0)
    record = rt.store.get(job.id).step("backup")
    rt.store.update_step(job.id, record)  # written again (a second writer of the same end): not counted again
    _ran(rt, job.id, "upload", "failed", 4000.0)
    rt.store.set_state(job.id, "failed", error="upload failed")
    rt.store.set_state(job.id, "failed", error="again")  # already final: not counted again
    other = rt.store.create("backup", ["backup", "upload"], site="other.example.com")
    rt.store.skip_pending(other.id, reason="cancelled")  # skipped without running: ended, no duration
    rt.store.set_state(other.id, "cancelled")

    samples = scrape(rt)
    assert value(samples, "jerp_steps_ended_total", kind="backup", step="backup", state="success") == 1
    assert value(samples, "jerp_steps_ended_total", kind="backup", step="upload", state="skipped") == 1
    bucket = {s.labels["le"]: s.value for s in samples["jerp_step_duration_seconds_bucket"]
              if s.labels["step"] == "backup"}
    assert (bucket["30.0"], bucket["60.0"], bucket["+Inf"]) == (0, 1, 1)
    assert 41 < value(samples, "jerp_step_duration_seconds_sum", step="backup") < 44
    slow = {s.labels["le"]: s.value for s in samples["jerp_step_duration_seconds_bucket"] if s.labels["step"] == "upload"}
    assert (slow["3600.0"], slow["7200.0"], slow["28800.0"]) == (0, 1, 1)
    assert not [s for s in samples["jerp_step_duration_seconds_count"] if s.labels["state"] == "skipped"]
    assert value(samples, "jerp_jobs_ended_total", kind="backup", state="failed") == 1
    assert value(samples, "jerp_jobs_ended_total", kind="backup", state="cancelled") == 1
    assert value(samples, "jerp_jobs", kind="backup", state="failed") == 1
    assert value(samples, "jerp_up") == 1
    assert {s.labels["section"] for s in samples["jerp_scrape_ok"] if s.value == 1} == {
        "jobs", "steps", "sites", "queues", "beat", "release", "pitr", "workers"}


def test_steps_ended_through_the_end_script_count_once(fake_runtime: Runtime) -> None:
    """The worker's path: begin_step/end_step (the lock-checked scripts)."""
    from jerp_jobs.runner import run_step
    from jerp_jobs.workflow import Catalog, StepSpec, simple

    flow = simple("demo", [("one", StepSpec(lambda ctx: None)), ("two", StepSpec(lambda ctx: "skipped", scope="bench"))],
                  needs_site=False)
    rt = fake_runtime
    rt.workflows = Catalog([flow])
    job = rt.store.create("demo", ["one", "two"])
    run_step(rt, job.id, "one", worker="w")
    run_step(rt, job.id, "two", worker="w")
    run_step(rt, job.id, "two", worker="w")  # a second delivery of an ended step runs nothing, counts nothing
    samples = scrape(rt)
    assert value(samples, "jerp_steps_ended_total", kind="demo", step="one", state="success") == 1
    assert value(samples, "jerp_steps_ended_total", kind="demo", step="two", state="skipped") == 1
    assert value(samples, "jerp_step_duration_seconds_count", kind="demo", step="one", state="success") == 1
    assert value(samples, "jerp_jobs_ended_total", kind="demo", state="succeeded") == 1


def test_many_step_ends_sum_exactly_and_a_step_end_is_one_increment(any_runtime: Runtime) -> None:
    """Steps that ran count in one packed field per (kind, step, state, bucket): each end one
    HINCRBY; the counts and the sum read back exactly, added to the plain fields kept before."""
    rt = any_runtime
    durations = [0.25, 0.5, 0.75, 3.0, 3.5]
    for seconds in durations:
        job = rt.store.create("backup", ["backup"], site=SITE)
        _ran(rt, job.id, "backup", "success", seconds)
    stats = rt.redis.hgetall(keys.STATS_STEPS)
    assert {k.decode().split("\t")[3] for k in stats} == {"p:1", "p:5"}  # no field but the packed ones
    # plain fields, as the end script keeps a folded or too-long step, add to the packed ones
    rt.redis.hset(keys.STATS_STEPS, mapping={"backup\tbackup\tsuccess\tended": 2, "backup\tbackup\tsuccess\tle:1": 2,
                                             "backup\tbackup\tsuccess\tsum": 1.5})
    samples = scrape(rt)
    assert value(samples, "jerp_steps_ended_total", kind="backup", step="backup", state="success") == 7
    assert value(samples, "jerp_step_duration_seconds_count", step="backup") == 7
    assert value(samples, "jerp_step_duration_seconds_sum", step="backup") == pytest.approx(sum(durations) + 1.5, abs=0.02)
    bucket = {s.labels["le"]: s.value for s in samples["jerp_step_duration_seconds_bucket"] if s.labels["step"] == "backup"}
    assert (bucket["1.0"], bucket["5.0"], bucket["+Inf"]) == (5, 7, 7)


@pytest.fixture(params=["fakeredis", "redis"])
def any_runtime(request: pytest.FixtureRequest, fake_runtime: Runtime, settings: Any) -> Runtime:
    """The fake runtime, and one on the real Redis (its Lua is the one the scripts run on)."""
    if request.param == "fakeredis":
        return fake_runtime
    from jerp_jobs.bootstrap import build_runtime

    return build_runtime(settings, client=request.getfixturevalue("real_redis"))


def test_a_packed_counter_near_its_limit_is_folded_into_the_plain_fields(any_runtime: Runtime) -> None:
    from jerp_jobs.jobs import STEP_COUNT_BITS

    rt = any_runtime
    field = "backup\tbackup\tsuccess\tp:1"
    near = 2 ** (STEP_COUNT_BITS - 1) - 1  # one step more reaches the count's limit
    rt.redis.hset(keys.STATS_STEPS, field, (near * 500) << STEP_COUNT_BITS | near)  # each took 0.5 s
    job = rt.store.create("backup", ["backup"], site=SITE)
    _ran(rt, job.id, "backup", "success", 0.5)
    stats = {k.decode(): v.decode() for k, v in rt.redis.hgetall(keys.STATS_STEPS).items()}
    assert int(stats[field]) == 0
    assert int(stats["backup\tbackup\tsuccess\tended"]) == near + 1 == int(stats["backup\tbackup\tsuccess\tle:1"])
    assert float(stats["backup\tbackup\tsuccess\tsum"]) == pytest.approx((near + 1) * 0.5, abs=0.01)
    rt.store.update_step(job.id, rt.store.get(job.id).step("backup"))  # its end written again: not counted
    job = rt.store.create("backup", ["backup"], site=SITE)
    _ran(rt, job.id, "backup", "success", 0.25)  # packed again from zero
    samples = scrape(rt)
    assert value(samples, "jerp_steps_ended_total", kind="backup", step="backup", state="success") == near + 2
    assert value(samples, "jerp_step_duration_seconds_sum", step="backup") == pytest.approx((near + 1) * 0.5 + 0.25, abs=0.01)


def test_a_step_too_long_to_pack_counts_in_the_plain_fields(any_runtime: Runtime) -> None:
    rt = any_runtime
    job = rt.store.create("backup", ["backup"], site=SITE)
    _ran(rt, job.id, "backup", "success", 300_000.0)  # over three days
    stats = {k.decode(): v.decode() for k, v in rt.redis.hgetall(keys.STATS_STEPS).items()}
    assert set(stats) == {"backup\tbackup\tsuccess\tended", "backup\tbackup\tsuccess\tle:+Inf",
                          "backup\tbackup\tsuccess\tsum"}
    assert stats["backup\tbackup\tsuccess\tended"] == stats["backup\tbackup\tsuccess\tle:+Inf"] == "1"
    assert float(stats["backup\tbackup\tsuccess\tsum"]) == pytest.approx(300_000.0, abs=0.01)
    assert value(scrape(rt), "jerp_step_duration_seconds_count", step="backup") == 1


def test_sites_queues_beat_workers_and_release_are_read_from_redis(fake_runtime: Runtime) -> None:
    rt = fake_runtime
    rt.settings = rt.settings.model_copy(update={"s3_bucket": "backups"})  # the off-site copy counts
    r = rt.redis
    now = time.time()
    manifest = {"timestamp": "20261204_030000", "artifacts": []}
    r.zadd(keys.LOCAL_BACKUPS + SITE, {json.dumps({**manifest, "where": "l"}): now - 3600})
    r.zadd(keys.OFFSITE_BACKUPS + SITE, {json.dumps(manifest): now - 30 * 3600})  # older than the 26 h RPO
    r.zadd(keys.LOCAL_BACKUPS + "fresh.example.com", {json.dumps(manifest): now - 60})
    r.zadd(keys.OFFSITE_BACKUPS + "fresh.example.com", {json.dumps(manifest): now - 120})
    r.hset(keys.DRILLS, SITE, json.dumps({"site": SITE, "at": now - 86400, "passed": False, "job_id": "d1",
                                           "problems": ["verify: row counts differ"]}))
    rt.sites.mark_attention(SITE, job_id="j1", reason="restore failed")
    r.lpush("jerp.site", json.dumps({"headers": {"jerp_sent_at": now - 900}}))
    r.lpush("jerp.site", json.dumps({"headers": {"jerp_sent_at": now - 5}}))
    r.zadd(keys.REDBEAT_SCHEDULE, {keys.REDBEAT + "resume-stalled-steps": now - 600})
    r.hset(keys.REDBEAT + "resume-stalled-steps", mapping={
        "definition": json.dumps({"name": "resume-stalled-steps", "task": "jerp.resume"}),
        "meta": json.dumps({"last_run_at": {"__type__": "datetime", "year": 2026, "month": 12, "day": 5, "hour": 10,
                                            "minute": 0, "second": 0, "microsecond": 0, "timezone": "UTC"}}),
    })
    release = rt.store.create("release", ["record"], params={"tag": "v1.2.3"})
    r.zadd(keys.RELEASES, {release.id: release.created_at})
    rt.store.set_state(release.id, "rolled-back", error="smoke failed")
    app = _app({"w1@host": [{"id": "t1", "name": "jerp.step", "time_start": now - 10,
                             "kwargs": {"job_id": "abc", "step": "migrate"}}]})

    samples = scrape(rt, app=app)
    assert value(samples, "jerp_backup_stale", site=SITE) == 1
    assert value(samples, "jerp_backup_stale", site="fresh.example.com") == 0
    assert 29.9 * 3600 < value(samples, "jerp_backup_age_seconds", site=SITE) < 30.1 * 3600
    assert value(samples, "jerp_backup_last_timestamp_seconds", site=SITE, where="local") == pytest.approx(now - 3600)
    assert value(samples, "jerp_backup_rpo_seconds") == 26 * 3600
    assert value(samples, "jerp_drill_last_passed", site=SITE) == 0
    assert 86399 < value(samples, "jerp_drill_age_seconds", site=SITE) < 86500
    assert value(samples, "jerp_site_attention", site=SITE) == 1
    assert value(samples, "jerp_site_attention", site="fresh.example.com") == 0
    assert value(samples, "jerp_queue_depth", queue="jerp.site") == 2
    assert value(samples, "jerp_queue_depth", queue="jerp.control") == 0
    assert 899 < value(samples, "jerp_queue_oldest_age_seconds", queue="jerp.site") < 960
    assert value(samples, "jerp_beat_next_run_timestamp_seconds", entry="resume-stalled-steps") == pytest.approx(now - 600)
    assert value(samples, "jerp_beat_last_run_timestamp_seconds", entry="resume-stalled-steps") == calendar.timegm((2026, 12, 5, 10, 0, 0))
    assert value(samples, "jerp_beat_lock_held") == 0
    assert value(samples, "jerp_workers_alive") == 1
    assert value(samples, "jerp_worker_active_tasks", worker="w1@host") == 1
    assert value(samples, "jerp_release_info", tag="v1.2.3", state="rolled-back") == 1
    assert value(samples, "jerp_release_active") == 0


def test_redis_down_answers_200_with_jerp_up_0(settings) -> None:
    from jerp_jobs.bootstrap import build_runtime

    rt = build_runtime(settings)  # redis://127.0.0.1:1: nothing listens
    samples = scrape(rt)
    assert value(samples, "jerp_up") == 0
    assert set(samples) == {"jerp_up"}


def test_a_token_is_required_when_set_and_compared_whole(fake_runtime: Runtime, settings) -> None:
    from pydantic import SecretStr

    fake_runtime.settings = settings.model_copy(update={"metrics_token": SecretStr("s3cr3t-metrics-token")})
    client = TestClient(metrics.make_app(runtime=lambda: fake_runtime, celery_app=lambda: _app()))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer s3cr3t-metrics-toke"},
                    {"Authorization": "Basic s3cr3t-metrics-token"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        assert "s3cr3t" not in response.text
    ok = client.get("/metrics", headers={"Authorization": "Bearer s3cr3t-metrics-token"})
    assert ok.status_code == 200 and "jerp_up 1.0" in ok.text


def test_metrics_is_open_without_a_token(fake_runtime: Runtime) -> None:
    client = TestClient(metrics.make_app(runtime=lambda: fake_runtime, celery_app=lambda: _app()))
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert client.get("/docs").status_code == 404


def test_every_exported_family_is_listed(fake_runtime: Runtime) -> None:
    """METRICS (what the rules and the dashboard are checked against) names every family a
    scrape can produce."""
    rt = fake_runtime
    job = rt.store.create("backup", ["backup"], site=SITE)
    _ran(rt, job.id, "backup", "success", 1.0)
    rt.store.set_state(job.id, "succeeded")
    response = TestClient(metrics.make_app(runtime=lambda: rt, celery_app=lambda: _app())).get("/metrics")
    families = {f.name for f in text_string_to_metric_families(response.text)}
    assert families <= set(metrics.METRICS), families - set(metrics.METRICS)


def test_point_in_time_recovery_exports_its_interval_last_shipment_and_rpo(fake_redis: Any) -> None:
    from jerp_jobs.bootstrap import build_runtime
    from jerp_jobs.metrics import JerpCollector
    from jerp_jobs.settings import load_settings

    now = time.time()
    settings = load_settings(_env_file=None, s3_bucket="backups")
    rt = build_runtime(settings, client=fake_redis)
    fake_redis.set("jerp:pitr:shipped", json.dumps({"at": now - 30, "shipped": ["binlog.000009"],
                                                     "newest": {"name": "binlog.000009", "closed_at": now - 45}}))
    families = {m.name: m for m in JerpCollector(lambda: rt, None).collect()}
    assert families["jerp_pitr_ship_interval_seconds"].samples[0].value == 300
    assert abs(families["jerp_pitr_last_shipment_timestamp_seconds"].samples[0].value - (now - 30)) < 1
    assert 44 <= families["jerp_pitr_rpo_seconds"].samples[0].value <= 50
    off = build_runtime(load_settings(_env_file=None, s3_bucket="backups", pitr_window_days=0), client=fake_redis)
    assert "jerp_pitr_rpo_seconds" not in {m.name for m in JerpCollector(lambda: off, None).collect()}
