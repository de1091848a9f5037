"""The bench layer: argv builders and the parsers of what bench prints (bench-contract.md)."""

from __future__ import annotations

import pytest

from jerp_jobs import bench
from jerp_jobs.errors import InvalidInput, InvalidSiteName, OutputParseError

SITE = "acme.example.com"

SUMMARY_WITH_FILES = """\
Backup Summary for acme.example.com at 2026-11-29 03:00:07.123456
Config  : ./acme.example.com/private/backups/20261129_030001-acme_example_com-site_config_backup.json 944.0B
Database: ./acme.example.com/private/backups/20261129_030001-acme_example_com-database.sql.gz         1.2MiB
Public  : ./acme.example.com/private/backups/20261129_030001-acme_example_com-files.tar                10.0KiB
Private : ./acme.example.com/private/backups/20261129_030001-acme_example_com-private-files.tar        10.0KiB
Backup for Site acme.example.com has been successfully completed with files
"""

SUMMARY_DB_ONLY = """\
Deleting old backups of acme.example.com
Backup Summary for acme.example.com at 2026-11-29 03:00:07.123456
Config  : ./acme.example.com/private/backups/20261129_030001-acme_example_com-site_config_backup.json 944.0B
Database: ./acme.example.com/private/backups/20261129_030001-acme_example_com-database.sql.gz         2.5GiB
Backup for Site acme.example.com has been successfully completed
"""


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(
            bench.backup(SITE), ["bench", "--site", SITE, "backup", "--with-files"], id="backup-with-files"
        ),
        pytest.param(bench.backup(SITE, with_files=False), ["bench", "--site", SITE, "backup"], id="backup-db-only"),
        pytest.param(
            bench.backup(SITE, compress=True, backup_path="/b", bench="/opt/bench"),
            ["/opt/bench", "--site", SITE, "backup", "--with-files", "--compress", "--backup-path", "/b"],
            id="backup-options",
        ),
        pytest.param(bench.migrate(SITE), ["bench", "--site", SITE, "migrate"], id="migrate"),
        pytest.param(
            bench.migrate(SITE, skip_failing=True), ["bench", "--site", SITE, "migrate", "--skip-failing"], id="migrate-skip"
        ),
        pytest.param(bench.clear_cache(SITE), ["bench", "--site", SITE, "clear-cache"], id="clear-cache"),
        pytest.param(
            bench.clear_website_cache(SITE), ["bench", "--site", SITE, "clear-website-cache"], id="clear-website-cache"
        ),
        pytest.param(
            bench.set_maintenance_mode(SITE, True), ["bench", "--site", SITE, "set-maintenance-mode", "on"], id="maint-on"
        ),
        pytest.param(
            bench.set_maintenance_mode(SITE, False),
            ["bench", "--site", SITE, "set-maintenance-mode", "off"],
            id="maint-off",
        ),
        pytest.param(bench.scheduler(SITE, "pause"), ["bench", "--site", SITE, "scheduler", "pause"], id="sched-pause"),
        pytest.param(bench.scheduler(SITE, "resume"), ["bench", "--site", SITE, "scheduler", "resume"], id="sched-resume"),
        pytest.param(
            bench.ready_for_migration(SITE), ["bench", "--site", SITE, "ready-for-migration"], id="ready-for-migration"
        ),
        pytest.param(bench.install_app(SITE, "erpnext"), ["bench", "--site", SITE, "install-app", "erpnext"], id="install"),
        pytest.param(bench.list_apps(SITE), ["bench", "--site", SITE, "list-apps", "-f", "json"], id="list-apps"),
        pytest.param(bench.ping(SITE), ["bench", "--site", SITE, "execute", "frappe.ping"], id="ping"),
        pytest.param(bench.build(), ["bench", "build"], id="build"),
        pytest.param(bench.build(apps=["erpnext"]), ["bench", "build", "--app", "erpnext"], id="build-app"),
        pytest.param(
            bench.build(apps=["frappe", "erpnext"], production=True, force=True),
            ["bench", "build", "--apps", "frappe,erpnext", "--production", "--force"],
            id="build-apps",
        ),
    ],
)
def test_builder_produces_the_argv_bench_expects(argv: list[str], expected: list[str]) -> None:
    assert argv == expected


def test_new_site_keeps_passwords_out_of_argv_and_answers_the_prompts_on_stdin() -> None:
    call = bench.new_site(
        SITE, db_root_password="rootpw", admin_password="adminpw", db_name="_acme_1", install_apps=["erpnext"]
    )
    argv = call.argv
    assert argv[:3] == ["bench", "new-site", SITE]
    assert not any("rootpw" in a or "adminpw" in a for a in argv)
    assert not any(a.split("=")[0] in bench.SECRET_OPTIONS for a in argv)
    assert argv[argv.index("--db-root-username") + 1] == "root"  # never the super-user prompt
    assert argv[argv.index("--db-name") + 1] == "_acme_1"
    assert "--mariadb-user-host-login-scope=%" in argv
    assert argv[-2:] == ["--install-app", "erpnext"]
    # Frappe asks "MySQL root password: " first, then "Set Administrator password: " and
    # "Re-enter Administrator password: " (seen on a real 15.55.1 bench)
    assert call.stdin == b"rootpw\nadminpw\nadminpw\n"
    assert "rootpw" not in repr(call)


def test_restore_forces_and_answers_the_root_password_prompt_and_passes_file_tars() -> None:
    call = bench.restore(
        SITE, "acme.example.com/private/backups/x-database.sql.gz", db_root_password="pw",
        public_files="p.tar", private_files="q.tar",
    )
    argv = call.argv
    assert argv[:5] == ["bench", "--site", SITE, "--force", "restore"]
    assert "pw" not in argv and "--db-root-password" not in argv
    assert call.stdin == b"pw\n"
    assert argv[argv.index("--with-public-files") + 1] == "p.tar"
    assert argv[argv.index("--with-private-files") + 1] == "q.tar"


def test_drop_site_skips_its_own_backup_and_answers_the_root_password_prompt() -> None:
    call = bench.drop_site(SITE, db_root_password="pw")
    assert call.argv[:3] == ["bench", "drop-site", SITE]
    assert {"--no-backup", "--force"} <= set(call.argv) and "pw" not in call.argv
    assert call.stdin == b"pw\n"


@pytest.mark.parametrize("password", ["two\nlines", "cr\rhere", "nul\x00", ""])
def test_a_password_bench_cannot_read_as_one_line_is_refused(password: str) -> None:
    with pytest.raises(InvalidInput, match="bench prompt"):
        bench.drop_site(SITE, db_root_password=password)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: bench.migrate("Acme.com"), id="uppercase"),
        pytest.param(lambda: bench.backup("all"), id="all-sites"),
        pytest.param(lambda: bench.backup("--help"), id="option-like"),
        pytest.param(lambda: bench.new_site("a b.com", db_root_password="x", admin_password="y", db_name="d"), id="space"),
        pytest.param(lambda: bench.restore("../etc", "x.sql.gz", db_root_password="x"), id="dotdot"),
    ],
)
def test_builders_refuse_bad_site_names_before_building(call) -> None:
    with pytest.raises(InvalidSiteName):
        call()


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: bench.install_app(SITE, "--force"), id="app-option"),
        pytest.param(lambda: bench.install_app(SITE, "Erp Next"), id="app-space"),
        pytest.param(lambda: bench.scheduler(SITE, "explode"), id="scheduler-action"),
        pytest.param(lambda: bench.restore(SITE, "-x.sql.gz", db_root_password="x"), id="path-option"),
        pytest.param(
            lambda: bench.new_site(SITE, db_root_password="x", admin_password="y", db_name="a;drop"), id="db-name"
        ),
    ],
)
def test_builders_refuse_bad_arguments(call) -> None:
    with pytest.raises(InvalidInput):
        call()


def test_backup_summary_with_files_gives_every_artifact() -> None:
    summary = bench.parse_backup_summary(SUMMARY_WITH_FILES, SITE)
    assert [a.kind for a in summary.artifacts] == ["config", "database", "public_files", "private_files"]
    database = summary.artifact("database")
    assert database is not None
    assert database.path == "./acme.example.com/private/backups/20261129_030001-acme_example_com-database.sql.gz"
    assert database.size_text == "1.2MiB"
    assert database.approx_bytes == round(1.2 * 1024 * 1024)
    assert summary.with_files
    assert summary.timestamp == "20261129_030001"
    assert summary.taken_at is not None and summary.taken_at.year == 2026


def test_backup_summary_without_files_after_other_lines() -> None:
    summary = bench.parse_backup_summary(SUMMARY_DB_ONLY, SITE)
    assert [a.kind for a in summary.artifacts] == ["config", "database"]
    assert not summary.with_files
    assert summary.artifact("database").approx_bytes == round(2.5 * 1024**3)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("output", "message"),
    [
        pytest.param("Backup failed for Site acme.example.com. Database or site_config.json may be corrupted",
                     "no 'Backup Summary'", id="failed"),
        pytest.param(SUMMARY_WITH_FILES.replace("acme.example.com at", "other.example.com at"), "expected", id="other-site"),
        pytest.param("\n".join(SUMMARY_WITH_FILES.splitlines()[:2]), "no database", id="no-database"),
    ],
)
def test_backup_summary_parser_rejects_what_is_not_a_summary(output: str, message: str) -> None:
    with pytest.raises(OutputParseError, match=message):
        bench.parse_backup_summary(output, SITE)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("944.0B", 944), ("10.0KiB", 10240), ("1.5 MiB", 1572864), ("2.0GiB", 2 * 1024**3), ("1.0TiB", 1024**4)],
)
def test_human_sizes(text: str, expected: int) -> None:
    assert bench.parse_size(text) == expected


def test_list_apps_json_indented_over_several_lines() -> None:
    output = '{\n    "acme.example.com": [\n        "frappe",\n        "erpnext"\n    ]\n}\n'
    assert bench.parse_list_apps(output, SITE) == ["frappe", "erpnext"]


def test_list_apps_json_after_warnings() -> None:
    output = 'WARN: something\n{"acme.example.com": ["frappe", "erpnext"]}\n'
    assert bench.parse_list_apps(output, SITE) == ["frappe", "erpnext"]


@pytest.mark.parametrize(
    "output",
    [pytest.param("frappe\nerpnext", id="plain"), pytest.param('{"other.com": []}', id="other-site"),
     pytest.param("{broken", id="malformed")],
)
def test_list_apps_rejects_other_shapes(output: str) -> None:
    with pytest.raises(OutputParseError):
        bench.parse_list_apps(output, SITE)


def test_apps_txt() -> None:
    assert bench.parse_apps_txt("frappe\nerpnext\n\n nfse-pr \n") == ["frappe", "erpnext", "nfse-pr"]
