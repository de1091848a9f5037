"""Routing in a fleet: the site-to-bench map, the bench each job is given, the queue each step
goes to, fan-outs over several benches, the worker that refuses another bench's step, and each
bench's own credentials.

The map's script runs on the real Redis; the engine runs on fakeredis with a recording transport.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jerp_jobs import placement, runner, tasks
from jerp_jobs.bootstrap import StepTaskNames
from jerp_jobs.celery import CONTROL_QUEUE, SITE_QUEUE, worker_queues
from jerp_jobs.enqueue import create_job
from jerp_jobs.errors import ConfigError, InvalidInput
from jerp_jobs.fleet import FleetError, load_fleet, read_fleet_file, shared_credentials
from jerp_jobs.jobs import Job
from jerp_jobs.operations import fanout
from jerp_jobs.runtime import Runtime
from jerp_jobs.settings import for_bench, load_settings
from tests.test_fanout import drive as fanout_drive

FLEET = """
[[bench]]
name = "prod-a"
role = "production"
group = "eu"
compose_project = "prod-a"
concurrency = 2

[[bench]]
name = "prod-c"
role = "production"
group = "us"
compose_project = "prod-c"

[[bench]]
name = "staging-b"
role = "staging"
group = "eu"
compose_project = "staging-b"
"""

SITES = {
    "prod-a": [f"a{i}.example.com" for i in range(5)],
    "prod-c": ["c0.example.com", "c1.example.com"],
    "staging-b": ["b0.example.com"],
}


def write_fleet(folder: Path, text: str = FLEET) -> Path:
    path = folder / "fleet.toml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def fleet_rt(fake_runtime: Runtime, tmp_path: Path) -> Runtime:
    """The fake runtime in a fleet of three benches whose sites were listed."""
    rt = fake_runtime
    rt.settings = rt.settings.model_copy(update={"fleet_file": write_fleet(tmp_path)})
    rt._fleet = None
    for bench, sites in SITES.items():
        placement.record_listing(rt.redis, bench, sites)
    return rt


@pytest.fixture
def map_redis(real_redis: redis.Redis) -> Iterator[redis.Redis]:
    yield real_redis


# -- the site-to-bench map (real Redis) -----------------------------------------------------------


def test_a_listing_puts_each_site_on_its_bench_and_a_later_one_removes_what_is_gone(map_redis: redis.Redis) -> None:
    assert placement.record_listing(map_redis, "a", ["x.example.com", "y.example.com"]) == {
        "sites": 2, "added": 2, "removed": 0, "conflicts": 0}
    placement.record_listing(map_redis, "b", ["z.example.com"])

    assert placement.site_map(map_redis) == {"x.example.com": "a", "y.example.com": "a", "z.example.com": "b"}
    assert placement.record_listing(map_redis, "a", ["x.example.com"])["removed"] == 1
    assert placement.bench_of(map_redis, "y.example.com") is None
    assert placement.sites_on(map_redis, "a") == ["x.example.com"]
    assert set(placement.listed_at(map_redis)) == {"a", "b"}


def test_a_site_two_benches_list_is_refused_until_one_no_longer_lists_it(map_redis: redis.Redis) -> None:
    placement.record_listing(map_redis, "a", ["x.example.com"])
    assert placement.record_listing(map_redis, "b", ["x.example.com"])["conflicts"] == 1

    with pytest.raises(InvalidInput, match="listed by benches a and b"):
        placement.bench_of(map_redis, "x.example.com")
    assert placement.conflicts(map_redis) == {"x.example.com": ["a", "b"]}

    placement.record_listing(map_redis, "a", [])  # the stray copy on a was dropped
    assert placement.bench_of(map_redis, "x.example.com") == "b"
    assert placement.conflicts(map_redis) == {}


def test_a_site_gone_from_its_old_bench_follows_the_bench_that_lists_it(map_redis: redis.Redis) -> None:
    placement.record_listing(map_redis, "a", ["x.example.com"])
    placement.record_listing(map_redis, "a", [])
    placement.record_listing(map_redis, "b", ["x.example.com"])
    assert placement.bench_of(map_redis, "x.example.com") == "b"


def test_assign_and_forget_keep_the_map_true_to_what_jobs_did(map_redis: redis.Redis) -> None:
    placement.record_listing(map_redis, "a", ["x.example.com"])
    placement.assign(map_redis, "x.example.com", "b")
    assert placement.bench_of(map_redis, "x.example.com") == "b"
    assert placement.sites_on(map_redis, "a") == [] and placement.sites_on(map_redis, "b") == ["x.example.com"]
    placement.forget(map_redis, "x.example.com", "b")
    assert placement.bench_of(map_redis, "x.example.com") is None


# -- the bench of a job ---------------------------------------------------------------------------


def test_a_site_job_runs_on_its_sites_bench_and_its_steps_go_to_that_benchs_queue(fleet_rt: Runtime) -> None:
    job = create_job(fleet_rt, "backup", site="c1.example.com")

    assert job.bench == "prod-c" and fleet_rt.store.get(job.id).bench == "prod-c"
    assert StepTaskNames(fleet_rt.store, fleet=fleet_rt.fleet).queue(job.id) == "jerp.site.prod-c"


def test_a_site_job_naming_another_bench_is_refused(fleet_rt: Runtime) -> None:
    with pytest.raises(InvalidInput, match="lives on bench prod-c, not prod-a.*enqueue move"):
        create_job(fleet_rt, "backup", site="c1.example.com", params={"bench": "prod-a"})
    with pytest.raises(InvalidInput, match="no bench named 'nowhere'"):
        create_job(fleet_rt, "backup", site="c1.example.com", params={"bench": "nowhere"})


def test_a_site_no_bench_lists_is_refused_naming_the_refresh(fleet_rt: Runtime) -> None:
    with pytest.raises(InvalidInput, match=r"on no bench the fleet knows; `jerpctl sites --refresh`"):
        create_job(fleet_rt, "backup", site="unknown.example.com")


def test_a_new_site_needs_its_bench_named_when_there_are_two_production_benches(fleet_rt: Runtime) -> None:
    with pytest.raises(InvalidInput, match="name the bench it goes on with --bench"):
        create_job(fleet_rt, "provision", site="new.example.com")

    job = create_job(fleet_rt, "provision", site="new.example.com", params={"bench": "prod-c"})
    assert job.bench == "prod-c" and "bench" not in job.params


def test_a_new_site_goes_to_the_only_production_bench(fake_runtime: Runtime, tmp_path: Path) -> None:
    rt = fake_runtime
    one_production = """
        [[bench]]
        name = "prod-a"
        role = "production"

        [[bench]]
        name = "staging-b"
        role = "staging"
        compose_project = "staging-b"
        """
    rt.settings = rt.settings.model_copy(update={"fleet_file": write_fleet(tmp_path, one_production)})
    rt._fleet = None
    assert rt.fleet.names == ["prod-a", "staging-b"]
    assert create_job(rt, "provision", site="new.example.com").bench == "prod-a"


def test_work_on_a_whole_bench_names_the_bench_in_a_fleet(fleet_rt: Runtime) -> None:
    with pytest.raises(InvalidInput, match=r"build-assets works on one bench: name it with --bench \(prod-a, prod-c, staging-b\)"):
        create_job(fleet_rt, "build-assets")
    assert create_job(fleet_rt, "build-assets", params={"bench": "staging-b"}).bench == "staging-b"


def test_a_single_host_gives_every_job_its_one_bench_and_the_site_queue(fake_runtime: Runtime) -> None:
    rt = fake_runtime
    job = create_job(rt, "backup", site="any.example.com")
    fan = create_job(rt, "backup-all", params={"sites": ["any.example.com"]})

    assert job.bench == fan.bench == "default"
    names = StepTaskNames(rt.store, fleet=rt.fleet)
    assert names.queue(job.id) == names.queue(fan.id) == SITE_QUEUE


def test_group_is_only_for_fan_outs_and_must_name_a_group(fleet_rt: Runtime) -> None:
    with pytest.raises(InvalidInput, match="no bench of the fleet has group 'mars'"):
        create_job(fleet_rt, "backup-all", params={"group": "mars"})
    with pytest.raises(InvalidInput, match="--group chooses the benches of a fan-out"):
        create_job(fleet_rt, "backup", site="a0.example.com", params={"group": "eu"})
    with pytest.raises(InvalidInput, match="takes no canary or list of sites"):
        create_job(fleet_rt, "migrate-all", params={"canary": "a0.example.com"})


# -- fan-outs over benches ------------------------------------------------------------------------


def drive(rt: Runtime, outcome: Callable[[Job], str | None]) -> list[tuple[str, str, str]]:
    """Run every published step; a site's job ends with ``outcome(child)`` as soon as its first
    step is published (a bench's fan-out runs its own steps). Returns (job id, step, queue) of
    every step published, the queue as the real transport would choose it."""
    names = StepTaskNames(rt.store, fleet=rt.fleet)
    sent: list[tuple[str, str, str]] = []
    fanout_drive(rt, outcome, played=lambda job: bool(job.parent and job.site),
                 sent=lambda job_id, step: sent.append((job_id, step, names.queue(job_id))))
    return sent


@pytest.fixture
def listed_by_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each bench's fan-out discovers that bench's sites (as its worker would list them)."""
    monkeypatch.setattr(fanout, "discover_sites", lambda ctx: list(SITES[ctx.job.bench]))


def test_backup_all_of_the_fleet_is_one_fan_out_per_bench_each_on_its_queue(fleet_rt: Runtime,
                                                                              listed_by_bench: None) -> None:
    rt = fleet_rt
    parent = create_job(rt, "backup-all", params={"with_files": True})
    assert parent.bench is None and parent.params["benches"] == ["prod-a", "prod-c", "staging-b"]
    assert [s.name for s in parent.steps] == ["discover", "sites"]
    rt.dispatch(parent.id, runner.first_step(rt, parent.id))

    sent = drive(rt, lambda child: "succeeded")

    done = rt.store.get(parent.id)
    assert done.state == "succeeded", done.error
    assert set(done.result["sites"]) == {"prod-a", "prod-c", "staging-b"}
    per_bench = {bench: rt.store.get(entry["job_id"]) for bench, entry in done.result["sites"].items()}
    for bench, child in per_bench.items():
        assert (child.kind, child.bench, child.state) == ("backup-all", bench, "succeeded")
        assert set(child.result["sites"]) == set(SITES[bench])
    queues = {rt.store.get(job_id).site: queue for job_id, _, queue in sent if rt.store.get(job_id).site}
    assert queues == {site: f"jerp.site.{bench}" for bench, sites in SITES.items() for site in sites}
    assert {queue for job_id, _, queue in sent if job_id == parent.id} == {CONTROL_QUEUE}


def test_each_bench_runs_at_most_its_own_concurrency_of_sites(fleet_rt: Runtime, listed_by_bench: None) -> None:
    rt = fleet_rt
    parent = create_job(rt, "backup-all", params={"group": "eu"})
    assert parent.params["benches"] == ["prod-a", "staging-b"]
    rt.dispatch(parent.id, runner.first_step(rt, parent.id))

    drive(rt, lambda child: None)  # every site's job stays running

    entries = rt.fanouts.progress(parent.id)["sites"]
    prod_a = rt.fanouts.progress(entries["prod-a"]["job_id"])
    running = [site for site, e in prod_a["sites"].items() if e["state"] == "running"]
    assert len(running) == 2  # prod-a declares concurrency = 2
    assert fanout.concurrency_of(rt, rt.store.get(entries["staging-b"]["job_id"])) == rt.settings.fanout_concurrency


def test_a_migrate_all_over_benches_gives_each_bench_its_own_canary(fleet_rt: Runtime, listed_by_bench: None) -> None:
    rt = fleet_rt
    rt.executor.on(lambda argv: "clear-cache" in argv)  # type: ignore[attr-defined]
    parent = create_job(rt, "migrate-all", params={"budget": 0})
    rt.dispatch(parent.id, runner.first_step(rt, parent.id))

    drive(rt, lambda child: "failed" if child.site == "c0.example.com" else "succeeded")

    done = rt.store.get(parent.id)
    assert done.state == "failed"
    children = {bench: rt.store.get(entry["job_id"]) for bench, entry in done.result["sites"].items()}
    assert children["prod-c"].state == "failed" and children["prod-c"].result["canary"] == "c0.example.com"
    assert children["prod-c"].result["sites"]["c1.example.com"]["state"] == "not-started"
    assert children["prod-a"].state == "succeeded" and children["prod-a"].result["canary"] == "a0.example.com"
    assert children["staging-b"].state == "succeeded"


# -- a bench's worker runs its own bench's steps only -----------------------------------------------


def _step_on_worker(rt: Runtime, monkeypatch: pytest.MonkeyPatch, bench: str | None, job_id: str, step: str) -> Any:
    rt.settings = rt.settings.model_copy(update={"bench": bench})
    sent: list[tuple[str, str, str | None]] = []
    monkeypatch.setattr(tasks, "get_runtime", lambda: rt)
    monkeypatch.setattr(tasks, "celery_dispatch",
                        lambda job_id, step, name=None, countdown=None, queue=None: sent.append((job_id, step, queue)))
    return tasks.step(job_id=job_id, step=step), sent


def test_a_step_of_another_benchs_job_is_sent_to_its_bench_not_run(fleet_rt: Runtime,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    job = create_job(fleet_rt, "backup", site="c1.example.com")

    outcome, sent = _step_on_worker(fleet_rt, monkeypatch, "prod-a", job.id, "check")

    assert outcome == "rerouted" and sent == [(job.id, "check", "jerp.site.prod-c")]
    assert fleet_rt.store.get(job.id).state == "queued" and not fleet_rt.executor.calls  # type: ignore[attr-defined]


def test_the_control_plane_runs_no_benchs_step(fleet_rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    job = create_job(fleet_rt, "backup", site="a1.example.com")

    outcome, sent = _step_on_worker(fleet_rt, monkeypatch, None, job.id, "check")

    assert outcome == "rerouted" and sent == [(job.id, "check", "jerp.site.prod-a")]


def test_a_job_of_a_bench_the_fleet_no_longer_has_fails_naming_it(fleet_rt: Runtime,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    job = create_job(fleet_rt, "backup", site="a1.example.com")
    fleet_rt.redis.hset(f"jerp:job:{job.id}", "bench", "gone-bench")

    with pytest.raises(tasks.StepFailed, match="bench gone-bench is not in the fleet"):
        _step_on_worker(fleet_rt, monkeypatch, "prod-a", job.id, "check")
    assert fleet_rt.store.get(job.id).state == "failed"


def test_a_workers_queues_follow_its_bench(tmp_path: Path) -> None:
    path = write_fleet(tmp_path)
    base = {"_env_file": None, "broker_url": "redis://127.0.0.1:1/0"}

    assert [q.name for q in worker_queues(load_settings(**base))] == [SITE_QUEUE, CONTROL_QUEUE]
    assert [q.name for q in worker_queues(load_settings(**base, fleet_file=path))] == [CONTROL_QUEUE]
    assert [q.name for q in worker_queues(load_settings(**base, fleet_file=path, bench="prod-c"))] == ["jerp.site.prod-c"]


# -- each bench's credentials -----------------------------------------------------------------------


def _with_env_files(tmp_path: Path, a: str, b: str) -> Path:
    (tmp_path / "prod-a.env").write_text(a)
    (tmp_path / "staging-b.env").write_text(b)
    return write_fleet(tmp_path, """
        [[bench]]
        name = "prod-a"
        role = "production"
        compose_project = "prod-a"
        env_file = "prod-a.env"

        [[bench]]
        name = "staging-b"
        role = "staging"
        compose_project = "staging-b"
        env_file = "staging-b.env"
        """)


def test_a_benchs_worker_takes_its_own_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _with_env_files(tmp_path, "MARIADB_ROOT_PASSWORD=prod-secret-1\nJERP_DB_HOST=db-a\n",
                           "MARIADB_ROOT_PASSWORD=staging-secret-2\nJERP_DB_HOST=db-b\n")
    monkeypatch.setenv("MARIADB_ROOT_PASSWORD", "the-control-planes")
    monkeypatch.delenv("JERP_DB_HOST", raising=False)
    settings = load_settings(_env_file=None, broker_url="redis://127.0.0.1:1/0", fleet_file=path, bench="staging-b")

    mine = for_bench(settings)

    assert mine.secret("mariadb_root_password") == "staging-secret-2" and mine.db_host == "db-b"
    assert (mine.compose_project, mine.bench) == ("staging-b", "staging-b")


def test_two_benches_sharing_a_secret_are_refused_without_showing_it(tmp_path: Path) -> None:
    path = _with_env_files(tmp_path, "MARIADB_ROOT_PASSWORD=same-Secret-9\n", "MARIADB_ROOT_PASSWORD=same-Secret-9\n")
    fleet = read_fleet_file(path)
    assert shared_credentials(fleet) == [("MARIADB_ROOT_PASSWORD", "prod-a", "staging-b")]

    settings = load_settings(_env_file=None, broker_url="redis://127.0.0.1:1/0", fleet_file=path, bench="prod-a")
    with pytest.raises(FleetError) as caught:
        for_bench(settings)
    assert "MARIADB_ROOT_PASSWORD has the same value for benches 'prod-a' and 'staging-b'" in str(caught.value)
    assert "same-Secret-9" not in str(caught.value)


def test_a_benchs_env_file_sets_only_a_benchs_settings(tmp_path: Path) -> None:
    path = _with_env_files(tmp_path, "JERP_BROKER_URL=redis://elsewhere:6379/0\n", "")
    settings = load_settings(_env_file=None, broker_url="redis://127.0.0.1:1/0", fleet_file=path, bench="prod-a")
    with pytest.raises(FleetError, match="sets JERP_BROKER_URL, which is not a bench's own setting"):
        for_bench(settings)


def test_one_env_file_for_two_benches_is_refused(tmp_path: Path) -> None:
    (tmp_path / "shared.env").write_text("MARIADB_ROOT_PASSWORD=x\n")
    path = write_fleet(tmp_path, """
        [[bench]]
        name = "prod-a"
        role = "production"
        compose_project = "prod-a"
        env_file = "shared.env"

        [[bench]]
        name = "staging-b"
        role = "staging"
        compose_project = "staging-b"
        env_file = "./shared.env"
        """)
    with pytest.raises(FleetError, match="already the credentials of bench 'prod-a'; credentials are never shared"):
        read_fleet_file(path)


def test_a_missing_env_file_and_a_bad_concurrency_are_named(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, '[[bench]]\nname = "a"\nrole = "production"\nenv_file = "nope.env"\n')
    with pytest.raises(FleetError, match=r"bench 'a', field 'env_file'.*does not exist"):
        read_fleet_file(path)
    path = write_fleet(tmp_path, '[[bench]]\nname = "a"\nrole = "production"\nconcurrency = 0\n')
    with pytest.raises(FleetError, match=r"field 'concurrency'.*at least 1"):
        read_fleet_file(path)


def test_jerp_bench_must_be_a_bench_of_the_fleet(tmp_path: Path) -> None:
    settings = load_settings(_env_file=None, broker_url="redis://127.0.0.1:1/0", fleet_file=write_fleet(tmp_path),
                             bench="prod-z")
    with pytest.raises(ConfigError, match=r"JERP_BENCH.*'prod-z' is not a bench of the fleet \(prod-a, prod-c, staging-b"):
        for_bench(settings)
    assert load_fleet(settings).declared


def test_the_dashboards_sites_page_shows_each_sites_bench(fleet_rt: Runtime) -> None:
    from jerp_jobs.dashboard.views import sites_view

    placement.record_listing(fleet_rt.redis, "prod-c", ["a0.example.com", "c0.example.com"])  # a0 on two benches
    view = sites_view(fleet_rt)

    rows = {row["site"]: row for row in view["rows"]}
    assert view["fleet"] and view["problem"] is None
    assert rows["c0.example.com"]["bench"] == "prod-c" and rows["b0.example.com"]["bench"] == "staging-b"
    assert rows["a0.example.com"]["state"] == "on two benches" and rows["a0.example.com"]["benches"] == ["prod-a", "prod-c"]
    assert "c1.example.com" not in rows  # gone from prod-c's listing, with no backup nor mark
