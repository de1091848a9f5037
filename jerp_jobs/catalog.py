"""Every job kind jerp-jobs runs, listed explicitly: a workflow missing here is a kind nobody
can start (``jerpctl`` and the engine answer "unknown job kind" at enqueue), never a failure
found at run time. The app layer (:mod:`jerp_jobs.bootstrap`) hands this catalog to the
runtime; the engine itself knows no workflow."""

from __future__ import annotations

from jerp_jobs.operations import apps, backup, drill, fanout, fleetops, maintenance, migrate, move, offboard, offsite, provision, release, restore
from jerp_jobs.workflow import Catalog

CATALOG = Catalog(
    [
        provision.PROVISION,
        backup.BACKUP,
        offsite.PRUNE,
        offsite.RESCAN,
        restore.RESTORE,
        drill.DRILL,
        migrate.MIGRATE,
        maintenance.CLEAR_CACHE,
        maintenance.BUILD_ASSETS,
        apps.INSTALL_APP,
        apps.UNINSTALL_APP,
        offboard.OFFBOARD,
        fanout.BACKUP_ALL_WORKFLOW,
        fanout.MIGRATE_ALL_WORKFLOW,
        fanout.INSTALL_APP_ALL_WORKFLOW,
        fanout.RESTORE_ALL_WORKFLOW,
        release.RELEASE,
        fleetops.LIST_SITES,
        move.MOVE,
        move.MOVE_DROP,
    ]
)
