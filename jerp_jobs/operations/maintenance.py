"""Caches and assets: ``clear-cache`` for one site, ``build`` for the whole bench.

``bench build`` works on the bench, not a site, and takes a bench-wide file lock: it runs under
the bench lock, once per bench, never once per site in parallel.
"""

from __future__ import annotations

from jerp_jobs.operations.common import build_assets, clear_cache
from jerp_jobs.workflow import StepSpec, simple

CLEAR_CACHE = simple("clear-cache", [("clear-cache", StepSpec(clear_cache))], site_must_exist=lambda params: True)
BUILD_ASSETS = simple("build-assets", [("build-assets", StepSpec(build_assets, scope="bench"))], needs_site=False)
