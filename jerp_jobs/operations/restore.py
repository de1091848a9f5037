"""Restore of a site from its backup files, and the checks that come before it.

Backup files are named as paths inside the site's backup folder (``sites/<site>/private/backups``);
anything else — another folder, another site's backups, a path with ``..`` — is refused when
the job is requested, before anything runs; where the sites folder is visible (jerpctl in the
worker), a symlink or hard link is refused then too. The worker reads the files itself, through
``JERP_SITES_DIR`` (``jerp_jobs.backupfiles``): each is opened once, without following links,
and judged, hashed and checked by that descriptor — the SHA-256 against a manifest that does
not rest on Redis alone (``jerp_jobs.manifests``), the dump as a complete gzip stream, the tars
as readable archives — in check-backup, and again right before use, when its bytes are copied
into a staging file of the job that bench restores from. A file no manifest vouches for is
restored only on request (``unverified``), its integrity alone checked.

File archives: Frappe's restore extracts only names ending ``.tar`` or ``.tgz``; any other
file (``.tar.gz`` included) it copies into the site folder and deletes again without
extracting it. Such a name is refused when the job is requested and again in the worker,
naming the rule (rename a ``.tar.gz`` to ``.tgz``: the same gzip-compressed tar).

Scheduler: the site keeps the scheduler state it had, as ``bench restore`` itself does. Before
the database is touched (in safety-backup) the job records System Settings
``enable_scheduler`` as stored in the site's database; bench restore puts that value into the
restored database, and the scheduler-state step checks it is so and sets it back when it is
not (``bench scheduler enable|disable``). ``pause_scheduler`` (and ``disable_scheduler``) in
site_config.json are neither read nor written: a restore does not replace site_config.json.

The restore of a move (``moving_from``: jerp_jobs.operations.move) never restores over a site
the bench has, and gives the site it created the source site's ``encryption_key``
(``carry-config``).

The restore workflow takes a safety backup of the current state first; if the restore or the
migrate after it fails, that safety backup is restored, and if that fails too the site is
marked as needing attention and left in maintenance.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from pathlib import Path
from typing import Any

from jerp_jobs import bench
from jerp_jobs.backupfiles import (
    StagedFile,
    check_archive,
    check_backup_path,
    digest,
    give_to_owner,
    open_backup_file,
    remove_staged,
    require_sites_root,
    sites_root,
    stage,
)
from jerp_jobs.dumpstats import compare_stats, dump_stats
from jerp_jobs.errors import CommandFailed, InvalidInput
from jerp_jobs.jobs import Job, StepState
from jerp_jobs.manifests import ManifestAltered, artifact, manifest_key, read_side, signature, trusted_manifest
from jerp_jobs.offsite import offsite_stamp
from jerp_jobs.operations.backup import local_manifests, take_backup
from jerp_jobs.operations.common import (
    bench_apps,
    clear_cache,
    maintenance_off,
    maintenance_on,
    mark_attention,
    refuse_missing_site,
    site_exists,
)
from jerp_jobs.operations import pointintime
from jerp_jobs.operations.offsite import choose_backup, fetch_offsite, normalise_at, store_for
from jerp_jobs.sites import SITE_CONFIG, db_name_for, sites_dir
from jerp_jobs.workflow import GO_ON, CancelRoute, Routes, StepContext, StepSpec, Workflow, table_resolver

BENCH_ROOT = "/home/frappe/frappe-bench/"
#: File archives: only what Frappe's ``extract_files`` extracts (``.tar``, ``.tgz``).
ARCHIVE_SUFFIXES = (".tar", ".tgz")
FILE_PARAMS = {"db": (".sql.gz",), "public_files": ARCHIVE_SUFFIXES, "private_files": ARCHIVE_SUFFIXES}


def require_extractable(name: str, rel: str) -> None:
    """A files archive bench would silently not extract is refused, naming the rule."""
    if name == "db" or rel.endswith(ARCHIVE_SUFFIXES):
        return
    hint = " (a .tar.gz is the same gzip-compressed tar: rename it to .tgz)" if rel.endswith(".tar.gz") else ""
    raise InvalidInput(
        f"{name.replace('_', ' ')}: {rel!r}: Frappe's restore extracts only file archives named *.tar or *.tgz; "
        f"any other name is copied and deleted without being extracted{hint}"
    )


def backup_folder(site: str) -> str:
    return f"{site}/private/backups"


def normalise_backup_path(site: str, path: str, *, what: str, suffixes: tuple[str, ...]) -> str:
    """A backup file given as a name, or a path into the site's backup folder -> ``<site>/private/backups/<name>``.

    Accepted forms: ``NAME``, ``<site>/private/backups/NAME``, ``sites/<site>/private/backups/NAME``,
    ``/home/frappe/frappe-bench/sites/<site>/private/backups/NAME``, with or without ``./``.
    """
    if not isinstance(path, str) or not path or "\x00" in path:
        raise InvalidInput(f"{what}: empty path")
    if ".." in path.split("/"):
        raise InvalidInput(f"{what}: {path!r} contains '..'; give a file of {backup_folder(site)}/")
    folder = backup_folder(site)
    cleaned = posixpath.normpath(path)
    for prefix in (BENCH_ROOT + "sites/", "sites/"):
        if cleaned.startswith(prefix):
            cleaned = cleaned[len(prefix):]
            break
    if "/" in cleaned:
        if posixpath.dirname(cleaned) != folder:
            raise InvalidInput(f"{what}: {path!r} is outside the backup folder of {site} ({folder}/)")
        cleaned = posixpath.basename(cleaned)
    if suffixes == ARCHIVE_SUFFIXES:
        require_extractable(what.replace(" ", "_"), cleaned)
    if cleaned.startswith(("-", ".")) or not cleaned.endswith(suffixes):
        raise InvalidInput(f"{what}: {path!r} is not a backup file name ending {' or '.join(suffixes)}")
    return f"{folder}/{cleaned}"


def validate_restore(site: str | None, params: dict[str, Any], settings: Any) -> dict[str, Any]:
    assert site is not None
    out = dict(params)
    if params.get("to") is not None:
        return pointintime.validate(site, params, out, settings)
    if params.get("from_site") is not None:
        raise InvalidInput("--as goes with --to (a point-in-time restore into a new site)")
    if "unverified" in out:
        out["unverified"] = bool(out["unverified"])
        if not out["unverified"]:
            del out["unverified"]
    for flag in ("create", "verify"):
        if flag in out:
            out[flag] = bool(out[flag])
            if not out[flag]:
                del out[flag]
            elif not params.get("from_offsite"):
                raise InvalidInput(f"--{flag} goes with --from-offsite")
    if params.get("from_offsite"):
        if any(params.get(name) for name in FILE_PARAMS):
            raise InvalidInput("--from-offsite takes no backup file: it restores the off-site copy")
        if params.get("at"):
            out["at"] = normalise_at(params["at"])
        return out
    if params.get("at"):
        raise InvalidInput("--at goes with --from-offsite")
    if not params.get("db"):
        raise InvalidInput("a restore needs the database dump (--db), or --from-offsite")
    for name, suffixes in FILE_PARAMS.items():
        if params.get(name):
            out[name] = normalise_backup_path(site, params[name], what=name.replace("_", " "), suffixes=suffixes)
    root = sites_root(settings)
    if root is not None:  # where the sites folder is visible (jerpctl in the worker): refused at once
        for name in FILE_PARAMS:
            if out.get(name):
                check_backup_path(root, out[name], site=site, what=name.replace("_", " "))
    return out


def verify_backup_files(
    ctx: StepContext,
    files: dict[str, str],
    *,
    expected: dict[str, str] | None = None,
    fence: str | None = None,
    unverified: bool = False,
) -> dict[str, Any]:
    """Check the files before anything is touched; returns what was checked (for the record).

    Each file is opened once, safely (``jerp_jobs.backupfiles``), hashed and checked through
    that descriptor. Its SHA-256 must match ``expected`` (an off-site fetch's, confirmed by the
    copy of its manifest beside the files) or else a trusted manifest (``jerp_jobs.manifests``).
    A file no manifest vouches for is refused unless ``unverified`` (the operator's explicit
    ``--unverified``): then its integrity alone is checked, and the record says so.
    """
    root = require_sites_root(ctx.settings, "restores read the backup files through it")
    sites = (ctx.site, fence) if fence and fence != ctx.site else (ctx.site,)
    checked: dict[str, Any] = {}
    for name, rel in files.items():
        require_extractable(name, rel)
    for name, rel in files.items():
        with open_backup_file(root, rel, sites=sites, what=name) as opened:
            want, source = _expected_sha(ctx, root, name, rel, expected=expected, unverified=unverified)
            size, actual = digest(opened.fd)
            _compare(name, rel, actual, want)
            check_archive(opened.fd, name, rel)
        checked[name] = {"path": rel, "manifest": source, "sha256": actual, "size": size, "verified": want is not None}
        if want is None:
            ctx.output.append(f"{name}: {rel} restored unverified, as asked: no manifest was checked, only its integrity")
    return checked


def restore_verified(
    ctx: StepContext, files: dict[str, str], *, expected: dict[str, str] | None = None, unverified: bool = False
) -> dict[str, Any]:
    """Restore ``files`` (paths relative to sites/) through private staging copies.

    Right before use, each file is opened and checked again, its bytes copied from that
    descriptor into a staging file of the job (hashed while copied) and verified; bench reads
    only the staging copies, which are removed afterwards. Returns what was restored.
    """
    root = require_sites_root(ctx.settings, "restores read the backup files through it")
    recorded = ctx.job.result.get("checked") or {}
    staged: dict[str, StagedFile] = {}
    left = remove_staged(root, ctx.site, ctx.job.id)
    if left:
        ctx.output.append(f"removed the staging copies of an earlier attempt: {', '.join(left)}")
    for name, rel in files.items():
        require_extractable(name, rel)
    try:
        for name, rel in files.items():
            with open_backup_file(root, rel, sites=(ctx.site,), what=name) as opened:
                want, _ = _expected_sha(ctx, root, name, rel, expected=expected, unverified=unverified)
                staged[name] = stage(opened, ctx.job.id)
            copy = staged[name]
            if want is None and recorded.get(name, {}).get("path") == rel:
                want = recorded[name].get("sha256")  # unverified: still the bytes check-backup saw
            _compare(name, rel, copy.sha256, want)
            check_archive(copy.fd, name, rel)
        _still_in_place(staged)
        restore_files(ctx, {name: copy.rel for name, copy in staged.items()})
        _still_in_place(staged)
    finally:
        for copy in staged.values():
            copy.remove()
    return {name: {"path": rel, "sha256": staged[name].sha256} for name, rel in files.items()}


def _still_in_place(staged: dict[str, StagedFile]) -> None:
    swapped = [copy.rel for copy in staged.values() if not copy.in_place()]
    if swapped:
        raise CommandFailed(f"the staging copy {', '.join(swapped)} was replaced while bench used it", exit_code=1)


def _expected_sha(
    ctx: StepContext, root: Any, name: str, rel: str, *, expected: dict[str, str] | None, unverified: bool
) -> tuple[str | None, str | None]:
    """The SHA-256 ``rel`` must have and where it comes from (None, None: unverified)."""
    folder_site = rel.split("/", 1)[0]
    key = manifest_key(ctx.settings)
    if expected is not None:
        want = expected.get(name)
        if unverified:
            return want, "off-site manifest"
        stamp = bench.stamp_of(rel.rsplit("/", 1)[-1])
        side = read_side(root, folder_site, stamp) if stamp else None
        entry = artifact(side, rel) if side else None
        if entry is None:
            raise ManifestAltered(f"{name}: no manifest beside the fetched file {rel}; refusing to restore it")
        if key and signature(side, key) is not True:  # type: ignore[arg-type]
            raise ManifestAltered(f"{name}: the manifest beside {rel} is not signed with JERP_MANIFEST_KEY")
        if entry.get("sha256") != want:
            raise ManifestAltered(
                f"{name}: the job record and the manifest beside {rel} disagree on its SHA-256; one was altered"
            )
        return want, "off-site manifest"
    if unverified:
        return None, None
    copies = [m for m in local_manifests(ctx, folder_site) if artifact(m, rel)]
    manifest, reason = trusted_manifest(copies, root, folder_site, rel, key)
    if manifest is None:
        raise InvalidInput(
            f"{name}: {reason}: nothing vouches for this file. A dump from elsewhere is restored only on "
            "request, with --unverified (its gzip/tar integrity alone is then checked)"
        )
    entry = artifact(manifest, rel)
    assert entry is not None
    return entry["sha256"], f"manifest of job {manifest.get('job_id')}"


def _compare(name: str, rel: str, actual: str, want: str | None) -> None:
    if want is not None and actual != want:
        raise CommandFailed(
            f"{name}: {rel} does not match its manifest (SHA-256 {actual[:12]}… != {want[:12]}…); "
            "refusing to restore a file that changed since its backup",
            exit_code=1,
        )


def restore_files(ctx: StepContext, files: dict[str, str]) -> None:
    """``bench --force restore`` of already checked files (paths relative to sites/): the
    staging copies :func:`restore_verified` makes; call that, not this."""
    call = bench.restore(
        ctx.site,
        files["db"],
        db_root_password=ctx.settings.secret("mariadb_root_password"),
        public_files=files.get("public_files"),
        private_files=files.get("private_files"),
        bench=ctx.bench,
    )
    ctx.run(call.argv, stdin=call.stdin)


def manifest_files(manifest: dict[str, Any]) -> dict[str, str]:
    kinds = {"database": "db", "public_files": "public_files", "private_files": "private_files"}
    return {kinds[a["kind"]]: a["path"] for a in manifest["artifacts"] if a["kind"] in kinds}


# -- the restore workflow --------------------------------------------------------------------


def _fetched(ctx: StepContext) -> bool:
    """The files were made for this job: fetched from off-site, or made by a point-in-time replay."""
    return bool(ctx.params.get("from_offsite") or ctx.params.get("to"))


def _requested(ctx: StepContext) -> dict[str, str]:
    if _fetched(ctx):
        return dict(ctx.job.result["fetched"]["files"])
    return {name: ctx.params[name] for name in FILE_PARAMS if ctx.params.get(name)}


def fetch(ctx: StepContext) -> str | None:
    if not ctx.params.get("from_offsite"):
        return StepState.SKIPPED

    ctx.settings.secret("mariadb_root_password")  # fail before a long download
    refuse_missing_site(ctx)
    fetch_offsite(ctx, at=ctx.params.get("at"), strict=not ctx.params.get("unverified"))
    return None


def check_backup(ctx: StepContext) -> None:
    ctx.settings.secret("mariadb_root_password")  # fail now, not after the safety backup
    refuse_missing_site(ctx)
    ctx.record(checked=verify_backup_files(
        ctx, _requested(ctx), expected=_fetched_sha(ctx), unverified=bool(ctx.params.get("unverified"))
    ))


def create_site(ctx: StepContext) -> str | None:
    """``--create`` (disaster recovery on a new host, restore-all): a site that is not on the bench
    is made empty first — after checking that every app of its backup is in the bench — so the
    restore has a site to restore into. An existing site is left to the normal restore."""

    if ctx.job.result.get("created_site") is None and site_exists(ctx, ctx.site):
        if ctx.params.get("moving_from"):
            raise InvalidInput(f"{ctx.site} exists on this bench already: a move from bench "
                               f"{ctx.params['moving_from']} never restores over a site; nothing was changed")
        if ctx.params.get("from_site"):
            raise InvalidInput(f"{ctx.site} exists already: --as restores into a new site; choose another name")
        ctx.record(created_site=False)
        ctx.output.append(f"{ctx.site} exists: restored in place")
        return StepState.SKIPPED
    if ctx.job.result.get("created_site") is False:
        return StepState.SKIPPED
    if ctx.params.get("from_site"):
        apps = ctx.job.result["pitr"]["apps"]
    else:
        apps = choose_backup(store_for(ctx), ctx.site, ctx.params.get("at")).get("apps") or []
    missing = sorted(set(apps) - set(bench_apps(ctx)))
    if missing:
        raise InvalidInput(f"the backup of {ctx.site} has apps this bench lacks: {', '.join(missing)}; "
                           "deploy the image that has them first")
    ctx.record(created_site=True)
    call = bench.new_site(
        ctx.site,
        db_root_password=ctx.settings.secret("mariadb_root_password"),
        admin_password=ctx.settings.secret("frappe_admin_password"),
        db_name=db_name_for(ctx.site),
        bench=ctx.bench,
    )
    if not site_exists(ctx, ctx.site):
        ctx.run(call.argv, stdin=call.stdin)
    ctx.output.append(f"{ctx.site} was not on the bench: created empty, to restore into")
    return None


def drop_created_site(ctx: StepContext) -> str | None:
    """A site this job created and could not restore is dropped again: no empty site is left
    where a customer's site should be."""

    if site_exists(ctx, ctx.site):
        call = bench.drop_site(ctx.site, db_root_password=ctx.settings.secret("mariadb_root_password"), bench=ctx.bench)
        ctx.run(call.argv, stdin=call.stdin)
    ctx.run(["rm", "-rf", "--", f"archived/sites/{ctx.site}"])
    ctx.record(created_site_dropped=True)
    return None


def check_restored(ctx: StepContext, site: str, expected: dict[str, int] | None) -> None:
    """A restored site holds what its backup's manifest says (every table and its row count, from
    a fresh dump of it) and answers ``frappe.ping``; CommandFailed naming the differences if not.
    The fresh dump is removed again."""
    summary = bench.parse_backup_summary(
        ctx.run(bench.backup(site, with_files=False, bench=ctx.bench), fence=site).output, site
    )
    database = summary.artifact("database")
    assert database is not None
    dump = sites_dir(ctx.settings) / database.path.removeprefix("./")
    actual = dump_stats(dump)
    ctx.run(["rm", "-f", "--", *("sites/" + a.path.removeprefix("./") for a in summary.artifacts)], fence=site)
    problems = compare_stats(expected, actual) if expected is not None else ["the manifest has no statistics"]
    pong = ctx.run(bench.ping(site, bench=ctx.bench), fence=site, check=False)
    if not pong.ok or "pong" not in pong.output:
        problems.append(f"frappe.ping did not answer pong (exit {pong.exit_code})")
    ctx.record(verified={"tables": len(actual), "rows": sum(actual.values()), "problems": problems})
    if problems:
        raise CommandFailed("restored copy differs: " + "; ".join(problems[:10]), exit_code=1)


def verify_restored(ctx: StepContext) -> str | None:
    """``--verify``: the drill's checks on the restored site — every table and its row count
    against the backup's manifest, and ``frappe.ping`` — before it migrates."""
    if not ctx.params.get("verify"):
        return StepState.SKIPPED
    check_restored(ctx, ctx.site, ctx.job.result["fetched"].get("stats"))
    return None


def safety_backup(ctx: StepContext) -> str | None:
    if ctx.job.result.get("created_site"):
        ctx.output.append(f"{ctx.site} was created empty by this job: nothing to keep")
        return StepState.SKIPPED
    record_scheduler_state(ctx)
    take_backup(ctx, with_files=True, record_as="safety_backup")


def record_scheduler_state(ctx: StepContext) -> bool:
    """System Settings ``enable_scheduler`` of the site before the restore, recorded once (a step
    run again must not read the restored database's value in its place)."""
    recorded = ctx.job.result.get("scheduler_before")
    if isinstance(recorded, dict) and isinstance(recorded.get("enable_scheduler"), bool):
        return recorded["enable_scheduler"]
    enabled = bench.parse_scheduler_setting(ctx.run(bench.scheduler_setting(ctx.site, bench=ctx.bench)).output)
    ctx.record(scheduler_before={"enable_scheduler": enabled})
    ctx.output.append(f"scheduler before the restore: {'enabled' if enabled else 'disabled'} (System Settings)")
    return enabled


def scheduler_state(ctx: StepContext) -> str | None:
    """Leave the scheduler as the site had it before the restore (what ``bench restore`` does):
    set it back only when the restored database holds another value."""
    before = (ctx.job.result.get("scheduler_before") or {}).get("enable_scheduler")
    if not isinstance(before, bool):
        ctx.output.append("the scheduler state before the restore was not recorded: left as bench restore left it")
        return StepState.SKIPPED
    now = bench.parse_scheduler_setting(ctx.run(bench.scheduler_setting(ctx.site, bench=ctx.bench)).output)
    word = "enabled" if before else "disabled"
    if now == before:
        ctx.output.append(f"scheduler {word}, as before the restore")
        return None
    ctx.run(bench.scheduler(ctx.site, "enable" if before else "disable", bench=ctx.bench))
    ctx.output.append(f"scheduler {word} again, as before the restore (the restored database had it "
                      f"{'enabled' if now else 'disabled'})")
    return None


def _fetched_sha(ctx: StepContext) -> dict[str, str] | None:
    return ctx.job.result["fetched"]["sha256"] if _fetched(ctx) else None


def restore(ctx: StepContext) -> None:
    restore_verified(ctx, _requested(ctx), expected=_fetched_sha(ctx), unverified=bool(ctx.params.get("unverified")))


#: what a move carries from the source's site_config.json (the backup's copy) into the site it
#: created on the target: the key Frappe encrypts password fields with
CARRIED_CONFIG = ("encryption_key",)


def carry_config(ctx: StepContext) -> str | None:
    """A move's restore (``moving_from``): the site it created here gets the source site's
    ``encryption_key``, so that the password fields of the restored database still decrypt. It
    is read from the backup's own copy of site_config.json, fetched from off-site (verified,
    decrypted) into a private folder and removed at once; the value goes into the site's
    site_config.json, written by the worker: never into a command line, a log or the job record."""
    if not ctx.job.result.get("created_site"):
        return StepState.SKIPPED
    root = require_sites_root(ctx.settings, "the site's config is written through it")
    stamp = ctx.job.result["fetched"]["utc_timestamp"]
    store = store_for(ctx)
    manifest = choose_backup(store, ctx.site, stamp)
    if offsite_stamp(manifest) != stamp or not any(a.get("kind") == "config" for a in manifest["artifacts"]):
        ctx.output.append("the backup holds no copy of site_config.json: the site keeps the encryption_key it was "
                          "created with")
        return StepState.SKIPPED
    with tempfile.TemporaryDirectory(prefix=".jerp-config-", dir=root / ctx.site / "private") as scratch:
        paths = store.download_backup(ctx.site, stamp, Path(scratch), chosen=manifest,
                                      require_signature=not ctx.params.get("unverified"), kinds={"config"})
        try:
            source = json.loads(paths["config"].read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError) as exc:
            raise CommandFailed(f"the backup's copy of site_config.json cannot be read: {type(exc).__name__}",
                                exit_code=1) from None
    carried = {k: source[k] for k in CARRIED_CONFIG if isinstance(source, dict) and isinstance(source.get(k), str)
               and source[k]}
    if not carried:
        ctx.output.append("the source's site_config.json has no encryption_key: nothing to carry")
        return StepState.SKIPPED
    update_site_config(root, ctx.site, carried)
    ctx.record(carried_config=sorted(carried))
    ctx.output.append(f"carried {', '.join(sorted(carried))} over from the source's site_config.json")
    return None


def update_site_config(root: Path, site: str, values: dict[str, str]) -> None:
    """Set ``values`` in ``<site>/site_config.json`` (the other keys kept), replaced at once
    (a file beside it, renamed over it), with the file's owner and mode."""
    path = root / site / SITE_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise CommandFailed(f"{site}/{SITE_CONFIG} is not a JSON object", exit_code=1)
    config.update(values)
    mode = path.stat().st_mode & 0o777
    fd, name = tempfile.mkstemp(prefix=".site_config.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=1, sort_keys=True)
            handle.write("\n")
        os.chmod(name, mode)
        give_to_owner(name, root / site)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def migrate_after_restore(ctx: StepContext) -> None:
    ctx.run(bench.migrate(ctx.site, bench=ctx.bench))


def restore_safety_backup(ctx: StepContext) -> None:
    manifest = ctx.job.result.get("safety_backup")
    if not manifest:
        raise InvalidInput("no safety backup was recorded; cannot put the site back")
    files = manifest_files(manifest)
    verify_backup_files(ctx, files)
    restore_verified(ctx, files)


STEPS: dict[str, StepSpec] = {
    "pitr-prepare": StepSpec(pointintime.prepare, retries=2),
    "create-site": StepSpec(create_site),
    "fetch-offsite": StepSpec(fetch, retries=3),
    "pitr-replay": StepSpec(pointintime.replay),
    "check-backup": StepSpec(check_backup),
    "maintenance-on": StepSpec(maintenance_on),
    "safety-backup": StepSpec(safety_backup),
    "restore": StepSpec(restore),
    "carry-config": StepSpec(carry_config, retries=3),
    "verify": StepSpec(verify_restored),
    "migrate": StepSpec(migrate_after_restore),
    "clear-cache": StepSpec(clear_cache),
    "scheduler-state": StepSpec(scheduler_state),
    "maintenance-off": StepSpec(maintenance_off),
    # recovery: the restore (or the migrate after it) failed -> put the safety backup back
    "restore-safety-backup": StepSpec(restore_safety_backup, recovery=True, then="recovered-maintenance-off"),
    "recovered-maintenance-off": StepSpec(maintenance_off, recovery=True, last=True),
    # recovery: failed before the database was touched -> just bring the site back online
    "abort-maintenance-off": StepSpec(maintenance_off, recovery=True, last=True),
    "mark-attention": StepSpec(mark_attention, recovery=True, last=True),
    # recovery: a site this job created could not be restored -> drop it again
    "drop-created-site": StepSpec(drop_created_site, recovery=True, last=True),
}
#: the steps only some restores plan: --create / --as, --verify, --to (and not --to)
OPTIONAL = {
    "create-site": lambda p: bool(p.get("create") or p.get("from_site")),
    "verify": lambda p: bool(p.get("verify")),
    "carry-config": lambda p: bool(p.get("moving_from")),
    "pitr-prepare": lambda p: bool(p.get("to")),
    "pitr-replay": lambda p: bool(p.get("to")),
    "fetch-offsite": lambda p: not p.get("to"),
}


def _plan(params: dict[str, Any]) -> list[str]:
    return [name for name in STEPS if name not in OPTIONAL or OPTIONAL[name](params)]


#: a failed step -> where the job goes (None: it ends there)
FAILURE_ROUTES: dict[str, str | None] = {
    # nothing was touched
    "pitr-prepare": None,
    "create-site": None,
    "fetch-offsite": None,
    "pitr-replay": None,
    "check-backup": None,
    # before the database was touched: back online
    "maintenance-on": "abort-maintenance-off",
    "safety-backup": "abort-maintenance-off",
    # the database was changed: put the safety backup back
    "restore": "restore-safety-backup",
    "carry-config": "restore-safety-backup",
    "verify": "restore-safety-backup",
    "migrate": "restore-safety-backup",
    # restored: still bring it online; the job ends failed
    "clear-cache": "maintenance-off",
    "scheduler-state": "maintenance-off",
    "maintenance-off": "mark-attention",
    "restore-safety-backup": "mark-attention",
    "recovered-maintenance-off": "mark-attention",
    "abort-maintenance-off": "mark-attention",
    "drop-created-site": "mark-attention",
    "mark-attention": None,
}
#: the last step that ended -> where a cancelled job goes: before the database is touched, back
#: online; from the restore on, finish the chain
CANCEL_ROUTES: dict[str | None, CancelRoute] = {
    None: None,
    "pitr-prepare": None,
    "create-site": None,
    "fetch-offsite": None,
    "pitr-replay": None,
    "check-backup": None,
    "maintenance-on": "abort-maintenance-off",
    "safety-backup": "abort-maintenance-off",
    **{name: GO_ON for name in STEPS if name not in ("pitr-prepare", "create-site", "fetch-offsite", "pitr-replay",
                                                       "check-backup", "maintenance-on", "safety-backup")},
}
#: a site this job created is dropped again when any other step fails; these end that route
_NOT_DROPPED_AFTER = frozenset({"drop-created-site", "mark-attention"})
ROUTES = Routes(
    resolve=table_resolver("restore", STEPS),
    failure=FAILURE_ROUTES,
    cancel=CANCEL_ROUTES,
    recoverable=frozenset({"restore", "carry-config", "verify", "migrate"}),
    recovered_by="recovered-maintenance-off",
)


def _on_failure(job: Job, step: str) -> str | None:
    if step == "drop-created-site" and job.params.get("moving_from"):
        # a move's copy on its target: the move, which holds the site, drops it or marks the site
        # (jerp_jobs/operations/move.py); a mark here would stop the move's way back to its source
        return None
    if job.result.get("created_site") and step not in _NOT_DROPPED_AFTER:
        return "drop-created-site"  # a site this job created could not be restored: drop it again
    return ROUTES.on_failure(job, step)


def _on_cancel(job: Job, step: str | None) -> str | None:
    if job.result.get("created_site"):
        return "drop-created-site"
    return ROUTES.on_cancel(job, step)


RESTORE = Workflow(
    kind="restore",
    needs_site=True,
    plan=_plan,
    resolve=ROUTES.resolve,
    **ROUTES.hooks(on_failure=_on_failure, on_cancel=_on_cancel),
    validate=validate_restore,
    on_end=pointintime.after_restore,
    site_must_exist=lambda params: not params.get("create") and not params.get("from_site"),
)
