"""Executors: run a bench command where the bench lives (see :mod:`.base`).

``LocalExecutor`` runs subprocesses in a bench folder, ``DockerExecutor`` execs in the compose
``backend`` container (the docker SDK is imported when it first talks to Docker). The test
double lives with the tests (``tests/fake_executor.py``).
"""

from __future__ import annotations

from typing import Any

from jerp_jobs.executors.base import CommandResult, Executor, OutputCallback, OutputTail
from jerp_jobs.executors.docker import DockerExecutor
from jerp_jobs.executors.local import LocalExecutor

__all__ = ["CommandResult", "DockerExecutor", "Executor", "LocalExecutor", "OutputCallback", "OutputTail",
           "make_executor"]


def make_executor(settings: Any) -> Executor:
    """The executor the settings name (``JERP_EXECUTOR``): the typed settings, or the read
    commands' lighter reading (:mod:`jerp_jobs.readsettings`)."""
    if settings.executor == "local":
        return LocalExecutor(settings.require_bench_dir(), pass_env=settings.child_env_extra,
                             user=settings.bench_user, bench_program=settings.bench_bin)
    bench_name = getattr(settings, "bench", None)
    if bench_name:  # a bench's worker: the bench's Docker endpoint (local, or tcp:// with TLS)
        from jerp_jobs.executors.docker import bench_executor
        from jerp_jobs.fleet import load_fleet

        return bench_executor(load_fleet(settings).get(bench_name))
    return DockerExecutor(project=settings.compose_project, service=settings.backend_service)
