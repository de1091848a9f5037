"""Settings: one typed object, read from the environment once, at process start.

Every name below is part of the public contract and is listed, with a placeholder, in
``.env.example``. Secrets are :class:`~pydantic.SecretStr`: they print as ``**********``, and
:meth:`Settings.secret` is the one way to read one — it raises :class:`ConfigError` naming the
variable when an operation needs a secret that is not set.

Nothing here is read at import time: entry points call :func:`get_settings` when they start.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from jerp_jobs.envfile import load_env_file
from jerp_jobs.errors import ConfigError
from jerp_jobs.secretnames import SECRET_VARIABLES



def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JERP_", extra="ignore", frozen=True)

    # Broker and job store
    broker_url: str = "redis://localhost:6379/0"
    result_backend: str | None = None
    visibility_timeout: int = Field(21600, ge=60)
    task_time_limit: int = Field(18000, ge=30)
    job_ttl_days: int = Field(30, ge=1)
    live_output_lines: int = Field(
        1000, ge=0, description="lines of a job's live command output kept in Redis while and after it runs "
        "(jerpctl --wait follows them); 0: none"
    )
    audit_days: int = Field(730, ge=1, description="days the audit trail (jerp:audit) keeps an entry")
    legal_hold_days: int = Field(1826, ge=1, description="days an offboarded site's final off-site backup is kept")
    lock_ttl: int = Field(60, ge=5, description="seconds a lock outlives its last heartbeat")
    inline_steps_s: float = Field(
        60.0, ge=0, description="a step task runs the job's next steps itself, without a new message, while it has "
        "run less than this many seconds; 0: one step per message"
    )
    task_events: bool = Field(
        False, description="workers send task events (and clients task-sent events) from the start; "
        "a monitor (Flower) switches worker events on at run time without it"
    )
    resume_interval: int = Field(30, ge=5, description="seconds between two searches for steps that lost their worker")
    retry_backoff: float = Field(10.0, gt=0, description="first wait before a step's retry; doubles each time")
    job_deadline_hours: float = Field(12.0, gt=0, description="a site job still running after this is failed by the reaper")
    fanout_deadline_hours: float = Field(48.0, gt=0, description="the same for migrate-all and backup-all")

    # Monitoring (docs/monitoring.md): /metrics, the workers' broadcast, Sentry
    worker_ping_timeout: float = Field(
        1.0, gt=0, le=30, description="seconds workers have to answer a broadcast (jerpctl workers, --wait, /metrics)"
    )
    metrics_token: SecretStr | None = Field(None, description="set: /metrics needs Authorization: Bearer <it>")
    sentry_dsn: SecretStr | None = Field(None, description="set: errors of workers, Beat and the web apps go to Sentry")
    sentry_environment: str | None = Field(None, description="the environment Sentry files events under")

    # Beat (cron expressions, UTC: minute hour day-of-month month day-of-week)
    nightly_backup_cron: str = "0 3 * * *"
    nightly_site_limit: int = Field(0, ge=0, description="sites per nightly run, 0 = all")
    prune_cron: str = "30 5 * * *"
    drill_cron: str = "0 6 * * 0"
    drill_runs_per_quarter: int = Field(13, ge=1)
    backup_max_age_hours: float = Field(26.0, gt=0, description="an off-site copy older than this is flagged")

    # Where bench runs
    executor: Literal["docker", "local"] = "docker"
    compose_project: str = "jerp"
    backend_service: str = "backend"
    bench_dir: Path | None = None
    bench_bin: str = "bench"
    bench_user: str | None = Field(
        None, description="local executor: run commands as this user (bench refuses root); the worker must be root"
    )
    command_timeout: int = Field(7200, ge=1, description="default timeout of one bench command")
    fleet_file: Path | None = Field(
        None, description="the fleet file (TOML): the benches, their Docker hosts and roles (docs/fleet.md); "
        "unset: one bench, this host's"
    )
    bench: str | None = Field(
        None, description="the bench of the fleet this worker serves: it consumes that bench's queue only, "
        "with the bench's Docker endpoint and credentials (docs/fleet.md); unset: the control plane, or a single host"
    )
    fleet_list_minutes: float = Field(
        15.0, ge=0, description="minutes between two listings of every bench's sites into the site-to-bench map "
        "(a declared fleet; 0: only `jerpctl sites --refresh`)"
    )
    child_env_extra: Annotated[list[str], NoDecode] = Field(
        [], description="more variables the local executor passes from the worker's environment to bench"
    )

    # Site work
    install_apps: Annotated[list[str], NoDecode] = ["erpnext", "nfse-pr"]
    fanout_concurrency: int = Field(4, ge=1)
    foreign_lock_wait: float = Field(
        600.0, ge=0, description="seconds a migrate waits for another process's bench_migrate lock before it gives up"
    )
    build_assets: Literal["auto", "always", "never"] = Field(
        "auto", description="bench build in a migrate: auto skips it where assets come from the image"
    )
    ready_without_workers: Literal["fail", "proceed"] = Field(
        "fail", description="a migrate whose site has queued jobs and no Frappe worker online: fail or go on"
    )

    # Off-site backups (S3 or an S3-compatible store; credentials: the standard AWS_* variables)
    s3_bucket: str | None = None
    s3_prefix: str = "jerp-backups"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_sse: Literal["AES256", "aws:kms"] | None = None
    s3_kms_key_id: str | None = None
    backup_age_recipients: Annotated[list[str], NoDecode] = []
    backup_age_identity_file: Path | None = None
    keep_local: int = Field(1, ge=0, description="local backup sets kept per site: once copied off-site, or (no JERP_S3_BUCKET) the local-only retention, at least 1")
    retention: str = "gfs:7/4/12/10"
    sites_dir: Path | None = None

    # Point-in-time recovery: the platform's MariaDB as seen where bench runs, and the shipping
    db_host: str = Field("db", description="the platform's MariaDB host as seen from the backend container")
    db_port: int = Field(3306, ge=1, le=65535)
    binlog_ship_minutes: float = Field(
        5.0, ge=0, description="minutes between two shipments of MariaDB's binary logs off-site (0: none)"
    )
    pitr_window_days: int = Field(
        7, ge=0, description="days back a site can be restored to any second (0: no point-in-time recovery)"
    )

    # Nginx Proxy Manager: proxy hosts of new sites are created through its API when set
    npm_url: str | None = Field(None, validation_alias=_env("NPM_URL"))
    npm_identity: str | None = Field(None, validation_alias=_env("NPM_IDENTITY"))
    npm_forward_host: str = "frontend"
    npm_forward_port: int = 8080

    # Releases: the platform image, the hooks that announce a new tag, how it is deployed
    release_image: str | None = Field(None, description="the platform image without its tag: registry/name")
    mutable_tags: Annotated[list[str], NoDecode] = ["15-prod", "latest"]
    github_repository: str | None = Field(None, description="owner/name of the repository whose pipeline builds the image")
    github_branch: str = "main"
    registry_repository: str | None = Field(None, description="the image's repository as registry hooks name it")
    webhook_docs: bool = Field(False, description="the webhook serves /docs, /redoc and /openapi.json (off: 404)")
    webhook_max_body: int = Field(1024 * 1024, ge=1024, description="largest hook body accepted, bytes")
    webhook_max_age: int = Field(600, ge=10, description="seconds a signed /hooks/release request stays valid")
    webhook_read_timeout: float = Field(
        10.0, gt=0, le=300, description="seconds a client has to send a request's headers, and again its body"
    )
    portainer_tag_variable: str = "REGISTRY_IMAGE_TAG"
    deploy_services: Annotated[list[str], NoDecode] = [
        "backend", "scheduler", "queue-default", "queue-long", "queue-short", "websocket", "frontend",
    ]
    rollout_timeout: int = Field(600, ge=5, description="seconds a deploy may take to run the new image")
    promote: Literal["auto", "manual"] = Field(
        "auto", description="a fleet with a staging bench: a tag that passed staging goes to production at once "
        "(auto) or by jerpctl promote TAG (manual)"
    )
    staging_drill_sample: int = Field(
        2, ge=0, description="a staging release's restore drills: production sites whose latest off-site backup "
        "is restored on staging (0: none)"
    )
    frontend_url: str = "http://frontend:8080"
    smoke_user: str | None = None
    smoke_timeout: float = Field(30.0, gt=0)

    # The dashboard (jerp_jobs.dashboard, docs/dashboard.md)
    dashboard_proxy_header: str | None = Field(
        None, description="a header naming the user, set by a trusted reverse proxy (e.g. X-Forwarded-User)"
    )
    dashboard_trusted_proxies: Annotated[list[str], NoDecode] = Field(
        [], description="addresses or networks (CIDR) whose requests may name the user in the proxy header"
    )
    dashboard_proxy_operators: Annotated[list[str], NoDecode] = Field(
        [], description="users named by the proxy header who get the operator role (the others are read-only)"
    )
    dashboard_session_hours: float = Field(12.0, gt=0, le=720, description="hours a dashboard login lasts")
    dashboard_secure_cookie: bool = Field(False, description="send the session cookie over HTTPS only")
    dashboard_poll_s: float = Field(1.0, ge=0.1, le=60, description="seconds between two reads of a job a live page follows")
    dashboard_login_attempts: int = Field(
        5, ge=1, description="failed logins of one user or from one address before further tries wait 15 minutes"
    )

    # Secrets: read from their conventional names, never passed through the broker.
    mariadb_root_password: SecretStr | None = Field(None, validation_alias=_env("MARIADB_ROOT_PASSWORD"))
    frappe_admin_password: SecretStr | None = Field(None, validation_alias=_env("FRAPPE_ADMIN_PASSWORD"))
    aws_secret_access_key: SecretStr | None = Field(None, validation_alias=_env("AWS_SECRET_ACCESS_KEY"))
    npm_secret: SecretStr | None = Field(None, validation_alias=_env("NPM_SECRET"))
    webhook_secret: SecretStr | None = None
    #: during a rotation: the secret (token) being retired, still accepted beside the new one
    webhook_secret_previous: SecretStr | None = None
    registry_token_previous: SecretStr | None = None
    smoke_password: SecretStr | None = None
    registry_token: SecretStr | None = None
    portainer_webhook_url: SecretStr | None = Field(None, validation_alias=_env("PORTAINER_WEBHOOK_URL"))
    notify_urls: SecretStr | None = None
    manifest_key: SecretStr | None = Field(None, description="HMAC key of backup manifests (worker-side)")
    dashboard_secret: SecretStr | None = Field(None, description="key that signs the dashboard's session cookies")
    dashboard_users: SecretStr | None = Field(
        None, description="dashboard users: name:role:hash, comma-separated (python -m jerp_jobs.dashboard hash)"
    )

    @field_validator("backup_age_recipients", mode="before")
    @classmethod
    def _split_recipients(cls, value: object) -> object:
        if isinstance(value, str):
            return [r.strip() for r in value.replace("\n", ",").split(",") if r.strip()]
        return value

    @field_validator("install_apps", "mutable_tags", "deploy_services", "dashboard_trusted_proxies",
                     "dashboard_proxy_operators", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("child_env_extra", mode="before")
    @classmethod
    def _variable_names(cls, value: object) -> object:
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list):
            for name in value:
                if not isinstance(name, str) or not name.replace("_", "a").isalnum() or name[0].isdigit():
                    raise ValueError(f"not an environment variable name: {name!r}")
                if name in SECRET_VARIABLES.values():
                    raise ValueError(f"{name} is a secret of the worker and never goes to bench")
        return value

    @field_validator("broker_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// or rediss:// URL")
        return value

    @property
    def image_repository(self) -> str | None:
        """The repository registry hooks name: JERP_REGISTRY_REPOSITORY, else the path of
        JERP_RELEASE_IMAGE without its registry host."""
        if self.registry_repository:
            return self.registry_repository
        if not self.release_image:
            return None
        first, _, rest = self.release_image.partition("/")
        return rest if rest and ("." in first or ":" in first or first == "localhost") else self.release_image

    @property
    def pitr_on(self) -> bool:
        """Point-in-time recovery is on: an off-site store, binary logs shipped to it, a window."""
        return bool(self.s3_bucket) and self.binlog_ship_minutes > 0 and self.pitr_window_days > 0

    @property
    def backend_url(self) -> str:
        return self.result_backend or self.broker_url

    def secret(self, field: str) -> str:
        """The plain value of a secret setting, or ConfigError naming its variable."""
        variable = SECRET_VARIABLES[field]
        value: SecretStr | None = getattr(self, field)
        if value is None or not value.get_secret_value():
            raise ConfigError(variable, "is not set; this operation needs it (set it in the worker's environment)")
        return value.get_secret_value()

    def secret_values(self) -> list[str]:
        """Every secret value that is set: what the log redactor must never let through."""
        values = []
        for field in SECRET_VARIABLES:
            value: SecretStr | None = getattr(self, field)
            if value is not None and value.get_secret_value():
                values.append(value.get_secret_value())
        return values

    def require_bench_dir(self) -> Path:
        if self.bench_dir is None:
            raise ConfigError("JERP_BENCH_DIR", "is not set; the local executor needs the bench folder")
        return self.bench_dir


def load_settings(**overrides: object) -> Settings:
    """Read the environment; a malformed variable becomes a ConfigError naming it."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        variable = SECRET_VARIABLES.get(field, f"JERP_{field.upper()}")
        raise ConfigError(variable, f"is invalid: {first['msg']}") from exc


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read on first use (at process start for every entry point),
    after the ``.env`` file (jerp_jobs.envfile: the environment wins over the file)."""
    load_env_file()
    settings = load_settings()
    if settings.bench:
        settings = for_bench(settings)
    return settings


def for_bench(settings: Settings) -> Settings:
    """The settings of the worker of bench ``JERP_BENCH``: the bench's compose project, backend
    service and sites folder (the fleet file), and its own credentials (its env file) written
    into the process's environment over the worker's (boto3 reads AWS_* there) before the
    settings are read again. ConfigError naming JERP_BENCH for a bench the fleet does not have."""
    from jerp_jobs.fleet import bench_credentials, bench_overrides, load_fleet

    fleet = load_fleet(settings)
    if settings.bench not in fleet.names:
        raise ConfigError("JERP_BENCH", f"{settings.bench!r} is not a bench of the fleet "
                                        f"({', '.join(fleet.names)}; JERP_FLEET_FILE)")
    bench = fleet.get(settings.bench)
    overrides = bench_overrides(bench)
    credentials = bench_credentials(fleet, bench)
    if not credentials:
        return settings.model_copy(update=overrides)
    os.environ.update(credentials)
    return load_settings(**overrides)
