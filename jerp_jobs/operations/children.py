"""Where a child job's end goes: the hooks of its parent's workflow (fan-outs and releases)."""

from __future__ import annotations

from typing import Any

from jerp_jobs.runtime import Runtime
from jerp_jobs.workflow import get_workflow


def child_done(rt: Runtime, parent_id: str, child_id: str) -> Any:
    """Tell the parent that ``child_id`` ended; returns the runner's StepRun when a waiting step ended."""
    return get_workflow(rt.store.get(parent_id).kind).on_child_done(rt, parent_id, child_id)


def reconcile(rt: Runtime, parent_id: str) -> None:
    """Deliver the end of every child whose notification was lost, then settle the parent."""
    get_workflow(rt.store.get(parent_id).kind).reconcile(rt, parent_id)
