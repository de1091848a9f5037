"""Typed bench failures: the class of a failed bench command, read from its exit status and
output (real Frappe output where it was captured), and the parsers of ``doctor`` and of the
site's switches. Plus how the migrate workflow routes each class, and its build decision, with a
scripted executor."""

from __future__ import annotations

import pytest

from jerp_jobs import bench
from jerp_jobs.enqueue import create_job
from jerp_jobs.errors import CommandFailed, CommandTimeout, ForeignLockHeld, NoWorkers, OutputParseError
from tests.fake_executor import FakeExecutor
from jerp_jobs.bootstrap import build_runtime
from jerp_jobs.runtime import Runtime
from jerp_jobs.settings import Settings, load_settings

SITE = "acme.example.com"

# Captured from Frappe 15.55.1 (frappe-bench 5.31.1) while another process held the lock.
REAL_MIGRATE_LOCK = """\
Migrating acme.example.com
Traceback (most recent call last):
  File "/home/frappe/frappe-bench/apps/frappe/frappe/utils/synchronization.py", line 41, in filelock
    with _StrongFileLock(lock_path, timeout=timeout):
  File "/home/frappe/frappe-bench/env/lib/python3.11/site-packages/filelock/_api.py", line 297, in __enter__
    self.acquire()
filelock._error.Timeout: The file lock '/home/frappe/frappe-bench/sites/acme.example.com/locks/bench_migrate.lock' could not be acquired.

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/home/frappe/frappe-bench/apps/frappe/frappe/migrate.py", line 203, in run
    with filelock("bench_migrate", timeout=1):
frappe.utils.file_lock.LockTimeoutError: Failed to aquire lock: bench_migrate. Lock may be held by another process.<br>You can manually remove the lock if you think it's safe: /home/frappe/frappe-bench/sites/acme.example.com/locks/bench_migrate.lock
"""

BUILD_LOCK = (
    "frappe.utils.file_lock.LockTimeoutError: Failed to aquire lock: bench_build. Lock may be held by another "
    "process.<br>You can manually remove the lock if you think it's safe: /home/frappe/frappe-bench/config/"
    "bench_build.lock"
)
SERVICES_DOWN = """\
Service redis_cache is not running.

Cannot run bench migrate without the services running.
If you are running bench in development mode, make sure that bench is running:

$ bench start

Otherwise, check the server logs and ensure that all the required services are running.
"""
DB_DOWN_PYMYSQL = (
    "pymysql.err.OperationalError: (2003, \"Can't connect to MySQL server on '127.0.0.1' "
    "([Errno 111] Connection refused)\")"
)
DB_DOWN_CLIENT = "ERROR 2002 (HY000): Can't connect to server on '127.0.0.1' (115)"
DB_GONE = "pymysql.err.OperationalError: (2013, 'Lost connection to MySQL server during query')"
PATCH_FAILED = """\
Executing frappe.patches.v15_0.some_patch in acme.example.com (_1a2b3c4d)
Traceback (most recent call last):
  File "apps/frappe/frappe/utils/bench_helper.py", line 114, in <module>
    main()
frappe.exceptions.ValidationError: Injected failure in migrate for site acme.example.com (phase 2: patch)
"""


@pytest.mark.parametrize(
    ("exit_code", "output", "timed_out", "kind", "lock"),
    [
        pytest.param(1, REAL_MIGRATE_LOCK, False, "lock-held", "bench_migrate", id="migrate-lock-real"),
        pytest.param(1, BUILD_LOCK, False, "lock-held", "bench_build", id="build-lock"),
        pytest.param(1, "frappe.exceptions.LockTimeoutError: Failed to aquire lock: site_restore", False,
                     "lock-held", "site_restore", id="restore-lock-short"),
        pytest.param(1, "Site nosuch.example.com does not exist!\n", False, "site-missing", None, id="site-missing"),
        pytest.param(1, "Please specify --site sitename\n", False, "no-site", None, id="no-site"),
        pytest.param(1, "WARN: You should not run this command as root\n", False, "run-as-root", None, id="root"),
        pytest.param(1, SERVICES_DOWN, False, "services-down", None, id="redis-down-migrate"),
        pytest.param(1, "redis.exceptions.ConnectionError: Error 111 connecting to 127.0.0.1:13000.", False,
                     "services-down", None, id="redis-down-traceback"),
        pytest.param(1, DB_DOWN_PYMYSQL, False, "database-unreachable", None, id="db-refused"),
        pytest.param(1, DB_DOWN_CLIENT, False, "database-unreachable", None, id="db-client-refused"),
        pytest.param(1, DB_GONE, False, "database-unreachable", None, id="db-lost"),
        pytest.param(None, "Migrating acme.example.com\n", True, "timed-out", None, id="timed-out"),
        pytest.param(-15, "", False, "killed", None, id="sigterm"),
        pytest.param(137, "", False, "killed", None, id="sigkill-shell"),
        pytest.param(75, "", False, "fence-busy", None, id="fence-busy"),
        pytest.param(1, PATCH_FAILED, False, "command-error", None, id="patch-failed"),
        pytest.param(2, "Error: No such command 'frobnicate'.", False, "command-error", None, id="usage"),
    ],
)
def test_classify_failure(exit_code: int | None, output: str, timed_out: bool, kind: str, lock: str | None) -> None:
    failure = bench.classify_failure(exit_code, output, timed_out=timed_out)
    assert failure.kind == kind and failure.kind in bench.FAILURE_KINDS
    assert failure.lock == lock
    assert failure.as_dict()["class"] == kind and failure.summary


def test_a_held_lock_names_the_file_frappe_printed_and_changed_nothing() -> None:
    failure = bench.classify_failure(1, REAL_MIGRATE_LOCK)
    assert failure.lock_path == "/home/frappe/frappe-bench/sites/acme.example.com/locks/bench_migrate.lock"
    assert failure.changed_nothing and failure.summary == "another process holds bench_migrate"
    assert not bench.classify_failure(1, PATCH_FAILED).changed_nothing


def test_errors_carry_their_class() -> None:
    assert CommandFailed("x", exit_code=1, output_tail=REAL_MIGRATE_LOCK).failure.lock == "bench_migrate"
    assert CommandFailed("x", exit_code=1, output_tail=PATCH_FAILED).failure.kind == "command-error"
    assert CommandTimeout("slow", timeout=60).failure.kind == "timed-out"
    held = ForeignLockHeld("another process holds bench_migrate", lock="bench_migrate", waited_s=5)
    assert isinstance(held, CommandFailed) and held.failure.kind == "lock-held" and held.fields["waited_s"] == 5
    assert NoWorkers("no worker").failure.kind == "no-workers"


# Frappe 15's `bench --site X doctor` (frappe/utils/doctor.py) while the site is in maintenance.
DOCTOR = """\
-----Checking scheduler status-----
Maintenance mode on for acme.example.com
Scheduler paused for acme.example.com
Scheduler inactive for acme.example.com
Workers online: {n}
-----acme.example.com Jobs-----
Queue: long
Number of Jobs:  1
Methods:
frappe.search.website_search.build_index_for_all_routes : 1
------------
"""


def test_doctor_workers_online() -> None:
    assert bench.doctor(SITE) == ["bench", "--site", SITE, "doctor"]
    assert bench.parse_workers_online(DOCTOR.format(n=0)) == 0
    assert bench.parse_workers_online(DOCTOR.format(n=3)) == 3
    with pytest.raises(OutputParseError, match="Workers online"):
        bench.parse_workers_online("-----Checking scheduler status-----\n")


def test_site_switches_are_read_without_the_rest_of_site_config() -> None:
    argv = bench.site_switches(SITE)
    assert argv[:3] == ["grep", "-E", "-o"] and argv[-1] == f"sites/{SITE}/site_config.json"
    assert bench.parse_site_switches('"maintenance_mode": 1\n"pause_scheduler": true\n') == {
        "maintenance_mode": True, "pause_scheduler": True}
    assert bench.parse_site_switches('"maintenance_mode": 0\n') == {"maintenance_mode": False, "pause_scheduler": False}
    assert bench.parse_site_switches("") == {"maintenance_mode": False, "pause_scheduler": False}
    with pytest.raises(OutputParseError):
        bench.parse_site_switches('"maintenance_mode": "maybe"\n')


def test_frappe_lock_files_and_probe() -> None:
    assert bench.lock_file("bench_migrate", SITE) == f"sites/{SITE}/locks/bench_migrate.lock"
    assert bench.lock_file("bench_build") == "config/bench_build.lock"
    assert bench.lock_probe("bench_migrate", SITE) == [
        "flock", "-n", "-E", str(bench.LOCK_HELD), f"sites/{SITE}/locks/bench_migrate.lock", "true"]
    with pytest.raises(Exception, match="invalid"):
        bench.lock_file("../etc", SITE)


# -- the migrate workflow decides from the class ---------------------------------------------


def fenced(*prefix: str):
    def match(argv: tuple[str, ...]) -> bool:
        return argv[0] == "flock" and argv[6: 6 + len(prefix)] == prefix

    match.__name__ = "fenced " + " ".join(prefix)
    return match


def _runtime(fake_redis, **overrides: object) -> Runtime:
    values: dict = {"broker_url": "redis://127.0.0.1:1/0", "executor": "local", "bench_dir": "/nonexistent-bench",
                     "lock_ttl": 5, **overrides}
    settings: Settings = load_settings(_env_file=None, **values)
    rt = build_runtime(settings, client=fake_redis, executor=FakeExecutor())
    rt.dispatched = []  # type: ignore[attr-defined]
    rt.dispatch = lambda job_id, step: rt.dispatched.append((job_id, step))  # type: ignore[attr-defined]
    return rt


def test_a_migrate_meeting_a_foreign_lock_is_never_restored(fake_redis) -> None:
    from jerp_jobs import runner

    rt = _runtime(fake_redis)
    rt.executor.on(fenced("bench", "--site", SITE, "migrate"), exit_code=1, output=REAL_MIGRATE_LOCK)
    rt.executor.on(fenced("flock", "-n"), exit_code=bench.LOCK_HELD)  # still held at every look
    job = create_job(rt, "migrate", site=SITE, params={"lock_wait": 0.2, "lock_poll": 0.05})
    outcome = runner.run_step(rt, job.id, "migrate", worker="w1")
    record = rt.store.get(job.id)
    assert outcome.next_step == "as-found-scheduler"  # not restore-pre-migrate
    assert record.result["failure"] == {
        "step": "migrate", "class": "lock-held", "summary": "another process holds bench_migrate",
        "lock": "bench_migrate", "lock_path": f"/home/frappe/frappe-bench/sites/{SITE}/locks/bench_migrate.lock"}
    assert "another process holds bench_migrate" in record.step("migrate").error


def test_other_migrate_failures_still_restore(fake_redis) -> None:
    from jerp_jobs import runner

    rt = _runtime(fake_redis)
    rt.executor.on(fenced("bench", "--site", SITE, "migrate"), exit_code=1, output=PATCH_FAILED)
    job = create_job(rt, "migrate", site=SITE)
    assert runner.run_step(rt, job.id, "migrate", worker="w1").next_step == "restore-pre-migrate"
    assert rt.store.get(job.id).result["failure"]["class"] == "command-error"


def test_a_migrate_refused_for_redis_down_is_not_restored(fake_redis) -> None:
    from jerp_jobs import runner

    rt = _runtime(fake_redis)
    rt.executor.on(fenced("bench", "--site", SITE, "migrate"), exit_code=1, output=SERVICES_DOWN)
    job = create_job(rt, "migrate", site=SITE)
    assert runner.run_step(rt, job.id, "migrate", worker="w1").next_step == "abort-scheduler-resume"


@pytest.mark.parametrize(
    ("overrides", "params", "reason"),
    [
        pytest.param({"executor": "docker"}, {}, "assets come from the image", id="auto-docker"),
        pytest.param({}, {"no_build": True}, "--no-build", id="no-build"),
        pytest.param({"build_assets": "never"}, {}, "JERP_BUILD_ASSETS=never", id="never"),
    ],
)
def test_build_assets_is_skipped_with_its_reason(fake_redis, overrides: dict, params: dict, reason: str) -> None:
    from jerp_jobs import runner

    rt = _runtime(fake_redis, **overrides)
    job = create_job(rt, "migrate", site=SITE, params=params)
    runner.run_step(rt, job.id, "build-assets", worker="w1")
    record = rt.store.get(job.id)
    assert record.step("build-assets").state == "skipped"
    assert reason in record.result["assets"]["reason"] and reason in record.step("build-assets").output
    assert not any("build" in argv for argv in rt.executor.argvs)  # bench build never ran


def test_always_builds_even_with_the_docker_executor(fake_redis) -> None:
    from jerp_jobs import runner

    rt = _runtime(fake_redis, executor="docker", build_assets="always")
    rt.executor.on(fenced("bench", "build"), exit_code=1, output="error Command failed with exit code 1.")
    job = create_job(rt, "migrate", site=SITE)
    runner.run_step(rt, job.id, "build-assets", worker="w1")
    assert rt.store.get(job.id).step("build-assets").state == "failed"


def test_no_build_reaches_the_canary_of_a_migrate_all(fake_redis) -> None:
    from jerp_jobs.operations.fanout import _start_child

    rt = _runtime(fake_redis)
    parent = create_job(rt, "migrate-all", params={"no_build": True, "sites": [SITE]})
    rt.store.set_result(parent.id, canary=SITE)
    entry = _start_child(rt, rt.store.get(parent.id), SITE)
    child = rt.store.get(entry["job_id"])
    assert child.params == {"build_assets": True, "no_build": True}


def test_no_build_must_be_a_flag(fake_redis) -> None:
    from jerp_jobs.errors import InvalidInput

    rt = _runtime(fake_redis)
    with pytest.raises(InvalidInput, match="no_build"):
        create_job(rt, "migrate", site=SITE, params={"no_build": "yes"})
