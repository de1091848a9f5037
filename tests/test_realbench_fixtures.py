"""The parsers of jerp_jobs.bench on outputs of a real Frappe 15.55.1 bench.

The fixtures in tests/fixtures/realbench are verbatim captures of real bench commands (argv,
when it started in UTC, how long it took, exit code, stdout, stderr), taken on a bench built by
tests/realbench/build.sh; only the MariaDB root password is replaced and the one-line ``\\r``
progress redraws of new-site and migrate are cut to their first and last redraws. The
``*-jerp-*`` fixtures are output tails recorded by jerp-jobs jobs run against that bench
(tests/realbench/run.py). The stand-in bench imitates these outputs; these tests hold the
parsers to the real ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from jerp_jobs import bench
from jerp_jobs.executors.base import OutputTail

FIXTURES = Path(__file__).parent / "fixtures" / "realbench"
SITE = "a.example.com"

_CAPTURE = re.compile(
    r"^\$ (?P<argv>[^\n]*)\n"
    r"# as: [^\n]*?started: (?P<started>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC\s+duration: (?P<duration>[0-9.]+)s\n"
    r"(?:# stdin: [^\n]*\n)?"
    r"# exit code: (?P<exit>-?\d+)\n"
    r"----- stdout \((?P<size>\d+) bytes[^)]*\) -----\n(?P<stdout>.*?)"
    r"----- stderr \(\d+ bytes\) -----\n(?P<stderr>.*?)"
    r"----- end -----",
    re.DOTALL | re.MULTILINE,
)


@dataclass(frozen=True)
class Capture:
    argv: str
    started: datetime  # UTC
    duration_s: float
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout then stderr, as the executors hand them over (merged)."""
        return self.stdout + self.stderr


def captures(name: str) -> list[Capture]:
    with open(FIXTURES / f"{name}.txt", newline="") as fh:  # keep the \r of progress redraws
        text = fh.read()
    found = [
        Capture(
            argv=m["argv"],
            started=datetime.strptime(m["started"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc),
            duration_s=float(m["duration"]),
            exit_code=int(m["exit"]),
            stdout=m["stdout"],
            stderr=m["stderr"],
        )
        for m in _CAPTURE.finditer(text)
    ]
    assert found, f"no capture in {name}.txt"
    return found


def capture(name: str) -> Capture:
    (only,) = captures(name)
    return only


def test_every_fixture_file_holds_captures() -> None:
    files = sorted(FIXTURES.glob("*.txt"))
    assert len(files) >= 30
    for path in files:
        assert captures(path.stem)
        assert len(path.read_bytes()) < 8_000, f"{path.name}: trim it"


# -- backup summaries and their time zones ---------------------------------------------------------

BACKUPS = {
    # fixture: (time zone of the site, with files, compressed archives)
    "backup-default-tz": ("Asia/Kolkata", False, False),
    "backup-with-files-default-tz": ("Asia/Kolkata", True, False),
    "backup-with-files-compress": ("Pacific/Kiritimati", True, True),
    "backup-with-files-kiritimati": ("Pacific/Kiritimati", True, False),
}


@pytest.mark.parametrize("name", sorted(BACKUPS))
def test_backup_summary_of_a_real_backup(name: str) -> None:
    zone, with_files, compressed = BACKUPS[name]
    done = capture(name)
    assert done.exit_code == 0
    summary = bench.parse_backup_summary(done.output, SITE)
    kinds = [a.kind for a in summary.artifacts]
    assert kinds == (["config", "database", "public_files", "private_files"] if with_files else ["config", "database"])
    assert summary.with_files is with_files
    for artifact in summary.artifacts:
        assert artifact.path.startswith(f"./{SITE}/private/backups/{summary.timestamp}-a_example_com-")
        assert artifact.approx_bytes > 0
    assert summary.artifact("database").path.endswith("-database.sql.gz")  # always gzip, even --compress
    if with_files:
        suffix = ".tgz" if compressed else ".tar"
        assert summary.artifact("public_files").path.endswith(f"-files{suffix}")
        assert summary.artifact("private_files").path.endswith(f"-private-files{suffix}")
    assert summary.artifact("database").approx_bytes == round(273.7 * 1024)


@pytest.mark.parametrize("name", sorted(BACKUPS))
def test_backup_stamp_is_the_sites_local_time_and_converts_to_the_real_utc_instant(name: str) -> None:
    """The file names and the summary's time are the site's wall clock; read in its zone they
    give the instant the command ran (UTC, from the capture), read as UTC they do not."""
    zone, _, _ = BACKUPS[name]
    done = capture(name)
    summary = bench.parse_backup_summary(done.output, SITE)
    window = (done.started - timedelta(seconds=1), done.started + timedelta(seconds=done.duration_s + 1))
    named = bench.stamp_to_utc(summary.timestamp, zone)
    assert window[0] <= named <= window[1], (summary.timestamp, named, window)
    printed = bench.local_to_utc(summary.taken_at, zone)  # when the summary was written (at the end)
    assert window[0] <= printed <= window[1]
    assert named <= printed
    as_if_utc = datetime.strptime(summary.timestamp, bench.STAMP_FORMAT).replace(tzinfo=timezone.utc)
    assert not window[0] <= as_if_utc <= window[1]
    times = bench.backup_times(summary.timestamp, zone, near=done.started)
    assert times["utc_timestamp"] == bench.utc_stamp(named)
    assert times["time_zone"] == zone


def test_kiritimati_backup_is_named_after_the_next_day() -> None:
    done = capture("backup-with-files-kiritimati")
    summary = bench.parse_backup_summary(done.output, SITE)
    assert summary.timestamp.startswith("20261205_")
    assert done.started.date().isoformat() == "2026-12-04"
    assert bench.utc_stamp(bench.stamp_to_utc(summary.timestamp, "Pacific/Kiritimati")).startswith("20261204_")


def test_backup_summary_of_another_site_is_refused() -> None:
    with pytest.raises(bench.OutputParseError, match="expected 'b.example.com'"):
        bench.parse_backup_summary(capture("backup-default-tz").output, "b.example.com")


# -- site time zone -------------------------------------------------------------------------------


def test_time_zone_of_a_real_site() -> None:
    unset, set_, read = captures("set-timezone")[0], captures("set-timezone")[1], captures("set-timezone")[2]
    assert unset.stdout == "" and bench.parse_execute(unset.stdout) is None
    assert bench.parse_execute(set_.stdout) == "Pacific/Kiritimati"
    assert "get_system_timezone" in read.argv
    assert bench.parse_time_zone(read.output) == "Pacific/Kiritimati"


def test_a_fresh_site_has_no_time_zone_setting() -> None:
    """System Settings has no time_zone until the setup wizard: get_single_value prints nothing
    (Frappe then uses Asia/Kolkata), so the zone is read with get_system_timezone, never this."""
    done = capture("timezone-default")
    assert done.exit_code == 0 and bench.parse_execute(done.stdout) is None
    with pytest.raises(bench.OutputParseError):
        bench.parse_time_zone(done.stdout)


def test_execute_ping_prints_json() -> None:
    assert bench.parse_execute(capture("execute-ping").stdout) == "pong"


# -- list-apps ------------------------------------------------------------------------------------


def test_list_apps_json_is_empty_before_the_first_migrate_and_filled_after() -> None:
    assert bench.parse_list_apps(capture("list-apps-before-migrate").output, SITE) == []
    assert bench.parse_list_apps(capture("list-apps-after-migrate").output, SITE) == ["frappe"]


def test_list_apps_text_lists_the_app_where_json_is_empty() -> None:
    text, as_json, migrated = captures("list-apps-text-vs-json-unmigrated")[:3]
    assert "-f json" not in text.argv and text.stdout.split() == ["frappe"]
    assert bench.parse_list_apps(as_json.output, "b.example.com") == []
    with pytest.raises(bench.OutputParseError):
        bench.parse_list_apps(text.output, "b.example.com")
    assert migrated.stdout.split() == ["frappe", "15.55.1", "version-15"]


# -- failure classes --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "lock"), [("migrate-while-locked", "bench_migrate"),
                                            ("restore-while-locked", "site_restore")])
def test_a_held_frappe_lock_is_lock_held_naming_lock_and_file(name: str, lock: str) -> None:
    done = capture(name)
    assert done.exit_code == 1
    failure = bench.classify_failure(done.exit_code, done.output)
    assert failure.kind == bench.LOCK_HELD_BY_OTHER
    assert failure.lock == lock
    assert failure.lock_path == f"/work/realbench/frappe-bench/sites/{SITE}/locks/{lock}.lock"
    assert failure.lock_path.endswith(bench.lock_file(lock, SITE))
    assert failure.changed_nothing


def test_a_root_owned_lock_file_is_not_a_lock_held_by_another_process() -> None:
    """Frappe's filelock cannot open a lock file another user created (PermissionError): a
    command error, not a wait for a holder that does not exist."""
    done = capture("migrate-jerp-lock-file-root-owned")
    failure = bench.classify_failure(done.exit_code, done.output)
    assert failure.kind == bench.COMMAND_ERROR
    assert "PermissionError: [Errno 13] Permission denied" in done.output


def test_offline_bench_build_is_a_command_error() -> None:
    done = capture("build-jerp-offline")
    assert bench.classify_failure(done.exit_code, done.output).kind == bench.COMMAND_ERROR
    assert "yarn: not found" in done.output


def test_root_refusal_is_run_as_root() -> None:
    for done in captures("root-refusal"):
        assert done.exit_code == 1 and done.stdout == "WARN: You should not run this command as root\n"
        assert bench.classify_failure(done.exit_code, done.output).kind == bench.RUN_AS_ROOT


def test_root_with_frappe_user_runs_bench() -> None:
    ping = captures("root-with-frappe-user")[0]
    assert ping.exit_code == 0 and bench.parse_execute(ping.stdout) == "pong"


def test_unknown_site_is_site_missing_except_for_backup() -> None:
    """Every command says ``Site X does not exist!``, but backup says ``Backup failed for Site X.
    Database or site_config.json may be corrupted`` — the words it also prints for a site whose
    database is broken, so it stays a command error."""
    seen = set()
    for done in captures("site-unknown"):
        assert done.exit_code == 1
        failure = bench.classify_failure(done.exit_code, done.output)
        if " backup" in done.argv:
            assert "Backup failed for Site nosuch.example.com" in done.output
            assert failure.kind == bench.COMMAND_ERROR
        else:
            assert failure.kind == bench.SITE_MISSING, done.argv
            assert failure.summary == "site nosuch.example.com does not exist"
        seen.add(done.argv.split()[3])
    assert {"execute", "backup", "migrate"} <= seen


def test_no_site_given() -> None:
    done = capture("site-not-specified")
    assert bench.classify_failure(done.exit_code, done.output).kind == bench.NO_SITE


def test_redis_cache_down_is_services_down() -> None:
    done = capture("migrate-redis-cache-down")
    failure = bench.classify_failure(done.exit_code, done.output)
    assert failure.kind == bench.SERVICES_DOWN and failure.changed_nothing


def test_closed_stdin_at_a_password_prompt_is_a_command_error() -> None:
    for name in ("new-site-no-passwords-stdin-closed", "restore-no-password-stdin-closed"):
        done = capture(name)
        assert done.exit_code == 1 and "MySQL root password: " in done.stderr
        assert bench.classify_failure(done.exit_code, done.output).kind == bench.COMMAND_ERROR


# -- password prompts -------------------------------------------------------------------------------


def test_new_site_answers_every_prompt_real_bench_asks_in_order() -> None:
    done = capture("new-site-no-passwords-stdin-answers")
    assert done.exit_code == 0
    prompts = re.findall(r"(MySQL root password|Set Administrator password|Re-enter Administrator password): ",
                         done.stderr)
    assert prompts == ["MySQL root password", "Set Administrator password", "Re-enter Administrator password"]
    assert done.stderr.count("Warning: Password input may be echoed.") == 3
    call = bench.new_site("b.example.com", db_root_password="root-pw", admin_password="admin-pw", db_name="b")
    assert call.stdin.decode().splitlines() == ["root-pw", "admin-pw", "admin-pw"]
    assert not any("pw" in arg for arg in call.argv)


# -- readiness, workers, scheduler -------------------------------------------------------------------


def test_ready_for_migration_texts_and_exit_codes() -> None:
    not_ready = capture("ready-for-migration-no-worker")
    assert not_ready.exit_code == 1
    assert not_ready.stdout == f"NOT READY for migration: site {SITE} has pending background jobs\n"
    ready = capture("ready-for-migration-with-worker")
    assert ready.exit_code == 0
    assert ready.stdout == f"READY for migration: site {SITE} does not have any background jobs\n"
    right_after = captures("ready-for-migration-right-after-migrate-with-worker")[-1]
    assert right_after.exit_code == 0 and right_after.stdout.startswith("READY")


def test_doctor_counts_the_real_workers() -> None:
    done = capture("doctor-with-worker")
    assert done.exit_code == 0
    assert bench.parse_workers_online(done.output) == 1


@pytest.mark.parametrize(("name", "status"), [
    ("scheduler-status-json-initial", "disabled"),
    ("scheduler-status-json-enabled", "enabled"),
    ("scheduler-status-json-paused", "disabled"),
    ("scheduler-status-json-enabled-paused", "disabled"),  # paused reads as disabled
])
def test_scheduler_status_json(name: str, status: str) -> None:
    assert bench.parse_execute(capture(name).stdout) == {"status": status, "site": SITE}


# -- progress redraws ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["migrate-first", "new-site-no-passwords-stdin-answers"])
def test_progress_redraws_collapse_to_what_a_person_sees(name: str) -> None:
    done = capture(name)
    raw = done.stdout
    assert "\r" in raw
    seen: list[str] = []
    tail = OutputTail(seen.append)
    for start in range(0, len(raw.encode()), 1000):
        tail.feed(raw.encode()[start:start + 1000])
    tail.close()
    lines = tail.text().splitlines()
    assert "\r" not in tail.text()
    assert any(line.startswith("Updating DocTypes for frappe") and line.rstrip().endswith("100%") for line in lines)
    assert max(len(line) for line in lines) < 200
    assert "Updating Dashboard for frappe" in lines


# -- restore output ------------------------------------------------------------------------------------


def test_restore_prints_warnings_before_its_last_line() -> None:
    done = capture("restore-tar")
    assert done.exit_code == 0
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Warning: MariaDB version")
    assert lines[-1] == f"Site {SITE} has been restored with files"
    assert "REDACTED-ROOT-PW" in done.argv  # the fixtures carry no real password


# -- install-app and uninstall-app ------------------------------------------------------------------
# Captured with two apps made by `bench new-app`: tinyapp, and tinydep whose hooks say
# required_apps = ["example/tinyapp"] (["tinyapp"] in install-app-required-app-offline).


def _argv_tail(argv: str) -> list[str]:
    """The argv of a capture after the bench program (``./bench``)."""
    return argv.split()[1:]


def test_install_app_exits_0_when_the_app_is_already_installed() -> None:
    before, installed, again = captures("install-app")
    assert bench.parse_installed_apps(before.stdout) == ["frappe"]
    assert _argv_tail(installed.argv) == bench.install_app(SITE, "tinyapp")[1:]
    assert installed.exit_code == 0 and "Installing tinyapp..." in installed.stdout
    assert again.exit_code == 0 and again.stdout == "App tinyapp already installed\n"


def test_install_app_leaves_list_apps_as_it_was() -> None:
    """install-app installs the required apps first and keeps the installed_apps global, but
    list-apps (the Installed Application table) still shows what it showed before."""
    installed, global_apps, listed = captures("install-app-list-apps-stale")
    assert installed.exit_code == 0
    assert installed.stdout.index("Installing tinyapp...") < installed.stdout.index("Installing tinydep...")
    assert bench.parse_installed_apps(global_apps.stdout) == ["frappe", "tinyapp", "tinydep"]
    assert bench.parse_list_apps(listed.stdout, SITE) == ["frappe"]


def test_uninstall_app_refreshes_list_apps_and_exits_0_when_not_installed() -> None:
    listed_before, _, removed, global_apps, again, listed_after = captures("uninstall-app")
    assert bench.parse_list_apps(listed_before.stdout, SITE) == []  # never migrated
    assert _argv_tail(removed.argv) == bench.uninstall_app(SITE, "tinyapp")[1:]
    assert removed.exit_code == 0 and bench.uninstall_refusal(removed.output) is None
    assert removed.stdout.splitlines()[-1] == f"Uninstalled App tinyapp from Site {SITE}"
    assert bench.parse_installed_apps(global_apps.stdout) == ["frappe"]
    assert again.exit_code == 0 and again.stdout == f"App tinydep not installed on Site {SITE}\n"
    assert bench.uninstall_refusal(again.output) is None
    assert bench.parse_list_apps(listed_after.stdout, SITE) == ["frappe"]  # filled by uninstall-app


def test_uninstall_of_a_required_app_exits_0_and_the_refusal_is_read() -> None:
    before, refused, after = captures("uninstall-app-dependency-refusal")
    assert refused.exit_code == 0
    assert bench.uninstall_refusal(refused.output) == "App tinyapp is a dependency of tinydep. Uninstall tinydep first."
    assert bench.parse_installed_apps(before.stdout) == bench.parse_installed_apps(after.stdout) \
        == ["frappe", "tinyapp", "tinydep"]


def test_uninstall_app_refusals_that_exit_1() -> None:
    """An app the bench lacks, frappe itself, and a confirmation with no terminal (without
    --yes): exit 1, command errors, nothing removed."""
    unknown, frappe_app, unconfirmed = captures("uninstall-app-refused")
    assert "ModuleNotFoundError: No module named 'nosuchapp'" in unknown.stderr
    assert frappe_app.stdout == "You cannot remove or uninstall the app `frappe`\n"
    assert unconfirmed.stdout.rstrip().endswith("Are you sure you want to continue? [y/N]:")
    assert unconfirmed.stderr == "Aborted!\n"
    for done in (unknown, frappe_app, unconfirmed):
        assert done.exit_code == 1 and bench.uninstall_refusal(done.output) is None
        assert bench.classify_failure(done.exit_code, done.output).kind == bench.COMMAND_ERROR


def test_uninstall_app_with_bench_backup_and_dry_run() -> None:
    with_backup, dry_run = captures("uninstall-app-backup-and-dry-run")
    assert with_backup.exit_code == 0 and "Backing up...\n" in with_backup.stdout
    assert dry_run.exit_code == 0 and "Backing up..." not in dry_run.stdout
    assert dry_run.stdout.splitlines()[-1] == f"Uninstalled App tinyapp from Site {SITE}"  # said, not done


@pytest.mark.parametrize(("name", "words"), [
    ("install-app-not-in-bench", "An error occurred while installing nosuchapp: No module named 'nosuchapp'"),
    # a required app named without its GitHub organisation is looked up on api.github.com
    ("install-app-required-app-offline", "Failed to resolve 'api.github.com'"),
])
def test_install_app_failures_exit_1_as_command_errors(name: str, words: str) -> None:
    done = capture(name)
    assert done.exit_code == 1 and words in done.output
    assert bench.classify_failure(done.exit_code, done.output).kind == bench.COMMAND_ERROR
