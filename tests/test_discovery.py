"""Site discovery covers every site, however many: the list is read from the sites folder, never
from a command's output tail, and is checked against the bench's own count.

Most tests here run the real local executor on real folders of 1,000+ sites and the real Redis;
children of a fan-out are played by their outcome (their own workflows are tested elsewhere).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from jerp_jobs import runner
from jerp_jobs.cli import EXIT_JOB_FAILED, EXIT_OK, Ctx, cli
from jerp_jobs.enqueue import create_job
from jerp_jobs.errors import CommandFailed, InvalidInput, JerpError, OutputParseError
from jerp_jobs.executors.base import CommandResult
from jerp_jobs.executors.local import LocalExecutor
from jerp_jobs.runner import child_done
from jerp_jobs.sites import BENCH_SITE_COUNT, find_sites
from jerp_jobs.bootstrap import build_runtime
from jerp_jobs.runtime import Runtime
from jerp_jobs.settings import load_settings
from jerp_jobs.sites import list_site_folders
from tests.conftest import MARIADB_PORT, recording
from tests.site_folders import make_site_folders, site_names, use_sites_dir
from tests.standin.layout import BENCH_SCRIPT, create_bench

MANY = 1050  # well past the 200 lines an executor keeps of a command's output


# -- parts ----------------------------------------------------------------------------------------


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    return create_bench(tmp_path / "frappe-bench", db_host="127.0.0.1", db_port=MARIADB_PORT)


@pytest.fixture
def real_runtime(redis_url: str, real_redis: redis.Redis, bench: Path, mariadb_root_password: str) -> Runtime:
    """The real Redis and the real local executor in ``bench``; published steps and parent
    notifications are recorded (``rt.dispatched``, ``rt.notified``), not sent to Celery."""
    settings = load_settings(_env_file=None, broker_url=redis_url, executor="local", bench_dir=bench,
                             bench_bin=str(BENCH_SCRIPT), lock_ttl=10, mariadb_root_password=mariadb_root_password)
    return recording(build_runtime(settings, client=real_redis, executor=LocalExecutor(bench)))


def drive(rt: Runtime, *, child_state: str = "succeeded", until: int = 1_000_000) -> list[str]:
    """Run every published step through the runner; a child job (one whose parent is set) is
    played by its outcome: it ends ``child_state`` as soon as its first step is published.
    Returns the ids of the children started, in order."""
    started: list[str] = []
    for _ in range(until):
        if rt.dispatched:  # type: ignore[attr-defined]
            job_id, step = rt.dispatched.pop(0)  # type: ignore[attr-defined]
            if rt.store.get(job_id).parent:
                started.append(job_id)
                runner.finish_job(rt, job_id, child_state)
            else:
                runner.run_step(rt, job_id, step, worker="w1")
        elif rt.notified:  # type: ignore[attr-defined]
            parent, child = rt.notified.pop(0)  # type: ignore[attr-defined]
            child_done(rt, parent, child)
        else:
            return started
    raise AssertionError("the jobs did not settle")


def child_sites(rt: Runtime, child_ids: list[str]) -> list[str]:
    return [rt.store.get(child_id).site or "" for child_id in child_ids]


# -- the listing itself ---------------------------------------------------------------------------


def test_the_listing_takes_real_site_folders_and_reports_odd_ones(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    make_site_folders(sites, ["a.example.com", "b.example.com", "Bad_Name", ".hidden"])
    (sites / "assets").mkdir()  # a folder without site_config.json: not a site, not reported
    (sites / "apps.txt").write_text("frappe\n")
    (sites / "no-config.example.com").mkdir()
    elsewhere = tmp_path / "elsewhere"
    make_site_folders(elsewhere, ["c.example.com"])
    (sites / "linked.example.com").symlink_to(elsewhere / "c.example.com")
    (sites / "config-link.example.com").mkdir()
    (sites / "config-link.example.com" / "site_config.json").symlink_to(elsewhere / "c.example.com" / "site_config.json")
    (sites / "config-dir.example.com" / "site_config.json").mkdir(parents=True)

    listing = list_site_folders(sites)
    assert listing.sites == ("a.example.com", "b.example.com")
    assert listing.candidates == 4  # what `find -P sites ... -type f` counts: the odd names too
    ignored = "\n".join(listing.ignored)
    for name, why in [("Bad_Name", "lowercase"), (".hidden", "empty label"), ("linked.example.com", "symbolic link"),
                      ("config-link.example.com", "not a regular file"), ("config-dir.example.com", "not a regular file")]:
        assert f"'{name}': " in ignored and why in ignored.split(f"'{name}': ")[1].splitlines()[0], (name, ignored)
    with pytest.raises(InvalidInput, match="does not exist"):
        list_site_folders(tmp_path / "missing")


def test_the_bench_counts_its_sites_by_the_same_rule_in_one_line(bench: Path, tmp_path: Path) -> None:
    """The count is one line however many sites there are: no output tail can cut it."""
    names = make_site_folders(bench / "sites", site_names(MANY))
    make_site_folders(bench / "sites", ["Odd_Name"])
    (bench / "sites" / "linked.example.com").symlink_to(bench / "sites" / names[0])
    result = LocalExecutor(bench).run(list(BENCH_SITE_COUNT), timeout=60)
    assert result.ok and result.output == "." * (MANY + 1)
    listing = list_site_folders(bench / "sites")
    assert listing.candidates == MANY + 1 and len(listing.sites) == MANY


class ScriptedCounts:
    """An executor whose count of sites follows a script (one value per call)."""

    def __init__(self, counts: list[int | str], exit_code: int = 0) -> None:
        self.counts = list(counts)
        self.exit_code = exit_code
        self.calls = 0

    def run(self, argv, *, timeout, on_output=None):  # type: ignore[no-untyped-def]
        assert tuple(argv) == BENCH_SITE_COUNT
        self.calls += 1
        value = self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]
        out = "." * value if isinstance(value, int) else value
        return CommandResult(argv=tuple(argv), exit_code=self.exit_code, duration_s=0.0, output=out)


def _settings_for(sites: Path):  # type: ignore[no-untyped-def]
    return load_settings(_env_file=None, broker_url="redis://127.0.0.1:1/0", executor="docker", sites_dir=sites)


def test_a_count_that_changes_while_listing_is_taken_again_then_given_up(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    make_site_folders(sites, site_names(3))
    settings = _settings_for(sites)
    # a site was being created during the first look: the second look agrees
    executor = ScriptedCounts([2, 3, 3, 3])
    assert len(find_sites(settings, executor).sites) == 3 and executor.calls == 4
    # the count never settles: fail, naming what each look saw
    with pytest.raises(JerpError, match=r"kept changing.*bench 1 -> 2, folder 3"):
        find_sites(settings, ScriptedCounts([1, 2, 1, 2, 1, 2]))


@pytest.mark.parametrize(
    ("executor", "error", "message"),
    [
        (ScriptedCounts(["find: 'sites/x': Permission denied\n..."], exit_code=1), CommandFailed, "Permission denied"),
        (ScriptedCounts(["..3 sites"]), OutputParseError, "more than a count"),
    ],
)
def test_a_count_that_is_not_a_count_fails_discovery(tmp_path: Path, executor, error, message) -> None:  # type: ignore[no-untyped-def]
    make_site_folders(tmp_path / "sites", site_names(3))
    with pytest.raises(error, match=message):
        find_sites(_settings_for(tmp_path / "sites"), executor)


def test_a_worker_without_the_sites_folder_is_told_which_setting_is_missing() -> None:
    from jerp_jobs.errors import ConfigError

    settings = load_settings(_env_file=None, broker_url="redis://127.0.0.1:1/0", executor="docker")
    with pytest.raises(ConfigError, match="JERP_SITES_DIR is not set; site discovery"):
        find_sites(settings, ScriptedCounts([0]))


# -- fan-outs over 1,000+ sites, real local executor, real Redis ---------------------------------


def test_backup_all_starts_one_child_for_each_of_1050_sites(real_runtime: Runtime, bench: Path) -> None:
    names = make_site_folders(bench / "sites", site_names(MANY))
    make_site_folders(bench / "sites", ["Odd_Name"])  # reported, not used
    real_runtime.sites.mark_attention(names[7], job_id="earlier", reason="restore failed")
    job = create_job(real_runtime, "backup-all", params={"concurrency": 50, "with_files": False})
    real_runtime.dispatch(job.id, runner.first_step(real_runtime, job.id))

    started = drive(real_runtime)

    done = real_runtime.store.get(job.id)
    assert done.state == "succeeded", done.error
    assert done.result["site_count"] == MANY
    assert done.result["discovered"] == {"sites": MANY, "bench_count": MANY + 1, "ignored": 1,
                                         "folder": str(bench / "sites")}
    assert any("Odd_Name" in line for line in done.result["ignored_sites"])
    assert f"{MANY} sites" in done.step("discover").output
    assert sorted(child_sites(real_runtime, started)) == sorted(set(names) - {names[7]})  # each once
    assert done.result["sites"][names[7]]["state"] == "skipped"
    assert done.result["counts"] == {"succeeded": MANY - 1, "skipped": 1}
    assert names[-1] in done.result["sites"] and done.result["sites"][names[-1]]["state"] == "succeeded"


def test_migrate_all_migrates_a_canary_then_every_other_of_1050_sites(
    real_runtime: Runtime, bench: Path, make_site: Callable[..., str]
) -> None:
    canary = make_site("canary")  # a real site: its caches are cleared for real at the end
    names = make_site_folders(bench / "sites", site_names(MANY - 1))
    job = create_job(real_runtime, "migrate-all", params={"concurrency": 64, "canary": canary, "budget": 1})
    real_runtime.dispatch(job.id, runner.first_step(real_runtime, job.id))

    started = drive(real_runtime)

    done = real_runtime.store.get(job.id)
    assert done.state == "succeeded", done.error
    assert done.result["site_count"] == MANY and done.result["discovered"]["bench_count"] == MANY
    sites = child_sites(real_runtime, started)
    assert sites[0] == canary and sorted(sites[1:]) == sorted(names)
    assert [real_runtime.store.get(c).params["build_assets"] for c in started[:2]] == [True, False]
    assert {s.name: s.state for s in done.steps} == {"discover": "success", "canary": "success",
                                                     "sites": "success", "clear-canary-cache": "success"}


def test_a_listing_that_disagrees_with_the_bench_fails_backup_all_naming_both_counts(
    real_runtime: Runtime, bench: Path, tmp_path: Path
) -> None:
    """The worker reads an old copy of the sites folder (one site short): nothing is started."""
    names = make_site_folders(bench / "sites", site_names(1000))
    stale = tmp_path / "stale-sites"
    make_site_folders(stale, names[:-1])
    use_sites_dir(real_runtime, stale)
    job = create_job(real_runtime, "backup-all")
    real_runtime.dispatch(job.id, runner.first_step(real_runtime, job.id))

    started = drive(real_runtime)

    done = real_runtime.store.get(job.id)
    assert done.state == "failed" and started == []
    assert "lists 999 site folders but the bench counts 1000" in done.error, done.error
    assert str(stale) in done.error
    assert [n[0] for n in real_runtime.notifications] == ["backup.failed"]  # type: ignore[attr-defined]


# -- jerpctl sites ----------------------------------------------------------------------------------


def test_jerpctl_sites_lists_every_one_of_1200_sites_and_every_attention_mark(
    real_runtime: Runtime, bench: Path
) -> None:
    names = make_site_folders(bench / "sites", site_names(1200), maintenance=site_names(1200)[1000:1010])
    (bench / "sites" / names[3] / "site_config.json").write_text("{not json")
    real_runtime.sites.mark_attention(names[1100], job_id="j1", reason="restore failed")
    real_runtime.sites.mark_attention("gone.example.com", job_id="j2", reason="migrate failed")  # folder gone
    real_runtime.redis.zadd(f"jerp:backups:{names[1199]}", {json.dumps({"timestamp": "x"}): 1.0})
    real_runtime.redis.set(f"jerp:site-owner:{names[1198]}", "job42")

    result = CliRunner().invoke(cli, ["--json", "sites"], obj=Ctx(rt=real_runtime), catch_exceptions=False)

    rows = {row["site"]: row for row in json.loads(result.stdout)}
    assert len(rows) == 1200 + 1 and set(rows) == {*names, "gone.example.com"}
    assert result.exit_code == EXIT_JOB_FAILED  # sites need attention
    assert rows["gone.example.com"] | {"attention": None} == {
        "site": "gone.example.com", "state": "needs attention", "exists": False, "maintenance": None,
        "attention": None, "backup_age_hours": None, "backup_where": "local", "backup_stale": True, "owner_job": None}
    assert rows["gone.example.com"]["attention"]["reason"] == "migrate failed"
    assert rows[names[1100]]["state"] == "needs attention" and rows[names[1100]]["exists"] is True
    assert [r["site"] for r in rows.values() if r["state"] == "in maintenance"] == names[1000:1010]
    assert rows[names[3]]["state"] == "unreadable config" and rows[names[3]]["maintenance"] is None
    assert rows[names[1199]]["backup_age_hours"] > 0 and rows[names[1198]]["owner_job"] == "job42"
    assert rows[names[0]] == {"site": names[0], "state": "ok", "exists": True, "maintenance": False,
                              "attention": None, "backup_age_hours": None, "backup_where": "local",
                              "backup_stale": True, "owner_job": None}

    table = CliRunner().invoke(cli, ["sites"], obj=Ctx(rt=real_runtime), catch_exceptions=False)
    lines = table.stdout.splitlines()
    assert len(lines) == 1200 + 1 and "gone.example.com" in table.stdout and "(no site folder)" in table.stdout


def test_jerpctl_sites_fails_naming_both_counts_when_the_folder_and_the_bench_disagree(
    real_runtime: Runtime, bench: Path, tmp_path: Path
) -> None:
    names = make_site_folders(bench / "sites", site_names(1001))
    other = tmp_path / "other-sites"
    make_site_folders(other, names[:1000])
    use_sites_dir(real_runtime, other)
    result = CliRunner().invoke(cli, ["--json", "sites"], obj=Ctx(rt=real_runtime), catch_exceptions=False)
    assert result.exit_code == EXIT_JOB_FAILED and result.stdout == ""
    assert "lists 1000 site folders but the bench counts 1001" in result.output


def test_jerpctl_sites_on_a_bench_with_no_site_exits_0(real_runtime: Runtime) -> None:
    result = CliRunner().invoke(cli, ["--json", "sites"], obj=Ctx(rt=real_runtime), catch_exceptions=False)
    assert result.exit_code == EXIT_OK and json.loads(result.stdout) == []


# -- a site that does not exist: failed early, never marked --------------------------------------


def test_migrate_of_a_missing_site_fails_at_once_and_leaves_no_attention_mark(real_runtime: Runtime) -> None:
    site = "nosuch.example.com"
    job = create_job(real_runtime, "migrate", site=site)
    real_runtime.dispatch(job.id, runner.first_step(real_runtime, job.id))
    drive(real_runtime)

    done = real_runtime.store.get(job.id)
    assert done.state == "failed"
    assert f"site {site} does not exist in the bench" in done.error and "nothing was changed" in done.error
    steps = {s.name: s.state for s in done.steps}
    assert steps["maintenance-on"] == "failed"
    assert {state for name, state in steps.items() if name != "maintenance-on"} == {"skipped"}
    assert real_runtime.sites.attention(site) is None
    # and nothing stands in the way of provisioning that name later
    provision = create_job(real_runtime, "provision", site=site)
    assert real_runtime.sites.claim(site, provision.id) == provision.id


def test_restore_of_a_missing_site_fails_before_touching_it_and_leaves_no_attention_mark(
    real_runtime: Runtime, bench: Path
) -> None:
    """A backup folder left without its site (no site_config.json): the restore finds no
    site before it checks or touches anything, says so, and marks nothing."""
    site = "gone.example.com"
    folder = bench / "sites" / site / "private" / "backups"
    folder.mkdir(parents=True)
    dump = folder / "20261129_030001-gone_example_com-database.sql.gz"
    dump.write_bytes(gzip.compress(b"CREATE TABLE t (x int);\n"))
    job = create_job(real_runtime, "restore", site=site, params={"db": f"{site}/private/backups/{dump.name}"})
    real_runtime.dispatch(job.id, runner.first_step(real_runtime, job.id))
    drive(real_runtime)

    done = real_runtime.store.get(job.id)
    assert done.state == "failed" and f"site {site} does not exist in the bench" in done.error, done.error
    steps = {s.name: s.state for s in done.steps}
    assert steps["check-backup"] == "failed", steps
    assert all(state in ("pending", "skipped") for name, state in steps.items() if name != "check-backup"), steps
    assert real_runtime.sites.attention(site) is None
    assert not (bench / "sites" / site / "site_config.json").exists()


def test_a_failed_recovery_of_an_existing_site_still_marks_it(real_runtime: Runtime, bench: Path) -> None:
    """The missing-site rule must not hide a real failure: the site exists, maintenance-on
    fails (its command cannot run), recovery fails too, and the site is marked."""
    site = make_site_folders(bench / "sites", ["real.example.com"])[0]
    real_runtime.settings = real_runtime.settings.model_copy(update={"bench_bin": str(bench / "no-such-bench")})
    job = create_job(real_runtime, "migrate", site=site)
    real_runtime.dispatch(job.id, runner.first_step(real_runtime, job.id))
    drive(real_runtime)
    done = real_runtime.store.get(job.id)
    assert done.state == "failed" and "does not exist in the bench" not in (done.error or "")
    assert real_runtime.sites.attention(site)["job_id"] == job.id


def test_a_count_that_agrees_with_the_listing_is_taken_once(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    make_site_folders(sites, site_names(3))
    executor = ScriptedCounts([3])
    assert len(find_sites(_settings_for(sites), executor).sites) == 3 and executor.calls == 1


def test_a_failed_count_is_reported_before_a_missing_folder(tmp_path: Path) -> None:
    """The count runs while the folder is listed; its failure is the one reported, as when it ran first."""
    executor = ScriptedCounts(["find: 'sites': No such file or directory\n"], exit_code=1)
    with pytest.raises(CommandFailed, match="No such file"):
        find_sites(_settings_for(tmp_path / "missing"), executor)
    with pytest.raises(JerpError, match="does not exist"):
        find_sites(_settings_for(tmp_path / "missing"), ScriptedCounts([0]))


def test_the_caller_reads_the_first_listing_while_the_bench_counts(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    make_site_folders(sites, site_names(3))
    seen: list[object] = []
    agreed = find_sites(_settings_for(sites), ScriptedCounts([3]), meanwhile=seen.append)
    assert seen == [agreed]
    seen.clear()
    settled = find_sites(_settings_for(sites), ScriptedCounts([2, 3, 3, 3]), meanwhile=seen.append)
    assert len(seen) == 1 and seen[0] is not settled  # not the listing returned: the caller reads again
