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
import time
import uuid
from typing import Any

import httpx
import pytest

from jerp_jobs.resume import resume_stalled
from tests.docker_backend import BENCH_PATH
from tests.fleet_stacks import CONTROL, Stack, StackFleet, ensure_workers, fleet_stacks  # noqa: F401 - the fixture
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


def _others(fleet: StackFleet, name: str) -> list[Stack]:
    return [stack for other, stack in fleet.stacks.items() if other != name]


def _line_of(output: str, first: str) -> str:
    return next(line for line in output.splitlines() if line.split() and line.split()[0] == first)


def test_each_job_runs_on_its_sites_bench_and_a_fleet_fanout_on_every_bench(fleet: StackFleet) -> None:
    sites = {name: stack.new_site("fs") for name, stack in fleet.stacks.items()}
    for name, site in sites.items():  # each site's database on its own stack's MariaDB only
        db = fleet[name].site_config(site)["db_name"]
        assert db in fleet[name].databases() and not any(db in o.databases() for o in _others(fleet, name))

    for name, site in sites.items():  # each backend serves its own sites only (its web server)
        for stack in fleet.stacks.values():
            answer = httpx.get(f"{stack.web_url}/api/method/ping", headers={"Host": site}, timeout=10)
            assert answer.status_code == (200 if stack.bench_name == name else 404), (name, stack.bench_name)

    # each bench lists its own sites: the site-to-bench map
    listed = fleet.jerpctl("sites", "--refresh")
    assert listed.returncode == 0, (listed.stdout, listed.stderr, fleet.logs())
    for name, site in sites.items():
        assert _line_of(listed.stdout, site).split()[1] == name
    rc, rows = fleet.json("sites")
    assert {r["site"]: r["bench"] for r in rows if r["site"] in sites.values()} == {s: n for n, s in sites.items()}

    # a site's job: on its bench, by its bench's worker; the files in its bench's sites volume only
    b = fleet["staging-b"]
    rc, job = fleet.run_job("backup", sites["staging-b"])
    assert rc == 0, (job.get("error"), fleet.logs())
    assert job["bench"] == "staging-b"
    assert _step_workers(job) == {fleet.worker_name("staging-b")}
    paths = [art["path"] for art in job["result"]["backup"]["artifacts"]]
    assert paths and all((b.sites_dir / p).is_file() for p in paths)
    for other in _others(fleet, "staging-b"):
        assert not any((other.sites_dir / p).exists() for p in paths)
        assert not (other.sites_dir / sites["staging-b"]).exists()
        assert other.backup_files(sites[other.bench_name]) == []  # the other benches were not touched

    # the fleet's backup-all: one fan-out per bench, each by its bench's worker, on its own sites
    rc, parent = fleet.run_job("backup-all")
    assert rc == 0, (parent.get("error"), fleet.logs())
    assert parent["bench"] is None
    assert _step_workers(parent) and _step_workers(parent) <= {fleet.worker_name(CONTROL)}
    per_bench = _children(fleet, parent)
    assert set(per_bench) == set(fleet.stacks)
    for name, child in per_bench.items():
        stack, others = fleet[name], _others(fleet, name)
        assert child["state"] == "succeeded" and child["bench"] == name
        assert _step_workers(child) == {fleet.worker_name(name)}
        backups = _children(fleet, child)
        assert sites[name] in backups
        assert all(stack.has_site(s) and not any(o.has_site(s) for o in others) for s in backups), backups
        for backup in backups.values():
            assert backup["state"] == "succeeded" and backup["bench"] == name
            assert _step_workers(backup) == {fleet.worker_name(name)}
            paths = [art["path"] for art in backup["result"]["backup"]["artifacts"]]
            assert paths and all((stack.sites_dir / p).is_file() for p in paths)
            assert not any((o.sites_dir / p).exists() for o in others for p in paths)


def test_a_dead_benchs_job_waits_visibly_while_the_other_benches_go_on(fleet: StackFleet) -> None:
    sites = {name: stack.new_site("ks") for name, stack in fleet.stacks.items()}
    assert fleet.jerpctl("sites", "--refresh").returncode == 0
    b = fleet["staging-b"]

    fleet.kill_worker("staging-b")
    waiting = fleet.enqueue("backup", sites["staging-b"])
    rows = wait_for(lambda: (r := fleet.benches())["staging-b"]["workers"] == [] and r, timeout=30,
                    what="jerpctl benches to show staging-b without a worker")
    assert rows["staging-b"]["worker_alive"] is False and rows["staging-b"]["waiting"] == 1
    for other in _others(fleet, "staging-b"):
        assert rows[other.bench_name]["worker_alive"] is True and rows[other.bench_name]["waiting"] == 0
    text = fleet.jerpctl("benches")
    assert text.returncode == 1
    line = _line_of(text.stdout, "staging-b").split()
    worker, _sites, waiting_count = line[line.index(b.queue) + 1:line.index(b.queue) + 4]  # after QUEUE
    assert (worker, waiting_count) == ("none", "1"), line
    assert "no worker consumes the queue of: staging-b" in text.stdout
    # what waits is the job's step, as it was published: no secret of any bench in it
    raw = b"".join(fleet.redis.lrange(b.queue, 0, -1))
    assert waiting.encode() in raw
    assert not any(s.root_password.encode() in raw or s.admin_password.encode() in raw for s in fleet.stacks.values())

    # Beat's resume pass on the control plane, long after: the message waits, none is added
    rt = fleet.runtime()
    try:
        assert resume_stalled(rt, now=time.time() + 3600) == [] and rt.dispatched == []
    finally:
        rt.redis.close()
    assert fleet.benches()["staging-b"]["waiting"] == 1

    # the other benches go on meanwhile
    for other in _others(fleet, "staging-b"):
        rc, done = fleet.run_job("backup", sites[other.bench_name])
        assert rc == 0, (done.get("error"), fleet.logs())
        assert _step_workers(done) == {fleet.worker_name(other.bench_name)}
    queued = fleet.jerpctl("status", waiting)
    assert queued.returncode == 0 and "queued" in queued.stdout.splitlines()[0]
    assert fleet.job(waiting)["state"] == "queued" and b.backup_files(sites["staging-b"]) == []
    # a listing of every bench names the one whose worker is down; the others are listed
    refresh = fleet.jerpctl("sites", "--refresh", "--timeout", "5")
    assert refresh.returncode == 1
    assert "bench staging-b: its listing" in refresh.stderr and "has not run within 5 s" in refresh.stderr
    assert "listed: " in refresh.stderr

    # a worker of the bench again: what waited runs, by it
    fleet.start_worker("staging-b")
    job = fleet.wait_job(waiting, timeout=120)
    assert job["state"] == "succeeded", (job.get("error"), fleet.logs())
    assert _step_workers(job) == {fleet.worker_name("staging-b")} and b.backup_files(sites["staging-b"])
    wait_for(lambda: fleet.benches()["staging-b"]["waiting"] == 0, timeout=30, what="staging-b's queue to empty")


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
    # no secret in a job record
    records = json.dumps([fleet.job(job["id"]) for job in made.values()])
    for stack in (a, b):
        assert stack.root_password not in records and stack.admin_password not in records

    # staging-b's file giving prod-a's root password: staging-b's worker refuses to start,
    # naming the variable and both benches, never the value
    fleet.kill_worker("staging-b")
    fleet.write_env_file("staging-b", {"MARIADB_ROOT_PASSWORD": a.root_password,
                                       "FRAPPE_ADMIN_PASSWORD": b.admin_password})
    try:
        refused = fleet.start_worker("staging-b", wait=False)
        assert refused.proc.wait(60) != 0
        refused.stop()
        output = refused.logs()
        assert "MARIADB_ROOT_PASSWORD has the same value for benches 'prod-a' and 'staging-b'" in output, output
        assert a.root_password not in output
    finally:
        fleet.write_env_file("staging-b")

    # staging-b's worker started with a wrong root password (its env file): staging-b's jobs
    # fail on its MariaDB's refusal; prod-a's worker, with its own file, goes on
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
    # no worker or proxy wrote a bench's secret in its log
    for log in sorted(fleet.folder.glob("*.log")):
        text = log.read_text(errors="replace")
        for stack in fleet.stacks.values():
            assert stack.root_password not in text and stack.admin_password not in text, log.name


def test_a_step_published_on_another_benchs_queue_is_sent_to_its_own_bench(fleet: StackFleet) -> None:
    from celery import Celery

    from jerp_jobs.fleet import CONTROL_QUEUE

    a, b = fleet["prod-a"], fleet["staging-b"]
    site_a = a.new_site("ra")
    assert fleet.jerpctl("sites", "--refresh").returncode == 0
    fleet.kill_worker("prod-a")
    job_id = fleet.enqueue("backup", site_a)
    first = fleet.job(job_id)["steps"][0]["name"]

    # the step delivered by hand to staging-b's queue and to the control queue: staging-b's
    # worker and the control worker each send it on to prod-a's queue, and run nothing of it
    app = Celery("by-hand", broker=fleet.redis_url)
    try:
        for queue in (b.queue, CONTROL_QUEUE):
            app.send_task("jerp.step", kwargs={"job_id": job_id, "step": first}, queue=queue)
    finally:
        app.close()
    for name in ("staging-b", CONTROL):
        log = fleet.workers[name].log_path
        wait_for(lambda log=log: log_events(log, "step.rerouted"), timeout=30,
                 what=f"the worker of {name} to send the step on")
        assert [(e.get("job_id"), e.get("queue")) for e in log_events(log, "step.rerouted")] == [(job_id, a.queue)]
    job = fleet.job(job_id)
    assert job["state"] == "queued" and not _step_workers(job)  # nothing ran anywhere
    assert a.backup_files(site_a) == [] and not any(o.has_site(site_a) for o in _others(fleet, "prod-a"))
    rows = fleet.benches()
    assert rows["prod-a"]["waiting"] == 3 and all(rows[o.bench_name]["waiting"] == 0 for o in _others(fleet, "prod-a"))

    fleet.start_worker("prod-a")
    job = fleet.wait_job(job_id, timeout=120)
    assert job["state"] == "succeeded", (job.get("error"), fleet.logs())
    assert _step_workers(job) == {fleet.worker_name("prod-a")} and a.backup_files(site_a)
    wait_for(lambda: fleet.benches()["prod-a"]["waiting"] == 0, timeout=30, what="prod-a's queue to empty")
    assert len(log_events(fleet.workers[CONTROL].log_path, "step.rerouted")) == 1
