"""Staging-first releases in a fleet, on fakeredis with a scripted platform per bench: the
release goes to the staging bench first (deploy, migrate-all, smoke, restore drills of
production's off-site backups on staging), and production moves only once it passed there —
automatically (JERP_PROMOTE=auto) or by ``jerpctl promote TAG``. Drills run on staging.

Each bench has its own runtime (its worker: its platform, its executor, its sites folder) over
one Redis; a published step is run by the runtime of its job's bench, as the bench's queue
would have it, so a production platform that is asked for anything shows it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from jerp_jobs import keys, placement, runner
from jerp_jobs.bootstrap import build_runtime
from jerp_jobs.cli import Ctx, cli
from jerp_jobs.enqueue import submit
from jerp_jobs.errors import InvalidInput, LockBusy
from jerp_jobs.fleet import Bench, Fleet
from jerp_jobs.jobs import JobState, StepState
from jerp_jobs.operations.release import (
    ACTIVE,
    BAD,
    GOOD,
    ROUTES,
    STAGED,
    STEPS,
    admit,
    list_releases,
    promote,
    request_release,
)
from jerp_jobs.operations.release.workflow import STAGING_ROUTES, STAGING_STEPS
from jerp_jobs.releases import ACTIVE_ON
from jerp_jobs.runtime import Runtime
from tests.conftest import recording
from tests.fake_executor import FakeExecutor
from tests.site_folders import count_output, is_count, make_site_folders
from tests.test_release import FakePlatform

#: the sites of each bench
SITES = {
    "prod-a": ("a.example.com", "b.example.com", "c.example.com"),
    "prod-b": ("d.example.com",),
    "staging": ("try.example.com",),
}


def _bench(name: str, role: str) -> Bench:
    return Bench(name=name, role=role, group="default", docker="local", compose_project=f"jerp-{name}",
                 backend_service="backend", queue=f"jerp.site.{name}")


FLEET = Fleet(benches=(_bench("prod-a", "production"), _bench("prod-b", "production"),
                       _bench("staging", "staging")), source=Path("/etc/jerp/fleet.toml"))
NO_STAGING = Fleet(benches=(_bench("prod-a", "production"), _bench("prod-b", "production")),
                   source=Path("/etc/jerp/fleet.toml"))


@dataclass
class World:
    """The control plane's runtime, each bench's worker runtime and platform."""

    control: Runtime
    workers: dict[str, Runtime]
    platforms: dict[str, FakePlatform]

    @property
    def dispatched(self) -> list:
        return self.control.dispatched  # type: ignore[attr-defined]

    @property
    def notified(self) -> list:
        return self.control.notified  # type: ignore[attr-defined]

    @property
    def notifications(self) -> list:
        return self.control.notifications  # type: ignore[attr-defined]

    def settings(self, **changes: object) -> None:
        for rt in (self.control, *self.workers.values()):
            rt.settings = rt.settings.model_copy(update=changes)

    def pump(self, *, drill_fails: set[str] = frozenset(), migrate_fails_on: dict[str, set[str]] | None = None,
             until: int = 2000) -> None:
        """Run published steps, each on its job's bench, and deliver child ends, until nothing
        moves. A migrate-all child is played by its outcome on its bench's running tag, a drill
        child by ``drill_fails`` (its site)."""
        fails = migrate_fails_on or {}
        for _ in range(until):
            if self.notified:
                parent, child = self.notified.pop(0)
                runner.child_done(self.on(self.control.store.get(parent).bench), parent, child)
                continue
            if not self.dispatched:
                return
            job_id, step = self.dispatched.pop(0)
            job = self.control.store.get(job_id)
            rt = self.on(job.bench)
            if job.kind == "migrate-all":
                failed = self.platforms[job.bench].running in fails.get(job.bench, set())
                rt.store.set_result(job_id, sites={s: {"state": "failed" if failed else "succeeded"}
                                                   for s in SITES[job.bench]})
                runner.finish_job(rt, job_id, "failed" if failed else "succeeded",
                                  error="canary failed" if failed else None)
                continue
            if job.kind == "drill":
                failed = job.site in drill_fails
                runner.finish_job(rt, job_id, "failed" if failed else "succeeded",
                                  error="verify: 3 tables differ" if failed else None)
                continue
            try:
                runner.run_step(rt, job_id, step, worker=f"w-{job.bench}")
            except LockBusy:
                self.dispatched.append((job_id, step))
        raise AssertionError("the fleet never came to rest")

    def on(self, bench: str | None) -> Runtime:
        assert bench in self.workers, f"a job on bench {bench!r}: no worker runs it"
        return self.workers[bench]


def _runtime(settings, client, executor, fleet: Fleet, *, shared: Runtime | None = None, **changes) -> Runtime:
    rt = recording(build_runtime(settings.model_copy(update=changes), client=client, executor=executor))
    rt._fleet = fleet
    if shared is not None:  # one transport: every process publishes to the same broker
        rt.dispatched, rt.notified, rt.notifications = shared.dispatched, shared.notified, shared.notifications
        rt.dispatch = shared.dispatch
        rt.notify_parent = shared.notify_parent
        rt.notify = shared.notify
    return rt


def _world(settings, fake_redis, tmp_path: Path, fleet: Fleet = FLEET, **changes) -> World:
    changes = {"s3_bucket": "backups", "promote": "manual", **changes}
    control = _runtime(settings, fake_redis, FakeExecutor(), fleet, **changes)
    workers, platforms = {}, {}
    for bench in fleet:
        executor = FakeExecutor()
        executor.on(is_count, output=count_output(len(SITES[bench.name])))
        folder = tmp_path / bench.name / "sites"
        make_site_folders(folder, SITES[bench.name])
        rt = _runtime(settings, fake_redis, executor, fleet, shared=control, bench=bench.name, sites_dir=folder,
                      compose_project=bench.compose_project, **changes)
        platforms[bench.name] = rt._platform = FakePlatform()
        workers[bench.name] = rt
        placement.record_listing(fake_redis, bench.name, SITES[bench.name])
    for site in (*SITES["prod-a"], *SITES["prod-b"]):  # production's sites have off-site copies
        fake_redis.zadd(keys.OFFSITE_BACKUPS + site, {"manifest": 1.0})
    return World(control=control, workers=workers, platforms=platforms)


@pytest.fixture
def world(settings, fake_redis, tmp_path: Path) -> World:
    return _world(settings, fake_redis, tmp_path)


def _releases(w: World) -> list:
    return list(reversed(list_releases(w.control, limit=50)))


# -- staging first ---------------------------------------------------------------------------


def test_a_release_goes_to_the_staging_bench_first_and_waits_there_for_promotion(world: World) -> None:
    # a.example.com was drilled lately: the sample is the production sites drilled longest ago
    world.control.redis.hset(keys.DRILLS, "a.example.com", json.dumps({"at": 1e9, "passed": True}))
    requested = request_release(world.control, "r2", source="operator", dedupe=False, actor="test").job
    assert requested.bench == "staging" and requested.params["stage"] == "staging"
    assert [s.name for s in requested.steps] == list(STAGING_STEPS)
    assert world.dispatched == [(requested.id, "record")]

    world.pump()

    release = world.control.store.get(requested.id)
    assert release.state == JobState.SUCCEEDED, release.error
    assert world.platforms["staging"].deploys == ["r2"]
    assert world.platforms["prod-a"].deploys == [] and world.platforms["prod-b"].deploys == []
    # restore drills of two production sites (the sample), never drilled first, on staging
    assert release.result["drill_sites"] == ["b.example.com", "c.example.com"]
    drills = [world.control.store.get(j) for j in release.result["drill_jobs"].values()]
    assert sorted(d.site for d in drills) == ["b.example.com", "c.example.com"]
    assert {d.bench for d in drills} == {"staging"} and {d.parent for d in drills} == {release.id}
    assert {d.state for d in drills} == {JobState.SUCCEEDED}
    # passed staging: staged, not yet good; no production release without a promotion
    assert json.loads(world.control.redis.hget(STAGED, "r2"))["job"] == release.id
    assert world.control.redis.lrange(GOOD, 0, -1) == []
    assert [j.id for j in _releases(world)] == [release.id]
    assert ("release.staged", "Release r2 awaits promotion",
            f"job {release.id}: passed staging on staging; `jerpctl promote r2` releases it to production") \
        in world.notifications
    # nothing ran on a production bench's worker
    assert world.workers["prod-a"].executor.calls == [] and world.workers["prod-b"].executor.calls == []


def test_promote_releases_a_staged_tag_to_every_production_bench(world: World) -> None:
    staged = request_release(world.control, "r2", source="operator", dedupe=False).job
    world.pump()

    promoted = promote(world.control, "r2", source="operator", actor="test")
    assert promoted.created and sorted(j.bench for j in promoted.jobs) == ["prod-a", "prod-b"]
    assert {j.params["stage"] for j in promoted.jobs} == {"production"}
    assert {j.params["promoted_from"] for j in promoted.jobs} == {staged.id}
    assert all("drill" not in [s.name for s in j.steps] for j in promoted.jobs)
    again = promote(world.control, "r2", source="operator")  # while they run: the same releases
    assert not again.created and sorted(j.id for j in again.jobs) == sorted(j.id for j in promoted.jobs)

    world.pump()

    for job in promoted.jobs:
        assert world.control.store.get(job.id).state == JobState.SUCCEEDED
    assert world.platforms["prod-a"].deploys == ["r2"] and world.platforms["prod-b"].deploys == ["r2"]
    assert world.control.redis.lrange(GOOD, 0, -1) == [b"r2"]
    assert world.control.redis.get(ACTIVE_ON + "prod-a") is None and world.control.redis.get(ACTIVE) is None


def test_automatic_promotion_starts_the_production_releases_once_staging_passed(world: World) -> None:
    world.settings(promote="auto")
    staged = request_release(world.control, "r2", source="webhook github", delivery="d-1").job
    world.pump()

    releases = _releases(world)
    assert [(j.bench, j.params.get("stage"), j.state) for j in releases] == [
        ("staging", "staging", JobState.SUCCEEDED),
        ("prod-a", "production", JobState.SUCCEEDED),
        ("prod-b", "production", JobState.SUCCEEDED),
    ]
    assert world.control.store.get(staged.id).result["promoted"] == [releases[1].id, releases[2].id]
    assert world.platforms["prod-a"].deploys == ["r2"] and world.platforms["prod-b"].deploys == ["r2"]
    # a production release that fails rolls back its bench only, as a release does
    assert world.control.redis.lrange(GOOD, 0, -1) == [b"r2"]


@pytest.mark.parametrize("failure", ["smoke", "migrate", "drill", "rollout"])
def test_a_staging_failure_stops_the_release_before_production_moves(world: World, failure: str) -> None:
    world.settings(promote="auto")
    platform = world.platforms["staging"]
    if failure == "smoke":
        platform.broken.add("r2")
    if failure == "rollout":
        platform.stuck.add("r2")
    world.settings(rollout_timeout=5) if failure == "rollout" else None
    requested = request_release(world.control, "r2", source="operator", dedupe=False).job
    world.pump(drill_fails={"b.example.com"} if failure == "drill" else set(),
               migrate_fails_on={"staging": {"r2"}} if failure == "migrate" else None)

    release = world.control.store.get(requested.id)
    assert release.state == JobState.ROLLED_BACK, (release.state, release.error)
    assert release.step(failure).state == StepState.FAILED
    assert platform.running == "r1" and platform.deploys[-1] == "r1"  # staging runs the previous tag again
    # production never moved: no production release, nothing asked of its platforms
    assert [j.id for j in _releases(world)] == [release.id]
    assert world.platforms["prod-a"].deploys == [] and world.platforms["prod-b"].deploys == []
    assert world.workers["prod-a"].executor.calls == [] and world.workers["prod-b"].executor.calls == []
    assert world.control.redis.sismember(BAD, "r2") and world.control.redis.hget(STAGED, "r2") is None
    title = next(t for e, t, _ in world.notifications if e == "release.rolled-back")
    assert "production was not touched" in title
    with pytest.raises(InvalidInput, match="tag r2 is bad"):
        promote(world.control, "r2", source="operator")


def test_a_failed_drill_is_named_in_the_release(world: World) -> None:
    requested = request_release(world.control, "r2", source="operator", dedupe=False).job
    world.pump(drill_fails={"a.example.com"})
    release = world.control.store.get(requested.id)
    drill = release.step("drill")
    assert drill.state == StepState.FAILED
    assert "1 of 2 restore drills on staging failed: a.example.com" in drill.error
    assert "verify: 3 tables differ" in drill.error


def test_promote_is_refused_for_a_tag_that_did_not_pass_staging(world: World) -> None:
    with pytest.raises(InvalidInput, match="tag r9 has not passed staging: `jerpctl enqueue release r9`"):
        promote(world.control, "r9", source="operator")
    request_release(world.control, "r3", source="operator", dedupe=False)  # requested, not passed yet
    with pytest.raises(InvalidInput, match="tag r3 has not passed staging"):
        promote(world.control, "r3", source="operator")
    with pytest.raises(InvalidInput, match="moving tag"):
        promote(world.control, "latest", source="operator")
    with pytest.raises(InvalidInput, match="invalid image tag"):
        promote(world.control, "r1;rm", source="operator")
    assert [j.params.get("stage") for j in _releases(world)] == ["staging"]


def test_jerpctl_promote_refuses_with_exit_2_and_starts_a_staged_tag(world: World) -> None:
    def run(*args: str):
        return CliRunner().invoke(cli, list(args), obj=Ctx(rt=world.control), catch_exceptions=False)

    refused = run("promote", "r2")
    assert refused.exit_code == 2 and "tag r2 has not passed staging" in refused.output
    request_release(world.control, "r2", source="operator", dedupe=False)
    world.pump()
    started = run("--json", "promote", "r2")
    assert started.exit_code == 0, started.output
    answer = json.loads(started.output.strip().splitlines()[-1])  # after the log lines
    assert answer["created"] is True and sorted(j["bench"] for j in answer["jobs"]) == ["prod-a", "prod-b"]

    table = run("releases").output.splitlines()
    assert table[0].split()[:5] == ["JOB", "TAG", "FROM", "STATE", "BENCH"]
    assert "staging (staging)" in table[-1] and "prod-a (production)" in "\n".join(table[1:3])
    rows = json.loads(run("--json", "releases").output.strip().splitlines()[-1])
    assert sorted((r["bench"], r["stage"]) for r in rows) == [
        ("prod-a", "production"), ("prod-b", "production"), ("staging", "staging")]


def test_promote_without_a_staging_bench_is_refused(settings, fake_redis, tmp_path: Path) -> None:
    w = _world(settings, fake_redis, tmp_path, fleet=NO_STAGING)
    with pytest.raises(InvalidInput, match="this fleet has no staging bench"):
        promote(w.control, "r2", source="operator")


def test_a_rollback_goes_to_staging_first_too(world: World) -> None:
    world.control.redis.rpush(GOOD, "r0")
    requested = request_release(world.control, None, source="operator", dedupe=False, rollback=True).job
    assert requested.bench == "staging" and requested.params["stage"] == "staging"
    world.pump()
    release = world.control.store.get(requested.id)
    assert release.state == JobState.SUCCEEDED and release.result["tag"] == "r0"
    assert world.platforms["staging"].deploys == ["r0"] and world.platforms["prod-a"].deploys == []
    assert world.control.redis.hget(STAGED, "r0") is not None  # promoted from there like any tag


# -- one release at a time per bench -----------------------------------------------------------


def test_the_release_slot_is_per_bench(world: World) -> None:
    request_release(world.control, "r2", source="operator", dedupe=False)
    world.pump()
    first = promote(world.control, "r2", source="operator").jobs
    on_a = next(j for j in first if j.bench == "prod-a")
    admit(world.control, on_a)
    assert world.control.redis.get(ACTIVE_ON + "prod-a") == on_a.id.encode()

    # a newer tag is released on staging while prod-a's release holds prod-a's slot
    staging = request_release(world.control, "r3", source="operator", dedupe=False).job
    admit(world.control, staging)
    assert world.control.redis.get(ACTIVE_ON + "staging") == staging.id.encode()

    # a second release on prod-a waits for the slot
    world.control.redis.hset(STAGED, "r3", json.dumps({"job": staging.id, "bench": "staging", "at": 1.0,
                                                        "promoted": []}))
    second = promote(world.control, "r3", source="operator").jobs
    second_on_a = next(j for j in second if j.bench == "prod-a")
    with pytest.raises(LockBusy, match="release slot"):
        admit(world.control, second_on_a)
    # ... and supersedes the release of its bench still waiting, not those of other benches
    on_b = next(j for j in first if j.bench == "prod-b")
    assert world.control.store.get(on_b.id).state == JobState.SUPERSEDED
    assert world.control.store.get(on_a.id).state == JobState.QUEUED  # holds its slot: runs to its end
    assert world.control.store.get(staging.id).state == JobState.QUEUED


# -- drills on staging -------------------------------------------------------------------------


def test_drills_run_on_the_staging_bench(world: World) -> None:
    drill = submit(world.control, "drill", site="a.example.com", actor="test")
    assert drill.bench == "staging"  # the site lives on prod-a: its off-site copy is restored on staging
    named = submit(world.control, "drill", site="d.example.com", params={"bench": "staging"}, actor="test")
    assert named.bench == "staging"
    own = submit(world.control, "drill", site="d.example.com", params={"bench": "prod-b"}, actor="test")
    assert own.bench == "prod-b"  # its own bench, named
    with pytest.raises(InvalidInput, match="lives on bench prod-a, not prod-b"):
        submit(world.control, "drill", site="a.example.com", params={"bench": "prod-b"}, actor="test")
    # any other site job still runs on its site's bench only
    with pytest.raises(InvalidInput, match="lives on bench prod-a, not staging"):
        submit(world.control, "backup", site="a.example.com", params={"bench": "staging"}, actor="test")


def test_beats_drill_rotation_runs_on_staging(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from jerp_jobs import tasks

    monkeypatch.setattr(tasks, "get_runtime", lambda: world.control)
    started = tasks.drill_rotation()
    assert started and {world.control.store.get(j).bench for j in started} == {"staging"}


def test_without_a_staging_bench_a_drill_runs_on_its_sites_bench(settings, fake_redis, tmp_path: Path) -> None:
    w = _world(settings, fake_redis, tmp_path, fleet=NO_STAGING)
    assert submit(w.control, "drill", site="d.example.com", actor="test").bench == "prod-b"


# -- a single host ---------------------------------------------------------------------------


def test_a_single_hosts_release_is_unchanged(fake_runtime: Runtime, tmp_path: Path) -> None:
    from tests.test_release import SITES as HOST_SITES
    from tests.site_folders import use_sites_dir

    platform = FakePlatform()
    fake_runtime._platform = platform
    use_sites_dir(fake_runtime, tmp_path / "sites")
    make_site_folders(tmp_path / "sites", HOST_SITES)
    fake_runtime.executor.on(is_count, output=count_output(len(HOST_SITES)))
    fake_runtime.settings = fake_runtime.settings.model_copy(update={"promote": "auto", "s3_bucket": "backups"})

    requested = request_release(fake_runtime, "r2", source="operator", dedupe=False).job
    assert requested.bench == "default" and "stage" not in requested.params
    assert [s.name for s in requested.steps] == list(STEPS)
    from tests.test_release import pump

    pump(fake_runtime, platform)
    release = fake_runtime.store.get(requested.id)
    assert release.state == JobState.SUCCEEDED and platform.deploys == ["r2"]
    assert fake_runtime.redis.lrange(GOOD, 0, -1) == [b"r2"] and fake_runtime.redis.hlen(STAGED) == 0
    assert len(list_releases(fake_runtime)) == 1  # no promotion
    assert not any(k.startswith(ACTIVE_ON.encode()) for k in fake_runtime.redis.keys())
    with pytest.raises(InvalidInput, match="no staging bench"):
        promote(fake_runtime, "r2", source="operator")
    drill = submit(fake_runtime, "drill", site="a.example.com", actor="test")
    assert drill.bench == "default"


# -- the routes of a staging release -------------------------------------------------------------


def test_the_staging_route_table_names_every_staging_step() -> None:
    assert set(STAGING_ROUTES.failure) == set(STAGING_STEPS)
    assert set(STAGING_ROUTES.cancel) == {None, *STAGING_STEPS}
    assert STAGING_ROUTES.failure["drill"] == "rollback-deploy" and "drill" in STAGING_ROUTES.recoverable
    assert "drill" not in ROUTES.failure and set(STAGING_STEPS) - set(STEPS) == {"drill"}
    assert list(STAGING_STEPS).index("drill") == list(STAGING_STEPS).index("finish") - 1
