"""The ``.env`` file is read by every entry point; the environment wins over it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jerp_jobs.envfile import load_env_file, parse_env_file
from jerp_jobs.errors import ConfigError
from tests.workers import VENV_BIN


@pytest.mark.parametrize(
    ("line", "value"),
    [
        pytest.param("A=plain", "plain", id="plain"),
        pytest.param("export A=exported", "exported", id="export prefix"),
        pytest.param("A = spaced ", "spaced", id="spaces around"),
        pytest.param('A="two words # not a comment"', "two words # not a comment", id="double quotes"),
        pytest.param("A='$HOME stays text'", "$HOME stays text", id="single quotes, no expansion"),
        pytest.param("A=value # a comment", "value", id="inline comment"),
        pytest.param("A=", "", id="empty"),
        pytest.param("A=p@ss=word#1", "p@ss=word#1", id="= and # inside a value"),
    ],
)
def test_values_are_read_as_docker_compose_reads_them(tmp_path: Path, line: str, value: str) -> None:
    path = tmp_path / ".env"
    path.write_text(f"# settings\n\n{line}\n")
    assert parse_env_file(path) == {"A": value}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        pytest.param("no equals sign s3cr3t", "line 2: expected NAME=value", id="no ="),
        pytest.param("1A=s3cr3t", "line 2: expected NAME=value", id="bad name"),
        pytest.param('A="s3cr3t', "line 2: unterminated \" quote", id="open quote"),
    ],
)
def test_a_malformed_line_names_the_file_and_line_but_never_the_value(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / ".env"
    path.write_text(f"OK=1\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        parse_env_file(path)
    assert problem in str(caught.value) and str(path) in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("JERP_BROKER_URL=redis://from-file:1/0\nJERP_BENCH_BIN=from-file\n")
    environ = {"JERP_BROKER_URL": "redis://from-env:2/0"}
    assert load_env_file(environ, cwd=tmp_path) == tmp_path / ".env"
    assert environ == {"JERP_BROKER_URL": "redis://from-env:2/0", "JERP_BENCH_BIN": "from-file"}


def test_jerp_env_file_names_another_file(tmp_path: Path) -> None:
    other = tmp_path / "prod.env"
    other.write_text("JERP_EXECUTOR=local\n")
    environ = {"JERP_ENV_FILE": str(other)}
    assert load_env_file(environ, cwd=tmp_path / "elsewhere") == other
    assert environ["JERP_EXECUTOR"] == "local"
    relative = {"JERP_ENV_FILE": "prod.env"}
    assert load_env_file(relative, cwd=tmp_path) == other


def test_a_missing_file_is_skipped_as_inside_a_container(tmp_path: Path) -> None:
    """compose's env_file names the host's file (Portainer: stack.env, which sets JERP_ENV_FILE
    too); in the container the variables are already in the environment and the file is absent."""
    environ = {"JERP_ENV_FILE": "stack.env", "JERP_EXECUTOR": "docker"}
    assert load_env_file(environ, cwd=tmp_path) is None
    assert environ == {"JERP_ENV_FILE": "stack.env", "JERP_EXECUTOR": "docker"}
    assert load_env_file({}, cwd=tmp_path / "nowhere") is None


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JERP_", "AWS_", "MARIADB_"))}
    return {**env, **extra}


def test_jerpctl_reads_the_env_file_of_its_working_directory(tmp_path: Path) -> None:
    """A broker named only in ./.env is the one jerpctl tries (and reports, masked, when down)."""
    (tmp_path / ".env").write_text("JERP_BROKER_URL=redis://:s3cret-pw@127.0.0.1:1/0\n")
    done = subprocess.run([str(VENV_BIN / "jerpctl"), "jobs"], cwd=tmp_path, env=_clean_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "127.0.0.1:1" in done.stderr and "s3cret-pw" not in done.stderr


def test_celery_and_the_webhook_read_settings_through_the_env_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("JERP_BROKER_URL=redis://127.0.0.1:2/7\nJERP_WEBHOOK_MAX_BODY=4096\n")
    code = (
        "from jerp_jobs.celery import app\n"
        "print(app.conf.broker_url)\n"
        "from jerp_jobs.bootstrap import get_runtime\n"
        "print(get_runtime().settings.webhook_max_body)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["redis://127.0.0.1:2/7", "4096"]


def test_the_shipped_example_is_a_valid_env_file_with_placeholders_only() -> None:
    example = Path(__file__).resolve().parent.parent / ".env.example"
    values = parse_env_file(example)
    assert values["JERP_EXECUTOR"] == "docker"  # the inline comment is not part of the value
    assert all(" #" not in value for value in values.values())
