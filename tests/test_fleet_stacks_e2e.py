"""A fleet of stand-in platform stacks, each a Docker "host" of its own (tests/fleet_stacks.py):
its own compose project, network, MariaDB with its own root password, backend with the
stand-in bench, sites volume, and TLS socket proxy on its own loopback port; one worker per
bench reaching its bench only through that proxy, and the control worker; the real Redis.

What is checked: each job runs on its site's bench and nowhere else; a fan-out over the fleet
reaches every site of every bench, each bench's part run by its own worker; a bench whose
worker died keeps its jobs waiting, visibly, while the other benches go on, and they run once a
worker of the bench is back; each worker holds its own bench's credentials; a step of one
bench's job that reaches another bench's queue is sent on to its own bench, never run there.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.docker_backend import BENCH_PATH
from tests.fleet_stacks import CONTROL, StackFleet, ensure_workers, fleet_stacks  # noqa: F401 - the fixture
from tests.workers import log_events, wait_for

pytestmark = [pytest.mark.services, pytest.mark.docker]


@pytest.fixture
def fleet(fleet_stacks: StackFleet) -> StackFleet:  # noqa: F811 - the fixture imported above
    """The module's fleet with every worker running."""
    ensure_workers(fleet_stacks)
    return fleet_stacks


def _step_workers(job: dict[str, Any]) -> set[str]:
    return {s["worker"] for s in job["steps"] if s.get("worker")}


def _children(fleet: StackFleet, job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A fan-out's children (by site, or by bench for a fan-out over benches), each read again."""
    entries = job["result"].get("sites") or {}
    return {key: fleet.job(entry["job_id"]) for key, entry in entries.items() if entry.get("job_id")}


def test_each_job_runs_on_its_sites_bench_and_a_fleet_fanout_on_every_bench(fleet: StackFleet) -> None:
    a, b = fleet["prod-a"], fleet["staging-b"]
    site_a, site_b = a.new_site("fa"), b.new_site("fb")
    db_a, db_b = a.site_config(site_a)["db_name"], b.site_config(site_b)["db_name"]
    assert db_a in a.databases() and db_a not in b.databases()  # each stack's own MariaDB
    assert db_b in b.databases() and db_b not in a.databases()

    # each bench lists its own sites: the site-to-bench map
    listed = fleet.jerpctl("sites", "--refresh")
    assert listed.returncode == 0, (listed.stdout, listed.stderr, fleet.logs())
    line_a = next(line for line in listed.stdout.splitlines() if line.startswith(site_a))
    line_b = next(line for line in listed.stdout.splitlines() if line.startswith(site_b))
    assert line_a.split()[1] == "prod-a" and line_b.split()[1] == "staging-b"
    rc, rows = fleet.json("sites")
    assert {r["site"]: r["bench"] for r in rows if r["site"] in (site_a, site_b)} == {site_a: "prod-a",
                                                                                       site_b: "staging-b"}

    # a site's job: on its bench, by its bench's worker; the files in its bench's sites volume only
    rc, job = fleet.run_job("backup", site_b)
    assert rc == 0, (job.get("error"), fleet.logs())
    assert job["bench"] == "staging-b"
    assert _step_workers(job) == {fleet.worker_name("staging-b")}
    paths = [art["path"] for art in job["result"]["backup"]["artifacts"]]
    assert paths and all((b.sites_dir / p).is_file() for p in paths)
    assert not any((a.sites_dir / p).exists() for p in paths)
    assert b.backup_files(site_b) and not (a.sites_dir / site_b).exists()
    assert a.backup_files(site_a) == []  # prod-a was not touched

    # the fleet's backup-all: one fan-out per bench, each by its bench's worker, on its own sites
    rc, parent = fleet.run_job("backup-all")
    assert rc == 0, (parent.get("error"), fleet.logs())
    assert parent["bench"] is None
    assert _step_workers(parent) and _step_workers(parent) <= {fleet.worker_name(CONTROL)}
    per_bench = _children(fleet, parent)
    assert set(per_bench) == {"prod-a", "staging-b"}
    for name, child in per_bench.items():
        stack, other = fleet[name], fleet["staging-b" if name == "prod-a" else "prod-a"]
        assert child["state"] == "succeeded" and child["bench"] == name
        assert _step_workers(child) == {fleet.worker_name(name)}
        sites = _children(fleet, child)
        assert (site_a if name == "prod-a" else site_b) in sites
        assert all(stack.has_site(s) and not other.has_site(s) for s in sites), sites  # its own sites only
        for backup in sites.values():
            assert backup["state"] == "succeeded" and backup["bench"] == name
            assert _step_workers(backup) == {fleet.worker_name(name)}
            paths = [art["path"] for art in backup["result"]["backup"]["artifacts"]]
            assert paths and all((stack.sites_dir / p).is_file() and not (other.sites_dir / p).exists()
                                 for p in paths)


def test_a_dead_benchs_job_waits_visibly_while_the_other_bench_goes_on(fleet: StackFleet) -> None:
    a, b = fleet["prod-a"], fleet["staging-b"]
    site_a, site_b = a.new_site("ka"), b.new_site("kb")
    assert fleet.jerpctl("sites", "--refresh").returncode == 0

    fleet.kill_worker("staging-b")
    waiting = fleet.enqueue("backup", site_b)
    rows = wait_for(lambda: (r := fleet.benches())["staging-b"]["workers"] == [] and r, timeout=30,
                    what="jerpctl benches to show staging-b without a worker")
    assert rows["staging-b"]["worker_alive"] is False and rows["staging-b"]["waiting"] == 1
    assert rows["prod-a"]["worker_alive"] is True and rows["prod-a"]["waiting"] == 0
    text = fleet.jerpctl("benches")
    assert text.returncode == 1
    line = next(line for line in text.stdout.splitlines() if line.startswith("staging-b"))
    assert " none " in line and line.rstrip().endswith("1") or "1 (oldest" in line

    # the other bench goes on meanwhile
    rc, done = fleet.run_job("backup", site_a)
    assert rc == 0, (done.get("error"), fleet.logs())
    assert _step_workers(done) == {fleet.worker_name("prod-a")}
    queued = fleet.jerpctl("status", waiting)
    assert queued.returncode == 0 and "queued" in queued.stdout.splitlines()[0]
    assert fleet.job(waiting)["state"] == "queued" and b.backup_files(site_b) == []

    # a worker of the bench again: the waiting job runs
    fleet.start_worker("staging-b")
    job = fleet.wait_job(waiting, timeout=120)
    assert job["state"] == "succeeded", (job.get("error"), fleet.logs())
    assert _step_workers(job) == {fleet.worker_name("staging-b")} and b.backup_files(site_b)
    assert fleet.benches()["staging-b"]["waiting"] == 0


def test_each_worker_holds_its_own_benchs_credentials(fleet: StackFleet) -> None:
    a, b = fleet["prod-a"], fleet["staging-b"]
    # a site made by jerp-jobs on each bench: bench new-site with the root password of that
    # bench's MariaDB, which refuses every other stack's password
    made = {}
    for stack in (a, b):
        site = f"cred{uuid.uuid4().hex[:8]}.example.com"
        rc, job = fleet.run_job("provision", site, "--bench", stack.bench_name)
        assert rc == 0, (job.get("error"), fleet.logs())
        assert job["bench"] == stack.bench_name and _step_workers(job) == {fleet.worker_name(stack.bench_name)}
        assert stack.has_site(site) and stack.site_config(site)["db_name"] in stack.databases()
        made[stack.bench_name] = job
    # no secret in a job record, nor in a message waiting in a queue
    records = json.dumps([fleet.job(job["id"]) for job in made.values()])
    for stack in (a, b):
        assert stack.root_password not in records and stack.admin_password not in records

    # staging-b's worker started with a wrong root password (its env file): staging-b's jobs
    # fail on its MariaDB's refusal; prod-a's worker, with its own file, goes on
    fleet.kill_worker("staging-b")
    fleet.write_env_file("staging-b", {"MARIADB_ROOT_PASSWORD": "not-the-staging-password",
                                       "FRAPPE_ADMIN_PASSWORD": b.admin_password})
    wrong = f"credwrong{uuid.uuid4().hex[:6]}.example.com"
    try:
        fleet.start_worker("staging-b")
        rc, failed = fleet.run_job("provision", wrong, "--bench", "staging-b")
        assert rc != 0 and failed["state"] == "failed", failed
        new_site = next(s for s in failed["steps"] if s["name"] == "new-site")
        assert new_site["state"] == "failed" and "Access denied for user 'root'" in new_site["output"]
        assert failed["result"]["db_name"] not in b.databases()
        rc, job = fleet.run_job("provision", f"credright{uuid.uuid4().hex[:6]}.example.com", "--bench", "prod-a")
        assert rc == 0, (job.get("error"), fleet.logs())
    finally:
        fleet.kill_worker("staging-b")
        fleet.write_env_file("staging-b")
        # the failed provision left its site folder and an attention mark: cleared by hand
        b.backend.exec_run(["rm", "-rf", "--", f"sites/{wrong}"], user="frappe", workdir=BENCH_PATH)
        fleet.jerpctl("site", "clear-attention", wrong)
    # its own credentials again: staging-b's jobs succeed
    fleet.start_worker("staging-b")
    rc, job = fleet.run_job("backup", made["staging-b"]["site"])
    assert rc == 0, (job.get("error"), fleet.logs())
    assert _step_workers(job) == {fleet.worker_name("staging-b")}


def test_a_step_published_on_another_benchs_queue_is_sent_to_its_own_bench(fleet: StackFleet) -> None:
    from celery import Celery

    a, b = fleet["prod-a"], fleet["staging-b"]
    site_a = a.new_site("ra")
    assert fleet.jerpctl("sites", "--refresh").returncode == 0
    fleet.kill_worker("prod-a")
    job_id = fleet.enqueue("backup", site_a)
    first = fleet.job(job_id)["steps"][0]["name"]

    # the step delivered by hand to staging-b's queue: staging-b's worker sends it on to prod-a's
    app = Celery("by-hand", broker=fleet.redis_url)
    try:
        app.send_task("jerp.step", kwargs={"job_id": job_id, "step": first}, queue=b.queue)
    finally:
        app.close()
    log = fleet.workers["staging-b"].log_path
    wait_for(lambda: log_events(log, "step.rerouted"), timeout=30, what="staging-b's worker to send the step on")
    assert [e.get("queue") for e in log_events(log, "step.rerouted")][-1] == a.queue
    job = fleet.job(job_id)
    assert job["state"] == "queued" and not _step_workers(job)  # nothing ran on staging-b
    assert a.backup_files(site_a) == [] and not (b.sites_dir / site_a).exists()
    rows = fleet.benches()
    assert rows["prod-a"]["waiting"] == 2 and rows["staging-b"]["waiting"] == 0

    fleet.start_worker("prod-a")
    job = fleet.wait_job(job_id, timeout=120)
    assert job["state"] == "succeeded", (job.get("error"), fleet.logs())
    assert _step_workers(job) == {fleet.worker_name("prod-a")} and a.backup_files(site_a)
