"""``move``: a site carried from one bench of the fleet to another, as jobs (fake runtime).

The move's own steps run through the runner with a scripted executor; its backup and upload
steps are stand-ins that record a verified off-site copy (the real ones are covered by the
backup tests and by tests/test_move_e2e.py), and the restore child on the target ends as each
test says. The move-drop child runs for real.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from jerp_jobs import placement, runner
from jerp_jobs.enqueue import create_job, start_job
from jerp_jobs.errors import ConfigError, InvalidInput, LockBusy
from jerp_jobs.fleet import FleetError, load_fleet, read_fleet_file
from jerp_jobs.integrations.npm import NpmClient
from jerp_jobs.jobs import Job, JobState, StepState
from jerp_jobs.operations import move
from jerp_jobs.runtime import Runtime
from jerp_jobs.workflow import StepSpec
from tests.fake_executor import FakeExecutor
from tests.fake_npm import FakeNpm, fake_npm  # noqa: F401  (fixture)

SITE = "shop.example.com"
STAMP = "20261206_061500"
FLEET = """
[[bench]]
name = "a"
role = "production"
compose_project = "jerp-a"
npm_forward_host = "frontend-a"

[[bench]]
name = "b"
role = "production"
compose_project = "jerp-b"
npm_forward_host = "frontend-b"
npm_forward_port = 8081
"""
SOURCE_STEPS = ["check", "maintenance-on", "scheduler-pause", "backup", "upload-offsite", "restore-target",
                "verify-target", "switch-proxy", "switch-map", "drop-source"]


def _commands(executor: FakeExecutor) -> list[tuple[str, ...]]:
    """The commands run, without the fence (flock -w N -E C FILE) in front."""
    return [call.argv[6:] if call.argv[:1] == ("flock",) else call.argv for call in executor.calls]


@pytest.fixture
def rt(fake_runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    fake_runtime.settings = fake_runtime.settings.model_copy(update={
        "fleet_file": path, "s3_bucket": "backups", "mariadb_root_password": SecretStr("root-pw")})
    fake_runtime._fleet = load_fleet(fake_runtime.settings)
    placement.assign(fake_runtime.redis, SITE, "a")
    executor: FakeExecutor = fake_runtime.executor  # type: ignore[assignment]
    executor.on(lambda argv: "grep" in argv, exit_code=1)  # site_config.json: no switch set
    executor.on(lambda argv: True)

    def backup(ctx: Any) -> None:
        ctx.record(backup={"site": ctx.site, "timestamp": STAMP})

    def upload(ctx: Any) -> None:
        ctx.record(offsite={"site": ctx.site, "utc_timestamp": STAMP, "timestamp": STAMP, "verified": True})

    monkeypatch.setitem(move.STEPS, "backup", StepSpec(backup))
    monkeypatch.setitem(move.STEPS, "upload-offsite", StepSpec(upload))
    return fake_runtime


def restored(rt: Runtime, child: Job, *, stamp: str = STAMP, problems: list[str] | None = None) -> str:
    """The target's restore as it ends when it worked: created, verified, online."""
    rt.store.set_result(child.id, created_site=True, fetched={"utc_timestamp": stamp},
                        verified={"tables": 12, "rows": 345, "problems": problems or []})
    rt.store.finish_step(child.id, child.step("verify"), StepState.SUCCESS)
    return JobState.SUCCEEDED


def restore_failed(rt: Runtime, child: Job) -> str:
    """The target's restore as it ends when its restore step failed: it dropped the site it made."""
    rt.store.set_result(child.id, created_site=True, created_site_dropped=True)
    return JobState.FAILED


def drive(rt: Runtime, restore: Callable[[Runtime, Job], str], *, before_child: Callable[[Job], None] | None = None,
          limit: int = 500) -> None:
    """Run the published steps of every job; a restore child ends as ``restore`` says."""
    for _ in range(limit):
        if rt.dispatched:  # type: ignore[attr-defined]
            job_id, step = rt.dispatched.pop(0)  # type: ignore[attr-defined]
            job = rt.store.get(job_id)
            if job.parent and before_child is not None:
                before_child(job)
            if job.kind == "restore":
                runner.finish_job(rt, job_id, restore(rt, job))
            else:
                runner.run_step(rt, job_id, step, worker="w1")
        elif rt.notified:  # type: ignore[attr-defined]
            runner.child_done(rt, *rt.notified.pop(0))  # type: ignore[attr-defined]
        else:
            return
    raise AssertionError("the jobs did not settle")


def _move(rt: Runtime, to: str = "b") -> Job:
    return start_job(rt, "move", site=SITE, params={"to": to})


def _states(job: Job) -> dict[str, str]:
    return {s.name: s.state for s in job.steps}


def _children(rt: Runtime, parent: Job) -> list[Job]:
    return [rt.store.get(parent.result[key]) for key in ("restore_job", "drop_job") if parent.result.get(key)]


def test_a_move_backs_up_restores_on_the_target_switches_and_then_drops_the_source(rt: Runtime) -> None:
    job = _move(rt)
    assert job.bench == "a"  # the move runs on the site's bench

    drive(rt, restored)

    done = rt.store.get(job.id)
    assert done.state == JobState.SUCCEEDED, done.error
    assert [s.name for s in done.steps if s.state == StepState.SUCCESS] == [
        s for s in SOURCE_STEPS if s != "switch-proxy"]
    assert done.step("switch-proxy").state == StepState.SKIPPED  # no NPM: what to change is recorded
    assert done.result["proxy_host"]["manual"] == f"point the proxy host of {SITE} to http://frontend-b:8081 (bench b)"
    restore = rt.store.get(done.result["restore_job"])
    assert restore.kind == "restore" and restore.bench == "b" and restore.parent == job.id
    assert restore.params == {"from_offsite": True, "create": True, "verify": True, "at": STAMP, "moving_from": "a"}
    assert placement.bench_of(rt.redis, SITE) == "b"
    assert SITE not in placement.sites_on(rt.redis, "a")
    commands = _commands(rt.executor)  # type: ignore[arg-type]
    order = [c[:2] for c in commands if c[:1] == ("bench",)]
    assert order.index(("bench", "--site")) < order.index(("bench", "drop-site"))
    drop = next(c for c in commands if c[:2] == ("bench", "drop-site"))
    assert drop[2] == SITE and "--no-backup" in drop
    assert rt.sites.owner(SITE) is None  # released at the end
    assert done.result["target_verified"] == {"job_id": restore.id, "backup": STAMP, "tables": 12, "rows": 345}


def test_the_maintenance_and_scheduler_of_the_source_come_first(rt: Runtime) -> None:
    _move(rt)
    drive(rt, restored)
    commands = [" ".join(c) for c in _commands(rt.executor)]  # type: ignore[arg-type]
    maintenance = next(i for i, c in enumerate(commands) if "set-maintenance-mode on" in c)
    pause = next(i for i, c in enumerate(commands) if "scheduler pause" in c)
    drop = next(i for i, c in enumerate(commands) if "drop-site" in c)
    assert maintenance < pause < drop
    assert not any("set-maintenance-mode off" in c for c in commands)  # the source is dropped, not reopened


@pytest.mark.parametrize("to,words", [
    ("c", "no bench named 'c' in the fleet (benches: a, b)"),
    ("a", "the site is on bench a already; --to names another bench (b)"),
])
def test_a_move_to_an_unknown_bench_or_its_own_is_refused_before_anything_runs(rt: Runtime, to: str,
                                                                                words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        create_job(rt, "move", site=SITE, params={"to": to})
    assert words in str(caught.value)


def test_a_move_of_a_site_on_no_bench_is_refused(rt: Runtime) -> None:
    with pytest.raises(InvalidInput, match="is on no bench the fleet knows"):
        create_job(rt, "move", site="nowhere.example.com", params={"to": "b"})


def test_a_move_needs_the_off_site_store_and_a_target(rt: Runtime) -> None:
    with pytest.raises(InvalidInput, match="--to BENCH"):
        create_job(rt, "move", site=SITE, params={})
    rt.settings = rt.settings.model_copy(update={"s3_bucket": None})
    with pytest.raises(ConfigError, match="JERP_S3_BUCKET"):
        create_job(rt, "move", site=SITE, params={"to": "b"})


def test_a_site_the_target_lists_already_is_not_moved(rt: Runtime) -> None:
    job = _move(rt)
    rt.redis.sadd("jerp:fleet:bench-sites:b", SITE)  # the target's listing shows a copy (not yet a conflict)
    drive(rt, restored)
    done = rt.store.get(job.id)
    assert done.state == JobState.FAILED
    assert "bench b lists a site shop.example.com already" in done.step("check").error
    assert all(s.state == StepState.SKIPPED for s in done.steps[1:])
    assert rt.executor.calls and not any("maintenance" in " ".join(c.argv) for c in rt.executor.calls)  # type: ignore[attr-defined]


def test_a_failed_restore_on_the_target_brings_the_source_back_and_leaves_the_map(rt: Runtime) -> None:
    job = _move(rt)
    drive(rt, restore_failed)

    done = rt.store.get(job.id)
    assert done.state == JobState.FAILED
    states = _states(done)
    assert states["restore-target"] == StepState.FAILED
    assert "restore job" in done.step("restore-target").error and "on bench b ended failed" in done.step("restore-target").error
    assert states["drop-target"] == StepState.SKIPPED  # the restore dropped the copy it made
    assert states["abort-scheduler-resume"] == states["abort-maintenance-off"] == StepState.SUCCESS
    for later in ("verify-target", "switch-proxy", "switch-map", "drop-source"):
        assert states[later] == StepState.SKIPPED
    commands = [" ".join(c) for c in _commands(rt.executor)]  # type: ignore[arg-type]
    assert any("set-maintenance-mode off" in c for c in commands)
    assert any("scheduler resume" in c for c in commands)
    assert not any("drop-site" in c for c in commands)
    assert placement.bench_of(rt.redis, SITE) == "a"
    assert rt.sites.owner(SITE) is None


def test_a_copy_that_does_not_verify_is_dropped_on_the_target_before_the_source_reopens(rt: Runtime) -> None:
    job = _move(rt)
    drive(rt, lambda rt, child: restored(rt, child, problems=["tabTodo: 3 rows, the backup has 4"]))

    done = rt.store.get(job.id)
    assert done.state == JobState.FAILED
    states = _states(done)
    assert states["verify-target"] == StepState.FAILED and "tabTodo" in done.step("verify-target").error
    assert states["proxy-back"] == StepState.SKIPPED  # the proxy host was never switched
    assert states["drop-target"] == states["abort-maintenance-off"] == StepState.SUCCESS
    drop = rt.store.get(done.result["drop_job"])
    assert (drop.kind, drop.bench, drop.parent, drop.state) == ("move-drop", "b", job.id, JobState.SUCCEEDED)
    commands = [" ".join(c) for c in _commands(rt.executor)]  # type: ignore[arg-type]
    dropped = next(i for i, c in enumerate(commands) if "drop-site" in c)
    reopened = next(i for i, c in enumerate(commands) if "set-maintenance-mode off" in c)
    assert dropped < reopened  # never online on both benches
    assert placement.bench_of(rt.redis, SITE) == "a"


def restore_left_copy(rt: Runtime, child: Job) -> str:
    """The target's restore as it ends when it failed and could not drop the site it made."""
    rt.store.set_result(child.id, created_site=True)
    return JobState.FAILED


def test_a_copy_the_target_cannot_drop_is_left_unserved_the_site_marked_and_the_source_reopened(rt: Runtime) -> None:
    from tests.fake_executor import Rule

    rt.executor.rules.insert(0, Rule(lambda argv: "drop-site" in argv, exit_code=1,  # type: ignore[attr-defined]
                                     output="pymysql.err.OperationalError: Unknown server host 'db'"))
    job = _move(rt)
    drive(rt, restore_left_copy)

    done = rt.store.get(job.id)
    assert done.state == JobState.FAILED
    states = _states(done)
    assert states["restore-target"] == states["drop-target"] == StepState.FAILED
    drop = rt.store.get(done.result["drop_job"])
    assert (drop.kind, drop.bench, drop.state) == ("move-drop", "b", JobState.FAILED)
    # the way back goes on: the copy recorded, the site marked, the source back online as found
    assert states["target-copy-left"] == states["abort-scheduler-resume"] == states["abort-maintenance-off"] == \
        StepState.SUCCESS
    assert states["mark-attention"] == StepState.SKIPPED
    assert done.result["target_copy_left"]["bench"] == "b"
    mark = rt.sites.attention(SITE)
    assert mark is not None and mark["job_id"] == job.id
    assert "the copy of shop.example.com on bench b could not be dropped" in mark["reason"]
    assert "where the site is back online" in mark["reason"] and "bench drop-site shop.example.com" in mark["reason"]
    commands = [" ".join(c) for c in _commands(rt.executor)]  # type: ignore[arg-type]
    assert any("set-maintenance-mode off" in c for c in commands) and any("scheduler resume" in c for c in commands)
    assert placement.bench_of(rt.redis, SITE) == "a"
    assert rt.sites.owner(SITE) is None


def test_a_copy_left_on_the_target_while_the_proxy_may_send_the_site_there_keeps_the_source_closed(
    rt: Runtime,
) -> None:
    from jerp_jobs.workflow import StepContext

    job = _move(rt)
    rt.store.set_result(job.id, proxy_points_to="b")
    ctx = StepContext(runtime=rt, job=rt.store.get(job.id), step="target-copy-left")
    with pytest.raises(Exception, match="the source stays in maintenance"):
        move.target_copy_left(ctx)
    assert rt.sites.attention(SITE) is None


def test_a_restore_of_a_move_leaves_its_undropped_copy_to_the_move_and_marks_nothing() -> None:
    from jerp_jobs.jobs import Step
    from jerp_jobs.operations import restore

    def child(job_id: str, params: dict[str, Any]) -> Job:
        return Job(id=job_id, kind="restore", site=SITE, state="running", created_at=0.0, updated_at=0.0,
                   params=params, steps=[Step(name) for name in restore.RESTORE.plan(params)],
                   result={"created_site": True})

    moving = child("c1", {"from_offsite": True, "create": True, "moving_from": "a"})
    alone = child("c2", {"from_offsite": True, "create": True})
    assert restore.RESTORE.on_failure(moving, "drop-created-site") is None
    assert restore.RESTORE.on_failure(alone, "drop-created-site") == "mark-attention"
    assert restore.RESTORE.on_failure(moving, "restore") == "drop-created-site"


def test_a_copy_of_another_backup_is_not_switched_to(rt: Runtime) -> None:
    job = _move(rt)
    drive(rt, lambda rt, child: restored(rt, child, stamp="20261201_000000"))
    done = rt.store.get(job.id)
    assert "restored backup 20261201_000000, not this move's 20261206_061500" in done.step("verify-target").error
    assert placement.bench_of(rt.redis, SITE) == "a"


def test_the_site_is_held_for_the_move_and_its_children_run_under_that_claim(rt: Runtime) -> None:
    other = create_job(rt, "backup", site=SITE, params={})  # asked for before the move, not yet started
    job = _move(rt)
    seen: dict[str, Any] = {}

    def before_child(child: Job) -> None:
        if "other" in seen:
            return
        assert rt.sites.owner(SITE) == job.id  # the move holds the site while its child works
        seen["other"] = other.id
        with pytest.raises(LockBusy) as caught:
            runner.run_step(rt, other.id, runner.first_step(rt, other.id), worker="w2")
        seen["busy"] = str(caught.value)

    drive(rt, lambda rt, child: restored(rt, child, problems=["differs"]), before_child=before_child)
    assert job.id in seen["busy"]
    drop = rt.store.get(rt.store.get(job.id).result["drop_job"])
    assert drop.state == JobState.SUCCEEDED  # the child on the target was not kept out by its parent's claim
    assert rt.sites.owner(SITE) is None


def test_move_drop_drops_only_a_copy_a_running_move_made_on_its_target(rt: Runtime) -> None:
    job = create_job(rt, "move-drop", site=SITE, params={"bench": "a"})
    rt.dispatch(job.id, runner.first_step(rt, job.id))
    drive(rt, restored)
    done = rt.store.get(job.id)
    assert done.state == JobState.FAILED and "drops only the copy a running move made" in done.error
    assert not any("drop-site" in " ".join(c.argv) for c in rt.executor.calls)  # type: ignore[attr-defined]


def test_a_restore_of_a_move_never_restores_over_a_site_the_target_has(rt: Runtime) -> None:
    from jerp_jobs.operations.restore import create_site
    from jerp_jobs.workflow import StepContext

    child = Job(id="c1", kind="restore", site=SITE, state="running", created_at=0.0, updated_at=0.0,
                params={"from_offsite": True, "create": True, "moving_from": "a"}, steps=[])
    ctx = StepContext(runtime=rt, job=child, step="create-site")
    with pytest.raises(InvalidInput, match="exists on this bench already: a move from bench a never restores over"):
        create_site(ctx)


# -- the proxy host ------------------------------------------------------------------------------


def _with_npm(rt: Runtime, npm: FakeNpm) -> Runtime:
    rt.settings = rt.settings.model_copy(update={"npm_url": npm.url, "npm_identity": npm.identity,
                                                 "npm_secret": SecretStr(npm.secret)})
    return rt


def test_the_proxy_host_is_pointed_to_the_targets_frontend(rt: Runtime, fake_npm: FakeNpm) -> None:  # noqa: F811
    host = fake_npm.add_host(SITE, forward_host="frontend-a", forward_port=8080)
    job = _move(_with_npm(rt, fake_npm))
    drive(rt, restored)
    done = rt.store.get(job.id)
    assert done.state == JobState.SUCCEEDED, done.error
    assert (host["forward_host"], host["forward_port"]) == ("frontend-b", 8081)
    assert host["certificate_id"] and host["ssl_forced"]  # only the forward target changed
    assert done.result["proxy_host"] == {"switched": True, "npm_id": host["id"], "forward": "frontend-b:8081"}


def test_a_failure_after_the_proxy_switch_points_it_back_and_drops_the_copy(rt: Runtime, fake_npm: FakeNpm,  # noqa: F811
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    host = fake_npm.add_host(SITE, forward_host="frontend-a", forward_port=8080)

    def switched_then_failed(ctx: Any) -> None:
        move.switch_proxy(ctx)
        raise InvalidInput("NPM answered nonsense after the change")

    monkeypatch.setitem(move.STEPS, "switch-proxy", StepSpec(switched_then_failed))
    job = _move(_with_npm(rt, fake_npm))
    drive(rt, restored)
    done = rt.store.get(job.id)
    states = _states(done)
    assert states["switch-proxy"] == StepState.FAILED
    assert states["proxy-back"] == states["drop-target"] == states["abort-maintenance-off"] == StepState.SUCCESS
    assert (host["forward_host"], host["forward_port"]) == ("frontend-a", 8080)
    assert placement.bench_of(rt.redis, SITE) == "a"


def test_benches_with_one_frontend_cannot_be_told_apart_by_the_proxy(rt: Runtime, fake_npm: FakeNpm,  # noqa: F811
                                                                    tmp_path: Path) -> None:
    path = tmp_path / "same.toml"
    path.write_text(FLEET.replace('npm_forward_host = "frontend-b"\nnpm_forward_port = 8081\n', ""))
    rt = _with_npm(rt, fake_npm)
    rt.settings = rt.settings.model_copy(update={"fleet_file": path, "npm_forward_host": "frontend-a"})
    rt._fleet = load_fleet(rt.settings)
    job = _move(rt)
    drive(rt, restored)
    error = rt.store.get(job.id).step("check").error
    assert "benches a and b both forward to frontend-a:8080" in error and "npm_forward_host" in error


def test_point_proxy_host_changes_the_forward_target_only_and_creates_a_missing_host(fake_npm: FakeNpm) -> None:  # noqa: F811
    client = NpmClient(fake_npm.url, fake_npm.identity, fake_npm.secret)
    fake_npm.add_host("one.example.com", forward_host="frontend-a", forward_port=8080)
    updated = client.point_proxy_host("one.example.com", forward_host="frontend-b", forward_port=8081)
    assert (updated["forward_host"], updated["forward_port"]) == ("frontend-b", 8081)
    puts = [r for r in fake_npm.requests if r.method == "PUT"]
    assert len(puts) == 1 and set(puts[0].body) == {"forward_host", "forward_port"}
    client.point_proxy_host("one.example.com", forward_host="frontend-b", forward_port=8081)
    assert len([r for r in fake_npm.requests if r.method == "PUT"]) == 1  # again: nothing to change
    made = client.point_proxy_host("two.example.com", forward_host="frontend-b", forward_port=8081)
    assert made["forward_host"] == "frontend-b" and made["domain_names"] == ["two.example.com"]


# -- the fleet file ----------------------------------------------------------------------------


def test_a_bench_declares_where_npm_reaches_its_frontend(tmp_path: Path, settings: Any) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    fleet = read_fleet_file(path)
    assert fleet.get("b").npm_forward(settings) == ("frontend-b", 8081)
    assert fleet.get("a").npm_forward(settings) == ("frontend-a", settings.npm_forward_port)


@pytest.mark.parametrize("line,field", [
    ('npm_forward_host = "front end"', "npm_forward_host"),
    ('npm_forward_host = 3', "npm_forward_host"),
    ("npm_forward_port = 0", "npm_forward_port"),
    ("npm_forward_port = 70000", "npm_forward_port"),
    ('npm_forward_port = "80"', "npm_forward_port"),
])
def test_a_bad_forward_host_or_port_is_refused_naming_the_field(tmp_path: Path, line: str, field: str) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(f'[[bench]]\nname = "a"\nrole = "production"\n{line}\n')
    with pytest.raises(FleetError) as caught:
        read_fleet_file(path)
    assert f"bench 'a', field '{field}'" in str(caught.value)


def test_a_lost_notification_of_the_targets_restore_is_delivered_by_the_resumer(rt: Runtime) -> None:
    from jerp_jobs.resume import resume_stalled

    job = _move(rt)
    for _ in range(100):  # run the move's steps; the restore ends, and its notification is lost
        if not rt.dispatched:  # type: ignore[attr-defined]
            break
        job_id, step = rt.dispatched.pop(0)  # type: ignore[attr-defined]
        child = rt.store.get(job_id)
        if child.kind == "restore":
            runner.finish_job(rt, job_id, restored(rt, child))
        else:
            runner.run_step(rt, job_id, step, worker="w1")
    assert rt.notified  # type: ignore[attr-defined]
    rt.notified.clear()  # type: ignore[attr-defined]
    waiting = rt.store.get(job.id)
    assert waiting.step("restore-target").state == StepState.RUNNING and waiting.step("restore-target").waiting

    resume_stalled(rt)
    assert rt.store.get(job.id).step("restore-target").state == StepState.SUCCESS
    assert runner.child_done(rt, job.id, waiting.result["restore_job"]) is None  # a late duplicate: nothing
    drive(rt, restored)

    done = rt.store.get(job.id)
    assert done.state == JobState.SUCCEEDED, done.error
    assert placement.bench_of(rt.redis, SITE) == "b"


def test_the_carried_key_is_written_into_the_sites_config_keeping_the_rest_and_the_mode(tmp_path: Path) -> None:
    import json
    import stat

    from jerp_jobs.operations.restore import update_site_config

    folder = tmp_path / SITE
    folder.mkdir()
    config = folder / "site_config.json"
    config.write_text(json.dumps({"db_name": "_b", "db_password": "pw", "encryption_key": "new-one"}))
    config.chmod(0o640)

    update_site_config(tmp_path, SITE, {"encryption_key": "the-sources"})

    assert json.loads(config.read_text()) == {"db_name": "_b", "db_password": "pw", "encryption_key": "the-sources"}
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert [p.name for p in folder.iterdir()] == ["site_config.json"]  # no file left beside it

