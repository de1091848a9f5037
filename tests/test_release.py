"""The release workflow on fakeredis with a scripted platform: deploy, confirm, migrate, smoke,
roll back; one release at a time, superseding, idempotent requests.

The platform (deploy, containers, frontend) is a fake here; tests/test_release_e2e.py runs the
same chain on the Docker Engine with the stand-in backend and a stand-in Portainer."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from jerp_jobs import runner
from jerp_jobs.errors import (
    BrokerUnavailable,
    DeployBusy,
    DeployError,
    DeployUnavailable,
    InvalidInput,
    LockBusy,
    RolloutTimeout,
    SmokeFailed,
)
from jerp_jobs.runner import child_done
from jerp_jobs.operations.release import BAD, GOOD, Declined, Requested, list_releases, request_release
from jerp_jobs.runtime import Runtime

SITES = ("a.example.com", "b.example.com")


@dataclass
class Smoke:
    site: str
    ok: bool
    why: str = ""

    def summary(self) -> str:
        return f"site {self.site}: " + ("5 of 5 checks passed" if self.ok else f"login failed ({self.why})")

    def as_dict(self) -> dict[str, Any]:
        return {"site": self.site, "ok": self.ok}


@dataclass
class FakePlatform:
    """Runs one tag; deploys move it at once unless told otherwise."""

    running: str | None = "r1"
    broken: set[str] = field(default_factory=set)  # tags whose smoke checks fail
    stuck: set[str] = field(default_factory=set)  # tags whose rollout never completes
    deploys: list[str] = field(default_factory=list)
    deploy_errors: list[Exception] = field(default_factory=list)  # raised by the next deploys, in order
    down: set[str] = field(default_factory=set)  # sites that do not answer ping
    pinged: list[str] = field(default_factory=list)

    def running_tag(self) -> str | None:
        return self.running

    def deploy(self, tag: str) -> str:
        self.deploys.append(tag)
        if self.deploy_errors:
            raise self.deploy_errors.pop(0)
        if tag not in self.stuck:
            self.running = tag
        return f"asked for {tag}"

    def wait_rollout(self, tag: str, *, since: float, deadline_s: float) -> str:
        if self.running != tag:
            raise RolloutTimeout(f"backend still runs reg/x:{self.running} after {deadline_s:.0f} s")
        return f"backend runs reg/x:{tag}"

    def ping(self, site: str) -> None:
        self.pinged.append(site)
        if site in self.down:
            raise SmokeFailed(f"site {site}: ping failed: HTTP 503")

    def smoke(self, site: str) -> Smoke:
        return Smoke(site, ok=self.running not in self.broken, why="HTTP 500")


@pytest.fixture
def platform(fake_runtime: Runtime, tmp_path) -> FakePlatform:
    from tests.site_folders import count_output, is_count, make_site_folders, use_sites_dir

    fake = FakePlatform()
    fake_runtime._platform = fake
    use_sites_dir(fake_runtime, tmp_path / "sites")
    make_site_folders(tmp_path / "sites", SITES)
    fake_runtime.executor.on(is_count, output=count_output(len(SITES)))
    return fake


def pump(rt: Runtime, platform: FakePlatform, *, migrate_fails_on: set[str] = frozenset(), until: int = 500) -> list:
    """Deliver published steps and child notifications until nothing moves; returns the steps
    that had to wait (LockBusy). A migrate-all child is played by its outcome on the running tag."""
    waited = []
    for _ in range(until):
        if rt.notified:
            parent, child = rt.notified.pop(0)
            child_done(rt, parent, child)
            continue
        if not rt.dispatched:
            return waited
        job_id, step = rt.dispatched.pop(0)
        job = rt.store.get(job_id)
        if job.kind == "migrate-all":
            failed = platform.running in migrate_fails_on
            rt.store.set_result(job_id, sites={s: {"state": "failed" if failed else "succeeded"} for s in SITES})
            runner.finish_job(rt, job_id, "failed" if failed else "succeeded",
                              error="canary a.example.com failed" if failed else None)
            continue
        try:
            runner.run_step(rt, job_id, step, worker="w1")
        except LockBusy:
            waited.append((job_id, step))
    raise AssertionError("the release never came to rest")


def states(rt: Runtime, job_id: str) -> dict[str, str]:
    return {s.name: s.state for s in rt.store.get(job_id).steps}


def test_a_release_deploys_migrates_smoke_tests_and_is_remembered_as_good(fake_runtime, platform):
    requested = request_release(fake_runtime, "r2", source="pipeline", sha="a" * 40)
    pump(fake_runtime, platform)

    job = fake_runtime.store.get(requested.job.id)
    assert job.state == "succeeded", job.error
    assert platform.deploys == ["r2"] and platform.running == "r2"
    assert job.result["previous_tag"] == "r1" and job.result["rollback_to"] == "r1"
    assert set(job.result["smoke"]) == set(SITES)
    assert [s for s, st in states(fake_runtime, job.id).items() if st == "success"] == [
        "record", "deploy", "rollout", "migrate", "smoke", "finish"]
    assert fake_runtime.redis.lrange(GOOD, 0, -1) == [b"r2"]
    events = [event for event, _, _ in fake_runtime.notifications]
    assert events == ["release.started", "release.done"]


def test_a_failing_smoke_check_rolls_back_to_the_previous_tag(fake_runtime, platform):
    platform.broken = {"r2"}
    job_id = request_release(fake_runtime, "r2", source="pipeline").job.id
    pump(fake_runtime, platform)

    job = fake_runtime.store.get(job_id)
    assert job.state == "rolled-back"
    assert platform.deploys == ["r2", "r1"] and platform.running == "r1"
    assert "smoke failed" in job.result["rollback_reason"] and "login failed" in job.result["rollback_reason"]
    assert states(fake_runtime, job_id)["finish"] == "skipped"
    assert states(fake_runtime, job_id)["rollback-finish"] == "success"
    event, title, body = fake_runtime.notifications[-1]
    assert event == "release.rolled-back" and "r1" in title and job_id in body
    assert fake_runtime.redis.lrange(GOOD, 0, -1) == [b"r1"]


def test_a_rollout_that_never_happens_rolls_back_naming_what_runs(fake_runtime, platform):
    platform.stuck = {"r2"}
    job_id = request_release(fake_runtime, "r2", source="pipeline").job.id
    pump(fake_runtime, platform)

    job = fake_runtime.store.get(job_id)
    assert job.state == "rolled-back"
    assert "rollout failed" in job.result["rollback_reason"] and "still runs reg/x:r1" in job.result["rollback_reason"]
    assert states(fake_runtime, job_id)["migrate"] == "skipped"


def test_a_failed_migrate_all_rolls_back_and_migrates_again_on_the_old_tag(fake_runtime, platform):
    job_id = request_release(fake_runtime, "r2", source="pipeline").job.id
    pump(fake_runtime, platform, migrate_fails_on={"r2"})

    job = fake_runtime.store.get(job_id)
    assert job.state == "rolled-back"
    assert "canary a.example.com failed" in job.result["rollback_reason"]
    assert job.result["rollback_migrate_job"] != job.result["migrate_job"]
    assert fake_runtime.store.get(job.result["rollback_migrate_job"]).state == "succeeded"


def test_a_rollback_that_fails_too_ends_the_release_failed_and_says_so(fake_runtime, platform):
    platform.broken = {"r2", "r1"}
    job_id = request_release(fake_runtime, "r2", source="pipeline").job.id
    pump(fake_runtime, platform)

    job = fake_runtime.store.get(job_id)
    assert job.state == "failed"
    assert "rollback-smoke" in job.error
    event, title, _ = fake_runtime.notifications[-1]
    assert event == "release.failed" and "rollback failed" in title


def test_without_a_previous_immutable_tag_a_failure_cannot_roll_back(fake_runtime, platform):
    platform.running = "15-prod"  # a moving tag: no rollback target
    platform.broken = {"r2"}
    job_id = request_release(fake_runtime, "r2", source="pipeline").job.id
    pump(fake_runtime, platform)

    job = fake_runtime.store.get(job_id)
    assert job.state == "failed"
    assert job.result["rollback_to"] is None
    assert "nothing to roll back to" in job.error and platform.deploys == ["r2"]


def test_the_newest_known_good_tag_is_the_target_when_a_moving_tag_runs(fake_runtime, platform):
    fake_runtime.redis.rpush(GOOD, "r0", "rold")
    platform.running = "15-prod"
    platform.broken = {"r2"}
    job_id = request_release(fake_runtime, "r2", source="pipeline").job.id
    pump(fake_runtime, platform)

    assert fake_runtime.store.get(job_id).state == "rolled-back"
    assert platform.deploys == ["r2", "r0"]


def test_one_release_at_a_time_and_a_newer_tag_supersedes_the_waiting_one(fake_runtime, platform):
    first = request_release(fake_runtime, "r2", source="pipeline").job.id
    # r2 runs until its migrate-all is out; hold that child back
    for _ in range(4):
        job_id, step = fake_runtime.dispatched.pop(0)
        runner.run_step(fake_runtime, job_id, step, worker="w1")
    assert states(fake_runtime, first)["migrate"] == "running"
    held_child = fake_runtime.dispatched.pop(0)

    second = request_release(fake_runtime, "r3", source="pipeline").job.id
    waited = pump(fake_runtime, platform)
    assert waited and waited[0][0] == second  # r3 waits for the slot, queued
    assert fake_runtime.store.get(second).state == "queued"

    third = request_release(fake_runtime, "r4", source="pipeline").job.id
    superseded = fake_runtime.store.get(second)
    assert superseded.state == "superseded" and third in superseded.error and "r4" in superseded.error
    assert fake_runtime.store.get(first).state == "running"  # a release that started is never superseded

    fake_runtime.dispatched.insert(0, held_child)
    waited += pump(fake_runtime, platform)
    assert fake_runtime.store.get(first).state == "succeeded"
    fake_runtime.dispatched.extend(waited)  # the waiting deliveries come back (Celery retries them)
    pump(fake_runtime, platform)
    assert fake_runtime.store.get(third).state == "succeeded"
    assert platform.deploys == ["r2", "r4"]
    assert [j.params["tag"] for j in list_releases(fake_runtime)] == ["r4", "r3", "r2"]


def test_a_redelivery_or_a_second_event_for_a_tag_starts_nothing_new(fake_runtime, platform):
    first = request_release(fake_runtime, "r2", source="github:workflow_run", delivery="d-1")
    again = request_release(fake_runtime, "r2", source="github:workflow_run", delivery="d-1")
    other_event = request_release(fake_runtime, "r2", source="registry", delivery="d-2")
    assert first.created and not again.created and not other_event.created
    assert again.job.id == first.job.id == other_event.job.id
    assert len(list_releases(fake_runtime)) == 1
    assert len(fake_runtime.dispatched) == 1


def test_a_manual_rollback_deploys_the_previous_good_tag(fake_runtime, platform):
    fake_runtime.redis.rpush(GOOD, "r2", "r1")
    platform.running = "r2"
    job_id = request_release(fake_runtime, None, source="operator", rollback=True, dedupe=False).job.id
    pump(fake_runtime, platform)

    job = fake_runtime.store.get(job_id)
    assert job.state == "succeeded", job.error
    assert job.result["tag"] == "r1" and platform.deploys == ["r1"]


def test_a_manual_rollback_without_history_fails_naming_the_problem(fake_runtime, platform):
    job_id = request_release(fake_runtime, None, source="operator", rollback=True, dedupe=False).job.id
    pump(fake_runtime, platform)

    job = fake_runtime.store.get(job_id)
    assert job.state == "failed" and "no previous immutable tag" in job.error
    assert platform.deploys == []


@pytest.mark.parametrize("tag", ["", "-x", ".x", "a b", "x" * 129, "r2;rm", None, 7])
def test_a_bad_tag_is_refused_before_anything_is_recorded(fake_runtime, platform, tag):
    with pytest.raises(InvalidInput, match="invalid image tag"):
        request_release(fake_runtime, tag, source="operator")
    assert list_releases(fake_runtime) == [] and fake_runtime.dispatched == []


def test_a_release_cancelled_between_two_deploy_attempts_rolls_back(fake_runtime, platform):
    platform.deploy_errors = [DeployUnavailable("Portainer webhook failed with 502")]
    job_id = request_release(fake_runtime, "r2", source="pipeline").job.id
    for _ in range(2):  # record, then the deploy attempt that fails and waits for its retry
        job, step = fake_runtime.dispatched.pop(0)
        runner.run_step(fake_runtime, job, step, worker="w1")
    assert states(fake_runtime, job_id)["deploy"] == "pending"
    fake_runtime.store.request_cancel(job_id)
    fake_runtime.dispatched.append((job_id, "deploy"))  # the retry comes
    pump(fake_runtime, platform)

    job = fake_runtime.store.get(job_id)
    assert job.state == "rolled-back" and platform.deploys[-1] == "r1" and platform.running == "r1"


def test_a_cancel_that_lands_while_the_last_step_runs_leaves_the_release_succeeded(fake_runtime, platform,
                                                                                  monkeypatch):
    from jerp_jobs.operations.release import steps

    remember = steps.remember_good
    job_id = request_release(fake_runtime, "r2", source="pipeline").job.id

    def cancelled_meanwhile(rt, tag):
        rt.store.request_cancel(job_id)
        remember(rt, tag)

    monkeypatch.setattr(steps, "remember_good", cancelled_meanwhile)
    pump(fake_runtime, platform)
    job = fake_runtime.store.get(job_id)
    assert job.cancel_requested and job.state == "succeeded" and platform.deploys == ["r2"]


def test_a_deploy_refused_before_anything_moved_rolls_back_without_migrating(fake_runtime, platform):
    platform.deploy_errors = [DeployError("Portainer webhook: unknown webhook (404)")]
    job_id = request_release(fake_runtime, "r2", source="pipeline").job.id
    pump(fake_runtime, platform)

    job = fake_runtime.store.get(job_id)
    assert job.state == "rolled-back" and "unknown webhook" in job.result["rollback_reason"]
    steps = states(fake_runtime, job_id)
    assert steps["migrate"] == "skipped" and steps["rollback-migrate"] == "skipped"
    assert set(job.result["rollback_smoke"]) == set(SITES)  # the sites of the bench, smoke-tested


def test_a_busy_answer_to_a_repeated_deploy_lets_the_rollout_decide(fake_runtime, platform):
    platform.deploy_errors = [DeployUnavailable("no answer within 30 s"), DeployBusy("in progress (409)")]
    job_id = request_release(fake_runtime, "r2", source="pipeline").job.id
    for _ in range(2):
        job, step = fake_runtime.dispatched.pop(0)
        runner.run_step(fake_runtime, job, step, worker="w1")
    platform.running = "r2"  # the first call did deploy, slowly
    fake_runtime.dispatched.append((job_id, "deploy"))
    pump(fake_runtime, platform)

    job = fake_runtime.store.get(job_id)
    assert job.state == "succeeded", job.error
    assert "the rollout check decides" in job.step("deploy").output


def test_a_migrate_all_child_whose_message_was_lost_is_published_again(fake_runtime, platform):
    job_id = request_release(fake_runtime, "r2", source="pipeline").job.id
    for _ in range(4):  # record, deploy, rollout, migrate
        job, step = fake_runtime.dispatched.pop(0)
        runner.run_step(fake_runtime, job, step, worker="w1")
    child_id = fake_runtime.store.get(job_id).result["migrate_job"]
    assert fake_runtime.dispatched.pop(0) == (child_id, "discover")  # ... and lost
    record = fake_runtime.store.get(job_id).step("migrate")
    record.state = "pending"  # the worker died before the step was recorded as waiting
    fake_runtime.store.update_step(job_id, record)

    runner.run_step(fake_runtime, job_id, "migrate", worker="w2")
    assert (child_id, "discover") in fake_runtime.dispatched
    assert fake_runtime.store.get(job_id).result["migrate_job"] == child_id  # no second migrate-all


def test_the_rollout_pings_a_site_that_is_not_marked_and_accepts_any_that_answers(fake_runtime, platform):
    fake_runtime.sites.mark_attention(SITES[0], job_id="x", reason="restore failed")
    platform.down = set()
    job_id = request_release(fake_runtime, "r2", source="pipeline").job.id
    pump(fake_runtime, platform)
    assert fake_runtime.store.get(job_id).state == "succeeded"
    assert SITES[0] not in platform.pinged and platform.pinged[0] == SITES[1]


def test_a_tag_that_was_rolled_back_from_is_never_a_rollback_target(fake_runtime, platform):
    fake_runtime.redis.rpush(GOOD, "r0")
    fake_runtime.redis.sadd(BAD, "r1")  # running, but a release of it once failed
    platform.broken = {"r2"}
    job_id = request_release(fake_runtime, "r2", source="pipeline").job.id
    pump(fake_runtime, platform)

    job = fake_runtime.store.get(job_id)
    assert job.result["rollback_to"] == "r0" and platform.deploys == ["r2", "r0"]
    assert fake_runtime.redis.sismember(BAD, "r2")


def test_a_manual_rollback_marks_the_tag_it_leaves_as_bad(fake_runtime, platform):
    fake_runtime.redis.rpush(GOOD, "r2", "r1")
    platform.running = "r2"
    request_release(fake_runtime, None, source="operator", rollback=True, dedupe=False)
    pump(fake_runtime, platform)
    second = request_release(fake_runtime, None, source="operator", rollback=True, dedupe=False).job.id
    pump(fake_runtime, platform)
    assert fake_runtime.store.get(second).state == "failed"  # r2 is not a target any more
    assert platform.deploys == ["r1"]


def test_a_moving_tag_is_refused(fake_runtime, platform):
    with pytest.raises(InvalidInput, match="moving tag"):
        request_release(fake_runtime, "15-prod", source="operator")


def test_a_superseded_tag_is_not_started_again_by_a_hook_only_by_an_operator(fake_runtime, platform):
    first = request_release(fake_runtime, "r2", source="pipeline").job.id
    job, step = fake_runtime.dispatched.pop(0)
    runner.run_step(fake_runtime, job, step, worker="w1")  # r2 holds the slot
    waiting = request_release(fake_runtime, "r3", source="pipeline").job.id
    request_release(fake_runtime, "r4", source="pipeline")
    assert fake_runtime.store.get(waiting).state == "superseded"

    again = request_release(fake_runtime, "r3", source="registry")
    assert isinstance(again, Requested) and not again.created and again.job.id == waiting
    fake_runtime.redis.delete(f"jerp:job:{waiting}")
    gone = request_release(fake_runtime, "r3", source="registry", delivery="d-new")
    assert isinstance(gone, Declined) and "requested before" in gone.reason

    operator = request_release(fake_runtime, "r3", source="operator", dedupe=False)
    assert operator.created and operator.job.id not in (waiting, first)
    assert fake_runtime.store.get(operator.job.id).params["source"] == "operator"


def test_request_times_not_arrival_order_decide_what_supersedes(fake_runtime, platform):
    now = time.time()
    newer = request_release(fake_runtime, "r3", source="pipeline", requested_at=now - 10).job.id
    older = request_release(fake_runtime, "r2", source="registry", requested_at=now - 20)
    assert isinstance(older, Declined) and "before the newest release request (tag r3" in older.reason
    assert fake_runtime.store.get(newer).state == "queued"
    same_time = request_release(fake_runtime, "r5", source="registry", requested_at=now - 10)
    assert isinstance(same_time, Declined)
    newest = request_release(fake_runtime, "r4", source="pipeline", requested_at=now - 5).job.id
    assert fake_runtime.store.get(newer).state == "superseded" and newest in fake_runtime.store.get(newer).error


def test_an_operator_request_supersedes_a_waiting_hook_request_dated_a_little_ahead(fake_runtime, platform):
    ahead = request_release(fake_runtime, "r3", source="pipeline", requested_at=time.time() + 30).job.id
    operator = request_release(fake_runtime, "r2", source="operator", dedupe=False).job.id
    assert fake_runtime.store.get(ahead).state == "superseded" and operator in fake_runtime.store.get(ahead).error


def test_the_newest_release_in_the_index_stands_for_the_newest_request_in_an_older_store(fake_runtime, platform):
    from jerp_jobs.operations.release import INDEX, LATEST

    fake_runtime.redis.zadd(INDEX, {"an-old-release": time.time() - 60})
    fake_runtime.redis.delete(LATEST)
    late = request_release(fake_runtime, "r2", source="github:workflow_run", requested_at=time.time() - 3600)
    assert isinstance(late, Declined) and "an-old-release" in late.reason


def test_a_request_whose_publish_failed_can_be_sent_again(fake_runtime, platform):
    def broken(job_id, step):
        raise ConnectionError("broker down")

    fake_runtime.dispatch = broken
    with pytest.raises(BrokerUnavailable):
        request_release(fake_runtime, "r2", source="registry", delivery="d-1")
    fake_runtime.dispatch = lambda job_id, step: fake_runtime.dispatched.append((job_id, step))
    retry = request_release(fake_runtime, "r2", source="registry", delivery="d-1")
    assert retry.created and fake_runtime.dispatched == [(retry.job.id, "record")]
    # the same request (same time) sent again after the failure also gets through
    made = time.time()
    fake_runtime.dispatch = broken
    with pytest.raises(BrokerUnavailable):
        request_release(fake_runtime, "r3", source="pipeline", requested_at=made, delivery="d-2")
    fake_runtime.dispatch = lambda job_id, step: fake_runtime.dispatched.append((job_id, step))
    assert request_release(fake_runtime, "r3", source="pipeline", requested_at=made, delivery="d-2").created


def test_the_end_of_a_release_never_frees_the_slot_a_successor_took(fake_runtime, platform):
    from jerp_jobs.operations.release import ACTIVE, on_end

    first = request_release(fake_runtime, "r2", source="pipeline").job
    fake_runtime.redis.set(ACTIVE, "the-successor")
    on_end(fake_runtime, fake_runtime.store.get(first.id))
    assert fake_runtime.redis.get(ACTIVE) == b"the-successor"
