"""Job records: planned steps, transitions, listing, expiry, and nothing secret inside."""

from __future__ import annotations

import dataclasses
import time

import pytest
import redis

from jerp_jobs.errors import InvalidInput, JobNotFound, StoreError
from jerp_jobs.jobs import JobStore


@pytest.fixture(params=["fakeredis", "redis"])
def store(request: pytest.FixtureRequest) -> JobStore:
    """The store on fakeredis and on the real Redis: the same behaviour on both."""
    client: redis.Redis = request.getfixturevalue("fake_redis" if request.param == "fakeredis" else "real_redis")
    return JobStore(client, ttl_days=30)


def test_job_is_created_with_every_step_pending(store: JobStore) -> None:
    job = store.create("migrate", ["backup", "migrate", "clear-cache"], site="a.example.com", params={"canary": True})
    read = store.get(job.id)
    assert read.state == "queued" and read.site == "a.example.com" and read.params == {"canary": True}
    assert [(s.name, s.state) for s in read.steps] == [("backup", "pending"), ("migrate", "pending"), ("clear-cache", "pending")]


def test_step_goes_pending_running_success_with_timings(store: JobStore) -> None:
    job = store.create("backup", ["backup"], site="a.example.com")
    step = store.start_step(job.id, "backup", worker="w1")
    assert store.get(job.id).step("backup").state == "running"
    time.sleep(0.01)
    store.finish_step(job.id, step, "success", exit_code=0, output="done")
    read = store.get(job.id).step("backup")
    assert read.state == "success" and read.exit_code == 0 and read.output == "done"
    assert read.started_at is not None and read.ended_at is not None and read.duration_s is not None
    assert read.duration_s >= 0.01 and read.attempts == 1 and read.worker == "w1"


def test_job_state_moves_between_indexes(store: JobStore) -> None:
    a = store.create("backup", ["backup"], site="a.example.com")
    b = store.create("backup", ["backup"], site="b.example.com")
    store.set_state(a.id, "running")
    store.set_state(a.id, "failed", error="boom")
    assert [j.id for j in store.list(state="failed")] == [a.id]
    assert [j.id for j in store.list(state="queued")] == [b.id]
    assert store.get(a.id).error == "boom" and store.get(a.id).ended_at is not None


def test_listing_is_newest_first_and_filters_by_site(store: JobStore) -> None:
    ids = [store.create("backup", ["backup"], site="a.example.com").id for _ in range(3)]
    other = store.create("backup", ["backup"], site="b.example.com").id
    assert [j.id for j in store.list(site="a.example.com")] == list(reversed(ids))
    assert [j.id for j in store.list(limit=2)] == [other, ids[-1]]


def test_records_expire_after_the_ttl(fake_redis: redis.Redis) -> None:
    store = JobStore(fake_redis, ttl_days=30)
    job = store.create("backup", ["backup"], site="a.example.com")
    ttl = fake_redis.ttl(f"jerp:job:{job.id}")
    assert 30 * 86400 - 5 <= ttl <= 30 * 86400
    fake_redis.delete(f"jerp:job:{job.id}")  # what expiry does
    assert store.list(site="a.example.com") == []
    assert fake_redis.zcard("jerp:jobs:site:a.example.com") == 0  # the stale index entry was dropped


def test_secret_looking_parameters_are_refused(store: JobStore) -> None:
    with pytest.raises(InvalidInput, match="db_root_password"):
        store.create("provision", ["new-site"], site="a.example.com", params={"db_root_password": "x"})


def test_output_and_errors_are_redacted_before_storage(store: JobStore) -> None:
    job = store.create("restore", ["restore"], site="a.example.com")
    step = store.start_step(job.id, "restore", worker="w")
    store.finish_step(job.id, step, "failed", output="bench restore --db-root-password hunter2pw", error="x")
    assert "hunter2pw" not in store.get(job.id).step("restore").output


def test_unknown_job_and_unplanned_step(store: JobStore) -> None:
    with pytest.raises(JobNotFound, match="nosuch"):
        store.get("nosuch")
    job = store.create("backup", ["backup"], site="a.example.com")
    with pytest.raises(KeyError):
        store.start_step(job.id, "migrate", worker="w")
    from jerp_jobs.jobs import Step

    with pytest.raises(StoreError, match="no planned step"):
        store.update_step(job.id, Step("migrate"))


def test_advance_guard_admits_one_caller(store: JobStore) -> None:
    job = store.create("backup", ["backup"], site="a.example.com")
    assert store.claim_advance(job.id, "backup") is True
    assert store.claim_advance(job.id, "backup") is False


def test_skip_pending_and_cancel_request(store: JobStore) -> None:
    job = store.create("migrate", ["a", "b", "c"], site="a.example.com")
    step = store.start_step(job.id, "a", worker="w")
    store.finish_step(job.id, step, "success")
    store.request_cancel(job.id)
    assert store.skip_pending(job.id, reason="cancelled") == ["b", "c"]
    read = store.get(job.id)
    assert read.cancel_requested and [s.state for s in read.steps] == ["success", "skipped", "skipped"]


def test_concurrent_set_result_writers_lose_no_update(real_redis: redis.Redis, redis_url: str) -> None:
    """Two writers merging different values into one result at once (real Redis, two clients):
    every value of both lands."""
    import threading

    job = JobStore(real_redis).create("backup-all", ["sites"])

    def writer(prefix: str) -> None:
        store = JobStore(redis.Redis.from_url(redis_url))
        for i in range(150):
            store.set_result(job.id, **{f"{prefix}{i}": i})

    threads = [threading.Thread(target=writer, args=(p,)) for p in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = JobStore(real_redis).get(job.id).result
    assert sorted(result) == sorted(f"{p}{i}" for p in "ab" for i in range(150))


def test_set_result_of_a_missing_job_is_refused_and_writes_nothing(store: JobStore) -> None:
    with pytest.raises(JobNotFound, match="gone"):
        store.set_result("gone", counts={"failed": 1})
    assert not store.exists("gone")


@pytest.mark.parametrize("fields", [["id"], ["kind", "state"]])
def test_a_partial_record_is_an_error_naming_the_job_and_its_missing_fields(
    store: JobStore, fake_redis: redis.Redis, fields: list[str]
) -> None:
    from jerp_jobs.errors import PartialRecord

    whole = store.create("backup", ["backup"], site="b.example.com")
    job = store.create("backup", ["backup"], site="a.example.com")
    store._r.hdel(f"jerp:job:{job.id}", *fields)
    with pytest.raises(PartialRecord) as raised:
        store.get(job.id)
    assert raised.value.missing == fields and job.id in str(raised.value)
    assert all(f in str(raised.value) for f in fields)
    # a listing (jerpctl jobs, the resumer's pass) goes on without it: one broken record never hides the rest
    assert [j.id for j in store.list()] == [whole.id]


def test_jerpctl_wait_on_a_partial_record_prints_the_error(fake_runtime) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from jerp_jobs.cli import Ctx, cli

    rt = fake_runtime
    rt.dispatch = lambda job_id, step: rt.redis.hdel(f"jerp:job:{job_id}", "id")  # the record loses its id
    result = CliRunner().invoke(cli, ["enqueue", "backup", "a.example.com", "--wait"], obj=Ctx(rt=rt))
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert "partial record" in result.output and "lacks id" in result.output, result.output
    assert "Traceback" not in result.output and "KeyError" not in result.output


def _begin(store: JobStore, job_id: str, step: str, lock_value: str = "me") -> None:
    from jerp_jobs.jobs import StepKeys

    job, fields = store.read(job_id)
    keys = StepKeys(lock="jerp:lock:test:" + job_id, lock_value=lock_value, lock_ttl_ms=60_000)
    assert store.begin_step(job, fields, job.step(step), worker="w1", keys=keys) == ("started", "")


def test_a_step_ending_after_its_lock_was_taken_over_writes_nothing_and_leaves_the_lock(store: JobStore) -> None:
    job = store.create("backup", ["backup", "verify"], site="a.example.com")
    _begin(store, job.id, "backup")
    lock = "jerp:lock:test:" + job.id
    store._r.set(lock, "another holder", px=30_000)
    record = store.ended(store.get(job.id).step("backup"), "success")
    assert store.end_step(job.id, record, lock=lock, lock_value="me", claim_advance=True) is None
    assert store._r.get(lock) in (b"another holder", "another holder") and store._r.pttl(lock) > 0
    read, fields = store.read(job.id)
    assert read.step("backup").state == "running" and "advanced:backup" not in fields


def test_a_step_ended_for_an_inline_successor_sets_the_advance_guard_unless_cancelled(store: JobStore) -> None:
    lock = lambda job_id: "jerp:lock:test:" + job_id  # noqa: E731
    job = store.create("backup", ["backup", "verify"], site="a.example.com")
    _begin(store, job.id, "backup")
    end = store.end_step(job.id, store.ended(store.get(job.id).step("backup"), "success"), lock=lock(job.id),
                         lock_value="me", kind="backup", claim_advance=True)
    assert end is not None and end.claimed and not end.advanced
    assert store.advanced(job.id, "backup") and not store.claim_advance(job.id, "backup")
    assert store._r.exists(lock(job.id)) == 0  # released with the record

    cancelled = store.create("backup", ["backup", "verify"], site="b.example.com")
    _begin(store, cancelled.id, "backup")
    store.request_cancel(cancelled.id)
    end = store.end_step(cancelled.id, store.ended(store.get(cancelled.id).step("backup"), "success"),
                         lock=lock(cancelled.id), lock_value="me", claim_advance=True)
    assert end is not None and not end.claimed and end.cancel_requested
    assert not store.advanced(cancelled.id, "backup")


def test_skipping_pending_steps_leaves_a_step_that_started_meanwhile(store: JobStore) -> None:
    job = store.create("migrate", ["a", "b", "c"], site="a.example.com")
    stale = store.get(job.id)
    store.start_step(job.id, "b", worker="w1")  # after ``stale`` was read
    assert store.skip_pending(job.id, reason="job ended failed", job=stale) == ["a", "c"]
    read = store.get(job.id)
    assert [s.state for s in read.steps] == ["skipped", "running", "skipped"]
    assert read.step("a").error == "job ended failed"
    with pytest.raises(JobNotFound):
        store.skip_pending("nosuchjob", reason="x", job=dataclasses.replace(stale, id="nosuchjob"))


def test_a_steps_end_sets_the_records_expiry_again_at_most_once_a_minute_per_process(store: JobStore) -> None:
    job = store.create("backup", ["a", "b"], site="a.example.com")
    key, lock = f"jerp:job:{job.id}", "jerp:lock:test:" + job.id
    store._r.expire(key, 1000)  # as if the record had been written long ago
    _begin(store, job.id, "a")
    store.end_step(job.id, store.ended(store.get(job.id).step("a"), "success"), lock=lock, lock_value="me")
    assert store._r.ttl(key) > 29 * 86400  # set again by the end
    store._r.expire(key, 1000)
    _begin(store, job.id, "b")
    store.end_step(job.id, store.ended(store.get(job.id).step("b"), "success"), lock=lock, lock_value="me")
    assert store._r.ttl(key) <= 1000  # this process set it less than a minute ago
    store.set_state(job.id, "succeeded")
    assert store._r.ttl(key) > 29 * 86400  # the job's end always sets it
