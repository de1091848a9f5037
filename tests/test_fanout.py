"""The fan-out protocol: children started in order up to the concurrency, retries, the failure
budget, cancellation, lost notifications, and its progress kept in its own keys (the parent's
record gets the per-site map once, when the fan-out ends).

Children are played by their outcome (their own workflows are tested elsewhere); the runner
runs the parent's steps on fakeredis.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from click.testing import CliRunner

from jerp_jobs import runner
from jerp_jobs.cli import Ctx, cli
from jerp_jobs.enqueue import create_job
from jerp_jobs.jobs import Job
from jerp_jobs.operations import fanout
from jerp_jobs.runtime import Runtime

SITES = [f"s{i}.example.com" for i in range(6)]

Outcome = Callable[[Job], str | None]


def _always(state: str) -> Outcome:
    return lambda child: state


def drive(rt: Runtime, outcome: Outcome, *, until: int = 100_000, on_end: Callable[[str], None] | None = None,
          drop: Callable[[str], bool] = lambda child_id: False,
          played: Callable[[Job], bool] = lambda job: bool(job.parent),
          sent: Callable[[str, str], None] | None = None) -> list[str]:
    """Run the parent's published steps; a child (``played``: every job with a parent) ends with
    ``outcome(child)`` (None: it stays running) as soon as its first step is published. ``drop``
    loses a child's notification; ``sent`` sees every step published. Returns the ids of the
    children started, in order."""
    started: list[str] = []
    for _ in range(until):
        if rt.dispatched:  # type: ignore[attr-defined]
            job_id, step = rt.dispatched.pop(0)  # type: ignore[attr-defined]
            if sent is not None:
                sent(job_id, step)
            job = rt.store.get(job_id)
            if played(job):
                started.append(job_id)
                state = outcome(job)
                if state is not None:
                    runner.finish_job(rt, job_id, state)
            else:
                runner.run_step(rt, job_id, step, worker="w1")
        elif rt.notified:  # type: ignore[attr-defined]
            parent, child = rt.notified.pop(0)  # type: ignore[attr-defined]
            if not drop(child):
                runner.child_done(rt, parent, child)
                if on_end is not None:
                    on_end(child)
        else:
            return started
    raise AssertionError("the jobs did not settle")


def _start(rt: Runtime, kind: str, **params: object) -> Job:
    job = create_job(rt, kind, params={"sites": SITES, **params})
    rt.dispatch(job.id, runner.first_step(rt, job.id))
    return job


def _states(job: Job) -> dict[str, str]:
    return {site: entry["state"] for site, entry in job.result["sites"].items()}


def test_backup_all_starts_every_site_in_order_and_records_the_map_once(fake_runtime: Runtime) -> None:
    rt = fake_runtime
    job = _start(rt, "backup-all", concurrency=2)
    writes: list[int] = []

    def parent_result_size(_child: str) -> None:
        raw = rt.redis.hget(f"jerp:job:{job.id}", "result") or b"{}"
        writes.append(len(raw))

    started = drive(rt, _always("succeeded"), on_end=parent_result_size)
    done = rt.store.get(job.id)
    assert done.state == "succeeded"
    assert [rt.store.get(c).site for c in started] == SITES
    assert _states(done) == dict.fromkeys(SITES, "succeeded")
    assert done.result["counts"] == {"succeeded": len(SITES)} and done.result["order"] == SITES
    assert {e["job_id"] for e in done.result["sites"].values()} == set(started)
    assert all(e["attempts"] == 1 for e in done.result["sites"].values())
    # while children ran, the parent's record never held the per-site map
    assert max(writes[:-1]) < 200, writes
    assert not any(rt.redis.exists(key) for key in fanout._keys(job.id))  # the record holds it all now
    shown = CliRunner().invoke(cli, ["--json", "status", job.id], obj=Ctx(rt=rt))
    assert json.loads(shown.output)["result"]["sites"] == done.result["sites"]


def test_progress_is_live_in_the_fanout_keys_and_in_jerpctl_status(fake_runtime: Runtime) -> None:
    rt = fake_runtime
    job = _start(rt, "backup-all", concurrency=2)
    drive(rt, lambda child: None)  # the first two children run and stay running
    live = fanout.progress(rt.redis, job.id)
    assert live is not None and live["counts"] == {"running": 2, "pending": len(SITES) - 2}
    assert "sites" not in rt.store.get(job.id).result

    shown = CliRunner().invoke(cli, ["--json", "status", job.id], obj=Ctx(rt=rt))
    assert shown.exit_code == 0, shown.output
    record = json.loads(shown.output)
    assert record["result"]["counts"] == live["counts"] and list(record["result"]["sites"]) == SITES
    text = CliRunner().invoke(cli, ["status", job.id], obj=Ctx(rt=rt))
    assert text.output.count("running") >= 3 and SITES[5] in text.output


def test_fanout_keys_expire_with_the_job(fake_runtime: Runtime) -> None:
    rt = fake_runtime
    job = _start(rt, "backup-all", concurrency=2)
    drive(rt, lambda child: None)
    for key in fanout._keys(job.id):
        if rt.redis.exists(key):
            assert 0 < rt.redis.ttl(key) <= rt.store.ttl, key


def test_a_failed_backup_is_retried_then_counted(fake_runtime: Runtime) -> None:
    rt = fake_runtime
    seen: dict[str, int] = {}

    def flaky(child: Job) -> str:
        seen[child.site or ""] = seen.get(child.site or "", 0) + 1
        return "failed" if child.site == SITES[1] and seen[child.site] == 1 else "succeeded"

    job = _start(rt, "backup-all", concurrency=1, retries=1)
    started = drive(rt, flaky)
    done = rt.store.get(job.id)
    assert done.state == "succeeded", done.error
    assert [rt.store.get(c).site for c in started] == [SITES[0], SITES[1], SITES[1], *SITES[2:]]
    entry = done.result["sites"][SITES[1]]
    assert entry["attempts"] == 2 and entry["job_id"] == started[2]
    assert done.result["counts"] == {"succeeded": len(SITES)}


def test_backup_all_without_retries_fails_naming_the_site(fake_runtime: Runtime) -> None:
    rt = fake_runtime
    job = _start(rt, "backup-all", concurrency=3)
    drive(rt, lambda child: "failed" if child.site == SITES[2] else "succeeded")
    done = rt.store.get(job.id)
    assert done.state == "failed" and SITES[2] in (done.error or "")
    assert done.result["counts"] == {"succeeded": len(SITES) - 1, "failed": 1}
    assert rt.notifications and "1 failed" in rt.notifications[-1][2]  # type: ignore[attr-defined]


def test_migrate_all_stops_starting_sites_past_the_budget(fake_runtime: Runtime) -> None:
    rt = fake_runtime
    job = _start(rt, "migrate-all", concurrency=1, budget=0)
    drive(rt, lambda child: "recovered" if child.site == SITES[2] else "succeeded")
    done = rt.store.get(job.id)
    assert done.state != "succeeded"
    assert _states(done) == {SITES[0]: "succeeded", SITES[1]: "succeeded", SITES[2]: "recovered",
                             **dict.fromkeys(SITES[3:], "not-started")}
    assert done.result["counts"] == {"succeeded": 2, "recovered": 1, "not-started": 3}
    assert done.step("sites").state == "failed" and "not started" in (done.step("sites").error or "")


def test_a_failed_canary_starts_no_other_site(fake_runtime: Runtime) -> None:
    rt = fake_runtime
    job = _start(rt, "migrate-all", concurrency=4, canary=SITES[3])
    started = drive(rt, _always("failed"))
    done = rt.store.get(job.id)
    assert len(started) == 1 and rt.store.get(started[0]).site == SITES[3]
    assert done.step("canary").state == "failed" and done.step("sites").state == "skipped"
    assert _states(done) == {SITES[3]: "failed", **{s: "not-started" for s in SITES if s != SITES[3]}}
    assert done.result["order"][0] == SITES[3]


def test_cancel_during_the_sites_starts_no_more_and_lists_the_rest(fake_runtime: Runtime) -> None:
    rt = fake_runtime
    job = _start(rt, "backup-all", concurrency=2)

    def cancel_after_first(child_id: str) -> None:
        rt.store.request_cancel(job.id)

    started = drive(rt, _always("succeeded"), on_end=cancel_after_first)
    done = rt.store.get(job.id)
    assert done.finished and done.state != "succeeded"
    assert len(started) == 3  # two at once, a third when the first ended, then the cancel came
    assert _states(done) == {**dict.fromkeys(SITES[:3], "succeeded"), **dict.fromkeys(SITES[3:], "not-started")}
    assert "not started: " + ", ".join(SITES[3:]) in (done.error or "")


def test_a_lost_notification_is_delivered_by_the_reconcile(fake_runtime: Runtime) -> None:
    rt = fake_runtime
    job = _start(rt, "backup-all", concurrency=2)
    lost: list[str] = []

    def drop_first(child_id: str) -> bool:
        if not lost:
            lost.append(child_id)
            return True
        return False

    drive(rt, _always("succeeded"), drop=drop_first)
    assert rt.store.get(job.id).state == "running"  # one slot stays taken by the child nobody heard of
    fanout.reconcile(rt, job.id)
    drive(rt, _always("succeeded"))
    done = rt.store.get(job.id)
    assert done.state == "succeeded" and _states(done) == dict.fromkeys(SITES, "succeeded")


def test_a_child_end_told_twice_counts_once(fake_runtime: Runtime) -> None:
    rt = fake_runtime
    job = _start(rt, "backup-all", concurrency=2)

    def twice(child_id: str) -> None:
        runner.child_done(rt, job.id, child_id)

    drive(rt, _always("succeeded"), on_end=twice)
    done = rt.store.get(job.id)
    assert done.state == "succeeded" and done.result["counts"] == {"succeeded": len(SITES)}
    assert len({e["job_id"] for e in done.result["sites"].values()}) == len(SITES)


def test_a_fanout_that_kept_only_its_entries_goes_on(fake_runtime: Runtime) -> None:
    """A fan-out started before the counts and sets existed (only the entries hash) is indexed
    again at its next child's end, and finishes the same."""
    rt = fake_runtime
    job = _start(rt, "backup-all", concurrency=2)
    drive(rt, lambda child: None)
    running = [json.loads(v)["job_id"] for k, v in rt.redis.hgetall(fanout.STATE + job.id).items()
               if not k.startswith(b"#") and json.loads(v)["state"] == "running"]
    rt.redis.delete(*fanout._keys(job.id)[1:])
    for child in running:
        runner.finish_job(rt, child, "succeeded")
    drive(rt, _always("succeeded"))
    done = rt.store.get(job.id)
    assert done.state == "succeeded" and _states(done) == dict.fromkeys(SITES, "succeeded")
