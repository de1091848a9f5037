"""jerpctl through click's CliRunner on a fakeredis runtime: every command and exit code."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from jerp_jobs.cli import EXIT_BROKER, EXIT_JOB_FAILED, EXIT_OK, EXIT_USAGE, Ctx, cli
from jerp_jobs.runtime import Runtime

SITE = "acme.example.com"


@pytest.fixture
def run(fake_runtime: Runtime):
    def invoke(*args: str):
        return CliRunner().invoke(cli, list(args), obj=Ctx(rt=fake_runtime), catch_exceptions=False)

    return invoke


def _finish(rt: Runtime, job_id: str, state: str, **steps: str) -> None:
    for name, step_state in steps.items():
        record = rt.store.start_step(job_id, name, worker="w")
        rt.store.finish_step(job_id, record, step_state, exit_code=1 if step_state == "failed" else 0,
                             output="line 1\nTraceback: boom" if step_state == "failed" else "")
    rt.store.set_state(job_id, state, error="boom" if state != "succeeded" else None)


@pytest.mark.parametrize(
    ("args", "kind", "site", "params"),
    [
        (["provision", SITE, "--app", "erpnext"], "provision", SITE, {"apps": ["erpnext"]}),
        (["backup", SITE, "--no-files", "--offsite"], "backup", SITE, {"with_files": False, "offsite": True}),
        (["backup-all", "--concurrency", "3"], "backup-all", None, {"with_files": True, "concurrency": 3}),
        (["migrate", SITE], "migrate", SITE, {}),
        (["migrate-all", "--canary", SITE, "--budget", "2"], "migrate-all", None,
         {"canary": SITE, "budget": 2, "concurrency": None}),
        (["restore", SITE, "--db", "20261129_030001-acme_example_com-database.sql.gz"], "restore", SITE,
         {"db": f"{SITE}/private/backups/20261129_030001-acme_example_com-database.sql.gz"}),
        (["restore", SITE, "--from-offsite", "--at", "2026-11-28"], "restore", SITE,
         {"from_offsite": True, "at": "20261128_235959"}),
        (["drill", SITE], "drill", SITE, {}),
        (["prune", SITE], "prune", SITE, {}),
        (["clear-cache", SITE], "clear-cache", SITE, {}),
        (["build-assets"], "build-assets", None, {}),
    ],
)
def test_enqueue_records_the_job_publishes_its_first_step_and_prints_its_id(
    run, fake_runtime: Runtime, args: list[str], kind: str, site: str | None, params: dict
) -> None:
    result = run("enqueue", *args)
    assert result.exit_code == EXIT_OK, result.output
    job = fake_runtime.store.get(result.output.strip())
    assert (job.kind, job.site, job.state) == (kind, site, "queued")
    assert params.items() <= job.params.items()
    assert fake_runtime.dispatched == [(job.id, job.steps[0].name)]


def test_enqueue_json_is_stable(run) -> None:
    result = run("--json", "enqueue", "migrate", SITE)
    data = json.loads(result.output)
    assert set(data) == {"job_id", "kind", "site", "state"} and data["kind"] == "migrate"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["enqueue", "backup", "Acme.com"], "must be lowercase"),
        (["enqueue", "migrate", "acme.com;reboot"], "only letters a-z"),
        (["enqueue", "restore", SITE, "--db", "../../etc/passwd.sql.gz"], "contains '..'"),
        (["enqueue", "restore", SITE, "--db", "other.example.com/private/backups/x.sql.gz"], "outside the backup folder"),
        (["enqueue", "restore", SITE], "needs the database dump"),
        (["enqueue", "restore", SITE, "--from-offsite", "--at", "soon"], "--at"),
        (["enqueue", "migrate-all", "--concurrency", "0"], "0"),
        (["enqueue", "provision", SITE, "--app", "Bad App"], "invalid app name"),
        (["enqueue", "nonsense"], "No such command"),
        (["status", "nosuchjob"], "no job 'nosuchjob'"),
    ],
)
def test_bad_input_exits_2_naming_the_problem_and_enqueues_nothing(
    run, fake_runtime: Runtime, args: list[str], message: str
) -> None:
    result = run(*args)
    assert result.exit_code == EXIT_USAGE
    assert message in result.output
    assert fake_runtime.dispatched == [] and fake_runtime.store.list() == []


def test_jobs_lists_newest_first_with_filters(run, fake_runtime: Runtime) -> None:
    first = run("enqueue", "backup", SITE).output.strip()
    second = run("enqueue", "migrate", "other.example.com").output.strip()
    _finish(fake_runtime, first, "succeeded", backup="success")
    table = run("jobs").output
    assert table.index(second) < table.index(first) and "succeeded" in table
    assert [j["id"] for j in json.loads(run("--json", "jobs", "--site", SITE).output)] == [first]
    assert [j["id"] for j in json.loads(run("--json", "jobs", "--state", "queued").output)] == [second]
    assert run("jobs", "--state", "exploded").exit_code == EXIT_USAGE


@pytest.mark.parametrize(("state", "code"), [("succeeded", EXIT_OK), ("failed", EXIT_JOB_FAILED),
                                             ("recovered", EXIT_JOB_FAILED), ("cancelled", EXIT_JOB_FAILED)])
def test_status_and_watch_exit_with_the_outcome(run, fake_runtime: Runtime, state: str, code: int) -> None:
    job_id = run("enqueue", "backup", SITE).output.strip()
    _finish(fake_runtime, job_id, state, backup="failed" if state != "succeeded" else "success")
    status = run("status", job_id)
    assert status.exit_code == code and state in status.output
    if state != "succeeded":
        assert "Traceback: boom" in status.output  # the output tail of the failed step
    watched = run("--json", "watch", job_id)
    assert watched.exit_code == code and json.loads(watched.output)["state"] == state


def test_watch_follows_a_running_job_to_its_end(run, fake_runtime: Runtime) -> None:
    import threading

    job_id = run("enqueue", "backup", SITE).output.strip()
    threading.Timer(0.3, _finish, args=(fake_runtime, job_id, "succeeded"), kwargs={"backup": "success"}).start()
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["watch", job_id, "--poll", "0.05"], obj=Ctx(rt=fake_runtime))
    assert result.exit_code == EXIT_OK and time.monotonic() - started >= 0.25
    assert "backup" in result.output and "succeeded" in result.output


def test_cancel_requests_and_refuses_ended_jobs(run, fake_runtime: Runtime) -> None:
    job_id = run("enqueue", "migrate", SITE).output.strip()
    assert run("cancel", job_id).exit_code == EXIT_OK
    assert fake_runtime.store.get(job_id).cancel_requested
    _finish(fake_runtime, job_id, "cancelled")
    again = run("cancel", job_id)
    assert again.exit_code == EXIT_JOB_FAILED and "already ended cancelled" in again.output
    assert run("cancel", "nosuch").exit_code == EXIT_USAGE


def test_sites_shows_state_and_flags_attention(run, fake_runtime: Runtime, tmp_path) -> None:
    from tests.site_folders import count_output, is_count, make_site_folders, use_sites_dir

    sites = tmp_path / "sites"
    make_site_folders(sites, [SITE, "b.example.com", "c.example.com", "Bad_Name"], maintenance=["b.example.com"])
    use_sites_dir(fake_runtime, sites)
    fake_runtime.executor.on(is_count, output=count_output(4))
    fake_runtime.sites.mark_attention("c.example.com", job_id="j9", reason="restore failed")
    result = run("--json", "sites")
    rows = {r["site"]: r["state"] for r in json.loads(result.output)}
    assert rows == {SITE: "ok", "b.example.com": "in maintenance", "c.example.com": "needs attention"}
    assert result.exit_code == EXIT_JOB_FAILED
    assert run("site", "clear-attention", "c.example.com").exit_code == EXIT_OK
    assert run("sites").exit_code == EXIT_OK
    assert run("site", "clear-attention", "c.example.com").exit_code == EXIT_JOB_FAILED


def test_sites_lists_an_attention_mark_whose_site_folder_is_gone(run, fake_runtime: Runtime, tmp_path) -> None:
    from tests.site_folders import count_output, is_count, use_sites_dir

    (tmp_path / "sites").mkdir()
    use_sites_dir(fake_runtime, tmp_path / "sites")
    fake_runtime.executor.on(is_count, output=count_output(0))
    fake_runtime.sites.mark_attention("gone.example.com", job_id="j1", reason="migrate failed")
    result = run("--json", "sites")
    [row] = json.loads(result.output)
    assert (row["site"], row["state"], row["exists"]) == ("gone.example.com", "needs attention", False)
    assert result.exit_code == EXIT_JOB_FAILED
    text = run("sites").output
    line = next(line for line in text.splitlines() if line.startswith("gone.example.com"))
    assert "needs attention" in line and "job j1" in line and "migrate failed" in line, text
    assert "jerpctl site clear-attention SITE" in text
    assert run("site", "clear-attention", "gone.example.com").exit_code == EXIT_OK
    assert json.loads(run("--json", "sites").output) == []


@pytest.mark.parametrize(
    "args",
    [
        ["backups", ""],
        ["enqueue", "migrate-all", "--canary", ""],
        ["jobs", "--site", ""],
        ["jobs", "--site", "Not A Site"],
        ["site", "clear-attention", ""],
        ["enqueue", "migrate", ""],
        ["enqueue", "backup", ""],
        ["enqueue", "restore", "", "--db", "x.sql.gz"],
        ["enqueue", "restore", SITE, "--db", ""],
        ["enqueue", "restore", SITE, "--db", "x.sql.gz", "--files", ""],
        ["enqueue", "restore", SITE, "--db", "x.sql.gz", "--private-files", " "],
        ["enqueue", "restore", SITE, "--from-offsite", "--at", ""],
    ],
)
def test_an_empty_site_name_or_value_exits_2_and_does_nothing(run, fake_runtime: Runtime, args: list[str]) -> None:
    result = run(*args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert "Error" in result.output
    assert fake_runtime.dispatched == [] and fake_runtime.store.list() == []


def test_backups_flags_stale_sites(run, fake_runtime: Runtime) -> None:
    fake_runtime.settings = fake_runtime.settings.model_copy(update={"s3_bucket": "jerp-backups"})
    old = {"site": SITE, "timestamp": "20261101_030000", "verified": True, "artifacts": []}
    fake_runtime.redis.zadd(f"jerp:offsite:{SITE}", {json.dumps(old): time.time() - 3 * 86400})
    fresh = {**old, "site": "b.example.com", "timestamp": "20261129_030000"}
    fake_runtime.redis.zadd("jerp:offsite:b.example.com", {json.dumps(fresh): time.time() - 3600})
    result = run("--json", "backups")
    rows = {r["site"]: r for r in json.loads(result.output)}
    assert rows[SITE]["stale"] and not rows["b.example.com"]["stale"]
    assert result.exit_code == EXIT_JOB_FAILED
    assert "STALE" in run("backups").output
    per_site = json.loads(run("--json", "backups", SITE).output)
    assert per_site[0]["where"] == "off-site" and per_site[0]["timestamp"] == "20261101_030000"


def test_backups_without_an_offsite_store_measure_the_local_backups(run, fake_runtime: Runtime) -> None:
    assert not fake_runtime.settings.s3_bucket
    old = {"site": SITE, "timestamp": "20261101_030000", "artifacts": []}
    fake_runtime.redis.zadd(f"jerp:backups:{SITE}", {json.dumps(old): time.time() - 3 * 86400})
    fresh = {**old, "site": "b.example.com", "timestamp": "20261129_030000"}
    fake_runtime.redis.zadd("jerp:backups:b.example.com", {json.dumps(fresh): time.time() - 3600})
    result = run("--json", "backups")
    rows = {r["site"]: r for r in json.loads(result.output)}
    assert rows[SITE]["stale"] and not rows["b.example.com"]["stale"], rows
    assert {r["where"] for r in rows.values()} == {"local"}
    assert result.exit_code == EXIT_JOB_FAILED
    text = run("backups").output
    assert "last local" in text and "off-site" not in text


def test_broker_down_exits_3_with_the_password_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    from jerp_jobs.bootstrap import get_runtime
    from jerp_jobs.settings import get_settings

    monkeypatch.setenv("JERP_BROKER_URL", "redis://:S3cret-pw@127.0.0.1:1/0")
    get_settings.cache_clear()
    get_runtime.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["jobs"])
    finally:
        get_settings.cache_clear()
        get_runtime.cache_clear()
    assert result.exit_code == EXIT_BROKER
    assert "redis://:***@127.0.0.1:1/0" in result.output and "S3cret-pw" not in result.output


def test_help_is_complete() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    for command in ("enqueue", "jobs", "status", "watch", "cancel", "sites", "site", "backups"):
        assert command in result.output
    enqueue = CliRunner().invoke(cli, ["enqueue", "--help"]).output
    for command in ("provision", "backup", "backup-all", "migrate", "migrate-all", "restore", "drill", "prune",
                    "clear-cache", "build-assets"):
        assert command in enqueue


@pytest.mark.parametrize("args", [["--help"], ["enqueue", "backup", "Bad_Site"], ["enqueue", "--help"]])
def test_help_and_refused_input_import_nothing_heavy(args: list[str]) -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom jerp_jobs.cli import main\nsys.argv = ['jerpctl', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "heavy = {'celery', 'kombu', 'boto3', 'botocore', 'docker', 'redis'}\n"
        "print(code, sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    exit_code, heavy = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert heavy == "[]", done.stdout
    assert exit_code == ("2" if "Bad_Site" in args else "0")


def test_broker_lost_in_the_middle_of_a_command_exits_3(run, fake_runtime: Runtime, fake_redis) -> None:
    job_id = run("enqueue", "backup", SITE).output.strip()
    fake_redis.connection_pool.connection_kwargs["server"].connected = False
    result = run("status", job_id)
    assert result.exit_code == EXIT_BROKER and "cannot reach the broker" in result.output


def test_a_publish_failure_exits_3_and_leaves_the_job_failed(run, fake_runtime: Runtime) -> None:
    def refuse(job_id: str, step: str) -> None:
        raise ConnectionError("Error 111 connecting to redis://:pw@broker:6379/0")

    fake_runtime.dispatch = refuse
    result = run("enqueue", "backup", SITE)
    assert result.exit_code == EXIT_BROKER and ":pw@" not in result.output
    [job] = fake_runtime.store.list()
    assert job.state == "failed" and "could not enqueue" in job.error


def test_enqueue_release_starts_a_release_of_the_tag(run, fake_runtime: Runtime) -> None:
    result = run("enqueue", "release", "a1b2c3d")
    assert result.exit_code == EXIT_OK, result.output
    job = fake_runtime.store.get(result.output.strip())
    assert (job.kind, job.params["tag"], job.params["source"]) == ("release", "a1b2c3d", "operator")
    assert fake_runtime.dispatched == [(job.id, "record")]


def test_enqueue_release_refuses_a_bad_tag_and_records_nothing(run, fake_runtime: Runtime) -> None:
    result = run("enqueue", "release", "a1b;rm")
    assert result.exit_code == EXIT_USAGE and "invalid image tag" in result.output
    assert fake_runtime.dispatched == [] and run("releases").output.strip() == "no release yet"


def test_enqueue_rollback_starts_a_rollback_release(run, fake_runtime: Runtime) -> None:
    result = run("enqueue", "rollback")
    assert result.exit_code == EXIT_OK, result.output
    job = fake_runtime.store.get(result.output.strip())
    assert job.kind == "release" and job.params["rollback"] is True and "tag" not in job.params


def test_releases_lists_tags_outcome_and_timings(run, fake_runtime: Runtime) -> None:
    first = run("enqueue", "release", "r1").output.strip()
    fake_runtime.store.set_result(first, tag="r1", previous_tag="r0", rollback_to="r0",
                                  rollback_reason="smoke failed: site a: login failed")
    fake_runtime.store.set_state(first, "rolled-back", error="smoke failed")
    second = run("enqueue", "release", "r2").output.strip()

    table = run("releases")
    assert table.exit_code == EXIT_OK
    lines = table.output.splitlines()
    assert lines[0].split()[:4] == ["JOB", "TAG", "FROM", "STATE"]
    assert lines[1].startswith(second) and "r2" in lines[1] and "queued" in lines[1]
    assert lines[2].startswith(first) and "rolled-back" in lines[2] and "r0" in lines[2]

    rows = json.loads(run("--json", "releases").output)
    assert [(r["job_id"], r["tag"], r["state"]) for r in rows] == [(second, "r2", "queued"), (first, "r1", "rolled-back")]
    assert rows[1]["duration_s"] is not None and rows[0]["duration_s"] is None
    assert rows[1]["previous_tag"] == "r0" and rows[1]["detail"] == "smoke failed"


def test_json_is_accepted_after_the_subcommand_too(run, fake_runtime: Runtime) -> None:
    job_id = run("enqueue", "backup", SITE).output.strip()
    assert [j["id"] for j in json.loads(run("jobs", "--json").output)] == [job_id]
    assert json.loads(run("status", job_id, "--json").output)["id"] == job_id
    assert json.loads(run("enqueue", "migrate", SITE, "--json").output)["kind"] == "migrate"


def test_jobs_is_an_aligned_table_with_a_header_and_ages(run, fake_runtime: Runtime) -> None:
    from jerp_jobs.cliformat import visible_len

    run("enqueue", "backup", SITE)
    run("enqueue", "build-assets")
    lines = run("jobs").output.splitlines()
    assert lines[0].split()[:3] == ["JOB", "REQUESTED", "(UTC)"] and "STATE" in lines[0]
    assert all("s ago" in line for line in lines[1:])
    assert len({line.index("queued") for line in lines[1:]}) == 1  # the STATE column lines up
    assert lines[0].index("STATE") == lines[1].index("queued")
    assert all(visible_len(line) == len(line) for line in lines)  # no colour when not a terminal


def test_table_widths_ignore_colour_codes() -> None:
    import click

    from jerp_jobs.cliformat import table

    lines = table(["A", "B", "C"], [[click.style("failed", fg="red"), "x", "end"], ["ok", "yy", "end"]])
    import re

    plain = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines]
    assert plain[1].index("x") == plain[2].index("yy") == plain[0].index("B")


def test_a_site_the_sites_folder_lacks_is_refused_at_enqueue(run, fake_runtime: Runtime, tmp_path) -> None:
    from tests.site_folders import make_site_folders, use_sites_dir

    make_site_folders(tmp_path / "sites", [SITE])
    use_sites_dir(fake_runtime, tmp_path / "sites")
    result = run("enqueue", "migrate", "nosuch.example.com")
    assert result.exit_code == EXIT_USAGE and "does not exist" in result.output
    assert fake_runtime.dispatched == [] and fake_runtime.store.list() == []
    assert run("enqueue", "migrate", SITE).exit_code == EXIT_OK
    assert run("enqueue", "provision", "new.example.com").exit_code == EXIT_OK  # a new site, of course
    assert run("enqueue", "restore", "gone.example.com", "--from-offsite", "--create").exit_code == EXIT_OK


def test_status_shows_why_steps_were_skipped_and_exit_codes_only_of_failures(run, fake_runtime: Runtime) -> None:
    rt = fake_runtime
    job_id = run("enqueue", "migrate", SITE).output.strip()
    for name in ("maintenance-on", "scheduler-pause"):
        record = rt.store.start_step(job_id, name, worker="w")
        rt.store.finish_step(job_id, record, "success", exit_code=1)  # a probe's exit code: not a failure
    record = rt.store.start_step(job_id, "wait-ready", worker="w")
    rt.store.finish_step(job_id, record, "failed", exit_code=2, output="NOT READY", error="not ready")
    rt.store.skip_pending(job_id, reason="job ended failed")
    rt.store.set_state(job_id, "failed", error="step wait-ready failed")
    text = run("status", job_id).output
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    assert "exit" not in lines["maintenance-on"] and "exit 2" in lines["wait-ready"]
    assert "skipped" in lines["migrate"] and "not run: wait-ready failed" in lines["migrate"]
    assert "recovery step: not needed" in lines["restore-pre-migrate"]


def test_status_shows_a_proxy_host_left_to_do_by_hand_with_its_instructions(run, fake_runtime: Runtime) -> None:
    from jerp_jobs.integrations import npm

    rt = fake_runtime
    job_id = run("enqueue", "provision", "new.example.com").output.strip()
    record = rt.store.start_step(job_id, "proxy-host", worker="w")
    rt.store.finish_step(job_id, record, "success")
    rt.store.set_result(job_id, proxy_host={**npm.manual_instructions("new.example.com"), "created": False})
    text = run("status", job_id).output
    line = next(line for line in text.splitlines() if line.strip().startswith("proxy-host"))
    assert "manual" in line and "success" not in line
    assert "Hosts > Proxy Hosts > Add Proxy Host" in text and "new.example.com -> http://frontend:8080" in text


def test_wait_streams_the_running_commands_output(run, fake_runtime: Runtime) -> None:
    import threading

    rt = fake_runtime
    job_id = run("enqueue", "backup", SITE).output.strip()

    def work() -> None:
        record = rt.store.start_step(job_id, "backup", worker="w")
        rt.store.append_output(job_id, "backup", [("command", "bench --site acme.example.com backup"),
                                                  ("output", "Backup Summary for acme.example.com")])
        time.sleep(0.2)
        rt.store.finish_step(job_id, record, "success")
        rt.store.set_state(job_id, "succeeded")

    threading.Timer(0.2, work).start()
    result = CliRunner().invoke(cli, ["watch", job_id, "--poll", "0.05"], obj=Ctx(rt=rt))
    assert result.exit_code == EXIT_OK, result.output
    assert "$ bench --site acme.example.com backup" in result.output
    assert "| Backup Summary for acme.example.com" in result.output


def test_sites_and_backups_agree_on_staleness(run, fake_runtime: Runtime, tmp_path) -> None:
    from tests.site_folders import count_output, is_count, make_site_folders, use_sites_dir

    fake_runtime.settings = fake_runtime.settings.model_copy(update={"s3_bucket": "jerp-backups"})
    make_site_folders(tmp_path / "sites", [SITE])
    use_sites_dir(fake_runtime, tmp_path / "sites")
    fake_runtime.executor.on(is_count, output=count_output(1))
    # a fresh local backup, an off-site copy three days old: stale for both commands
    fake_runtime.redis.zadd(f"jerp:backups:{SITE}", {json.dumps({"timestamp": "20261204_030000", "artifacts": []}):
                                                      time.time() - 3600})
    fake_runtime.redis.zadd(f"jerp:offsite:{SITE}", {json.dumps({"timestamp": "20261201_030000", "artifacts": []}):
                                                      time.time() - 3 * 86400})
    [backup_row] = json.loads(run("--json", "backups").output)
    [site_row] = json.loads(run("--json", "sites").output)
    assert backup_row["stale"] is site_row["backup_stale"] is True
    assert backup_row["age_hours"] == site_row["backup_age_hours"] and site_row["backup_where"] == "off-site"
    assert "STALE" in run("backups").output and "STALE" in run("sites").output
