"""Executors: run a bench command where the bench lives (see :mod:`.base`).

``LocalExecutor`` runs subprocesses in a bench folder, ``DockerExecutor`` execs in the compose
``backend`` container (the docker SDK is imported when it first talks to Docker). The test
double lives with the tests (``tests/fake_executor.py``).
"""

from __future__ import annotations

from jerp_jobs.executors.base import CommandResult, Executor, OutputCallback, OutputTail
from jerp_jobs.executors.docker import DockerExecutor
from jerp_jobs.executors.local import LocalExecutor

__all__ = ["CommandResult", "DockerExecutor", "Executor", "LocalExecutor", "OutputCallback", "OutputTail"]
