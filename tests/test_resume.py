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


def test_jobs_past_their_deadline_are_reaped_and_free_their_site(fake_runtime: Runtime) -> None:
    from jerp_jobs.resume import reap_stuck

    job_id = _running(fake_runtime)
    fake_runtime.sites.claim(SITE, job_id)
    fake_runtime.redis.hset(f"jerp:job:{job_id}", "created_at", repr(time.time() - 13 * 3600))
    fresh = create_job(fake_runtime, "backup", site="other.example.com")
    assert reap_stuck(fake_runtime) == [job_id]
    job = fake_runtime.store.get(job_id)
    assert job.state == "failed" and "reaped" in job.error
    assert fake_runtime.sites.owner(SITE) is None
    assert fake_runtime.store.get(fresh.id).state == "queued"  # younger than its deadline
