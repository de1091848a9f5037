"""The step runner on fakeredis with a scripted executor: records, redelivery, locks, cancel."""

from __future__ import annotations

import json
import logging

import pytest
import structlog
from pydantic import SecretStr
from structlog.testing import capture_logs

from jerp_jobs import runner
from jerp_jobs.enqueue import create_job
from jerp_jobs.errors import LockBusy
from jerp_jobs.locks import site_lock_name
from jerp_jobs.runtime import Runtime

SITE = "acme.example.com"
DB = "sites/acme.example.com/private/backups/20261129_030001-acme_example_com-database.sql.gz"
CONF = "sites/acme.example.com/private/backups/20261129_030001-acme_example_com-site_config_backup.json"
SUMMARY = f"""Backup Summary for {SITE} at 2026-11-29 03:00:07.123456
Config  : ./{CONF[6:]} 944.0B
Database: ./{DB[6:]}         1.2MiB
Backup for Site {SITE} has been successfully completed"""


def cmd(*prefix: str):
    """Matches a command run by a step: the fence (``flock ... sites/.jerp-fence.X``) then ``prefix``."""

    def match(argv: tuple[str, ...]) -> bool:
        return argv[0] == "flock" and argv[6 : 6 + len(prefix)] == prefix

    match.__name__ = "fenced " + " ".join(prefix)
    return match


def _script_backup(rt: Runtime, *, gzip_ok: bool = True) -> None:
    fake = rt.executor
    fake.on(cmd("bench", "--site", SITE, "execute", "frappe.utils.get_system_timezone"), output=['"UTC"'])
    fake.on(cmd("bench", "--site", SITE, "backup"), output=SUMMARY)
    fake.on(cmd("stat"), output=[f"944 {CONF}", f"1258291 {DB}"])
    fake.on(cmd("sha256sum"), output=[f"{'a' * 64}  {CONF}", f"{'b' * 64}  {DB}"])
    fake.on(cmd("gzip", "-t"), exit_code=0 if gzip_ok else 1, output=[] if gzip_ok else ["gzip: unexpected end of file"])


def test_backup_job_records_its_step_and_a_verified_manifest(fake_runtime: Runtime) -> None:
    _script_backup(fake_runtime)
    job = create_job(fake_runtime, "backup", site=SITE, params={"with_files": False})
    result = runner.run_step(fake_runtime, job.id, "backup", worker="w1")
    assert result.next_step == "upload-offsite"
    for step in ("upload-offsite", "prune-local"):  # no bucket: no copy; local-only retention prunes
        result = runner.run_step(fake_runtime, job.id, step, worker="w1")
    assert result.outcome == "finished" and result.detail == "succeeded"
    done = fake_runtime.store.get(job.id)
    assert done.state == "succeeded" and done.step("backup").state == "success"
    assert [s.state for s in done.steps] == ["success", "skipped", "success"]
    assert done.result["local_only"] is True and done.result["local_removed"] == []
    manifest = done.result["backup"]
    assert manifest["timestamp"] == "20261129_030001"
    assert [(a["kind"], a["size"], a["sha256"][:1]) for a in manifest["artifacts"]] == [
        ("config", 944, "a"),
        ("database", 1258291, "b"),
    ]
    stored = fake_runtime.redis.zrange(f"jerp:backups:{SITE}", 0, -1)
    assert json.loads(stored[0])["job_id"] == job.id
    assert fake_runtime.sites.owner(SITE) is None  # the claim ended with the job


def test_truncated_dump_fails_the_backup(fake_runtime: Runtime) -> None:
    _script_backup(fake_runtime, gzip_ok=False)
    job = create_job(fake_runtime, "backup", site=SITE)
    runner.run_step(fake_runtime, job.id, "backup", worker="w1")
    done = fake_runtime.store.get(job.id)
    assert done.state == "failed"
    assert "not a complete gzip stream" in done.step("backup").error
    assert "unexpected end of file" in done.step("backup").output


def test_failed_command_records_exit_code_and_output_tail(fake_runtime: Runtime) -> None:
    fake_runtime.executor.on(cmd("bench"), exit_code=1, output=["Traceback ...", "Backup failed for Site acme.example.com"])
    job = create_job(fake_runtime, "backup", site=SITE)
    runner.run_step(fake_runtime, job.id, "backup", worker="w1")
    step = fake_runtime.store.get(job.id).step("backup")
    assert (step.state, step.exit_code) == ("failed", 1)
    assert step.output.endswith("Backup failed for Site acme.example.com")
    assert "exited 1" in fake_runtime.store.get(job.id).error


def test_second_delivery_of_a_finished_step_runs_nothing(fake_runtime: Runtime) -> None:
    _script_backup(fake_runtime)
    job = create_job(fake_runtime, "backup", site=SITE)
    runner.run_step(fake_runtime, job.id, "backup", worker="w1")
    calls = len(fake_runtime.executor.calls)
    again = runner.run_step(fake_runtime, job.id, "backup", worker="w2")
    assert again.outcome == "ignored"
    assert len(fake_runtime.executor.calls) == calls
    assert fake_runtime.store.get(job.id).step("backup").attempts == 1


def test_delivery_while_the_same_step_runs_elsewhere_steps_aside(fake_runtime: Runtime) -> None:
    job = create_job(fake_runtime, "backup", site=SITE)
    held = fake_runtime.locks.try_acquire(site_lock_name(SITE), job_id=job.id, step="backup")
    assert held is not None
    result = runner.run_step(fake_runtime, job.id, "backup", worker="w2")
    assert result.outcome == "ignored" and fake_runtime.executor.calls == []
    held.release()


def test_second_job_on_a_busy_site_waits_naming_the_first(fake_runtime: Runtime) -> None:
    first = create_job(fake_runtime, "backup", site=SITE)
    fake_runtime.sites.claim(SITE, first.id)
    second = create_job(fake_runtime, "clear-cache", site=SITE)
    with pytest.raises(LockBusy, match=first.id):
        runner.run_step(fake_runtime, second.id, "clear-cache", worker="w1")
    assert fake_runtime.executor.calls == []
    assert fake_runtime.store.get(second.id).state == "queued"


def test_step_whose_worker_died_is_run_again_when_its_lock_is_free(fake_runtime: Runtime) -> None:
    _script_backup(fake_runtime)
    job = create_job(fake_runtime, "backup", site=SITE)
    fake_runtime.sites.claim(SITE, job.id)
    fake_runtime.store.start_step(job.id, "backup", worker="dead-worker")  # then SIGKILL; its lock expired
    runner.run_step(fake_runtime, job.id, "backup", worker="w2")
    step = fake_runtime.store.get(job.id).step("backup")
    assert (step.state, step.attempts, step.worker) == ("success", 2, "w2")


def test_cancel_requested_before_a_step_ends_the_job_cancelled(fake_runtime: Runtime) -> None:
    job = create_job(fake_runtime, "backup", site=SITE)
    fake_runtime.store.request_cancel(job.id)
    result = runner.run_step(fake_runtime, job.id, "backup", worker="w1")
    done = fake_runtime.store.get(job.id)
    assert result.detail == "cancelled" and done.state == "cancelled"
    assert done.step("backup").state == "skipped" and fake_runtime.executor.calls == []


def test_site_needing_attention_is_not_touched(fake_runtime: Runtime) -> None:
    fake_runtime.sites.mark_attention(SITE, job_id="earlier", reason="restore after failed migrate failed")
    job = create_job(fake_runtime, "backup", site=SITE)
    runner.run_step(fake_runtime, job.id, "backup", worker="w1")
    done = fake_runtime.store.get(job.id)
    assert done.state == "failed" and "needs attention" in done.error
    assert fake_runtime.executor.calls == []


def test_bench_wide_step_takes_the_bench_lock_not_a_site_lock(fake_runtime: Runtime) -> None:
    fake_runtime.executor.on(cmd("bench", "build"), output=["done"])
    held = fake_runtime.locks.try_acquire("bench:jerp", job_id="other-build", step="build-assets")
    job = create_job(fake_runtime, "build-assets")
    with pytest.raises(LockBusy, match="other-build"):
        runner.run_step(fake_runtime, job.id, "build-assets", worker="w1")
    held.release()
    assert runner.run_step(fake_runtime, job.id, "build-assets", worker="w1").detail == "succeeded"


def test_commands_are_logged_with_context_and_without_secrets(fake_runtime: Runtime) -> None:
    from jerp_jobs.log import redactor
    from jerp_jobs.workflow import StepContext

    redactor.add(["T0p-Secret-Root"])
    fake_runtime.executor.on(cmd("bench"), output=["ok"])
    job = create_job(fake_runtime, "backup", site=SITE)
    ctx = StepContext(runtime=fake_runtime, job=job, step="backup")
    previous = structlog.get_config()
    # the output lines are DEBUG events: seen whatever level an earlier test configured
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as logs:
            ctx.run(["bench", "new-site", SITE, "--db-root-password", "T0p-Secret-Root"])
    finally:
        structlog.configure(**previous)
    assert "T0p-Secret-Root" not in json.dumps(logs)
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("command.start", "info"), ("command.output", "debug"), ("command.end", "info")
    ]
    assert logs[-1]["output_lines"] == 1
    assert logs[0]["argv"][-1] == "***"


def test_every_command_of_a_site_step_runs_inside_the_site_fence(fake_runtime: Runtime) -> None:
    _script_backup(fake_runtime)
    job = create_job(fake_runtime, "backup", site=SITE)
    runner.run_step(fake_runtime, job.id, "backup", worker="w1")
    fences = {argv[:6] for argv in fake_runtime.executor.argvs}
    assert fences == {("flock", "-w", "7199", "-E", "75", f"sites/.jerp-fence.{SITE}")}
    # one limit: the fence wait counts inside the command's own timeout, never beside it
    assert {call.timeout for call in fake_runtime.executor.calls} == {7200}
    assert {call.holders_of for call in fake_runtime.executor.calls} == {f"sites/.jerp-fence.{SITE}"}


def test_a_busy_fence_fails_the_step_naming_it(fake_runtime: Runtime) -> None:
    fake_runtime.executor.on(cmd("bench"), exit_code=75)
    job = create_job(fake_runtime, "backup", site=SITE)
    runner.run_step(fake_runtime, job.id, "backup", worker="w1")
    assert "another process still works on acme.example.com" in fake_runtime.store.get(job.id).error


def test_next_step_is_published_before_the_guard_is_set(fake_runtime: Runtime) -> None:
    for name in ("set-maintenance-mode", "scheduler"):
        fake_runtime.executor.on(cmd("bench", "--site", SITE, name))
    fake_runtime.executor.on(cmd("grep"), exit_code=1).on(cmd("flock"))  # the site as found; no foreign lock
    job = create_job(fake_runtime, "migrate", site=SITE)
    first = runner.run_step(fake_runtime, job.id, "maintenance-on", worker="w1")
    assert first.next_step == "scheduler-pause" and fake_runtime.dispatched == [(job.id, "scheduler-pause")]
    assert fake_runtime.store.advanced(job.id, "maintenance-on")
    again = runner.run_step(fake_runtime, job.id, "maintenance-on", worker="w2")  # a redelivery
    assert again.outcome == "ignored" and fake_runtime.dispatched == [(job.id, "scheduler-pause")]


def test_bench_wide_step_of_a_site_job_runs_in_the_bench_fence(fake_runtime: Runtime) -> None:
    fake_runtime.executor.on(cmd("bench", "build"), output=["done"])
    fake_runtime.executor.on(cmd("test", "-L", "sites/assets"), exit_code=1)  # the bench's own assets
    job = create_job(fake_runtime, "migrate", site=SITE)
    runner.run_step(fake_runtime, job.id, "build-assets", worker="w1")
    assert fake_runtime.executor.argvs[0][5] == "sites/.jerp-fence.bench"
    assert fake_runtime.store.get(job.id).step("build-assets").state == "success"


def test_transient_failure_is_retried_with_backoff_then_fails_when_attempts_run_out(fake_runtime: Runtime) -> None:
    from jerp_jobs.errors import TransientError
    from jerp_jobs.workflow import Catalog, StepSpec, simple

    calls: list[int] = []

    def flaky(ctx) -> None:
        calls.append(1)
        raise TransientError("store unreachable")

    flaky_kind = simple("test-flaky", [("flaky", StepSpec(flaky, retries=2))], needs_site=False)
    fake_runtime.workflows = Catalog([*fake_runtime.workflows.values(), flaky_kind])
    job = create_job(fake_runtime, "test-flaky")
    first = runner.run_step(fake_runtime, job.id, "flaky", worker="w1")
    second = runner.run_step(fake_runtime, job.id, "flaky", worker="w1")
    assert (first.outcome, second.outcome) == ("retry", "retry")
    assert 10 <= first.countdown <= 12 and 20 <= second.countdown <= 24  # JERP_RETRY_BACKOFF doubling
    record = fake_runtime.store.get(job.id)
    assert record.step("flaky").state == "pending" and "attempt 2 of 3 failed" in record.step("flaky").error
    assert "store unreachable" in record.notes["retrying"]
    last = runner.run_step(fake_runtime, job.id, "flaky", worker="w1")
    assert last.detail == "failed" and len(calls) == 3
    assert fake_runtime.store.get(job.id).step("flaky").attempts == 3


def test_cancel_before_migrate_brings_the_site_back_online(fake_runtime: Runtime) -> None:
    fake_runtime.executor.on(cmd("bench"), output=["ok"]).on(cmd("grep"), exit_code=1).on(cmd("flock"))
    job = create_job(fake_runtime, "migrate", site=SITE)
    runner.run_step(fake_runtime, job.id, "maintenance-on", worker="w1")
    fake_runtime.store.request_cancel(job.id)
    # the queued next step finds the cancel: instead of pausing the scheduler, the abort path
    result = runner.run_step(fake_runtime, job.id, "scheduler-pause", worker="w1")
    assert result.next_step == "abort-scheduler-resume"
    for step in ("abort-scheduler-resume", "abort-maintenance-off"):
        runner.run_step(fake_runtime, job.id, step, worker="w1")
    done = fake_runtime.store.get(job.id)
    assert done.state == "cancelled"
    assert done.step("migrate").state == "skipped" and done.step("abort-maintenance-off").state == "success"
    commands = [" ".join(a[6:]) for a in fake_runtime.executor.argvs]
    assert commands[-1] == f"bench --site {SITE} set-maintenance-mode off"
    assert not any(c.startswith("bench") and "migrate" in c.split() for c in commands)


def test_cancel_of_a_job_without_a_safe_path_just_ends_it(fake_runtime: Runtime) -> None:
    fake_runtime.executor.on(cmd("bench"), output=["ok"])
    job = create_job(fake_runtime, "backup-all")
    fake_runtime.store.request_cancel(job.id)
    result = runner.run_step(fake_runtime, job.id, "discover", worker="w1")
    assert result.detail == "cancelled" and fake_runtime.executor.calls == []


@pytest.mark.parametrize("made", [True, False], ids=["site-made", "nothing-made"])
def test_a_cancelled_provision_says_what_its_recovery_did(settings, fake_redis, fake_executor, made: bool) -> None:
    """A provision cancelled after new-site drops the half-made site: its final message says so
    (a provision has no site to leave online)."""
    from jerp_jobs.bootstrap import build_runtime
    from tests.conftest import recording

    settings = settings.model_copy(update={"mariadb_root_password": SecretStr("root-Secret-1"),
                                           "frappe_admin_password": SecretStr("Adm1n-Secret-1")})
    fake_runtime = recording(build_runtime(settings, client=fake_redis, executor=fake_executor))
    exists = {"site": False}

    def new_site(argv: tuple[str, ...]) -> bool:
        if cmd("bench", "new-site")(argv):
            exists["site"] = made
            return True
        return False

    fake = fake_runtime.executor
    fake.on(lambda argv: cmd("test")(argv) and not exists["site"], exit_code=1).on(cmd("test"))
    fake.on(cmd("cat", "sites/apps.txt"), output=["frappe"]).on(new_site, output=["Site created"]).on(cmd("bench"))
    job = create_job(fake_runtime, "provision", site=SITE, params={"apps": []})
    runner.run_step(fake_runtime, job.id, "check-new", worker="w1")
    runner.run_step(fake_runtime, job.id, "new-site", worker="w1")
    fake_runtime.store.request_cancel(job.id)
    result = runner.run_step(fake_runtime, job.id, "scheduler-enable", worker="w1")
    assert result.next_step == "drop-site"
    runner.run_step(fake_runtime, job.id, "drop-site", worker="w1")
    done = fake_runtime.store.get(job.id)
    assert done.state == "cancelled"
    if made:
        assert done.step("drop-site").state == "success"
        assert done.error == f"cancelled by an operator; the half-made site {SITE} was dropped"
    else:
        assert done.step("drop-site").state == "skipped"
        assert done.error == f"cancelled by an operator; no site {SITE} was made"
    assert "left online" not in done.error
    dropped = [a for a in fake_executor.argvs if "drop-site" in a]
    assert len(dropped) == (1 if made else 0)


def test_a_step_run_inline_hands_its_successor_to_the_caller_with_the_guard_set(fake_runtime: Runtime) -> None:
    import time

    _script_backup(fake_runtime)
    job = create_job(fake_runtime, "backup", site=SITE, params={"with_files": False})
    result = runner.run_step(fake_runtime, job.id, "backup", worker="w1", inline_until=time.monotonic() + 60)
    assert (result.outcome, result.next_step) == ("inline", "upload-offsite")
    assert fake_runtime.dispatched == []  # nothing published: the caller runs it
    assert fake_runtime.store.advanced(job.id, "backup")
    # a second delivery of the same step finds it ended and the job moved past it
    again = runner.run_step(fake_runtime, job.id, "backup", worker="w2", inline_until=time.monotonic() + 60)
    assert again.outcome == "ignored" and fake_runtime.dispatched == []
    # past the budget, the successor is published as before
    result = runner.run_step(fake_runtime, job.id, "upload-offsite", worker="w1", inline_until=time.monotonic() - 1)
    assert result.outcome == "advanced" and fake_runtime.dispatched == [(job.id, "prune-local")]


def test_a_step_run_inline_starts_without_reading_the_record_again(fake_runtime: Runtime) -> None:
    """The job as the step before left it (its result too) starts the next step; a record that
    changed since (a cancel) is read again."""
    import time

    from jerp_jobs.workflow import Catalog, StepSpec, simple

    seen: list[dict] = []

    def first(ctx) -> None:  # type: ignore[no-untyped-def]
        ctx.runtime.store.set_result(ctx.job.id, made="by the first step")

    def second(ctx) -> None:  # type: ignore[no-untyped-def]
        seen.append(dict(ctx.job.result))

    rt = fake_runtime
    rt.workflows = Catalog([simple("demo", [("one", StepSpec(first)), ("two", StepSpec(second)),
                                            ("three", StepSpec(second))], needs_site=False)])
    job = rt.store.create("demo", ["one", "two", "three"])
    reads: list[str] = []
    original = rt.store.read
    rt.store.read = lambda job_id: reads.append(job_id) or original(job_id)  # type: ignore[method-assign]
    until = time.monotonic() + 60
    result = runner.run_step(rt, job.id, "one", worker="w1", inline_until=until)
    assert result.outcome == "inline" and result.known is not None and reads == [job.id]
    result = runner.run_step(rt, job.id, "two", worker="w1", inline_until=until, known=result.known)
    assert reads == [job.id]  # no second read
    assert seen == [{"made": "by the first step"}]
    assert rt.store.get(job.id).step("two").state == "success"
    rt.store.request_cancel(job.id)  # the record changed since the job was known
    done = runner.run_step(rt, job.id, "three", worker="w1", inline_until=until, known=result.known)
    assert len(reads) > 1  # read again: the start script saw the change
    assert done.outcome == "finished" and rt.store.get(job.id).state == "cancelled" and len(seen) == 1


def test_a_step_starts_in_one_script_that_refuses_a_record_changed_since_it_was_read(fake_runtime: Runtime) -> None:
    from jerp_jobs.jobs import StepKeys

    job = create_job(fake_runtime, "backup", site=SITE, params={"with_files": False})
    read, fields = fake_runtime.store.read(job.id)
    fake_runtime.store.start_step(job.id, "backup", worker="other")  # another delivery got there first
    keys = StepKeys(lock="jerp:lock:site:" + SITE, lock_value="v", lock_ttl_ms=60000)
    outcome, _ = fake_runtime.store.begin_step(read, fields, read.step("backup"), worker="w1", keys=keys)
    assert outcome == "changed"
    assert fake_runtime.locks.holder(site_lock_name(SITE)) is None  # nothing taken
