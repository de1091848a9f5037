"""The secret settings and the environment variable each is read from: one list for the typed
settings (:mod:`jerp_jobs.settings`) and the read commands' light reader
(:mod:`jerp_jobs.readsettings`); and bench's options whose value is a secret (for the bench
argv builders of :mod:`jerp_jobs.bench` and the log redactor)."""

from __future__ import annotations

SECRET_VARIABLES: dict[str, str] = {
    "metrics_token": "JERP_METRICS_TOKEN",
    "sentry_dsn": "JERP_SENTRY_DSN",
    "mariadb_root_password": "MARIADB_ROOT_PASSWORD",
    "frappe_admin_password": "FRAPPE_ADMIN_PASSWORD",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "npm_secret": "NPM_SECRET",
    "webhook_secret": "JERP_WEBHOOK_SECRET",
    "webhook_secret_previous": "JERP_WEBHOOK_SECRET_PREVIOUS",
    "registry_token_previous": "JERP_REGISTRY_TOKEN_PREVIOUS",
    "smoke_password": "JERP_SMOKE_PASSWORD",
    "registry_token": "JERP_REGISTRY_TOKEN",
    "portainer_webhook_url": "PORTAINER_WEBHOOK_URL",
    "notify_urls": "JERP_NOTIFY_URLS",
    "manifest_key": "JERP_MANIFEST_KEY",
    "dashboard_secret": "JERP_DASHBOARD_SECRET",
    "dashboard_users": "JERP_DASHBOARD_USERS",
}

#: Options of bench whose next argv item is a secret (also the ``--opt=value`` form).
SECRET_OPTIONS = frozenset(
    {"--db-root-password", "--mariadb-root-password", "--admin-password", "--encryption-key", "--root-password"}
)
