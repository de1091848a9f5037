"""The stand-in ``bench`` (tests/standin/bench) against the real MariaDB and Redis.

Each test runs the script as a subprocess, as the project does (cwd = the bench folder, stdin
closed), and checks real effects: databases, tables and rows in MariaDB, gzip dumps and tar
archives on disk, keys in Redis, the calls log and the concurrency marker.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import re
import signal
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.conftest import MARIADB_PORT
from tests.standin import (
    BENCH_SCRIPT,
    create_bench,
    read_calls,
    read_violations,
    set_app_version,
    site_config,
    write_faults,
)

pytestmark = pytest.mark.services

MARIADB_HOST = "127.0.0.1"
ADMIN_PASSWORD = "admin-" + uuid.uuid4().hex[:12]
PATCH_ONE = "frappe.patches.v15_0.standin_create_note_tag"
PATCH_TWO = "erpnext.patches.v15_0.standin_add_note_notify_on_login"


@dataclass
class MariaDB:
    """The test server, spoken to as root through the ``mariadb`` client."""

    password: str

    def sql(self, statement: str, database: str | None = None) -> list[list[str]]:
        argv = ["mariadb", f"--host={MARIADB_HOST}", f"--port={MARIADB_PORT}", "--user=root",
                "--batch", "--skip-column-names"]
        if database:
            argv.append(database)
        proc = subprocess.run(argv, input=statement, text=True, capture_output=True,
                              env={**os.environ, "MYSQL_PWD": self.password}, check=False)
        if proc.returncode:
            raise AssertionError(f"mariadb failed: {proc.stderr}")
        return [line.split("\t") for line in proc.stdout.splitlines()]

    def tables(self, database: str) -> set[str]:
        return {row[0] for row in self.sql("SHOW TABLES", database)}

    def columns(self, database: str, table: str) -> set[str]:
        return {row[0] for row in self.sql(f"SHOW COLUMNS FROM `{table}`", database)}

    def database_exists(self, name: str) -> bool:
        return bool(self.sql(f"SHOW DATABASES LIKE '{name}'"))

    def drop_site_database(self, name: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS `{name}`")
        for (host,) in self.sql(f"SELECT Host FROM mysql.user WHERE User = '{name}'"):
            self.sql(f"DROP USER IF EXISTS '{name}'@'{host}'")


@pytest.fixture(scope="module")
def maria(mariadb_root_password: str) -> MariaDB:
    """Root access to the test MariaDB, without anonymous accounts (Frappe's setup requires that).

    An anonymous ``''@'localhost'`` account would shadow ``'site_user'@'%'`` for clients
    connecting from 127.0.0.1, as mysql_secure_installation warns.
    """
    db = MariaDB(mariadb_root_password)
    for (host,) in db.sql("SELECT Host FROM mysql.user WHERE User = ''"):
        db.sql(f"DROP USER IF EXISTS ''@'{host}'")
    return db


@pytest.fixture
def bench(tmp_path: Path, maria: MariaDB, redis_url: str) -> Iterator[Path]:
    root = create_bench(tmp_path / "bench", db_host=MARIADB_HOST, db_port=MARIADB_PORT, redis_cache=redis_url)
    yield root
    for config in [*root.glob("sites/*/site_config.json"), *root.glob("archived/sites/*/site_config.json")]:
        name = json.loads(config.read_text()).get("db_name")
        if name:
            maria.drop_site_database(name)


def run(bench: Path, *args: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BENCH_SCRIPT), *args], cwd=cwd or bench, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, check=False)


def start(bench: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BENCH_SCRIPT), *args], cwd=bench, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def new_site_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}.example.com"


def new_site(bench: Path, maria: MariaDB, *extra: str, site: str | None = None) -> str:
    site = site or new_site_name()
    result = run(bench, "new-site", site, "--db-root-username", "root", "--db-root-password", maria.password,
                 "--admin-password", ADMIN_PASSWORD, "--mariadb-user-host-login-scope=%", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return site


def db_name(bench: Path, site: str) -> str:
    return site_config(bench, site)["db_name"]


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


@pytest.fixture
def site(bench: Path, maria: MariaDB) -> str:
    return new_site(bench, maria, "--install-app", "erpnext")


# ---------------------------------------------------------------------------------------------
# new-site, sites, apps


def test_new_site_creates_database_user_tables_and_config(bench: Path, maria: MariaDB, site: str) -> None:
    config = site_config(bench, site)
    assert config["db_type"] == "mariadb"
    assert re.fullmatch(r"_[0-9a-f]{16}", config["db_name"])
    assert len(config["db_password"]) == 16
    assert maria.database_exists(config["db_name"])
    assert {"tabDefaultValue", "tabInstalled Application", "tabUser", "tabNote", "tabPatch Log",
            "__Auth"} <= maria.tables(config["db_name"])
    assert maria.sql(f"SELECT Host FROM mysql.user WHERE User = '{config['db_name']}'") == [["%"]]
    admin_hash = maria.sql("SELECT password FROM __Auth WHERE name = 'Administrator'", config["db_name"])[0][0]
    assert admin_hash.startswith("$pbkdf2-sha256$") and ADMIN_PASSWORD not in admin_hash
    for folder in ("public/files", "private/files", "private/backups"):
        assert (bench / "sites" / site / folder).is_dir()

    listed = run(bench, "--site", site, "list-apps", "-f", "json")
    assert json.loads(listed.stdout) == {site: []}  # Installed Application: filled by migrate only
    installed = run(bench, "--site", site, "execute", "frappe.get_installed_apps")
    assert json.loads(installed.stdout) == ["frappe", "erpnext"]


def test_new_site_honours_db_name_and_set_default(bench: Path, maria: MariaDB) -> None:
    name = f"_std{uuid.uuid4().hex[:12]}"
    site = new_site(bench, maria, "--db-name", name, "--set-default")
    assert db_name(bench, site) == name and maria.database_exists(name)
    assert json.loads((bench / "sites" / "common_site_config.json").read_text())["default_site"] == site
    assert run(bench, "execute", "frappe.ping").stdout.strip() == '"pong"'


def test_existing_site_is_refused(bench: Path, maria: MariaDB, site: str) -> None:
    result = run(bench, "new-site", site, "--db-root-password", maria.password, "--admin-password", "x")
    assert result.returncode == 1
    assert result.stdout.strip() == f"Site {site} already exists, use `--force` to proceed anyway"


def hash_matches(stored: str, password: str) -> bool:
    """Check a passlib-style ``$pbkdf2-sha256$rounds$salt$digest`` against a password."""
    import base64
    import hashlib

    _, _, rounds, salt, digest = stored.split("$")

    def unab64(text: str) -> bytes:
        text = text.replace(".", "+")
        return base64.b64decode(text + "=" * (-len(text) % 4))

    return hashlib.pbkdf2_hmac("sha256", password.encode(), unab64(salt), int(rounds)) == unab64(digest)


def run_fed(bench: Path, *args: str, stdin: bytes | None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the stand-in in a session of its own (no controlling terminal, as under the executors),
    with ``stdin`` on a pipe (None: /dev/null)."""
    return subprocess.run([str(BENCH_SCRIPT), *args], cwd=bench, input=stdin,
                          stdin=None if stdin is not None else subprocess.DEVNULL, capture_output=True,
                          timeout=timeout, check=False, start_new_session=True)


def test_missing_root_password_prompts_then_fails_without_hanging(bench: Path, maria: MariaDB) -> None:
    site = new_site_name()
    began = time.monotonic()
    result = run_fed(bench, "new-site", site, "--admin-password", "x", stdin=None, timeout=10)
    assert time.monotonic() - began < 10
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "Warning: Password input may be echoed.\nMySQL root password: " in err
    assert err.rstrip().endswith("EOFError")  # new-site prints the traceback, as Frappe's does
    assert not maria.database_exists(db_name(bench, site))


def test_drop_site_without_root_password_aborts_like_click(bench: Path, maria: MariaDB, site: str) -> None:
    result = run_fed(bench, "drop-site", site, "--no-backup", "--force", stdin=None, timeout=10)
    assert result.returncode == 1
    assert result.stderr.decode().rstrip().endswith("Aborted!")
    assert (bench / "sites" / site / "site_config.json").exists()


def test_passwords_answered_on_stdin_in_frappes_order(bench: Path, maria: MariaDB) -> None:
    site = new_site_name()
    made = run_fed(bench, "new-site", site, "--db-root-username", "root", "--mariadb-user-host-login-scope=%",
                   stdin=f"{maria.password}\n{ADMIN_PASSWORD}\n{ADMIN_PASSWORD}\n".encode())
    assert made.returncode == 0, made.stderr.decode()
    err = made.stderr.decode()
    assert (err.index("MySQL root password: ") < err.index("Set Administrator password: ")
            < err.index("Re-enter Administrator password: "))
    assert maria.password not in made.stdout.decode() + err and ADMIN_PASSWORD not in err
    config = json.loads((bench / "sites" / site / "site_config.json").read_text())
    admin_hash = maria.sql("SELECT password FROM __Auth WHERE name = 'Administrator'", config["db_name"])[0][0]
    assert hash_matches(admin_hash, ADMIN_PASSWORD)  # the second line went to the second prompt
    dropped = run_fed(bench, "drop-site", site, "--no-backup", "--force", stdin=f"{maria.password}\n".encode())
    assert dropped.returncode == 0, dropped.stderr.decode()


def test_new_site_asks_the_admin_password_again_when_the_two_differ(bench: Path, maria: MariaDB) -> None:
    """Frappe v15 confirms the Administrator password; a mismatch asks both again."""
    site = new_site_name()
    made = run_fed(bench, "new-site", site, "--db-root-username", "root", "--mariadb-user-host-login-scope=%",
                   stdin=f"{maria.password}\nfirst\nsecond\n{ADMIN_PASSWORD}\n{ADMIN_PASSWORD}\n".encode())
    assert made.returncode == 0, made.stderr.decode()
    assert "Passwords do not match" in made.stdout.decode()
    assert made.stderr.decode().count("Re-enter Administrator password: ") == 2
    config = json.loads((bench / "sites" / site / "site_config.json").read_text())
    admin_hash = maria.sql("SELECT password FROM __Auth WHERE name = 'Administrator'", config["db_name"])[0][0]
    assert hash_matches(admin_hash, ADMIN_PASSWORD)
    dropped = run_fed(bench, "drop-site", site, "--no-backup", "--force", stdin=f"{maria.password}\n".encode())
    assert dropped.returncode == 0, dropped.stderr.decode()
    assert not maria.database_exists(config["db_name"])


def test_site_resolution_and_usage_errors(bench: Path) -> None:
    no_site = run(bench, "backup")
    assert (no_site.returncode, no_site.stdout.strip()) == (1, "Please specify --site sitename")
    unknown = run(bench, "--site", "nowhere.example.com", "migrate")
    assert (unknown.returncode, unknown.stdout.strip()) == (1, "Site nowhere.example.com does not exist!")
    bad_command = run(bench, "--site", "x", "frobnicate")
    assert bad_command.returncode == 2 and "Error: No such command 'frobnicate'." in bad_command.stderr
    bad_option = run(bench, "--site", "x", "backup", "--bogus")
    assert bad_option.returncode == 2 and "Error: No such option: --bogus" in bad_option.stderr
    from_sites = run(bench, "backup", cwd=bench / "sites")
    assert from_sites.stdout.strip() == "Please specify --site sitename"


def test_install_app_names_a_missing_app(bench: Path, maria: MariaDB) -> None:
    site = new_site(bench, maria)
    result = run(bench, "--site", site, "install-app", "hrms")
    assert result.returncode == 1
    assert "An error occurred while installing hrms: App hrms not in apps.txt" in result.stdout
    assert run(bench, "--site", site, "install-app", "erpnext").returncode == 0
    assert json.loads(run(bench, "--site", site, "execute", "frappe.get_installed_apps").stdout) == ["frappe", "erpnext"]
    # before a migrate the Installed Application table is empty: list-apps prints the installed_apps global
    assert run(bench, "--site", site, "list-apps").stdout.split() == ["frappe", "erpnext"]


def test_drop_site_drops_database_and_archives_folder(bench: Path, maria: MariaDB, site: str) -> None:
    name = db_name(bench, site)
    result = run(bench, "drop-site", site, "--db-root-password", maria.password, "--no-backup", "--force")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not maria.database_exists(name)
    assert not maria.sql(f"SELECT Host FROM mysql.user WHERE User = '{name}'")
    assert not (bench / "sites" / site).exists()
    assert (bench / "archived" / "sites" / site / "site_config.json").is_file()


# ---------------------------------------------------------------------------------------------
# backup and restore

SUMMARY_LINE = r"(?P<kind>Config  |Database|Public  |Private ): (?P<path>\S+) +(?P<size>\d+\.\d(?:Ki|Mi|Gi)?B)"


@pytest.mark.parametrize("compress", [False, True])
def test_backup_prints_summary_and_writes_contract_files(bench: Path, maria: MariaDB, site: str,
                                                         compress: bool) -> None:
    (bench / "sites" / site / "public" / "files" / "logo.txt").write_text("logo")
    argv = ["--site", site, "backup", "--with-files"] + (["--compress"] if compress else [])
    result = run(bench, *argv)
    assert result.returncode == 0, result.stdout + result.stderr

    lines = result.stdout.strip().splitlines()
    stamp_pattern = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}"
    assert re.fullmatch(rf"Backup Summary for {re.escape(site)} at {stamp_pattern}", lines[0])
    entries = [re.fullmatch(SUMMARY_LINE, line) for line in lines[1:5]]
    assert all(entries), lines
    assert [e["kind"].strip() for e in entries] == ["Config", "Database", "Public", "Private"]
    assert len({line.rindex(" ") for line in lines[1:5]}) == 1, "paths are padded to one width"
    assert lines[5] == f"Backup for Site {site} has been successfully completed with files"

    slug = site.replace(".", "_")
    ext = "tgz" if compress else "tar"
    paths = [e["path"] for e in entries]
    stamp = re.fullmatch(rf"\./{re.escape(site)}/private/backups/(\d{{8}}_\d{{6}})-{slug}-site_config_backup\.json",
                         paths[0]).group(1)
    assert paths[1:] == [f"./{site}/private/backups/{stamp}-{slug}-{tail}"
                         for tail in ("database.sql.gz", f"files.{ext}", f"private-files.{ext}")]
    files = [bench / "sites" / p for p in paths]
    assert json.loads(files[0].read_text()) == site_config(bench, site)
    with gzip.open(files[1], "rt") as dump:
        text = dump.read()
    assert text.startswith("-- Backup generated by Frappe 15.0.0")
    assert "CREATE TABLE `tabNote`" in text and "Dump completed" in text
    with tarfile.open(files[2]) as archive:
        assert f"./{site}/public/files/logo.txt" in archive.getnames()


def test_backup_without_files_lists_config_and_database(bench: Path, site: str) -> None:
    result = run(bench, "--site", site, "backup")
    assert result.returncode == 0
    kinds = [line.split(":")[0].strip() for line in result.stdout.splitlines()[1:-1]]
    assert kinds == ["Config", "Database"]
    assert result.stdout.strip().endswith(f"Backup for Site {site} has been successfully completed")


def test_backup_failure_reports_and_removes_partial_files(bench: Path, site: str) -> None:
    write_faults(bench, {"fail": {"backup": [site]}})
    result = run(bench, "--site", site, "backup", "--with-files")
    assert result.returncode == 1
    assert result.stdout.strip() == f"Backup failed for Site {site}. Database or site_config.json may be corrupted"
    assert list((bench / "sites" / site / "private" / "backups").iterdir()) == []


def test_backup_deletes_backups_older_than_keep_backups_for_hours(bench: Path, site: str) -> None:
    folder = bench / "sites" / site / "private" / "backups"
    old, recent = folder / "20200101_000000-old-database.sql.gz", folder / "recent.sql.gz"
    old.write_bytes(b"x")
    recent.write_bytes(b"y")
    three_hours_ago = time.time() - 3 * 3600
    os.utime(old, (three_hours_ago, three_hours_ago))
    config_path = bench / "sites" / site / "site_config.json"
    config_path.write_text(json.dumps({**site_config(bench, site), "keep_backups_for_hours": 2}))
    assert run(bench, "--site", site, "backup").returncode == 0
    assert not old.exists() and recent.exists()


def test_restore_brings_back_rows_and_files(bench: Path, maria: MariaDB, site: str) -> None:
    name = db_name(bench, site)
    maria.sql("INSERT INTO tabNote (name, title, content) VALUES ('n1', 'Invoice', 'Total: 100 €'),"
              " ('n2', 'Order', 'line one\\nline two')", name)
    public_file = bench / "sites" / site / "public" / "files" / "contract.pdf"
    public_file.write_bytes(b"%PDF-1.4 contract")
    before = maria.sql("SELECT name, title, content FROM tabNote ORDER BY name", name)
    backup = run(bench, "--site", site, "backup", "--with-files")
    paths = {m["kind"].strip(): m["path"] for m in re.finditer(SUMMARY_LINE, backup.stdout)}

    maria.sql("DELETE FROM tabNote WHERE name = 'n1'; UPDATE tabNote SET content = 'changed';"
              " INSERT INTO tabNote (name, title) VALUES ('n3', 'later')", name)
    public_file.unlink()

    result = run(bench, "--site", site, "--force", "restore", paths["Database"].rsplit("/", 1)[1],
                 "--db-root-password", maria.password, "--with-public-files", paths["Public"],
                 "--with-private-files", paths["Private"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(f"Site {site} has been restored with files")
    assert maria.sql("SELECT name, title, content FROM tabNote ORDER BY name", name) == before
    assert public_file.read_bytes() == b"%PDF-1.4 contract"
    assert run(bench, "--site", site, "execute", "frappe.ping").stdout.strip() == '"pong"'


def test_truncated_dump_is_refused(bench: Path, maria: MariaDB, site: str) -> None:
    maria.sql("INSERT INTO tabNote (name, content) VALUES " + ",".join(
        f"('n{i}', '{uuid.uuid4().hex * 20}')" for i in range(300)), db_name(bench, site))
    backup = run(bench, "--site", site, "backup")
    dump = bench / "sites" / next(m["path"] for m in re.finditer(SUMMARY_LINE, backup.stdout)
                                  if m["kind"] == "Database")
    truncated = dump.with_name("truncated-database.sql.gz")
    truncated.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])

    result = run(bench, "--site", site, "--force", "restore", str(truncated.relative_to(bench / "sites")),
                 "--db-root-password", maria.password)
    assert result.returncode == 1
    assert "unexpected end of file" in result.stdout
    assert "has been restored" not in result.stdout


def test_restore_refuses_a_second_concurrent_restore(bench: Path, maria: MariaDB, site: str) -> None:
    backup = run(bench, "--site", site, "backup")
    dump = next(m["path"] for m in re.finditer(SUMMARY_LINE, backup.stdout) if m["kind"] == "Database")
    lock = bench / "sites" / site / "locks" / "site_restore.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = run(bench, "--site", site, "--force", "restore", dump, "--db-root-password", maria.password)
    assert result.returncode == 1
    assert "LockTimeoutError: Failed to aquire lock: site_restore" in result.stderr


# ---------------------------------------------------------------------------------------------
# migrate


def applied_patches(maria: MariaDB, name: str) -> list[str]:
    return [row[0] for row in maria.sql("SELECT patch FROM `tabPatch Log` ORDER BY creation", name)]


def test_migrate_applies_phases_once_and_is_idempotent(bench: Path, maria: MariaDB, site: str) -> None:
    name = db_name(bench, site)
    set_app_version(bench, "erpnext", "15.1.0")
    first = run(bench, "--site", site, "migrate")
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"Executing {PATCH_ONE} in {site} ({name})" in first.stdout
    second = run(bench, "--site", site, "migrate")
    assert second.returncode == 0
    assert "Executing" not in second.stdout.replace("Executing `after_migrate` hooks...", "")
    assert applied_patches(maria, name) == [PATCH_ONE, PATCH_TWO]
    assert "notify_on_login" in maria.columns(name, "tabNote")
    assert "last_active" in maria.columns(name, "tabUser")
    assert maria.sql("SELECT app_version FROM `tabInstalled Application` WHERE app_name = 'erpnext'", name) == [
        ["15.1.0"]]
    assert "maintenance_mode" not in site_config(bench, site)


def test_injected_migrate_failure_leaves_database_half_migrated(bench: Path, maria: MariaDB, site: str) -> None:
    name = db_name(bench, site)
    write_faults(bench, {"fail": {"migrate": [site]}, "fail_after_phase": {"migrate": 1}})
    failed = run(bench, "--site", site, "migrate")
    assert failed.returncode == 1
    assert "Traceback (most recent call last):" in failed.stderr
    assert applied_patches(maria, name) == [PATCH_ONE]
    assert "tabNote Tag" in maria.tables(name)
    assert "notify_on_login" not in maria.columns(name, "tabNote")
    assert "last_active" not in maria.columns(name, "tabUser")

    write_faults(bench, {})
    resumed = run(bench, "--site", site, "migrate")
    assert resumed.returncode == 0
    assert PATCH_ONE not in resumed.stdout and PATCH_TWO in resumed.stdout
    assert applied_patches(maria, name) == [PATCH_ONE, PATCH_TWO]


def test_migrate_refuses_to_run_without_redis(bench: Path, maria: MariaDB, site: str) -> None:
    common = bench / "sites" / "common_site_config.json"
    common.write_text(json.dumps({**json.loads(common.read_text()), "redis_cache": "redis://127.0.0.1:1"}))
    result = run(bench, "--site", site, "migrate")
    assert result.returncode == 1
    assert "Cannot run bench migrate without the services running" in result.stdout
    assert applied_patches(maria, db_name(bench, site)) == []


def test_migrate_lock_is_per_site(bench: Path, site: str) -> None:
    with open(bench / "sites" / site / "locks" / "bench_migrate.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = run(bench, "--site", site, "migrate")
    assert result.returncode == 1 and "Failed to aquire lock: bench_migrate" in result.stderr


# ---------------------------------------------------------------------------------------------
# Faults, hangs, markers, calls log


def test_hang_is_killable_and_releases_the_marker(bench: Path, site: str) -> None:
    marker = bench / "sites" / site / ".standin-active"
    write_faults(bench, {"hang": ["migrate"]})
    proc = start(bench, "--site", site, "migrate")
    wait_for(marker.exists)
    time.sleep(0.3)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == -signal.SIGTERM
    assert not marker.exists()
    assert read_calls(bench)[-1]["exit_code"] == -signal.SIGTERM

    proc = start(bench, "--site", site, "migrate")
    wait_for(marker.exists)
    proc.kill()
    proc.wait(timeout=5)
    assert marker.exists(), "SIGKILL leaves the marker of a dead process"
    write_faults(bench, {})
    assert run(bench, "--site", site, "migrate").returncode == 0
    assert read_violations(bench) == [] and not marker.exists()


def test_marker_detects_two_runs_on_one_site(bench: Path, site: str) -> None:
    write_faults(bench, {"delay": {"migrate": 2.0}})
    slow = start(bench, "--site", site, "migrate")
    wait_for((bench / "sites" / site / ".standin-active").exists)
    assert run(bench, "--site", site, "set-maintenance-mode", "on").returncode == 0
    assert slow.wait(timeout=15) == 0

    calls = {c["command"]: c for c in read_calls(bench)}
    violations = read_violations(bench)
    assert len(violations) == 1
    assert f"pid {calls['set-maintenance-mode']['pid']} (set-maintenance-mode)" in violations[0]
    assert f"pid {calls['migrate']['pid']} (migrate)" in violations[0]


def test_calls_log_records_runs_and_never_passwords(bench: Path, maria: MariaDB) -> None:
    site = new_site(bench, maria)
    run(bench, "--site", site, "--force", "restore", "missing.sql.gz", f"--db-root-password={maria.password}",
        "--admin-password", ADMIN_PASSWORD, "--encryption-key", "k3y-" + ADMIN_PASSWORD)
    raw = (bench / "sites" / ".standin-calls.jsonl").read_text()
    assert maria.password not in raw and ADMIN_PASSWORD not in raw
    calls = read_calls(bench)
    assert [c["command"] for c in calls] == ["new-site", "restore"]
    assert calls[0]["site"] == site and calls[0]["exit_code"] == 0
    assert "--db-root-password=***" in calls[1]["argv"] and calls[1]["exit_code"] == 1
    assert all(c["end"] >= c["start"] and c["pid"] > 0 for c in calls)
    assert read_violations(bench) == []


def test_injected_exit_code_and_delay_of_other_commands(bench: Path, site: str) -> None:
    write_faults(bench, {"fail": {"clear-cache": "*"}, "exit_code": {"clear-cache": 3},
                         "delay": {"ready-for-migration": {site: 0.5}}})
    assert run(bench, "--site", site, "clear-cache").returncode == 3
    began = time.monotonic()
    assert run(bench, "--site", site, "ready-for-migration").returncode == 0
    assert time.monotonic() - began >= 0.5


# ---------------------------------------------------------------------------------------------
# maintenance, scheduler, readiness, caches, build


def test_maintenance_mode_and_scheduler(bench: Path, site: str) -> None:
    assert run(bench, "--site", site, "set-maintenance-mode", "on").returncode == 0
    assert site_config(bench, site)["maintenance_mode"] == 1
    assert run(bench, "--site", site, "set-maintenance-mode", "off").returncode == 0
    assert site_config(bench, site)["maintenance_mode"] == 0

    assert run(bench, "--site", site, "scheduler", "enable").stdout.strip() == f"Scheduler is enabled for site {site}"
    assert run(bench, "--site", site, "scheduler", "status").stdout.strip() == f"Scheduler is enabled for site {site}"
    assert run(bench, "--site", site, "scheduler", "pause").stdout.strip() == f"Scheduler is paused for site {site}"
    assert site_config(bench, site)["pause_scheduler"] is True
    status = json.loads(run(bench, "--site", site, "scheduler", "status", "-f", "json").stdout)
    assert status == {"status": "disabled", "site": site}
    assert run(bench, "--site", site, "scheduler", "resume").returncode == 0
    assert site_config(bench, site)["pause_scheduler"] is False


def test_ready_for_migration_follows_pending_jobs(bench: Path, site: str) -> None:
    ready = run(bench, "--site", site, "ready-for-migration")
    assert (ready.returncode, ready.stdout.strip()) == (
        0, f"READY for migration: site {site} does not have any background jobs")
    (bench / "sites" / site / "pending_jobs").write_text("4\n")
    busy = run(bench, "--site", site, "ready-for-migration")
    assert (busy.returncode, busy.stdout.strip()) == (
        1, f"NOT READY for migration: site {site} has pending background jobs")


def test_clear_cache_deletes_only_the_site_keys(bench: Path, site: str, real_redis: redis.Redis) -> None:
    prefix = db_name(bench, site)
    real_redis.set(f"{prefix}|assets_json", "old")
    real_redis.set(f"{prefix}|website_page|home", "old")
    real_redis.set("_othersite|assets_json", "keep")
    assert run(bench, "--site", site, "clear-website-cache").returncode == 0
    assert real_redis.exists(f"{prefix}|website_page|home") == 0 and real_redis.exists(f"{prefix}|assets_json") == 1
    assert run(bench, "--site", site, "clear-cache").returncode == 0
    assert real_redis.exists(f"{prefix}|assets_json") == 0
    assert real_redis.get("_othersite|assets_json") == b"keep"


def test_build_writes_the_assets_manifest(bench: Path) -> None:
    result = run(bench, "build", "--apps", "frappe,erpnext", "--production")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((bench / "sites" / "assets" / "assets.json").read_text())
    assert manifest["build_stamp"]["apps"] == ["frappe", "erpnext"]
    bundle = manifest["erpnext.bundle.js"]
    assert (bench / "sites" / bundle.removeprefix("/")).is_file()
    assert (bench / "config" / "bench_build.lock").is_file()  # Frappe: <bench>/config/<name>.lock
