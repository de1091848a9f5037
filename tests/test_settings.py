"""Settings: read from the environment, typed, secrets hidden and required only when needed."""

from __future__ import annotations

import pytest

from jerp_jobs.errors import ConfigError
from jerp_jobs.settings import load_settings


def test_defaults_match_the_documented_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("JERP_BROKER_URL", "JERP_EXECUTOR", "JERP_INSTALL_APPS", "MARIADB_ROOT_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert s.broker_url == "redis://localhost:6379/0"
    assert s.executor == "docker"
    assert (s.compose_project, s.backend_service, s.bench_bin) == ("jerp", "backend", "bench")
    assert s.install_apps == ["erpnext", "nfse-pr"]
    assert s.fanout_concurrency == 4 and s.job_ttl_days == 30


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JERP_EXECUTOR", "local")
    monkeypatch.setenv("JERP_BENCH_DIR", "/srv/bench")
    monkeypatch.setenv("JERP_INSTALL_APPS", "erpnext, hrms ,")
    monkeypatch.setenv("MARIADB_ROOT_PASSWORD", "r00t-pw")
    s = load_settings()
    assert s.executor == "local" and str(s.require_bench_dir()) == "/srv/bench"
    assert s.install_apps == ["erpnext", "hrms"]
    assert s.secret("mariadb_root_password") == "r00t-pw"
    assert "r00t-pw" not in repr(s)
    assert s.secret_values() == ["r00t-pw"]


def test_missing_secret_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRAPPE_ADMIN_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="FRAPPE_ADMIN_PASSWORD is not set") as caught:
        load_settings().secret("frappe_admin_password")
    assert caught.value.variable == "FRAPPE_ADMIN_PASSWORD"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("JERP_EXECUTOR", "ssh"), ("JERP_LOCK_TTL", "soon"), ("JERP_BROKER_URL", "amqp://x"), ("JERP_FANOUT_CONCURRENCY", "0")],
)
def test_malformed_variable_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings()


def test_local_executor_without_bench_dir_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JERP_BENCH_DIR", raising=False)
    with pytest.raises(ConfigError, match="JERP_BENCH_DIR"):
        load_settings(executor="local").require_bench_dir()


def test_child_env_extra_names_variables_and_refuses_secrets(monkeypatch) -> None:
    from jerp_jobs.errors import ConfigError
    from jerp_jobs.settings import load_settings

    monkeypatch.setenv("JERP_CHILD_ENV_EXTRA", "FRAPPE_SITE, NODE_OPTIONS")
    assert load_settings().child_env_extra == ["FRAPPE_SITE", "NODE_OPTIONS"]
    for bad in ("AWS_SECRET_ACCESS_KEY", "NOT-A-NAME"):
        monkeypatch.setenv("JERP_CHILD_ENV_EXTRA", bad)
        with pytest.raises(ConfigError, match="JERP_CHILD_ENV_EXTRA"):
            load_settings()
