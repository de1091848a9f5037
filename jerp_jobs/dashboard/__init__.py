"""The operators' web dashboard: jobs, sites, releases, fan-outs, workers; a few actions.

``jerp_jobs.dashboard:app`` is its ASGI app (:mod:`jerp_jobs.dashboard.server`); users and
sessions are in :mod:`jerp_jobs.dashboard.auth`, what the pages show in
:mod:`jerp_jobs.dashboard.views`. ``python -m jerp_jobs.dashboard hash`` makes a password hash
for ``JERP_DASHBOARD_USERS``. Setup: docs/dashboard.md.
"""

from jerp_jobs.dashboard.server import create_app

app = create_app()

__all__ = ["app", "create_app"]
