"""Executors: run a bench command where the bench lives (see :mod:`.base`).

``LocalExecutor`` runs subprocesses in a bench folder, ``DockerExecutor`` execs in the compose
``backend`` container, ``FakeExecutor`` is the test double. ``DockerExecutor`` and its module
are imported on first use only, so importing this package never imports the docker SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jerp_jobs.executors.base import CommandResult, Executor, OutputCallback, OutputTail
from jerp_jobs.executors.fake import FakeExecutor, Rule, UnexpectedCommand
from jerp_jobs.executors.local import LocalExecutor

if TYPE_CHECKING:
    from jerp_jobs.executors.docker import DockerExecutor

__all__ = [
    "CommandResult",
    "DockerExecutor",
    "Executor",
    "FakeExecutor",
    "LocalExecutor",
    "OutputCallback",
    "OutputTail",
    "Rule",
    "UnexpectedCommand",
]


def __getattr__(name: str) -> Any:
    if name == "DockerExecutor":
        from jerp_jobs.executors.docker import DockerExecutor

        return DockerExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
