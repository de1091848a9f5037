"""``jerpctl``: the operator's client — enqueue jobs, follow them, read them, cancel them.

Exit codes: 0 success; 1 the job failed (or ended recovered/cancelled: the message says which),
or a read command found something wrong (stale backups, sites needing attention); 2 bad usage or
invalid input — nothing enqueued; 3 the broker cannot be reached.

Output: tables for people (colours only on a terminal), ``--json`` for scripts (see README).

Startup stays light: Celery, boto3 and docker are imported only inside the commands that
need them, so ``--help`` and input errors answer at once. The read commands (``jobs``,
``backups``, ``sites``) read their settings without the typed model
(:mod:`jerp_jobs.readsettings`), talk to Redis through the small client of
:mod:`jerp_jobs.resp` (redis-py only for a URL form it does not speak), and import neither the
workflow catalog nor structlog; the commands that start jobs build the full runtime.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_BROKER = 0, 1, 2, 3


class Ctx:
    """Built once per invocation; the runtime (Redis, settings) only when a command needs it.
    Tests pass their own runtime (``CliRunner().invoke(cli, args, obj=Ctx(rt=...))``)."""

    def __init__(self, as_json: bool = False, *, rt: Any = None) -> None:
        self.as_json = as_json
        self._rt: Any = rt
        self._reader: Any = None

    @property
    def rt(self) -> Any:
        if self._rt is None:
            from jerp_jobs.bootstrap import get_runtime
            from jerp_jobs.settings import get_settings

            settings = get_settings()
            from jerp_jobs import log

            log.configure(secrets=settings.secret_values())
            self._rt = get_runtime()
            _check_broker(self._rt)
        return self._rt

    @property
    def reader(self) -> Any:
        """What the read commands (``jobs``, ``backups``, ``sites``) read through: the runtime
        given or already built, else a :class:`_Reader`."""
        if self._rt is None and self._reader is None:
            reader = _Reader()
            _check_broker(reader)
            self._reader = reader
        return self._rt if self._rt is not None else self._reader


class _Reader:
    """The part of a runtime the read commands use — the settings, Redis, the job store, the
    site state, the executor — built from :func:`jerp_jobs.readsettings.read_settings`: no typed
    settings, no workflow catalog, no transport (it starts nothing), structlog imported only if
    something logs, Redis read through :func:`jerp_jobs.resp.connect`."""

    def __init__(self) -> None:
        from jerp_jobs import log, resp
        from jerp_jobs.jobs import JobStore
        from jerp_jobs.readsettings import read_settings
        from jerp_jobs.sitestate import SiteState

        self.settings = settings = read_settings()
        log.configure(secrets=settings.secret_values(), on_first_use=True)
        self.redis = resp.connect(settings.broker_url, connect_timeout=5)
        self.store = JobStore(self.redis, ttl_days=settings.job_ttl_days, output_lines=settings.live_output_lines)
        self.sites = SiteState(self.redis, ttl_s=settings.job_ttl_days * 86400)
        self._executor: Any = None

    @property
    def executor(self) -> Any:
        if self._executor is None:
            from jerp_jobs.executors import make_executor

            self._executor = make_executor(self.settings)
        return self._executor


def _check_broker(rt: Any) -> None:
    from jerp_jobs.resp import errors

    try:
        rt.redis.ping()
    except errors() as exc:
        raise BrokerDown(rt.settings.broker_url, exc) from exc


class BrokerDown(click.ClickException):
    exit_code = EXIT_BROKER

    def __init__(self, url: str, exc: Exception) -> None:
        super().__init__(f"cannot reach the broker at {mask_url(url)}: {exc}")


class _BrokerError(click.ClickException):
    exit_code = EXIT_BROKER


def mask_url(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn project errors into ``Error: <message>`` and the right exit code."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from jerp_jobs.errors import BrokerUnavailable, ConfigError, InvalidInput, JerpError, JobNotFound
        from jerp_jobs.resp import errors as redis_errors

        try:
            return fn(*args, **kwargs)
        except (InvalidInput, ConfigError, JobNotFound) as exc:
            raise click.UsageError(str(exc)) from exc
        except BrokerUnavailable as exc:
            from jerp_jobs.log import redactor

            raise _BrokerError(redactor.text(str(exc))) from exc
        except redis_errors() as exc:  # either client's (redis-py's only when it is loaded)
            from jerp_jobs.settings import get_settings

            raise BrokerDown(get_settings().broker_url, exc) from exc
        except JerpError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


class _JsonAnywhere(click.Group):
    """``--json`` is taken before or after the subcommand (``jerpctl jobs --json``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        head = args[: args.index("--")] if "--" in args else args
        if "--json" in head:
            args = ["--json", *(a for i, a in enumerate(args) if not (a == "--json" and i < len(head)))]
        return super().parse_args(ctx, args)


@click.group(cls=_JsonAnywhere, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (before or after the command).")
@click.pass_context
def cli(ctx: click.Context, as_json: bool) -> None:
    """Drive and watch jerp-jobs, the job orchestrator of the ERPNext platform."""
    if ctx.obj is None:
        ctx.obj = Ctx(as_json)
    else:
        ctx.obj.as_json = as_json


@cli.group()
def enqueue() -> None:
    """Start a job; prints its id (with --wait, follows it to the end)."""


def _site_arg(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from jerp_jobs.errors import InvalidSiteName
    from jerp_jobs.sites import validate_site_name

    try:
        return validate_site_name(value)
    except InvalidSiteName as exc:
        raise click.BadParameter(str(exc)) from exc


def _optional_site(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An optional site name: absent is None; given, even empty, it must be a valid name."""
    return None if value is None else _site_arg(ctx, param, value)


SITE = click.argument("site", callback=_site_arg)
WAIT = click.option("--wait", is_flag=True, help="Follow the job until it ends; exit with its outcome.")
BENCH = click.option("--bench", default=None, metavar="BENCH",
                     help="The bench of the fleet to work on (JERP_FLEET_FILE; a single host has one).")
GROUP = click.option("--group", default=None, metavar="GROUP",
                     help="Every bench of this group of the fleet, each with its own fan-out (default: every bench).")


@enqueue.command("backup")
@SITE
@click.option("--files/--no-files", default=True, show_default=True, help="Include public and private files.")
@click.option("--offsite/--no-offsite", default=None,
              help="Copy it off-site (default: when JERP_S3_BUCKET is set).")
@WAIT
@click.pass_obj
@_guard
def enqueue_backup(obj: Ctx, site: str, files: bool, offsite: bool | None, wait: bool) -> None:
    """Back up SITE (database, and files unless --no-files), then copy it off-site."""
    params: dict[str, Any] = {"with_files": files}
    if offsite is not None:
        params["offsite"] = offsite
    _submit(obj, "backup", site=site, params=params, wait=wait)


@enqueue.command("backup-all")
@click.option("--files/--no-files", default=True, show_default=True, help="Include public and private files.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=None,
              help="Sites at once per bench (the bench's own, else JERP_FANOUT_CONCURRENCY).")
@BENCH
@GROUP
@WAIT
@click.pass_obj
@_guard
def enqueue_backup_all(obj: Ctx, files: bool, concurrency: int | None, bench: str | None, group: str | None,
                       wait: bool) -> None:
    """Back up every site of the bench (of every bench of a fleet, or of --group, each its own fan-out)."""
    _submit(obj, "backup-all", params={"with_files": files, "concurrency": concurrency}, bench=bench, group=group,
            wait=wait)


@enqueue.command("provision")
@SITE
@click.option("--app", "apps", multiple=True, help="App to install (repeatable; default JERP_INSTALL_APPS).")
@BENCH
@WAIT
@click.pass_obj
@_guard
def enqueue_provision(obj: Ctx, site: str, apps: tuple[str, ...], bench: str | None, wait: bool) -> None:
    """Create the customer site SITE with its apps, scheduler, first backup and proxy host (on
    --bench; in a fleet with one production bench, that one)."""
    _submit(obj, "provision", site=site, params={"apps": list(apps)} if apps else {}, bench=bench, wait=wait)


NO_BUILD = click.option("--no-build", is_flag=True,
                        help="Do not run bench build (whatever JERP_BUILD_ASSETS says); the step is skipped.")


@enqueue.command("install-app")
@SITE
@click.argument("app")
@WAIT
@click.pass_obj
@_guard
def enqueue_install_app(obj: Ctx, site: str, app: str, wait: bool) -> None:
    """Install APP (present in the bench's image) on SITE: backup first, restored if it fails."""
    _submit(obj, "install-app", site=site, params={"app": app}, wait=wait)


@enqueue.command("install-app-all")
@click.argument("app")
@click.option("--concurrency", type=click.IntRange(1, 64), default=None, help="Sites at once (JERP_FANOUT_CONCURRENCY).")
@click.option("--canary", default=None, callback=_optional_site,
              help="Site changed first, alone (default: the first site).")
@click.option("--budget", type=click.IntRange(0, None), default=1, show_default=True,
              help="Failed sites tolerated before no new site is started.")
@BENCH
@GROUP
@WAIT
@click.pass_obj
@_guard
def enqueue_install_app_all(obj: Ctx, app: str, concurrency: int | None, canary: str | None, budget: int,
                            bench: str | None, group: str | None, wait: bool) -> None:
    """Install APP on every site: a canary first, then the rest; each site backed up first and
    restored if its install fails (in a fleet: on each bench, with its own canary)."""
    _submit(obj, "install-app-all", params={"app": app, "concurrency": concurrency, "canary": canary,
                                            "budget": budget}, bench=bench, group=group, wait=wait)


@enqueue.command("uninstall-app")
@SITE
@click.argument("app")
@WAIT
@click.pass_obj
@_guard
def enqueue_uninstall_app(obj: Ctx, site: str, app: str, wait: bool) -> None:
    """Remove APP and its data from SITE: backup first, restored if it fails."""
    _submit(obj, "uninstall-app", site=site, params={"app": app}, wait=wait)


@enqueue.command("offboard")
@SITE
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted and kept; change nothing.")
@click.option("--confirm", is_flag=True, help="Delete the site for good (after a final, held off-site backup).")
@WAIT
@click.pass_obj
@_guard
def enqueue_offboard(obj: Ctx, site: str, dry_run: bool, confirm: bool, wait: bool) -> None:
    """Offboard SITE's customer: a final verified off-site backup kept JERP_LEGAL_HOLD_DAYS, then
    the site, its database and user, its proxy host and every other backup deleted (docs/offboarding.md)."""
    _submit(obj, "offboard", site=site, params={"dry_run": dry_run, "confirm": confirm}, wait=wait)


@enqueue.command("move")
@SITE
@click.option("--to", "to", required=True, metavar="BENCH", help="The bench of the fleet the site goes to.")
@WAIT
@click.pass_obj
@_guard
def enqueue_move(obj: Ctx, site: str, to: str, wait: bool) -> None:
    """Move SITE to bench BENCH: a verified off-site backup in maintenance, restored and verified
    on BENCH, the proxy host switched, then the site dropped on its old bench (docs/fleet.md)."""
    _submit(obj, "move", site=site, params={"to": to}, wait=wait)


@enqueue.command("migrate")
@SITE
@NO_BUILD
@WAIT
@click.pass_obj
@_guard
def enqueue_migrate(obj: Ctx, site: str, no_build: bool, wait: bool) -> None:
    """Migrate SITE (maintenance, backup, migrate, caches, assets; automatic restore on failure)."""
    _submit(obj, "migrate", site=site, params={"no_build": True} if no_build else {}, wait=wait)


@enqueue.command("migrate-all")
@click.option("--concurrency", type=click.IntRange(1, 64), default=None, help="Sites at once (JERP_FANOUT_CONCURRENCY).")
@click.option("--canary", default=None, callback=_optional_site,
              help="Site migrated first, alone (default: the first site).")
@click.option("--budget", type=click.IntRange(0, None), default=1, show_default=True,
              help="Failed sites tolerated before no new site is started.")
@NO_BUILD
@BENCH
@GROUP
@WAIT
@click.pass_obj
@_guard
def enqueue_migrate_all(obj: Ctx, concurrency: int | None, canary: str | None, budget: int, no_build: bool,
                        bench: str | None, group: str | None, wait: bool) -> None:
    """Migrate every site: a canary first, then the rest in parallel; assets built once (in a
    fleet: on each bench, or each bench of --group, with its own canary)."""
    params = {"concurrency": concurrency, "canary": canary, "budget": budget}
    _submit(obj, "migrate-all", params={**params, "no_build": True} if no_build else params, bench=bench,
            group=group, wait=wait)


@enqueue.command("restore")
@SITE
@click.option("--db", default=None, help="Database dump (.sql.gz) in the site's backup folder.")
@click.option("--files", "public_files", default=None, help="Public files tar in the site's backup folder.")
@click.option("--private-files", default=None, help="Private files tar in the site's backup folder.")
@click.option("--from-offsite", is_flag=True, help="Restore the off-site copy (downloaded, verified, decrypted).")
@click.option("--at", default=None, help="With --from-offsite: the newest copy at or before this time "
              "(YYYYMMDD_HHMMSS, or ISO: UTC unless it gives an offset such as +14:00); default the latest.")
@click.option("--unverified", is_flag=True, help="Restore files no manifest vouches for (a dump from elsewhere): "
              "only their gzip/tar integrity is checked.")
@click.option("--create", is_flag=True, help="With --from-offsite: a site not on the bench (a new host) is "
              "created empty first, then restored; dropped again if the restore fails.")
@click.option("--verify", is_flag=True, help="With --from-offsite: check the restored tables and row counts "
              "against the backup's manifest, and frappe.ping, as a drill does.")
@click.option("--to", "to", default=None, metavar="'YYYY-MM-DD HH:MM:SS'",
              help="Point-in-time: the site's database as it was at this second (UTC unless an offset such as "
                   "+01:00 or a zone name such as Europe/Lisbon follows), from its off-site base and the "
                   "shipped binary logs.")
@click.option("--as", "as_site", default=None, metavar="NEW_SITE",
              help="With --to: restore into a new site NEW_SITE (created for it), leaving SITE as it is.")
@click.option("--bench", default=None, metavar="BENCH",
              help="With --create or --as: the bench of the fleet the new site goes on.")
@WAIT
@click.pass_obj
@_guard
def enqueue_restore(obj: Ctx, site: str, db: str | None, public_files: str | None, private_files: str | None,
                    from_offsite: bool, at: str | None, unverified: bool, create: bool, verify: bool,
                    to: str | None, as_site: str | None, bench: str | None, wait: bool) -> None:
    """Restore SITE from backup files, its off-site copy, or to an instant (--to); checked first, a
    safety backup taken before."""
    given = {"--db": db, "--files": public_files, "--private-files": private_files, "--at": at, "--to": to,
             "--as": as_site}
    empty = [name for name, value in given.items() if value is not None and not value.strip()]
    if empty:
        raise click.BadParameter(f"{', '.join(empty)} may not be empty")
    params = {"db": db, "public_files": public_files, "private_files": private_files,
              "from_offsite": from_offsite, "at": at, "unverified": unverified, "create": create, "verify": verify,
              "to": to}
    if as_site is not None:  # the job works on the new site; the source is only read off-site
        params["from_site"], site = site, as_site
    _submit(obj, "restore", site=site, params={k: v for k, v in params.items() if v}, bench=bench, wait=wait)


@enqueue.command("restore-all")
@click.option("--from-offsite", is_flag=True, required=True,
              help="Restore every site of the off-site store (required: the only source of a restore-all).")
@click.option("--at", default=None, help="The newest copy of each site at or before this UTC time; default the latest.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=None, help="Sites at once (JERP_FANOUT_CONCURRENCY).")
@BENCH
@WAIT
@click.pass_obj
@_guard
def enqueue_restore_all(obj: Ctx, from_offsite: bool, at: str | None, concurrency: int | None, bench: str | None,
                        wait: bool) -> None:
    """Disaster recovery: restore every site of the off-site store onto this bench (--bench in a
    fleet), smallest first, each created if missing and verified as a drill verifies (offboarded
    sites are left out)."""
    _submit(obj, "restore-all", params={"at": at, "concurrency": concurrency}, bench=bench, wait=wait)


@enqueue.command("drill")
@SITE
@BENCH
@WAIT
@click.pass_obj
@_guard
def enqueue_drill(obj: Ctx, site: str, bench: str | None, wait: bool) -> None:
    """Restore SITE's latest off-site backup into a scratch site, verify it, drop it (on the
    fleet's staging bench when it has one; --bench: a staging bench, or the site's own)."""
    _submit(obj, "drill", site=site, bench=bench, wait=wait)


@enqueue.command("prune")
@SITE
@WAIT
@click.pass_obj
@_guard
def enqueue_prune(obj: Ctx, site: str, wait: bool) -> None:
    """Apply the retention policy (JERP_RETENTION) to SITE's off-site backups."""
    _submit(obj, "prune", site=site, wait=wait)


@enqueue.command("clear-cache")
@SITE
@WAIT
@click.pass_obj
@_guard
def enqueue_clear_cache(obj: Ctx, site: str, wait: bool) -> None:
    """Clear the caches of SITE."""
    _submit(obj, "clear-cache", site=site, wait=wait)


@enqueue.command("build-assets")
@BENCH
@WAIT
@click.pass_obj
@_guard
def enqueue_build_assets(obj: Ctx, bench: str | None, wait: bool) -> None:
    """Build the bench's assets (bench-wide, one build at a time)."""
    _submit(obj, "build-assets", bench=bench, wait=wait)


@enqueue.command("release")
@click.argument("tag")
@WAIT
@click.pass_obj
@_guard
def enqueue_release(obj: Ctx, tag: str, wait: bool) -> None:
    """Release image TAG: deploy, confirm, migrate every site, smoke-test; roll back on failure."""
    from jerp_jobs.operations.release.requests import request_release

    _report(obj, request_release(obj.rt, tag, source="operator", dedupe=False, actor=_actor()).job, wait=wait)


@enqueue.command("rollback")
@WAIT
@click.pass_obj
@_guard
def enqueue_rollback(obj: Ctx, wait: bool) -> None:
    """Deploy the previous immutable tag that passed a release, migrate and smoke-test."""
    from jerp_jobs.operations.release.requests import request_release

    _report(obj, request_release(obj.rt, None, source="operator", dedupe=False, rollback=True, actor=_actor()).job, wait=wait)


@cli.command("promote")
@click.argument("tag")
@click.pass_obj
@_guard
def promote(obj: Ctx, tag: str) -> None:
    """Release TAG, which passed the staging bench, to every production bench (one release each).

    Refused (exit 2) for a tag that has not passed staging, or that is bad, or in a fleet
    without a staging bench."""
    from jerp_jobs.operations.release.requests import promote as promote_tag

    promoted = promote_tag(obj.rt, tag, source="operator", actor=_actor())
    if obj.as_json:
        click.echo(json.dumps({"created": promoted.created, "jobs": [
            {"job_id": j.id, "bench": j.bench, "state": j.state} for j in promoted.jobs]}, sort_keys=True))
        return
    if not promoted.created:
        click.echo(f"{tag} is being promoted already:", err=True)
    for job in promoted.jobs:
        click.echo(f"{job.id} {job.bench}")


@cli.command("releases")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.pass_obj
@_guard
def releases(obj: Ctx, limit: int) -> None:
    """Releases, newest first: tags, outcome and timings."""
    from jerp_jobs.releases import list_releases

    rows = [_release_row(job) for job in list_releases(obj.rt, limit=limit)]
    if obj.as_json:
        click.echo(json.dumps(rows, sort_keys=True))
        return
    if not rows:
        click.echo("no release yet")
        return
    click.echo(f"{'JOB':<13} {'TAG':<16} {'FROM':<16} {'STATE':<12} {'BENCH':<16} {'REQUESTED':<20} {'TOOK':>8}  DETAIL")
    for row in rows:
        took = f"{row['duration_s']:.0f}s" if row["duration_s"] is not None else "-"
        requested = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["created_at"]))
        bench = (row["bench"] or "-") + (f" ({row['stage']})" if row["stage"] else "")
        click.echo(f"{row['job_id']:<13} {row['tag'] or '?':<16} {row['previous_tag'] or '?':<16} "
                   f"{_state(row['state']):<12} {bench:<16} {requested:<20} {took:>8}  {row['detail'] or ''}")


def _release_row(job: Any) -> dict[str, Any]:
    ended = job.finished
    return {
        "job_id": job.id,
        "tag": job.result.get("tag") or job.params.get("tag"),
        "previous_tag": job.result.get("previous_tag"),
        "rollback_to": job.result.get("rollback_to"),
        "state": job.state,
        "source": job.params.get("source"),
        "bench": job.bench,
        "stage": job.params.get("stage"),
        "promoted_from": job.params.get("promoted_from"),
        "rollback": bool(job.params.get("rollback")),
        "created_at": job.created_at,
        "ended_at": (job.ended_at or job.updated_at) if ended else None,
        "duration_s": round((job.ended_at or job.updated_at) - job.created_at, 1) if ended else None,
        "steps": {step.name: step.state for step in job.steps},
        "detail": job.error or job.result.get("rollback_reason"),
    }


def _submit(obj: Ctx, kind: str, *, site: str | None = None, params: dict[str, Any] | None = None,
            bench: str | None = None, group: str | None = None, wait: bool) -> None:
    from jerp_jobs.enqueue import submit

    params = dict(params or {})
    if bench is not None:
        params["bench"] = bench
    if group is not None:
        params["group"] = group
    _report(obj, submit(obj.rt, kind, site=site, params=params, actor=_actor()), wait=wait)


def _audit(obj: Ctx, action: str, **fields: Any) -> None:
    from jerp_jobs import audit

    audit.record(obj.rt.redis, actor=_actor(), action=action, days=obj.rt.settings.audit_days, **fields)


def _actor() -> str:
    from jerp_jobs.audit import cli_actor

    return cli_actor()


def _report(obj: Ctx, job: Any, *, wait: bool) -> None:
    kind, site = job.kind, job.site
    if obj.as_json and not wait:
        click.echo(json.dumps({"job_id": job.id, "kind": kind, "site": site, "state": job.state}))
    elif not obj.as_json:
        click.echo(job.id)
    if wait:
        final = _follow(obj, job.id)
        if obj.as_json:
            click.echo(json.dumps(final.to_dict(), sort_keys=True))
        sys.exit(_exit_for(final.state))


def _read_job(obj: Ctx, job_id: str, *, live: bool = True) -> Any:
    """The job's record; a fan-out's result carries its live per-site map (``sites``, ``counts``,
    ``order``), which its record gets only when it ends."""
    job = obj.rt.store.get(job_id)
    if live and job.kind.endswith("-all"):
        from jerp_jobs.operations.fanout import progress

        current = progress(obj.rt.redis, job.id)
        if current is not None:
            job.result.update(current)
    return job


def _follow(obj: Ctx, job_id: str, *, poll: float = 0.5) -> Any:
    """Print each step as it changes state until the job ends, with the running commands' output
    as it comes (the job's live output stream) and, for a fan-out, a line of counts each time they
    change (done / failed / running / queued, the running sites, an ETA from earlier runs of the
    same kind); returns the final job."""
    seen: dict[str, str] = {}
    _warn_without_workers(obj, job_id)
    cursors: dict[str, str | None] = {}
    last_progress = ""
    eta: float | None = None
    while True:
        job = _read_job(obj, job_id, live=False)
        if not obj.as_json:
            for step in job.steps:
                if seen.get(step.name) != step.state:
                    seen[step.name] = step.state
                    if step.state != "pending":
                        click.echo(f"  {step.name:<28} {_state(step.state)}{_duration(step)}", err=True)
            _echo_output(obj, job.id, cursors, prefix="")
            if job.kind.endswith("-all") and not job.finished:
                if eta is None:
                    eta = _typical_duration(obj, job)
                line = _fanout_line(obj, job, eta, cursors)
                if line and line != last_progress:
                    last_progress = line
                    click.echo(line, err=True)
        if job.finished:
            job = _read_job(obj, job_id)
            if not obj.as_json:
                _echo_output(obj, job.id, cursors, prefix="")
                click.echo(f"job {job.id} {_state(job.state)}" + (f": {job.error}" if job.error else ""), err=True)
            return job
        time.sleep(poll)


def _echo_output(obj: Ctx, job_id: str, cursors: dict[str, str | None], *, prefix: str) -> None:
    """The job's live output since the last call (commands as ``$ argv``, lines as ``| text``)."""
    for line in obj.rt.store.output_since(job_id, cursors.get(job_id)):
        cursors[job_id] = line.cursor
        mark = "$" if line.kind == "command" else "|"
        click.echo(f"      {prefix}{mark} {line.text}", err=True)


def _fanout_line(obj: Ctx, job: Any, eta: float | None, cursors: dict[str, str | None]) -> str:
    """``sites 12/30 done, 1 failed, 4 running, 13 queued — running: a, b — ETA 3 min``; the
    output of the running children streams below it."""
    from jerp_jobs.cliformat import duration
    from jerp_jobs.operations.fanout import progress

    current = progress(obj.rt.redis, job.id)
    if current is None:
        return ""
    sites = current["sites"]
    states = [entry["state"] for entry in sites.values()]
    done = sum(state == "succeeded" for state in states)
    failed = sum(state in ("failed", "recovered", "cancelled") for state in states)
    running = [site for site, entry in sites.items() if entry["state"] == "running"]
    queued = sum(state in ("pending", "not-started") for state in states)
    parts = [f"sites {done + failed}/{len(sites)} done", f"{failed} failed", f"{len(running)} running",
             f"{queued} queued"]
    if running:
        parts.append("running: " + ", ".join(running[:6]) + (" ..." if len(running) > 6 else ""))
    if eta is not None and job.started_at:
        left = eta - (time.time() - job.started_at)
        parts.append(f"ETA {duration(left)}" if left > 0 else "ETA past the usual time")
    for site in running:
        child = sites[site].get("job_id")
        if child:
            _echo_output(obj, child, cursors, prefix=f"{site} ")
    return "  " + ", ".join(parts[:4]) + "".join(f" — {p}" for p in parts[4:])


def _typical_duration(obj: Ctx, job: Any) -> float | None:
    """The median duration of the last successful jobs of the same kind (from their records)."""
    import statistics

    done = [j for j in obj.rt.store.list(state="succeeded", limit=200) if j.kind == job.kind and j.id != job.id
            and j.started_at and j.ended_at][:5]
    return statistics.median(j.ended_at - j.started_at for j in done) if done else None


_COLOURS = {
    "success": "green", "succeeded": "green", "ok": "green",
    "failed": "red", "needs attention": "red", "stale": "red", "unreadable config": "red",
    "running": "cyan", "recovered": "yellow", "cancelled": "yellow", "in maintenance": "yellow",
    "rolled-back": "yellow", "superseded": "bright_black",
    "skipped": "bright_black", "pending": "bright_black", "queued": "bright_black",
}


def _state(state: str) -> str:
    """A state word, coloured for a terminal (click strips colours when output is not a TTY);
    each word styled once per process (``sites`` shows thousands of rows)."""
    styled = _STYLED.get(state)
    if styled is None:
        styled = _STYLED[state] = click.style(state, fg=_COLOURS.get(state))
    return styled


_STYLED: dict[str, str] = {}


def _duration(step: Any) -> str:
    return f" ({step.duration_s:.1f}s)" if step.duration_s is not None else ""


def _exit_for(state: str) -> int:
    return EXIT_OK if state == "succeeded" else EXIT_JOB_FAILED


def _when(epoch: float | None) -> str:
    from jerp_jobs.cliformat import when

    return when(epoch)


@cli.command()
@click.option("--site", default=None, callback=_optional_site, help="Only jobs of this site.")
@click.option("--state", default=None, help="Only jobs in this state.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.pass_obj
@_guard
def jobs(obj: Ctx, site: str | None, state: str | None, limit: int) -> None:
    """Recent jobs, newest first."""
    found = obj.reader.store.list(site=site, state=state, limit=limit)
    if obj.as_json:
        click.echo(json.dumps([j.to_dict() for j in found], sort_keys=True))
        return
    if not found:
        click.echo("no jobs", err=True)
        return
    from jerp_jobs.cliformat import ago, table, utc

    rows = [[job.id, utc(job.created_at), ago(job.created_at), job.kind, job.site or "-", _state(job.state)]
            for job in found]
    _echo_lines(table(["JOB", "REQUESTED (UTC)", "AGE", "KIND", "SITE", "STATE"], rows))


def _echo_lines(lines: list[str]) -> None:
    """Print ``lines`` to stdout in one write (nothing when there are none)."""
    if lines:
        click.echo("\n".join(lines))


@cli.command()
@click.argument("job_id")
@click.pass_obj
@_guard
def status(obj: Ctx, job_id: str) -> None:
    """A job with its steps; the output tail of a failed step."""
    job = _read_job(obj, job_id)
    if obj.as_json:
        click.echo(json.dumps(job.to_dict(), sort_keys=True))
        return
    click.echo(f"job {job.id}: {job.kind} {job.site or ''} — {_state(job.state)}")
    if job.bench and job.bench != "default":  # a bench of a fleet (docs/fleet.md)
        click.echo(f"bench {job.bench}")
    elif job.params.get("benches"):
        click.echo(f"benches {', '.join(job.params['benches'])}")
    click.echo(f"requested {_when(job.created_at)}, started {_when(job.started_at)}, ended {_when(job.ended_at)}")
    if job.error:
        click.echo(f"error: {job.error}")
    for note, text in job.notes.items():
        click.echo(f"{note}: {_when(float(text)) if note.endswith('_since') and _is_number(text) else text}")
    from jerp_jobs.cliformat import table

    rows, details = [], {}
    for step in job.steps:
        state, detail, extra = _step_view(obj, job, step)
        took = f"{step.duration_s:.1f}s" if step.duration_s is not None else ""
        code = f"exit {step.exit_code}" if step.state == "failed" and step.exit_code else ""
        rows.append([step.name, _state(state), took, " ".join(x for x in (code, detail) if x)])
        details[step.name] = extra
    for line, step in zip(table(["STEP", "STATE", "TOOK", "DETAIL"], rows, right=(2,))[1:], job.steps):
        click.echo(f"  {line}")
        for extra in details[step.name]:
            click.echo(f"      | {extra}")
    sites = job.result.get("sites")
    if isinstance(sites, dict):
        site_rows = [[site, _state(entry["state"]), entry.get("job_id") or "-", entry.get("reason") or ""]
                     for site, entry in sites.items()]
        for line in table(["SITE", "STATE", "JOB", "REASON"], site_rows):
            click.echo(f"  {line}")
    sys.exit(EXIT_OK if job.state in ("succeeded", "queued", "running") else EXIT_JOB_FAILED)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _step_view(obj: Ctx, job: Any, step: Any) -> tuple[str, str, list[str]]:
    """How ``status`` shows a step: its state (``manual`` for a proxy host left to do by hand),
    a short detail (why it was skipped), and lines below it (a failed step's output tail, the
    manual instructions)."""
    if step.state == "failed":
        return "failed", step.error or "", step.output.splitlines()[-20:]
    if step.name == "proxy-host" and step.state == "success":
        wanted = job.result.get("proxy_host") or {}
        if wanted and not wanted.get("created"):
            return "manual", "Nginx Proxy Manager is not configured: create the proxy host by hand", \
                [wanted.get("summary", ""), *wanted.get("steps", [])]
    if step.state == "skipped":
        return "skipped", _skip_reason(obj, job, step), []
    return step.state, "", []


def _skip_reason(obj: Ctx, job: Any, step: Any) -> str:
    """Why a step did not run: what it printed, or, for a step the job never reached, the step
    that failed, a cancel, or a recovery step not needed."""
    said = [line for line in step.output.splitlines() if line.strip()]
    if said:
        return said[-1]
    try:
        recovery = obj.rt.workflow(job.kind).is_recovery(step.name)
    except Exception:  # noqa: BLE001 - an unknown kind or step: no finer reason
        recovery = False
    if recovery:
        return "recovery step: not needed"
    failed = [s.name for s in job.steps if s.state == "failed"]
    if failed:
        return f"not run: {failed[0]} failed"
    if job.cancel_requested:
        return "not run: cancelled"
    return step.error or ""


@cli.command()
@click.argument("site", required=False, callback=_optional_site)
@click.option("--rescan", is_flag=True, help="First rebuild the backup indexes from the off-site store and the "
              "manifests beside local backups (after Redis was lost, or on a new host); a job, waited for.")
@click.pass_obj
@_guard
def backups(obj: Ctx, site: str | None, rescan: bool) -> None:
    """Off-site freshness of every site (local without JERP_S3_BUCKET), or the local and off-site
    backups of SITE."""
    from jerp_jobs.freshness import site_backups, sites_freshness

    rt = obj.rt if rescan else obj.reader
    if rescan:
        from jerp_jobs.enqueue import submit

        job = _follow(obj, submit(rt, "rescan", actor=_actor()).id)
        if job.state != "succeeded":
            raise click.ClickException(f"rescan job {job.id} {job.state}: {job.error}")
        click.echo(f"rescan job {job.id}: " + " ".join(job.step("rescan").output.splitlines()[-1:]), err=True)
    if site is None:
        offsite = bool(rt.settings.s3_bucket)
        rows = sites_freshness(rt.redis, max_age_hours=rt.settings.backup_max_age_hours, offsite=offsite)
        if obj.as_json:
            click.echo(json.dumps(rows, sort_keys=True))
        else:
            lines = []
            for row in rows:
                age = "never" if row["age_hours"] is None else f"{row['age_hours']:.1f}h"
                flag = "  STALE" if row["stale"] else ""
                last = row.get("last_utc_timestamp") or "-"
                lines.append(f"{row['site']:<40} last {row['where']:<8} {last:<15} UTC age {age}{flag}")
            _echo_lines(lines)
        sys.exit(EXIT_JOB_FAILED if any(r["stale"] for r in rows) else EXIT_OK)
    rows = site_backups(rt.redis, site)
    if obj.as_json:
        click.echo(json.dumps(rows, sort_keys=True))
        return
    lines = []
    for row in rows:
        verified = "verified" if row["verified"] else "unverified"
        local = f"  (local {row['timestamp']} {row['time_zone']})" if row.get("time_zone") else ""
        base = "  + point-in-time base" if row.get("pitr") else ""
        lines.append(f"{row['utc_timestamp']} UTC  {row['where']:<8} {row['size']:>14,} B  {verified}{local}{base}")
    if rt.settings.s3_bucket:
        lines.append(_pitr_line(rt, site))
    _echo_lines(lines)


def _pitr_line(rt: Any, site: str) -> str:
    """The site's point-in-time window and current RPO, in one line."""
    from jerp_jobs.cliformat import duration, utc
    from jerp_jobs.freshness import site_pitr

    window = site_pitr(rt.redis, site)
    rpo = "" if window["rpo_s"] is None else f"; current RPO {duration(window['rpo_s'])} (last binary log shipped)"
    if window["state"] == "ok":
        return (f"point-in-time: any second from {utc(window['from'])} to {utc(window['to'])} "
                f"({window['bases']} base(s)){rpo}")
    return f"point-in-time: none ({window['state']}){rpo}"


@cli.command()
@click.argument("job_id")
@click.option("--poll", default=0.5, show_default=True, type=click.FloatRange(0.05, 60), help="Seconds between reads.")
@click.pass_obj
@_guard
def watch(obj: Ctx, job_id: str, poll: float) -> None:
    """Follow JOB's steps live until it ends; exit with its outcome."""
    final = _follow(obj, job_id, poll=poll)
    if obj.as_json:
        click.echo(json.dumps(final.to_dict(), sort_keys=True))
    sys.exit(_exit_for(final.state))


@cli.command()
@click.argument("job_id")
@click.pass_obj
@_guard
def cancel(obj: Ctx, job_id: str) -> None:
    """Cancel JOB: no new step starts; the running one finishes; the site is left online."""
    from jerp_jobs.actions import cancel_job

    job = cancel_job(obj.rt, job_id, actor=_actor())
    if obj.as_json:
        click.echo(json.dumps({"job_id": job.id, "state": job.state, "cancel_requested": True}))
    else:
        click.echo(f"job {job.id}: cancel requested; no new step will start (`jerpctl watch {job.id}` follows it)")


@cli.command()
@click.option("--bench", default=None, metavar="BENCH", help="In a fleet: only the sites of this bench.")
@click.option("--refresh", is_flag=True, help="In a fleet: each bench lists its sites again first (a list-sites "
              "job on its queue, waited for up to --timeout; a bench whose worker is down is named).")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(1, 3600),
              help="Seconds --refresh waits for the benches' listings.")
@click.pass_obj
@_guard
def sites(obj: Ctx, bench: str | None, refresh: bool, timeout: float) -> None:
    """Every site of the bench (ok / in maintenance / needs attention) and every attention mark,
    with the age of the last backup; in a fleet (JERP_FLEET_FILE), every site of every bench with
    the bench it lives on."""
    from jerp_jobs.fleet import load_fleet
    from jerp_jobs.freshness import fleet_site_states, site_states

    fleet = load_fleet(obj.reader.settings)
    if not fleet.declared and (bench is not None or refresh):
        if bench is not None:
            fleet.get(bench)  # the one bench of a single host: 'default'
        if refresh:
            raise click.BadParameter("--refresh is for a fleet (JERP_FLEET_FILE): a single host's sites are read "
                                     "from its sites folder each time", param_hint="--refresh")
    pending: list[str] = []
    if refresh:
        pending = _refresh_listings(obj, [bench] if bench else None, timeout=timeout)
    rows = fleet_site_states(obj.reader, fleet, bench=bench) if fleet.declared else site_states(obj.reader)
    if obj.as_json:
        click.echo(json.dumps(rows, sort_keys=True))
    else:
        lines = []
        for row in rows:
            age = "never" if row["backup_age_hours"] is None else f"{row['backup_age_hours']:.1f}h"
            age = f"{row['backup_where']} {age}" + ("  STALE" if row["backup_stale"] else "")
            extra = "  (no site folder)" if not row["exists"] else ""
            if row.get("benches"):
                extra += f"  (listed by benches {' and '.join(row['benches'])})"
            mark = row["attention"]
            if mark:
                extra += (f"  (job {mark.get('job_id') or '?'}, since {_when(mark.get('since'))}: "
                          f"{mark.get('reason')})")
            where = f"{row.get('bench') or '-':<16} " if fleet.declared else ""
            lines.append(f"{row['site']:<40} {where}{_state(row['state']):<16} last backup {age}{extra}")
        _echo_lines(lines)
        click.echo(f"{sum(r['exists'] for r in rows)} sites", err=True)
        if fleet.declared:
            _listing_ages(obj, fleet, pending)
        if any(r["attention"] for r in rows):
            click.echo("a site needing attention is left alone by every workflow: read its job "
                       "(`jerpctl status JOB`), repair it (docs/attention.md), then "
                       "`jerpctl site clear-attention SITE`", err=True)
    bad = ("needs attention", "unreadable config", "on two benches")
    sys.exit(EXIT_JOB_FAILED if pending or any(r["state"] in bad for r in rows) else EXIT_OK)


def _refresh_listings(obj: Ctx, benches: list[str] | None, *, timeout: float) -> list[str]:
    """Each bench lists its sites (jerp_jobs.actions.start_listings); waits up to ``timeout`` s
    for the listings to end; returns the benches whose listing has not ended (told on stderr)."""
    from jerp_jobs.actions import start_listings

    jobs = start_listings(obj.rt, actor=_actor(), benches=benches)
    deadline = time.monotonic() + timeout
    waiting = dict(jobs)
    while waiting and time.monotonic() < deadline:
        for bench_name, job_id in list(waiting.items()):
            job = obj.rt.store.get(job_id)
            if job.finished:
                del waiting[bench_name]
                if job.state != "succeeded":
                    click.echo(f"bench {bench_name}: listing job {job_id} {job.state}: {job.error}", err=True)
        if waiting:
            time.sleep(0.2)
    for bench_name, job_id in sorted(waiting.items()):
        click.echo(click.style(f"bench {bench_name}: its listing (job {job_id}) has not run within {timeout:g} s: "
                               "is a worker consuming its queue? (`jerpctl benches`); its sites are shown as "
                               "last listed", fg="yellow"), err=True)
    return sorted(waiting)


def _listing_ages(obj: Ctx, fleet: Any, pending: list[str]) -> None:
    from jerp_jobs import placement

    listed = placement.listed_at(obj.reader.redis)
    now = time.time()
    parts = []
    for bench in fleet:
        when = listed.get(bench.name)
        parts.append(f"{bench.name} {'never' if when is None else _age(now - when) + ' ago'}"
                     + (" (listing waits for a worker)" if bench.name in pending else ""))
    click.echo("listed: " + ", ".join(parts), err=True)


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


@cli.group()
def site() -> None:
    """Operator actions on one site."""


@site.command("clear-attention")
@SITE
@click.pass_obj
@_guard
def clear_attention(obj: Ctx, site: str) -> None:
    """Clear SITE's needs-attention mark once it has been repaired by hand."""
    from jerp_jobs.actions import clear_attention as clear

    mark = clear(obj.rt, site, actor=_actor())
    if obj.as_json:
        click.echo(json.dumps({"site": site, "cleared": mark}, sort_keys=True))
    else:
        click.echo(f"{site}: attention mark cleared (was: {mark.get('reason')}); automated workflows may touch it again")


@cli.command("audit")
@click.option("--site", default=None, callback=_optional_site, help="Only the entries of this site.")
@click.option("--since", default=None, help="From this UTC time on (YYYY-MM-DD[ HH:MM[:SS]]).")
@click.option("--limit", type=click.IntRange(1, None), default=50, show_default=True,
              help="The newest N entries (with --all: no limit).")
@click.option("--all", "everything", is_flag=True, help="Every entry kept (JERP_AUDIT_DAYS), oldest first.")
@click.pass_obj
@_guard
def audit_trail(obj: Ctx, site: str | None, since: str | None, limit: int, everything: bool) -> None:
    """Who started each job and which operator actions were taken (kept JERP_AUDIT_DAYS days,
    apart from job records). With --json: JSON lines, one entry per line (an export)."""
    from jerp_jobs import audit

    start = _utc_epoch(since) if since else None
    rows = (list(audit.entries(obj.rt.redis, site=site, since=start)) if everything
            else audit.newest(obj.rt.redis, site=site, since=start, limit=limit))
    for entry in rows:
        if obj.as_json:
            click.echo(audit.as_json_line(entry))
        else:
            target = " ".join(x for x in (entry.get("kind"), entry.get("site"), entry.get("job_id") and f"job {entry['job_id']}") if x)
            detail = f"  ({entry['detail']})" if entry.get("detail") else ""
            click.echo(f"{_when(entry['at'])}  {entry['action']:<24} {target}  by {entry['actor']}{detail}")


def _utc_epoch(text: str) -> float:
    import calendar

    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(text.strip().removesuffix("Z"), fmt)))
        except ValueError:
            continue
    raise click.BadParameter(f"{text!r} is not a UTC time (YYYY-MM-DD[ HH:MM[:SS]])", param_hint="--since")


# -- workers, queues, Beat (jerp_jobs.observe) ----------------------------------------------


def _celery_app(obj: Ctx) -> Any:
    """The Celery app whose broadcasts reach the workers: ``obj.celery_app`` when a test gives
    one, else the process's app — None when that app's broker is not the runtime's (a test's
    runtime on another Redis: nothing to ask)."""
    given = getattr(obj, "celery_app", None)
    if given is not None:
        return given
    from jerp_jobs.celery import app

    return app if app.conf.broker_url == obj.rt.settings.broker_url else None


def _warn_without_workers(obj: Ctx, job_id: str) -> None:
    """Say so on stderr when no worker answers a ping: the job would wait, silently, for one."""
    from jerp_jobs import observe

    app = _celery_app(obj)
    if app is None or obj.rt.store.get(job_id).finished:
        return
    try:
        alive = observe.any_worker_alive(app, timeout=obj.rt.settings.worker_ping_timeout)
    except Exception:  # noqa: BLE001 - a broadcast that fails says nothing about the job: follow it anyway
        return
    if not alive:
        click.echo(click.style("warning:", fg="yellow") + " no worker is alive: the job waits in the queue until "
                   "one starts (`jerp-run`, or `celery -A jerp_jobs worker`; `jerpctl workers` shows them)", err=True)


def _ago(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "-"
    seconds = now - epoch
    sign, seconds = ("in ", -seconds) if seconds < 0 else ("", seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            text = f"{seconds / size:.0f}{unit}"
            break
    else:
        text = f"{seconds:.0f}s"
    return sign + text + ("" if sign else " ago")


@cli.command("workers")
@click.pass_obj
@_guard
def workers_cmd(obj: Ctx) -> None:
    """Alive workers and what each runs, the queues and their depth, Beat's next runs.
    Exit 1 when no worker answers (JERP_WORKER_PING_TIMEOUT)."""
    from jerp_jobs import observe

    view = observe.overview(obj.rt, _celery_app(obj), timeout=obj.rt.settings.worker_ping_timeout)
    workers = view.workers or []
    if obj.as_json:
        click.echo(json.dumps(view.to_dict(), sort_keys=True))
        sys.exit(EXIT_OK if workers else EXIT_JOB_FAILED)
    now = view.at
    click.echo(f"WORKERS ({len(workers)} alive)")
    if not workers:
        click.echo("  " + click.style("none answered", fg="red") + " (start one: `jerp-run`, or `celery -A jerp_jobs worker`)")
    for worker in workers:
        queues = ",".join(worker.queues or []) or "-"
        click.echo(f"  {worker.name}  queues {queues}  running {len(worker.tasks)}")
        for task in worker.tasks:
            what = f"job {task.job_id} step {task.step}" if task.step else (f"job {task.job_id}" if task.job_id else "")
            click.echo(f"    {task.name:<20} {what:<40} started {_ago(task.started_at, now)}")
    click.echo("QUEUES")
    click.echo(f"  {'QUEUE':<16} {'WAITING':>8}  OLDEST")
    for queue in view.queues:
        oldest = _ago(queue.oldest_sent_at, now) if queue.depth else "-"
        click.echo(f"  {queue.name:<16} {queue.depth:>8}  {oldest}")
    lock = "held" if view.beat.lock_held else click.style("not held: no Beat is scheduling", fg="red")
    click.echo(f"BEAT (lock {lock})")
    click.echo(f"  {'ENTRY':<24} {'NEXT RUN (UTC)':<22} {'':<12} LAST RUN")
    for entry in view.beat.entries:
        click.echo(f"  {entry.name:<24} {_when(entry.next_run_at):<22} {_ago(entry.next_run_at, now):<12} "
                   f"{_ago(entry.last_run_at, now)}")
    if not view.beat.entries:
        click.echo("  no schedule in Redis: Beat never ran against this broker")
    sys.exit(EXIT_OK if workers else EXIT_JOB_FAILED)


def main() -> None:
    cli(prog_name="jerpctl")


@cli.command("benches")
@click.pass_obj
@_guard
def benches_cmd(obj: Ctx) -> None:
    """The benches of the fleet (JERP_FLEET_FILE; without it the one bench of this host): role,
    group, Docker endpoint, Celery queue, the workers consuming that queue, and the number of
    sites when the bench's sites folder is visible here. Exit 1 when a bench has no live worker."""
    from jerp_jobs import observe
    from jerp_jobs.errors import InvalidInput
    from jerp_jobs.fleet import load_fleet
    from jerp_jobs.sites import list_site_folders

    fleet = load_fleet(obj.rt.settings)
    app = _celery_app(obj)
    consumers: dict[str, list[str]] | None = None
    if app is not None:
        consumers = {}
        for worker in observe.workers(app, timeout=obj.rt.settings.worker_ping_timeout, with_queues=True):
            for queue in worker.queues or []:
                consumers.setdefault(queue, []).append(worker.name)
    from jerp_jobs import placement

    waiting = {q.name: q for q in observe.queues(obj.rt.redis, [b.queue for b in fleet])}
    listed = placement.listed_at(obj.rt.redis) if fleet.declared else {}
    rows = []
    for bench in fleet:
        sites: int | None = None
        if bench.sites_dir is not None and bench.sites_dir.is_dir():
            try:
                sites = len(list_site_folders(bench.sites_dir).sites)
            except InvalidInput:
                sites = None
        elif bench.name in listed:  # as its worker last listed them
            sites = len(placement.sites_on(obj.rt.redis, bench.name))
        workers = None if consumers is None else sorted(consumers.get(bench.queue, []))
        queue = waiting[bench.queue]
        rows.append({**bench.to_dict(), "endpoint": bench.endpoint, "workers": workers,
                     "worker_alive": None if workers is None else bool(workers), "sites": sites,
                     "waiting": queue.depth, "oldest_waiting_s": queue.oldest_age_s})
    missing = [row["name"] for row in rows if row["worker_alive"] is False]
    if obj.as_json:
        click.echo(json.dumps({"fleet_file": None if fleet.source is None else str(fleet.source),
                               "benches": rows}, sort_keys=True))
        sys.exit(EXIT_JOB_FAILED if missing else EXIT_OK)
    source = str(fleet.source) if fleet.source is not None else "none (JERP_FLEET_FILE unset: this host's bench)"
    click.echo(f"FLEET FILE {source}")
    click.echo(f"{'BENCH':<20} {'ROLE':<10} {'GROUP':<12} {'DOCKER':<34} {'QUEUE':<26} {'WORKER':<8} "
               f"{'SITES':<6} WAITING")
    for row in rows:
        if row["worker_alive"] is None:
            worker = "?"
        else:
            worker = "alive" if row["worker_alive"] else click.style("none", fg="red")
        sites_text = "-" if row["sites"] is None else str(row["sites"])
        waiting_text = str(row["waiting"]) + (f" (oldest {_age(row['oldest_waiting_s'])})"
                                              if row["oldest_waiting_s"] is not None else "")
        click.echo(f"{row['name']:<20} {row['role']:<10} {row['group']:<12} {row['endpoint']:<34} "
                   f"{row['queue']:<26} {worker:<8} {sites_text:<6} {waiting_text}")
    if missing:
        click.echo(click.style("no worker consumes the queue of: ", fg="red") + ", ".join(missing)
                   + " (its jobs wait in its queue; start one: `celery -A jerp_jobs worker -Q <queue>`, "
                   "or the jobs image's `worker` role with JERP_BENCH)")
    elif consumers is None:
        click.echo("workers: not asked (the Celery app's broker is not this runtime's)")
    sys.exit(EXIT_JOB_FAILED if missing else EXIT_OK)
