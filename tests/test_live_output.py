"""A job's live output: the running commands' lines reach a capped, expiring Redis stream in
batches, redacted, in order, and a follower reads them from a cursor."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from jerp_jobs.jobs import JobStore, LiveOutput
from jerp_jobs.log import redactor
from jerp_jobs.runtime import Runtime
from jerp_jobs.workflow import StepContext


@pytest.fixture(params=["fakeredis", "redis"])
def store(request: pytest.FixtureRequest) -> JobStore:
    """The store on fakeredis and on the real Redis: the same behaviour on both."""
    client: redis.Redis = request.getfixturevalue("fake_redis" if request.param == "fakeredis" else "real_redis")
    return JobStore(client, ttl_days=30, output_lines=100)


def test_output_is_read_from_a_cursor_oldest_first(store: JobStore) -> None:
    job = store.create("migrate", ["migrate"], site="a.example.com")
    store.append_output(job.id, "migrate", [("command", "bench --site a.example.com migrate"), ("output", "one")])
    first = store.output_since(job.id)
    assert [(line.step, line.kind, line.text) for line in first] == [
        ("migrate", "command", "bench --site a.example.com migrate"), ("migrate", "output", "one")]
    assert abs(first[0].at - time.time()) < 5
    store.append_output(job.id, "migrate", [("output", "two"), ("output", "three")])
    later = store.output_since(job.id, first[-1].cursor)
    assert [line.text for line in later] == ["two", "three"]
    assert store.output_since(job.id, later[-1].cursor) == []
    assert [line.text for line in store.output_since(job.id, limit=2)] == [first[0].text, "one"]
    assert store.output_since("nosuchjob") == []


def test_output_is_capped_and_expires_with_the_record(store: JobStore) -> None:
    job = store.create("migrate", ["migrate"], site="a.example.com")
    for batch in range(10):
        store.append_output(job.id, "migrate", [("output", f"line {batch}-{i}") for i in range(50)])
    kept = store.output_since(job.id, limit=10_000)
    assert 100 <= len(kept) < 500 and kept[-1].text == "line 9-49"  # about the last 100 (trimmed by macro node)
    ttl = store._r.ttl(f"jerp:output:{job.id}")
    assert 29 * 86400 < ttl <= 30 * 86400


def test_output_is_redacted_and_can_be_turned_off(fake_redis: redis.Redis) -> None:
    redactor.add(["Sup3r-Secret-pw"])
    store = JobStore(fake_redis, output_lines=100)
    job = store.create("provision", ["new-site"], site="a.example.com")
    store.append_output(job.id, "new-site", [("output", "password Sup3r-Secret-pw set"),
                                             ("output", "--db-root-password hunter22 given")])
    texts = [line.text for line in store.output_since(job.id)]
    assert texts == ["password *** set", "--db-root-password *** given"]
    off = JobStore(fake_redis, output_lines=0)
    off.append_output(job.id, "new-site", [("output", "more")])
    off.live_output(job.id, "new-site").line("more")
    assert len(store.output_since(job.id)) == 2


def test_live_output_writes_in_batches_in_order(fake_redis: redis.Redis) -> None:
    store = JobStore(fake_redis, output_lines=1000)
    job = store.create("migrate", ["migrate"], site="a.example.com")
    writes: list[int] = []
    original = store.append_output

    def counting(job_id: str, step: str, entries: list) -> None:
        writes.append(len(entries))
        original(job_id, step, entries)

    store.append_output = counting  # type: ignore[method-assign]
    live = LiveOutput(store, job.id, "migrate", interval=0.2)
    live.command(["bench", "--site", "a.example.com", "migrate"])
    for i in range(300):
        live.line(f"Executing patch {i}")
    time.sleep(0.4)  # a line printed before a silence shows within the interval
    assert writes == [301] and store.output_since(job.id)[-1].text == "Executing patch 299"
    started = time.monotonic()
    for i in range(300, 600):
        live.line(f"Executing patch {i}")
        if i % 50 == 0:
            time.sleep(0.05)
    live.close()
    elapsed = time.monotonic() - started
    assert len(writes) <= 2 + elapsed / 0.2  # at most one write per interval, and the rest at close
    texts = [line.text for line in store.output_since(job.id, limit=10_000)]
    assert texts == ["bench --site a.example.com migrate", *(f"Executing patch {i}" for i in range(600))]


def test_a_quick_command_costs_one_write(fake_redis: redis.Redis) -> None:
    store = JobStore(fake_redis, output_lines=1000)
    job = store.create("clear-cache", ["clear-cache"], site="a.example.com")
    writes = []
    store.append_output = lambda job_id, step, entries: writes.append(list(entries))  # type: ignore[method-assign]
    live = store.live_output(job.id, "clear-cache")
    live.command(["bench", "--site", "a.example.com", "clear-cache"])
    live.line("done")
    live.close()
    time.sleep(0.4)
    assert len(writes) == 1 and len(writes[0]) == 2
    assert threading.active_count() < 20  # no timer left behind


def test_a_command_start_alone_waits_longer_and_a_line_brings_its_write_forward(fake_redis: redis.Redis) -> None:
    store = JobStore(fake_redis, output_lines=1000)
    job = store.create("migrate", ["migrate"], site="a.example.com")
    writes: list[list[tuple[str, str]]] = []
    store.append_output = lambda job_id, step, entries: writes.append(list(entries))  # type: ignore[method-assign]
    silent = LiveOutput(store, job.id, "migrate", interval=0.1, command_interval=0.6)
    silent.command(["bench", "--site", "a.example.com", "migrate"])
    time.sleep(0.3)
    assert writes == []  # a silent command's start is not written alone at the interval
    silent.close()
    assert writes == [[("command", "bench --site a.example.com migrate")]]  # one write for the command

    writes.clear()
    quiet = LiveOutput(store, job.id, "migrate", interval=0.1, command_interval=0.4)
    quiet.command(["bench", "--site", "a.example.com", "migrate"])
    time.sleep(0.6)
    assert len(writes) == 1  # ...but it is, after the longer wait: a long silent command shows
    chatty = LiveOutput(store, job.id, "migrate", interval=0.1, command_interval=5.0)
    chatty.command(["bench", "--site", "a.example.com", "migrate"])
    chatty.line("Migrating")
    time.sleep(0.4)
    assert writes[1:] == [[("command", "bench --site a.example.com migrate"), ("output", "Migrating")]]
    chatty.close()
    quiet.close()
    assert len(writes) == 2


def test_a_failing_write_never_fails_the_command(fake_redis: redis.Redis) -> None:
    store = JobStore(fake_redis, output_lines=1000)

    def down(*args: object) -> None:
        raise redis.ConnectionError("Redis is down")

    store.append_output = down  # type: ignore[method-assign]
    live = store.live_output("j1", "migrate")
    live.line("a line")
    live.close()  # logged, not raised


def test_a_step_streams_its_commands_and_their_lines(fake_runtime: Runtime) -> None:
    rt = fake_runtime
    job = rt.store.create("migrate", ["migrate"], site="a.example.com")
    rt.executor.on(lambda argv: "migrate" in argv, output=["Migrating a.example.com", "Executing patch p1"])
    ctx = StepContext(runtime=rt, job=job, step="migrate", fence="a.example.com")
    ctx.run(["bench", "--site", "a.example.com", "migrate"])
    lines = rt.store.output_since(job.id)
    assert [(line.kind, line.text) for line in lines] == [
        ("command", "bench --site a.example.com migrate"),
        ("output", "Migrating a.example.com"), ("output", "Executing patch p1")]
    assert {line.step for line in lines} == {"migrate"}


def test_a_batch_is_one_stream_entry_read_line_by_line_from_any_cursor(store: JobStore) -> None:
    job = store.create("migrate", ["migrate"], site="a.example.com")
    store.append_output(job.id, "migrate", [("command", "bench migrate"), ("output", "one"), ("output", "two")])
    assert store._r.xlen(f"jerp:output:{job.id}") == 1
    first = store.output_since(job.id, limit=2)  # stops inside the entry
    assert [line.text for line in first] == ["bench migrate", "one"]
    rest = store.output_since(job.id, first[-1].cursor)
    assert [(line.kind, line.text) for line in rest] == [("output", "two")]
    store.append_output(job.id, "migrate", [("output", "three")])
    assert [line.text for line in store.output_since(job.id, rest[-1].cursor)] == ["three"]
    assert [line.text for line in store.output_since(job.id, first[0].cursor)] == ["one", "two", "three"]
