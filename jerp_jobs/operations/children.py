"""Where a child job's end goes: its parent's workflow decides (fan-outs and releases)."""

from __future__ import annotations

from typing import Any

from jerp_jobs.runtime import Runtime


def child_done(rt: Runtime, parent_id: str, child_id: str) -> Any:
    """Tell the parent that ``child_id`` ended; returns the runner's StepRun when a waiting step ended."""
    if rt.store.get(parent_id).kind == "release":
        from jerp_jobs.operations.release import on_child_done

        return on_child_done(rt, parent_id, child_id)
    from jerp_jobs.operations.fanout import on_child_done as fanout_child_done

    return fanout_child_done(rt, parent_id, child_id)


def reconcile(rt: Runtime, parent_id: str) -> None:
    """Deliver the end of every child whose notification was lost, then settle the parent."""
    if rt.store.get(parent_id).kind == "release":
        from jerp_jobs.operations.release import reconcile as release_reconcile

        release_reconcile(rt, parent_id)
        return
    from jerp_jobs.operations.fanout import reconcile as fanout_reconcile

    fanout_reconcile(rt, parent_id)
