"""The read commands' settings (jerp_jobs.readsettings) are the typed Settings' own: the same
variables, defaults and values, a malformed value refused with the typed model's error, and no
pydantic, structlog, workflow catalog or Celery imported by ``jerpctl jobs``, ``backups`` or
``sites``."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from jerp_jobs.errors import ConfigError
from jerp_jobs.readsettings import ReadSettings, read_settings
from jerp_jobs.settings import SECRET_VARIABLES, Settings, load_settings

FIELDS = [f.name for f in dataclasses.fields(ReadSettings) if f.name != "secrets"]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting from the environment or a ``.env`` file of the test's own."""
    for name in list(os.environ):
        lowered = name.lower()
        if lowered.startswith("jerp_") or name.upper() in SECRET_VARIABLES.values():
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _typed_or_error() -> Settings | str:
    try:
        return load_settings()
    except ConfigError as exc:
        return str(exc)


def _read_or_error() -> object:
    try:
        return read_settings()
    except ConfigError as exc:
        return str(exc)


def test_every_field_is_a_setting_with_the_same_default() -> None:
    typed = load_settings()
    read = read_settings()
    assert isinstance(read, ReadSettings)
    for name in FIELDS:
        assert name in Settings.model_fields
        assert getattr(read, name) == getattr(typed, name), name


def test_the_secret_variables_are_the_secret_settings() -> None:
    secret_fields = {name for name, f in Settings.model_fields.items() if f.annotation == SecretStr | None}
    assert set(SECRET_VARIABLES) == secret_fields


@pytest.mark.parametrize(("variable", "value"), [
    ("JERP_BROKER_URL", "redis://:pw@127.0.0.1:6390/3"),
    ("JERP_BROKER_URL", "rediss://broker:6380/0"),
    ("JERP_BROKER_URL", "unix:///run/redis.sock"),
    ("JERP_BROKER_URL", "amqp://broker/"),
    ("JERP_BROKER_URL", ""),
    ("jerp_broker_url", "redis://lower-case:1/0"),
    ("JERP_JOB_TTL_DAYS", "7"),
    ("JERP_JOB_TTL_DAYS", "0"),
    ("JERP_JOB_TTL_DAYS", "7.0"),
    ("JERP_JOB_TTL_DAYS", " 7 "),
    ("JERP_JOB_TTL_DAYS", "seven"),
    ("JERP_LIVE_OUTPUT_LINES", "0"),
    ("JERP_LIVE_OUTPUT_LINES", "-1"),
    ("JERP_BACKUP_MAX_AGE_HOURS", "0.5"),
    ("JERP_BACKUP_MAX_AGE_HOURS", "0"),
    ("JERP_BACKUP_MAX_AGE_HOURS", "1e2"),
    ("JERP_BACKUP_MAX_AGE_HOURS", "nan"),
    ("JERP_S3_BUCKET", "backups"),
    ("JERP_S3_BUCKET", ""),
    ("JERP_EXECUTOR", "local"),
    ("JERP_EXECUTOR", "Local"),
    ("JERP_EXECUTOR", "ssh"),
    ("JERP_COMPOSE_PROJECT", "erp"),
    ("JERP_BACKEND_SERVICE", "web"),
    ("JERP_BENCH_DIR", "/home/frappe/bench"),
    ("JERP_BENCH_DIR", ""),
    ("JERP_BENCH_BIN", "/usr/local/bin/bench"),
    ("JERP_BENCH_USER", "frappe"),
    ("JERP_BENCH_USER", ""),
    ("JERP_CHILD_ENV_EXTRA", "PYTHONPATH, NODE_OPTIONS"),
    ("JERP_CHILD_ENV_EXTRA", ""),
    ("JERP_CHILD_ENV_EXTRA", "1BAD"),
    ("JERP_CHILD_ENV_EXTRA", "MARIADB_ROOT_PASSWORD"),
    ("JERP_CHILD_ENV_EXTRA", "[\"A\"]"),
    ("JERP_SITES_DIR", "/sites"),
    ("JERP_SITES_DIR", " "),
])
def test_a_value_reads_as_the_typed_model_reads_it(monkeypatch: pytest.MonkeyPatch, variable: str,
                                                   value: str) -> None:
    monkeypatch.setenv(variable, value)
    typed = _typed_or_error()
    read = _read_or_error()
    if isinstance(typed, str):
        assert read == typed  # the typed model's own error, naming the variable
        return
    assert not isinstance(read, str), read
    for name in FIELDS:
        assert getattr(read, name) == getattr(typed, name), name


def test_the_env_file_is_read_and_the_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("JERP_BROKER_URL=redis://from-file:1/0\nJERP_S3_BUCKET=file-bucket\n"
                                   "MARIADB_ROOT_PASSWORD='file-secret'\n")
    monkeypatch.setenv("JERP_S3_BUCKET", "env-bucket")
    read = read_settings()
    assert (read.broker_url, read.s3_bucket) == ("redis://from-file:1/0", "env-bucket")
    assert read.secret_values() == ["file-secret"]


def test_the_secret_values_are_the_typed_models(monkeypatch: pytest.MonkeyPatch) -> None:
    for number, variable in enumerate(SECRET_VARIABLES.values()):
        monkeypatch.setenv(variable if number % 2 else variable.lower(), f"secret-value-{number}")
    monkeypatch.setenv("JERP_SENTRY_DSN", "")
    assert sorted(read_settings().secret_values()) == sorted(load_settings().secret_values())


def test_a_bench_folder_is_required_by_the_local_executor_as_the_typed_model_requires_it() -> None:
    with pytest.raises(ConfigError) as read:
        read_settings().require_bench_dir()
    with pytest.raises(ConfigError) as typed:
        load_settings().require_bench_dir()
    assert str(read.value) == str(typed.value)


READ_COMMANDS = [["jobs"], ["backups"], ["sites"], ["--json", "jobs"]]


@pytest.mark.parametrize("args", READ_COMMANDS, ids=" ".join)
def test_read_commands_import_no_typed_settings_no_structlog_no_workflow(
        args: list[str], redis_url: str, real_redis, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bench = tmp_path / "bench"
    (bench / "sites" / "a.example.com").mkdir(parents=True)
    (bench / "sites" / "a.example.com" / "site_config.json").write_text("{}")
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("jerp_")}
    env.update(JERP_BROKER_URL=redis_url, JERP_EXECUTOR="local", JERP_BENCH_DIR=str(bench),
               JERP_ENV_FILE=os.devnull)
    if os.geteuid() == 0:
        env["JERP_BENCH_USER"] = "nobody"
        bench.chmod(0o755)
        tmp_path.chmod(0o755)
    code = (
        "import sys\nfrom jerp_jobs.cli import main\nsys.argv = ['jerpctl', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\nelse:\n    code = 0\n"
        "heavy = ('pydantic', 'pydantic_settings', 'structlog', 'celery', 'kombu', 'jerp_jobs.catalog', "
        "'jerp_jobs.operations', 'jerp_jobs.settings')\n"
        "print(code, sorted(m for m in sys.modules if m in heavy), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=tmp_path)
    exit_code, heavy = done.stderr.strip().splitlines()[-1].split(" ", 1)
    assert heavy == "[]", done.stderr
    assert exit_code in ("0", "1"), done.stderr  # 1: stale backups (none were taken)
    if args == ["sites"]:
        assert done.stdout.startswith("a.example.com "), done.stdout
    if args[0] == "--json":
        assert isinstance(json.loads(done.stdout), list)
