"""A fan-out's progress scripts (jerp_jobs.fanouts): a child's start and a child's end, each one
script, counted exactly once however often, and however concurrently, they are told.

The concurrent cases run on the real Redis (tests/services/up.sh); the others on fakeredis.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import redis

from jerp_jobs import runner
from jerp_jobs.bootstrap import build_runtime
from jerp_jobs.enqueue import create_job
from jerp_jobs.fanouts import FanoutStore, SiteRun, fanout_keys
from jerp_jobs.jobs import JobStore
from jerp_jobs.runtime import Runtime
from jerp_jobs.settings import Settings
from tests.conftest import recording
from tests.fake_executor import FakeExecutor

SITES = [f"s{i}.example.com" for i in range(8)]


def _fanout(client: redis.Redis, sites: list[str] = SITES) -> tuple[FanoutStore, JobStore, str]:
    store = JobStore(client)
    fanouts = FanoutStore(client, ttl=store.ttl)
    parent = store.create("backup-all", ["discover", "sites"], params={"sites": sites})
    fanouts.set_many(parent.id, {site: {"state": SiteRun.PENDING} for site in sites})
    return fanouts, store, parent.id


def _child(store: JobStore, fanouts: FanoutStore, parent_id: str, site: str, state: str | None = None,
           error: str | None = None) -> str:
    child = store.create("backup", ["backup"], site=site, parent=parent_id)
    fanouts.child_started(parent_id, site, child.id)
    if state is not None:
        store.set_state(child.id, state, error=error)
    return child.id


def _raw_counts(client: redis.Redis, parent_id: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(fanout_keys(parent_id)[1]).items() if int(v)}


def test_a_child_start_moves_its_site_from_pending_to_running(fake_redis: redis.Redis) -> None:
    fanouts, store, parent_id = _fanout(fake_redis)
    child = store.create("backup", ["backup"], site=SITES[2], parent=parent_id)
    entry = fanouts.child_started(parent_id, SITES[2], child.id)
    assert entry == {"state": "running", "job_id": child.id, "attempts": 1}
    assert fanouts.entry(parent_id, SITES[2]) == entry
    assert fanouts.counts(parent_id) == {"pending": len(SITES) - 1, "running": 1}
    assert fanouts.running_sites(parent_id) == [SITES[2]]
    _, _, pending, running = fanout_keys(parent_id)
    assert fake_redis.zscore(running, SITES[2]) == 2.0 and fake_redis.zscore(pending, SITES[2]) is None
    assert 0 < fake_redis.ttl(running) <= store.ttl


def test_a_child_end_told_twice_is_counted_once(fake_redis: redis.Redis) -> None:
    fanouts, store, parent_id = _fanout(fake_redis)
    child = _child(store, fanouts, parent_id, SITES[0], "succeeded")
    first = fanouts.child_ended(parent_id, child, waiting="sites", concurrency=1)
    again = fanouts.child_ended(parent_id, child, waiting="sites", concurrency=1)
    assert first.recorded and not again.recorded
    assert first.action == again.action == "start" and first.sites == again.sites == [SITES[1]]
    assert fanouts.counts(parent_id) == {"succeeded": 1, "pending": len(SITES) - 1}
    assert fanouts.entry(parent_id, SITES[0]) == {"state": "succeeded", "job_id": child, "attempts": 1}


def test_an_end_is_recorded_only_for_the_child_the_entry_names_once_it_ended(fake_redis: redis.Redis) -> None:
    fanouts, store, parent_id = _fanout(fake_redis)
    running = _child(store, fanouts, parent_id, SITES[0])  # not ended yet
    assert not fanouts.child_ended(parent_id, running, waiting="sites", concurrency=1).recorded
    stray = store.create("backup", ["backup"], site=SITES[0], parent=parent_id)  # another child of the site
    store.set_state(stray.id, "succeeded")
    assert not fanouts.child_ended(parent_id, stray.id, waiting="sites", concurrency=1).recorded
    assert fanouts.counts(parent_id) == {"running": 1, "pending": len(SITES) - 1}


def test_a_failed_child_with_attempts_left_puts_its_site_back_in_its_place(fake_redis: redis.Redis) -> None:
    fanouts, store, parent_id = _fanout(fake_redis)
    child = _child(store, fanouts, parent_id, SITES[3], "failed", error="disk full")
    end = fanouts.child_ended(parent_id, child, waiting="sites", attempts=1, concurrency=1)
    assert end.recorded and end.action == "start" and end.sites == [SITES[0]]  # its place: after s0..s2
    entry = fanouts.entry(parent_id, SITES[3])
    assert entry["state"] == "pending" and entry["failures"] == [{"job_id": child, "error": "disk full"}]
    assert fanouts.counts(parent_id) == {"pending": len(SITES)}
    assert fake_redis.zrange(fanout_keys(parent_id)[2], 0, 3) == [s.encode() for s in SITES[:4]]
    # the second attempt fails too: no attempt left, the site counts as failed with its error
    second = _child(store, fanouts, parent_id, SITES[3], "failed", error="disk still full")
    assert fanouts.entry(parent_id, SITES[3])["attempts"] == 2
    fanouts.child_ended(parent_id, second, waiting="sites", attempts=1, concurrency=1)
    assert fanouts.entry(parent_id, SITES[3]) == {"state": "failed", "job_id": second, "attempts": 2,
                                                    "error": "disk still full"}


def test_past_the_budget_the_pending_sites_are_not_started_and_the_step_ends_failed(fake_redis: redis.Redis) -> None:
    fanouts, store, parent_id = _fanout(fake_redis)
    a = _child(store, fanouts, parent_id, SITES[0], "failed")
    b = _child(store, fanouts, parent_id, SITES[1], "failed")
    within = fanouts.child_ended(parent_id, a, waiting="sites", budget=1, concurrency=1)
    assert within.action == "wait"  # one failure is within the budget; the other child still runs
    end = fanouts.child_ended(parent_id, b, waiting="sites", budget=1, concurrency=1)
    assert (end.action, end.state) == ("over", "failed")
    assert fanouts.counts(parent_id) == {"failed": 2, "not-started": len(SITES) - 2}
    assert fanouts.entry(parent_id, SITES[5]) == {"state": "not-started"}
    assert fanouts.entry(parent_id, SITES[0])["error"] is None  # a failed child without an error


def test_the_canary_settles_its_step(fake_redis: redis.Redis) -> None:
    fanouts, store, parent_id = _fanout(fake_redis)
    child = _child(store, fanouts, parent_id, SITES[0], "succeeded")
    end = fanouts.child_ended(parent_id, child, waiting="canary", canary=SITES[0], budget=1, concurrency=4)
    assert (end.action, end.state, end.recorded) == ("settle", "success", True)
    assert fanouts.counts(parent_id) == {"succeeded": 1, "pending": len(SITES) - 1}

    fanouts, store, parent_id = _fanout(fake_redis)
    child = _child(store, fanouts, parent_id, SITES[0], "recovered")
    end = fanouts.child_ended(parent_id, child, waiting="canary", canary=SITES[0], budget=1, concurrency=4)
    assert (end.action, end.state) == ("settle", "failed")
    assert fanouts.counts(parent_id) == {"recovered": 1, "not-started": len(SITES) - 1}


def test_the_last_child_ends_the_sites_step(fake_redis: redis.Redis) -> None:
    fanouts, store, parent_id = _fanout(fake_redis, SITES[:2])
    a = _child(store, fanouts, parent_id, SITES[0], "succeeded")
    b = _child(store, fanouts, parent_id, SITES[1], "succeeded")
    assert fanouts.child_ended(parent_id, a, waiting="sites", concurrency=2).action == "wait"
    end = fanouts.child_ended(parent_id, b, waiting="sites", concurrency=2)
    assert (end.action, end.state) == ("over", "success")
    # told again, the fan-out is still over, and nothing is counted twice
    assert fanouts.child_ended(parent_id, b, waiting="sites", concurrency=2).action == "over"
    assert fanouts.counts(parent_id) == {"succeeded": 2}


def test_a_child_end_costs_the_same_commands_at_any_number_of_sites(real_redis: redis.Redis) -> None:
    def commands_of_one_end(sites: int) -> int:
        fanouts, store, parent_id = _fanout(real_redis, [f"c{i}.example.com" for i in range(sites)])
        child = _child(store, fanouts, parent_id, "c0.example.com", "succeeded")
        fanouts.child_ended(parent_id, child, waiting="sites", concurrency=1)  # scripts loaded
        other = _child(store, fanouts, parent_id, "c1.example.com", "succeeded")
        before = sum(s["calls"] for s in real_redis.info("commandstats").values())
        fanouts.child_ended(parent_id, other, waiting="sites", concurrency=1)
        return sum(s["calls"] for s in real_redis.info("commandstats").values()) - before - 1  # the INFO

    small, large = commands_of_one_end(10), commands_of_one_end(2000)
    assert small == large and small <= 10, (small, large)


def test_concurrent_child_ends_are_each_counted_once(real_redis: redis.Redis) -> None:
    fanouts, store, parent_id = _fanout(real_redis)
    children = [_child(store, fanouts, parent_id, site, "succeeded") for site in SITES]
    recorded: list[bool] = []
    gate = threading.Barrier(len(children) * 2)

    def tell(child_id: str) -> None:
        mine = FanoutStore(redis.Redis(connection_pool=real_redis.connection_pool), ttl=store.ttl)
        gate.wait()
        recorded.append(mine.child_ended(parent_id, child_id, waiting="sites", concurrency=len(SITES)).recorded)

    threads = [threading.Thread(target=tell, args=(child,)) for child in children * 2]  # each told twice
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(recorded) == [False] * len(SITES) + [True] * len(SITES)
    assert _raw_counts(real_redis, parent_id) == {"succeeded": len(SITES)}
    assert fanouts.running_sites(parent_id) == []


def _real_runtime(settings: Settings, client: redis.Redis, executor: FakeExecutor) -> Runtime:
    return recording(build_runtime(settings, client=client, executor=executor))


def test_concurrent_ends_of_the_last_children_settle_the_parent_once(
        settings: Settings, real_redis: redis.Redis, fake_executor: FakeExecutor) -> None:
    rt = _real_runtime(settings, real_redis, fake_executor)
    job = create_job(rt, "backup-all", params={"sites": SITES, "concurrency": len(SITES)})
    runner.run_step(rt, job.id, "discover", worker="w1")
    runner.run_step(rt, job.id, "sites", worker="w1")  # every site's child starts, the step waits
    children = [job_id for job_id, _ in rt.dispatched if job_id != job.id]  # type: ignore[attr-defined]
    assert len(children) == len(SITES)
    for child in children:
        rt.store.set_state(child, "succeeded")
    results: list[Any] = []
    gate = threading.Barrier(len(children) * 2)

    def tell(child_id: str) -> Callable[[], None]:
        def run() -> None:
            gate.wait()
            results.append(runner.child_done(rt, job.id, child_id))
        return run

    threads = [threading.Thread(target=tell(child)) for child in children * 2]  # a redelivery of each
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    settled = [r for r in results if r is not None and r.outcome != "ignored"]
    assert len(settled) == 1 and settled[0].detail == "succeeded", results
    done = rt.store.get(job.id)
    assert done.state == "succeeded" and done.result["counts"] == {"succeeded": len(SITES)}
    assert int(real_redis.hget("jerp:stats:jobs", "backup-all\tsucceeded") or 0) == 1
