"""A site moved between two stand-in platform stacks (tests/fleet_stacks.py): two Docker "hosts"
``prod-a`` and ``prod-c``, each with its own compose project, network, MariaDB (with a root
password of its own), backend, sites volume, TLS socket proxy, worker and credentials (its own S3
key); the control worker; the real Redis; the off-site store as moto's S3 server with age
encryption; Nginx Proxy Manager as the stand-in of tests/fake_npm.py, in front of both benches.

What is checked (``jerpctl enqueue move SITE --to prod-c``):

- the move's steps run on the source bench by its worker, the restore on the target by the
  target's worker, through each host's own socket proxy;
- the site's data is in the target stack's own MariaDB, table for table and row for row as it
  was on the source; its ``encryption_key`` came along and shows nowhere;
- the site's proxy host forwards to the target's frontend (its certificate kept);
- the site is gone from the source (its database dropped, its folder archived in the source's
  backend) and ``jerpctl sites`` places it on the target, where its next job runs;
- a move whose target host loses its MariaDB goes back: the restore there fails and neither it
  nor the move can drop the folder its ``new-site`` left, so the copy is left there unserved, the
  site is marked as needing attention naming it, and the source reopens with its data as it was
  (the proxy host and the map still on it); once the operator dropped the copy and cleared the
  mark, the site's jobs run on the source again.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from jerp_jobs import placement
from tests.docker_backend import BENCH_PATH
from tests.e2e_support import notes_insert
from tests.fake_npm import FakeNpm
from tests.fleet_stacks import CONTROL, StackFleet, _wait_for_db, build_fleet, offsite_store, write_fleet_file
from tests.s3_server import S3Server

pytestmark = [pytest.mark.services, pytest.mark.docker]

SOURCE, TARGET = "prod-a", "prod-c"
BENCHES = {SOURCE: "production", TARGET: "production"}
#: where NPM reaches each bench's frontend (the fleet file's npm_forward_host / npm_forward_port)
FORWARD = {SOURCE: ("frontend-a.internal", 8080), TARGET: ("frontend-c.internal", 8081)}


@dataclass
class MoveFleet:
    fleet: StackFleet
    npm: FakeNpm


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, docker_client: Any, redis_url: str,
          s3_server: S3Server) -> Iterator[MoveFleet]:
    folder = tmp_path_factory.mktemp("fleet-move")
    with offsite_store(folder, s3_server) as offsite, ExitStack() as cleanup:
        npm = FakeNpm().start()
        cleanup.callback(npm.stop)
        fleet = build_fleet(folder, docker_client, redis_url, BENCHES, workers=False)
        cleanup.callback(fleet.close)
        # the off-site store and one NPM in front of the fleet
        fleet.extra_env.update({**offsite.env, "NPM_URL": npm.url, "NPM_IDENTITY": npm.identity,
                                "NPM_SECRET": npm.secret})
        for name in fleet.stacks:  # each bench's own S3 key; the age identity to read the copies back
            fleet.write_env_file(name, extra=offsite.bench_env(name))
        write_fleet_file(fleet.fleet_file, fleet.certs, list(fleet.stacks.values()), extra={
            name: {"npm_forward_host": host, "npm_forward_port": port} for name, (host, port) in FORWARD.items()})
        fleet.start_workers()
        yield MoveFleet(fleet, npm)


def _workers(job: dict[str, Any]) -> set[str]:
    return {s["worker"] for s in job["steps"] if s.get("worker")}


def test_a_site_moved_between_two_hosts_lands_in_the_target_stack_and_leaves_the_source(world: MoveFleet) -> None:
    fleet, npm = world.fleet, world.npm
    source, target = fleet[SOURCE], fleet[TARGET]
    site = source.new_site("mv")
    db_source = source.site_config(site)["db_name"]
    source.bench("--site", site, "migrate")  # as a site in use is: the move's migrate on the target changes nothing
    source.sql(notes_insert(40), db_source)
    before = source.fingerprint(db_source)
    key = f"mv-{secrets.token_hex(16)}"  # what Frappe encrypts the site's password fields with
    config = source.sites_dir / site / "site_config.json"
    config.write_text(json.dumps({**source.site_config(site), "encryption_key": key}))
    host, port = FORWARD[SOURCE]
    proxy_host = npm.add_host(site, forward_host=host, forward_port=port)
    listed = fleet.jerpctl("sites", "--refresh")
    assert listed.returncode == 0, (listed.stdout, listed.stderr, fleet.logs())
    rc, rows = fleet.json("sites")
    assert {r["site"]: r["bench"] for r in rows}.get(site) == SOURCE

    rc, job = fleet.run_job("move", site, "--to", TARGET, timeout=600)

    assert rc == 0 and job["state"] == "succeeded", (job.get("error"), fleet.logs())
    assert job["bench"] == SOURCE
    assert [s["name"] for s in job["steps"] if s["state"] == "success"] == [
        "check", "maintenance-on", "scheduler-pause", "backup", "upload-offsite", "restore-target", "verify-target",
        "switch-proxy", "switch-map", "drop-source"]
    assert _workers(job) <= {fleet.worker_name(SOURCE), fleet.worker_name(CONTROL)}
    restore = fleet.job(job["result"]["restore_job"])
    assert restore["bench"] == TARGET and restore["state"] == "succeeded", restore.get("error")
    assert _workers(restore) == {fleet.worker_name(TARGET)}
    assert restore["result"]["verified"]["problems"] == []
    assert restore["params"].get("from_offsite") is True

    # in the target stack's own MariaDB, every table and row as it was on the source
    assert target.has_site(site)
    db_target = target.site_config(site)["db_name"]
    assert db_target in target.databases()
    after = target.fingerprint(db_target)
    rewritten = "tabInstalled Application"  # the restore's migrate rewrites the installed apps' record
    assert after.pop(rewritten)[0] == before.pop(rewritten)[0]
    assert after == before and after["tabNote"][0] == "40"
    target_config = target.site_config(site)
    assert not target_config.get("maintenance_mode") and not target_config.get("pause_scheduler")  # online there
    assert target_config["encryption_key"] == key
    records = json.dumps([job, restore])
    assert key not in records and key not in fleet.logs()

    # the proxy host forwards to the target's frontend, its certificate kept
    [moved] = [h for h in npm.hosts if h["domain_names"] == [site]]
    assert (moved["id"], moved["forward_host"], moved["forward_port"]) == (proxy_host["id"], *FORWARD[TARGET])
    assert moved["certificate_id"] == proxy_host["certificate_id"] and moved["ssl_forced"] is True

    # gone from the source: its database dropped there, its folder archived in the source's backend
    assert not source.has_site(site)
    assert db_source not in source.databases()
    code, archived = source.backend.exec_run(["ls", f"{BENCH_PATH}/archived/sites"], user="frappe")
    assert code == 0 and site in archived.decode(), archived

    # the control plane places it on the target; its next job runs there, by the target's worker
    rc, rows = fleet.json("sites")
    assert {r["site"]: r["bench"] for r in rows}.get(site) == TARGET
    rc, backup = fleet.run_job("backup", site)
    assert rc == 0 and backup["bench"] == TARGET, (backup.get("error"), fleet.logs())
    assert _workers(backup) <= {fleet.worker_name(TARGET), fleet.worker_name(CONTROL)}
    assert target.backup_files(site) and not source.has_site(site)


def test_a_move_whose_target_host_loses_its_database_goes_back_and_the_source_serves_again(
    world: MoveFleet,
) -> None:
    fleet, npm = world.fleet, world.npm
    source, target = fleet[SOURCE], fleet[TARGET]
    site = source.new_site("mvf")
    db_source = source.site_config(site)["db_name"]
    source.sql(notes_insert(12), db_source)
    before = source.fingerprint(db_source)
    host, port = FORWARD[SOURCE]
    proxy_host = npm.add_host(site, forward_host=host, forward_port=port)
    assert fleet.jerpctl("sites", "--refresh").returncode == 0
    target_databases = target.databases()

    target.db.stop(timeout=30)  # the target host's database server is down: the site cannot be made there
    try:
        rc, job = fleet.run_job("move", site, "--to", TARGET, timeout=600)
    finally:
        target.db.start()
        _wait_for_db(target)

    assert rc == 1 and job["state"] == "failed", (job.get("error"), fleet.logs())
    steps = {s["name"]: s["state"] for s in job["steps"]}
    # the restore there failed and could not drop the folder its new-site left, nor could the move's drop
    assert steps["restore-target"] == steps["drop-target"] == "failed", job.get("error")
    assert steps["target-copy-left"] == steps["abort-scheduler-resume"] == steps["abort-maintenance-off"] == "success"
    assert all(steps[name] == "skipped" for name in ("verify-target", "switch-proxy", "switch-map", "drop-source"))
    restore = fleet.job(job["result"]["restore_job"])
    assert restore["bench"] == TARGET and restore["state"] == "failed"
    assert _workers(restore) == {fleet.worker_name(TARGET)}
    assert job["result"]["target_copy_left"]["bench"] == TARGET

    # the source serves again with its data; the proxy host and the map still send the site there
    config = source.site_config(site)
    assert not config.get("maintenance_mode") and not config.get("pause_scheduler")
    assert source.fingerprint(db_source) == before
    [kept] = [h for h in npm.hosts if h["domain_names"] == [site]]
    assert (kept["forward_host"], kept["forward_port"]) == FORWARD[SOURCE] and kept["id"] == proxy_host["id"]
    assert placement.bench_of(fleet.redis, site) == SOURCE

    # the site is marked, saying where the unserved copy is; the target's listing shows the copy:
    # both are shown, and automation leaves the site alone
    rc, rows = fleet.json("sites", "--refresh")
    assert rc == 1, rows
    [row] = [r for r in rows if r["site"] == site]
    assert f"on bench {TARGET} could not be dropped" in row["attention"]["reason"], row
    assert sorted(row.get("benches") or []) == sorted([SOURCE, TARGET]), row
    refused = fleet.jerpctl("enqueue", "backup", site)
    assert refused.returncode == 2 and f"listed by benches {SOURCE} and {TARGET}" in refused.stderr, refused.stderr

    # the operator drops the copy on the target as the mark says, clears the mark: the site is the source's
    assert target.has_site(site) and target.databases() == target_databases
    target.bench("drop-site", site, "--db-root-password", target.root_password, "--no-backup", "--force")
    target.backend.exec_run(["rm", "-rf", "--", f"{BENCH_PATH}/archived/sites/{site}"], user="frappe")
    cleared = fleet.jerpctl("site", "clear-attention", site)
    assert cleared.returncode == 0, (cleared.stdout, cleared.stderr)
    rc, rows = fleet.json("sites", "--refresh")
    assert rc == 0, rows
    assert {r["site"]: r["bench"] for r in rows}.get(site) == SOURCE
    rc, backup = fleet.run_job("backup", site)
    assert rc == 0 and backup["bench"] == SOURCE, (backup.get("error"), fleet.logs())
    assert not target.has_site(site) and target.databases() == target_databases
