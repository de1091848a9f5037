"""Staging-first releases on a fleet of stand-in platform stacks (tests/fleet_stacks.py): three
Docker "hosts" (``prod-a`` and ``prod-c`` production, ``staging-b`` staging), each with its own
compose project, network, MariaDB, backend, sites volume, TLS socket proxy and worker, and a
stand-in Portainer of its own that redeploys its backend on the tag it is given; the control
worker; the real Redis; the off-site store as moto's S3 server with age encryption.

What is checked:

- a release goes to the staging bench first: deployed there through staging's Portainer,
  confirmed from staging's containers, staging's sites migrated and smoke-tested through its
  web server, and production's latest off-site backups drilled on staging — while every
  production backend keeps running its image and no production Portainer is called; then
  ``jerpctl promote TAG`` releases it to each production bench, each by its own worker;
- a release whose smoke checks fail on staging rolls staging back and stops there: production's
  containers, images and Portainers are untouched, and the tag cannot be promoted.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from tests import naming
from tests.fleet_stacks import CONTROL, THREE_BENCHES, Stack, StackFleet, build_fleet, offsite_store
from tests.s3_server import S3Server
from tests.standin.portainer import Portainer
from tests.workers import wait_for

pytestmark = [pytest.mark.services, pytest.mark.docker]

SMOKE_USER = "smoke@example.com"
PRODUCTION = ("prod-a", "prod-c")
STAGING = "staging-b"


class ReleaseFleet:
    """The stacks fleet, the release images and each bench's Portainer and smoke password."""

    def __init__(self, fleet: StackFleet, repo: str, portainers: dict[str, Portainer],
                 smoke_passwords: dict[str, str], sites: dict[str, str]) -> None:
        self.fleet = fleet
        self.repo = repo
        self.portainers = portainers
        self.smoke_passwords = smoke_passwords
        #: one site per bench, made before the workers started
        self.sites = sites

    def tags_deployed(self, bench: str) -> list[str]:
        return [call.query["REGISTRY_IMAGE_TAG"] for call in self.portainers[bench].calls]

    def running(self, bench: str) -> str:
        """The tag the bench's backend runs."""
        image = self.fleet[bench].image
        assert image.startswith(f"{self.repo}:"), image
        return image.split(":")[-1]

    def wait_ended(self, job_id: str, timeout: float = 600) -> dict[str, Any]:
        final = ("succeeded", "failed", "rolled-back", "cancelled", "superseded")
        return wait_for(lambda: (j := self.fleet.job(job_id))["state"] in final and j, timeout=timeout,
                        interval=1, what=f"release {job_id} to end\n{self.fleet.logs()}")

    def add_smoke_user(self, bench: str, site: str) -> None:
        """The smoke user of ``bench`` in ``site`` (the stand-in web server reads the site's file)."""
        config = self.fleet[bench].sites_dir / site / "standin_web.json"
        config.write_text(json.dumps({"users": {SMOKE_USER: self.smoke_passwords[bench]}, "reports": ["ToDo"]}))
        config.chmod(0o644)


def _tag_images(repo: str) -> list[str]:
    tags = [f"{repo}:{tag}" for tag in ("r1", "r2", "r3")]
    for ref in tags:
        subprocess.run(["docker", "tag", naming.BACKEND_IMAGE, ref], check=True)
    # a release that refuses every login: its smoke checks fail
    subprocess.run(["docker", "build", "-q", "--label", naming.LABEL, "-t", f"{repo}:bad", "-"],
                   input=f"FROM {naming.BACKEND_IMAGE}\nENV STANDIN_WEB_FAULTS=login\n".encode(),
                   env={**os.environ, "DOCKER_BUILDKIT": "0"}, check=True, capture_output=True)
    return [*tags, f"{repo}:bad"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, docker_client: Any, redis_url: str,
          s3_server: S3Server) -> Iterator[ReleaseFleet]:
    folder = tmp_path_factory.mktemp("fleet-release")
    repo = naming.image_repo(f"fleet-release-{secrets.token_hex(3)}")
    with ExitStack() as cleanup:  # undone last to first: Portainers, workers and stacks, bucket, images
        images = _tag_images(repo)
        cleanup.callback(subprocess.run, ["docker", "rmi", *images], capture_output=True)
        offsite = cleanup.enter_context(offsite_store(folder, s3_server))
        fleet = build_fleet(folder, docker_client, redis_url, THREE_BENCHES, workers=False)
        cleanup.callback(fleet.close)
        fleet.extra_env.update({
            "JERP_RELEASE_IMAGE": repo, "JERP_PROMOTE": "manual", "JERP_STAGING_DRILL_SAMPLE": "2",
            "JERP_ROLLOUT_TIMEOUT": "120", "JERP_SMOKE_TIMEOUT": "30", **offsite.env,
        })
        portainers: dict[str, Portainer] = {}
        smoke_passwords = {}
        sites = {}
        for name, stack in fleet.stacks.items():
            def redeploy(overrides: dict[str, str], stack: Stack = stack) -> None:  # a Portainer stack webhook
                stack.redeploy(f"{repo}:{overrides['REGISTRY_IMAGE_TAG']}")

            portainers[name] = Portainer(redeploy).start()
            cleanup.callback(portainers[name].stop, timeout=120)
            stack.redeploy(f"{repo}:r1")  # every bench on the release r1
            smoke_passwords[name] = f"smoke-{name}-{secrets.token_hex(6)}"
            # each bench's own credentials: its Portainer, smoke password and S3 key
            fleet.write_env_file(name, extra={
                "PORTAINER_WEBHOOK_URL": portainers[name].webhook_url, "JERP_FRONTEND_URL": stack.web_url,
                "JERP_SMOKE_USER": SMOKE_USER, "JERP_SMOKE_PASSWORD": smoke_passwords[name],
                **offsite.bench_env(name),
            })
            sites[name] = stack.new_site("rel")
        world = ReleaseFleet(fleet, repo, portainers, smoke_passwords, sites)
        for name, site in sites.items():
            world.add_smoke_user(name, site)
        fleet.start_workers()
        listed = fleet.jerpctl("sites", "--refresh")
        assert listed.returncode == 0, (listed.stdout, listed.stderr, fleet.logs())
        for name in PRODUCTION:  # production's sites have off-site backups: what staging drills
            rc, job = fleet.run_job("backup", sites[name])
            assert rc == 0 and job["bench"] == name, (job.get("error"), fleet.logs())
            assert "upload-offsite" in {s["name"] for s in job["steps"] if s["state"] == "success"}, job["steps"]
        yield world


def _workers(job: dict[str, Any]) -> set[str]:
    return {s["worker"] for s in job["steps"] if s.get("worker")}


def test_a_release_passes_staging_first_and_is_promoted_to_each_production_bench(world: ReleaseFleet) -> None:
    fleet = world.fleet
    before = {name: world.running(name) for name in fleet.stacks}
    production_containers = {name: fleet[name].backend.id for name in PRODUCTION}
    tag = "r3" if "r2" in before.values() else "r2"

    rc, requested = fleet.json("enqueue", "release", tag)
    assert rc == 0, requested
    release = world.wait_ended(requested["job_id"])
    assert release["state"] == "succeeded", (release.get("error"), fleet.logs())

    # on staging: deployed by staging's Portainer, run by staging's worker, its site migrated and smoke-tested
    assert release["bench"] == STAGING and release["params"]["stage"] == "staging"
    assert _workers(release) <= {fleet.worker_name(STAGING), fleet.worker_name(CONTROL)}
    assert world.running(STAGING) == tag and world.tags_deployed(STAGING)[-1] == tag
    staging_site = world.sites[STAGING]
    assert release["result"]["smoke"][staging_site]["ok"] is True
    assert set(release["result"]["smoke"]) == {staging_site}  # staging's own sites only
    migrate_all = fleet.job(release["result"]["migrate_job"])
    assert migrate_all["bench"] == STAGING and set(migrate_all["result"]["sites"]) == {staging_site}

    # production's latest off-site backups drilled on staging, by staging's worker
    production_sites = sorted(world.sites[name] for name in PRODUCTION)
    assert sorted(release["result"]["drill_sites"]) == production_sites
    for site, drill_id in release["result"]["drill_jobs"].items():
        drill = fleet.job(drill_id)
        assert drill["state"] == "succeeded" and drill["bench"] == STAGING, (site, drill.get("error"))
        assert _workers(drill) == {fleet.worker_name(STAGING)}
    assert not any(fleet[STAGING].has_site(site) for site in production_sites)  # the scratch sites are gone

    # production has not moved: the same containers on the same images, no Portainer call
    for name in PRODUCTION:
        assert world.running(name) == before[name] and fleet[name].backend.id == production_containers[name]
        assert tag not in world.tags_deployed(name)
    rc, listed = fleet.json("releases")
    assert rc == 0 and [(r["tag"], r["bench"]) for r in listed if r["tag"] == tag] == [(tag, STAGING)]

    # promoted: one release per production bench, each by its own worker through its own Portainer
    promoted = fleet.jerpctl("--json", "promote", tag)
    assert promoted.returncode == 0, (promoted.stdout, promoted.stderr)
    jobs = json.loads(promoted.stdout)["jobs"]
    assert sorted(j["bench"] for j in jobs) == sorted(PRODUCTION)
    for entry in jobs:
        job = world.wait_ended(entry["job_id"])
        name = job["bench"]
        assert job["state"] == "succeeded", (name, job.get("error"), fleet.logs())
        assert job["params"]["stage"] == "production" and job["params"]["promoted_from"] == release["id"]
        assert "drill" not in {s["name"] for s in job["steps"]}
        assert _workers(job) <= {fleet.worker_name(name), fleet.worker_name(CONTROL)}
        assert world.running(name) == tag and world.tags_deployed(name)[-1] == tag
        assert set(job["result"]["smoke"]) == {world.sites[name]} and job["result"]["smoke"][world.sites[name]]["ok"]
    assert world.tags_deployed(STAGING).count(tag) == 1  # staging was not deployed again

    # each bench's smoke password stayed on its bench's worker: never in a job record
    records = json.dumps([release, *(fleet.job(j["job_id"]) for j in jobs)])
    assert not any(password in records for password in world.smoke_passwords.values())


def test_a_staging_smoke_failure_rolls_staging_back_and_leaves_production_untouched(world: ReleaseFleet) -> None:
    fleet = world.fleet
    before = {name: world.running(name) for name in fleet.stacks}
    production = {name: (fleet[name].backend.id, world.tags_deployed(name)) for name in PRODUCTION}

    rc, requested = fleet.json("enqueue", "release", "bad")
    assert rc == 0, requested
    release = world.wait_ended(requested["job_id"])

    assert release["bench"] == STAGING
    assert release["state"] == "rolled-back", (release.get("error"), fleet.logs())
    assert "login" in release["result"]["rollback_reason"]
    steps = {s["name"]: s["state"] for s in release["steps"]}
    assert steps["smoke"] == "failed" and steps["finish"] == "skipped" and steps["drill"] in ("pending", "skipped")
    assert world.tags_deployed(STAGING)[-2:] == ["bad", before[STAGING]]
    assert world.running(STAGING) == before[STAGING]  # staging back on the tag it ran

    # production untouched: the same containers on the same images, no Portainer called
    for name in PRODUCTION:
        backend, deployed = production[name]
        assert fleet[name].backend.id == backend and world.running(name) == before[name]
        assert world.tags_deployed(name) == deployed

    # the tag did not pass staging: it cannot be promoted, and nothing starts
    refused = fleet.jerpctl("promote", "bad")
    assert refused.returncode == 2 and "bad" in refused.stderr, (refused.stdout, refused.stderr)
    rc, listed = fleet.json("releases")
    assert [r["bench"] for r in listed if r["tag"] == "bad"] == [STAGING]
    for name in PRODUCTION:
        assert world.tags_deployed(name) == production[name][1]
