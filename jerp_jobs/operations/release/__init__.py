"""Releases: a new image tag deployed, every site migrated and smoke-tested, or rolled back.

A release is a job of kind ``release`` (``params.tag``; a manual rollback has
``params.rollback`` and finds its tag when it starts). Its steps:

    record -> deploy -> rollout -> migrate -> smoke [-> drill] -> finish
              (on failure) rollback-deploy -> rollback-rollout -> rollback-migrate
                           -> rollback-smoke -> rollback-finish

Any failure after ``record`` sends the job down the rollback path, which deploys the previous
tag, migrates and smoke-tests again; the release then ends ``rolled-back`` with the reason. If
the rollback fails too, the release ends ``failed`` and says so loudly.

One release at a time: a release holds the release slot (``jerp:release:active``; in a declared
fleet its bench's, ``jerp:release:active:<bench>``) from its first step to its end; others wait,
queued.

Staging first: in a fleet with a staging bench a request starts the release there (with
``drill``: restore drills of production's off-site backups on staging); once it passes, the tag
is promoted — one release per production bench — automatically (``JERP_PROMOTE=auto``) or by
``jerpctl promote TAG`` (:func:`promote`); a staging failure stops it before production moves. A newer request supersedes the releases still
waiting that were requested before it (they end ``superseded``, naming the newer one).

The parts, each importing only the ones above it:

- :mod:`jerp_jobs.releases` (the store's read model, outside this package): the index of
  releases and the slot, read — what ``jerpctl releases`` and the dashboard need, without
  this workflow;
- :mod:`.tags`: the known-good and the bad tags (the rollback targets);
- :mod:`.admission`: the release slot, the waiting releases, superseding;
- :mod:`.requests`: a hook's or an operator's request, idempotent and replay-proof, and
  what each webhook delivery was answered;
- :mod:`.steps`: the steps, which reach the platform through the runtime's adapter, and the
  end of the migrate-all child;
- :mod:`.ending`: the end of a release — the slot freed, people told;
- :mod:`.workflow`: :data:`RELEASE`, its steps and its failure and cancel routes (:data:`ROUTES`).

The names callers import (requests, the workflow, the slot and tag keys) are re-exported here.
"""

from jerp_jobs.operations.release.admission import ADMISSION, admit
from jerp_jobs.operations.release.ending import on_end
from jerp_jobs.operations.release.requests import (
    BY_DELIVERY,
    IGNORED_TTL_S,
    LATEST,
    REQUESTED,
    Declined,
    Promoted,
    Requested,
    delivery_answer,
    promote,
    remember_delivery,
    request_release,
)
from jerp_jobs.operations.release.steps import finish, on_child_done, reconcile, record, rollback_finish
from jerp_jobs.operations.release.tags import BAD, GOOD, GOOD_KEPT, STAGED
from jerp_jobs.operations.release.workflow import RELEASE, ROUTES, STEPS
from jerp_jobs.releases import ACTIVE, INDEX, KIND, WAITING_SET, list_releases, requested_at

__all__ = [
    "ACTIVE",
    "ADMISSION",
    "BAD",
    "BY_DELIVERY",
    "GOOD",
    "GOOD_KEPT",
    "IGNORED_TTL_S",
    "INDEX",
    "KIND",
    "LATEST",
    "RELEASE",
    "REQUESTED",
    "STAGED",
    "ROUTES",
    "STEPS",
    "WAITING_SET",
    "Declined",
    "Promoted",
    "Requested",
    "admit",
    "delivery_answer",
    "finish",
    "list_releases",
    "on_child_done",
    "on_end",
    "promote",
    "reconcile",
    "record",
    "remember_delivery",
    "request_release",
    "requested_at",
    "rollback_finish",
]
