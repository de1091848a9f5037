"""Resuming steps whose worker died: only those, never one a live worker runs."""

from __future__ import annotations

import time

from jerp_jobs.enqueue import create_job
from jerp_jobs.locks import site_lock_name
from jerp_jobs.resume import resume_stalled
from jerp_jobs.runtime import Runtime

SITE = "acme.example.com"


def _running(rt: Runtime, step: str = "backup", *, age: float = 60.0) -> str:
    job = create_job(rt, "backup", site=SITE)
    rt.store.set_state(job.id, "running")
    record = rt.store.start_step(job.id, step, worker="w1")
    record.started_at = time.time() - age
    rt.store.update_step(job.id, record)
    return job.id


def test_running_step_without_its_lock_is_published_again(fake_runtime: Runtime) -> None:
    job_id = _running(fake_runtime)
    assert resume_stalled(fake_runtime) == [(job_id, "backup")]
    assert fake_runtime.dispatched == [(job_id, "backup")]
    assert "worker was lost" in fake_runtime.store.get(job_id).notes["resumed"]


def test_step_held_by_a_live_worker_is_left_alone(fake_runtime: Runtime) -> None:
    job_id = _running(fake_runtime)
    held = fake_runtime.locks.try_acquire(site_lock_name(SITE), job_id=job_id, step="backup")
    assert held is not None
    assert resume_stalled(fake_runtime) == [] and fake_runtime.dispatched == []
    held.release()


def test_a_step_younger_than_the_lock_ttl_is_not_judged_yet(fake_runtime: Runtime) -> None:
    _running(fake_runtime, age=0.0)
    assert resume_stalled(fake_runtime) == []


def test_lock_held_by_another_job_does_not_hide_a_dead_step(fake_runtime: Runtime) -> None:
    job_id = _running(fake_runtime)
    held = fake_runtime.locks.try_acquire(site_lock_name(SITE), job_id="someone-else", step="backup")
    assert resume_stalled(fake_runtime) == [(job_id, "backup")]
    held.release()


def _age(rt: Runtime, job_id: str, hours: float) -> None:
    rt.redis.hset(f"jerp:job:{job_id}", "created_at", repr(time.time() - hours * 3600))


def test_a_job_past_its_deadline_takes_its_failure_path(fake_runtime: Runtime) -> None:
    from jerp_jobs.resume import reap_stuck

    job = create_job(fake_runtime, "migrate", site=SITE)
    fake_runtime.sites.claim(SITE, job.id)
    fake_runtime.store.set_state(job.id, "running")
    for name in ("maintenance-on",):
        record = fake_runtime.store.start_step(job.id, name, worker="w")
        fake_runtime.store.finish_step(job.id, record, "success")
    fake_runtime.store.start_step(job.id, "scheduler-pause", worker="dead")  # its worker is gone
    _age(fake_runtime, job.id, 13)
    fresh = create_job(fake_runtime, "backup", site="other.example.com")
    assert reap_stuck(fake_runtime) == [job.id]
    reaped = fake_runtime.store.get(job.id)
    assert reaped.cancel_requested and reaped.step("scheduler-pause").state == "failed"
    assert fake_runtime.dispatched == [(job.id, "abort-scheduler-resume")]  # back online, not just dropped
    assert fake_runtime.store.get(fresh.id).state == "queued"  # younger than its deadline


def test_a_job_still_running_at_twice_its_deadline_is_failed_and_its_site_marked(fake_runtime: Runtime) -> None:
    from jerp_jobs.resume import reap_stuck

    job_id = _running(fake_runtime)
    fake_runtime.sites.claim(SITE, job_id)
    _age(fake_runtime, job_id, 25)
    assert reap_stuck(fake_runtime) == [job_id]
    job = fake_runtime.store.get(job_id)
    assert job.state == "failed" and "reaped" in job.error
    assert fake_runtime.sites.owner(SITE) is None
    assert fake_runtime.sites.attention(SITE)["job_id"] == job_id


def test_a_job_no_step_moves_is_published_again(fake_runtime: Runtime) -> None:
    job = create_job(fake_runtime, "migrate", site=SITE)
    fake_runtime.store.set_state(job.id, "running")
    record = fake_runtime.store.start_step(job.id, "maintenance-on", worker="w")
    fake_runtime.store.finish_step(job.id, record, "success")  # ...and the worker died before publishing
    assert resume_stalled(fake_runtime, now=time.time() + 600) == [(job.id, "scheduler-pause")]
    assert fake_runtime.store.advanced(job.id, "maintenance-on")


def test_a_step_that_keeps_losing_its_worker_is_failed_and_recovered(fake_runtime: Runtime) -> None:
    job = create_job(fake_runtime, "migrate", site=SITE)
    fake_runtime.store.set_state(job.id, "running")
    for _ in range(3):
        record = fake_runtime.store.start_step(job.id, "migrate", worker="w")
    record.started_at = time.time() - 600
    fake_runtime.store.update_step(job.id, record)
    assert resume_stalled(fake_runtime) == []
    assert fake_runtime.store.get(job.id).step("migrate").state == "failed"
    assert fake_runtime.dispatched == [(job.id, "restore-pre-migrate")]


def test_one_broken_record_does_not_stop_the_pass(fake_runtime: Runtime) -> None:
    broken = _running(fake_runtime)
    fake_runtime.redis.hset(f"jerp:job:{broken}", "kind", "no-such-kind")
    fine = create_job(fake_runtime, "backup", site="other.example.com")
    fake_runtime.store.set_state(fine.id, "running")
    record = fake_runtime.store.start_step(fine.id, "backup", worker="w")
    record.started_at = time.time() - 600
    fake_runtime.store.update_step(fine.id, record)
    assert resume_stalled(fake_runtime) == [(fine.id, "backup")]


def test_a_queued_job_nothing_touched_for_minutes_is_published_again(fake_runtime: Runtime) -> None:
    job = create_job(fake_runtime, "backup", site="acme.example.com", params={})
    assert resume_stalled(fake_runtime, now=time.time() + 600) == []  # it may wait behind busy workers

    resumed = resume_stalled(fake_runtime, now=time.time() + 1000)
    assert resumed == [(job.id, "backup")] and fake_runtime.dispatched == [(job.id, "backup")]
    assert "published again" in fake_runtime.store.get(job.id).notes["resumed"]



# -- a step whose message still waits in its queue (a bench whose worker is down) --------------

def _fleet(rt: Runtime) -> Runtime:
    """``rt`` in a declared fleet of two benches, SITE living on staging-b."""
    from pathlib import Path

    from jerp_jobs import placement
    from jerp_jobs.fleet import Bench, Fleet

    benches = tuple(Bench(name=name, role=role, group="default", docker="local", compose_project=name,
                          backend_service="backend", queue=f"jerp.site.{name}")
                    for name, role in (("prod-a", "production"), ("staging-b", "staging")))
    rt._fleet = Fleet(benches=benches, source=Path("/etc/jerp/fleet.toml"))
    placement.assign(rt.redis, SITE, "staging-b")
    return rt


def _waiting_message(rt: Runtime, queue: str, job_id: str, step: str) -> None:
    """A step message as kombu's Redis transport keeps it in the queue's list (Celery protocol 2)."""
    import base64
    import json

    body = json.dumps([[], {"job_id": job_id, "step": step}, {"callbacks": None, "errbacks": None, "chain": None,
                                                               "chord": None}])
    rt.redis.lpush(queue, json.dumps({
        "body": base64.b64encode(body.encode()).decode(), "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": "jerp.step", "id": "t-1", "kwargsrepr": repr({"job_id": job_id})},
        "properties": {"body_encoding": "base64", "delivery_info": {"exchange": queue, "routing_key": queue}},
    }))


def test_a_lost_step_is_published_again_once_while_its_bench_has_no_worker(fake_runtime: Runtime) -> None:
    from jerp_jobs.resume import waiting_steps

    rt = _fleet(fake_runtime)
    job_id = _running(rt)
    assert rt.store.get(job_id).bench == "staging-b"
    assert resume_stalled(rt) == [(job_id, "backup")]  # the message went with the dead worker
    # the step published again waits in staging-b's queue: no worker of staging-b took it
    _waiting_message(rt, "jerp.site.staging-b", job_id, "backup")
    assert waiting_steps(rt.redis, "jerp.site.staging-b") == {(job_id, "backup")}
    for _ in range(3):  # every later pass of Beat's resume leaves it alone
        assert resume_stalled(rt) == []
    assert rt.dispatched == [(job_id, "backup")]
    # another bench's queue, another step, or a message that is no step's do not count
    rt.redis.delete("jerp.site.staging-b")
    _waiting_message(rt, "jerp.site.prod-a", job_id, "backup")
    _waiting_message(rt, "jerp.site.staging-b", job_id, "maintenance-off")
    rt.redis.lpush("jerp.site.staging-b", b"not json", b'{"headers": {"task": "jerp.ping"}, "body": ""}')
    assert resume_stalled(rt) == [(job_id, "backup")]


def test_a_queued_job_whose_message_waits_in_its_benchs_queue_is_not_published_again(
        fake_runtime: Runtime) -> None:
    rt = _fleet(fake_runtime)
    job = create_job(rt, "backup", site=SITE, params={})
    _waiting_message(rt, "jerp.site.staging-b\x06\x163", job.id, "backup")  # a priority list of the queue
    assert resume_stalled(rt, now=time.time() + 3600) == [] and rt.dispatched == []
    rt.redis.delete("jerp.site.staging-b\x06\x163")
    assert resume_stalled(rt, now=time.time() + 3600) == [(job.id, "backup")]
