"""Release chains end to end on the Docker Engine: a platform stack (MariaDB and the stand-in
backend, whose image tag is the stack variable REGISTRY_IMAGE_TAG, as in compose.yml), a
stand-in Portainer that redeploys the stack with the tag it is given, a real Celery worker on
the host, the webhook service under uvicorn, and a loopback server that receives the Apprise
notifications.

- a signed release call deploys the new tag, confirmed from the containers, migrates the site
  and smoke-tests it through the stand-in web server; a redelivery starts nothing;
- a release whose smoke checks fail (an image that refuses logins) rolls back to the previous
  tag, migrates and smoke-tests again, and ends ``rolled-back`` with the reason;
- a newer release supersedes one that waits behind a running release.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import redis

from tests import naming
from tests.deploy_support import IMAGES, ROOT, Compose, chown_to_frappe, require_images, write_env_file
from tests.e2e_support import jerpctl, run_job
from tests.standin.layout import create_bench
from tests.standin.portainer import Portainer
from tests.workers import VENV_BIN, WorkerProcess, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.services]

SMOKE_USER = "smoke@example.com"
SHA = "4d3c2b1a" * 5


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Inbox(ThreadingHTTPServer):
    """Receives Apprise's json:// notifications."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                inbox.messages.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def titles(self) -> list[str]:
        return [m.get("title", "") for m in self.messages]


@dataclass
class Stack:
    platform: Compose
    portainer: Portainer
    inbox: _Inbox
    env: dict[str, str]
    repo: str
    site: str
    secret: str
    worker: WorkerProcess

    def running_image(self) -> str:
        return subprocess.run(["docker", "inspect", "-f", "{{.Config.Image}}", self.platform.container("backend")],
                              capture_output=True, text=True, check=True).stdout.strip()

    def job(self, job_id: str) -> dict:
        done = jerpctl(self.env, "--json", "status", job_id)
        return json.loads(done.stdout)

    def wait_ended(self, job_id: str, timeout: float = 420) -> dict:
        return wait_for(lambda: (j := self.job(job_id))["state"] not in ("queued", "running") and j,
                        timeout=timeout, interval=1, what=f"release {job_id} to end\n{self.worker.logs()[-3000:]}")


def _tag_images(repo: str) -> None:
    for tag in ("r1", "r2", "r3", "r4", "r5"):
        subprocess.run(["docker", "tag", naming.BACKEND_IMAGE, f"{repo}:{tag}"], check=True)
    # a release that refuses every login: its smoke checks fail
    subprocess.run(["docker", "build", "-q", "--label", naming.LABEL, "-t", f"{repo}:bad", "-"],
                   input=f"FROM {naming.BACKEND_IMAGE}\nENV STANDIN_WEB_FAULTS=login\n".encode(),
                   env={**os.environ, "DOCKER_BUILDKIT": "0"}, check=True, capture_output=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str, mariadb_root_password: str) -> Iterator[Stack]:
    require_images()
    redis.Redis.from_url(redis_url).flushdb()
    root = tmp_path_factory.mktemp("release")
    name = naming.unique_name("rel")
    repo = naming.image_repo(f"release-{name}")
    bench = create_bench(root / "bench", db_host="db", db_port=3306)
    chown_to_frappe(bench / "sites")
    root_password = secrets.token_hex(12)
    web_port = _free_port()
    variables = {
        **IMAGES, "REGISTRY_URL": "registry.invalid", "REGISTRY_IMAGE_NAME": "unused", "PROXY_NETWORK": f"{name}-proxy",
        "MARIADB_ROOT_PASSWORD": root_password, "JERP_TEST_SITES_DIR": str(bench / "sites"),
        "STANDIN_RELEASE_REPO": repo, "REGISTRY_IMAGE_TAG": "r1", "STANDIN_WEB_PORT": str(web_port),
    }
    env_file = write_env_file(root / "platform.env", variables)
    platform = Compose(name, [ROOT / "tests/compose/platform.yml", ROOT / "tests/compose/release.yml"], env_file)

    def redeploy(overrides: dict[str, str]) -> None:  # what Portainer does with the stack's variables
        write_env_file(env_file, {**variables, **overrides})
        platform.up()

    _tag_images(repo)
    portainer = Portainer(redeploy).start()
    inbox = _Inbox()
    secret = secrets.token_hex(16)
    env = {
        "JERP_BROKER_URL": redis_url, "JERP_EXECUTOR": "docker", "JERP_COMPOSE_PROJECT": name,
        "JERP_BACKEND_SERVICE": "backend", "JERP_SITES_DIR": str(bench / "sites"), "MARIADB_ROOT_PASSWORD": root_password,
        "FRAPPE_ADMIN_PASSWORD": secrets.token_hex(12), "JERP_INSTALL_APPS": "erpnext", "JERP_LOCK_TTL": "10",
        "JERP_RELEASE_IMAGE": repo, "PORTAINER_WEBHOOK_URL": portainer.webhook_url,
        "JERP_FRONTEND_URL": f"http://127.0.0.1:{web_port}", "JERP_SMOKE_USER": SMOKE_USER,
        "JERP_SMOKE_PASSWORD": secrets.token_hex(10), "JERP_ROLLOUT_TIMEOUT": "180", "JERP_SMOKE_TIMEOUT": "30",
        "JERP_WEBHOOK_SECRET": secret, "JERP_NOTIFY_URLS": f"json://127.0.0.1:{inbox.server_address[1]}/notify",
    }
    worker = None
    try:
        platform.up()
        platform.wait_healthy(["db", "backend"])
        worker = WorkerProcess(env, name=f"release-{name}", log_path=root / "worker.log", concurrency=3).wait_ready()
        site = f"rel{uuid.uuid4().hex[:6]}.example.com"
        rc, job = run_job(env, "provision", site)
        assert rc == 0, (job.get("error"), worker.logs()[-3000:])
        config = bench / "sites" / site / "standin_web.json"
        config.write_text(json.dumps({"users": {SMOKE_USER: env["JERP_SMOKE_PASSWORD"]}, "reports": ["ToDo"]}))
        config.chmod(0o644)
        yield Stack(platform, portainer, inbox, env, repo, site, secret, worker)
    finally:
        if worker is not None:
            worker.stop()
        portainer.stop(timeout=120)
        inbox.shutdown()
        platform.down()
        tags = [f"{repo}:{tag}" for tag in ("r1", "r2", "r3", "r4", "r5", "bad")]
        subprocess.run(["docker", "rmi", *tags], capture_output=True)


@pytest.fixture(scope="module")
def webhook(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = open(tmp_path_factory.mktemp("webhook") / "uvicorn.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(VENV_BIN / "uvicorn"), "jerp_jobs.webhook:app", "--host", "127.0.0.1",
                             "--port", str(port)], env={**os.environ, **stack.env}, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout=60, what="the webhook service")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _signed_post(url: str, secret: str, payload: dict, delivery: str) -> httpx.Response:
    """POST /hooks/release as the pipeline does: the body says when it was made (now)."""
    payload = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return httpx.post(f"{url}/hooks/release", content=body, timeout=10, headers={
        "Content-Type": "application/json", "X-Hub-Signature-256": signature, "X-GitHub-Delivery": delivery})


def test_a_signed_release_call_deploys_confirms_migrates_and_smoke_tests(stack: Stack, webhook: str) -> None:
    assert stack.running_image() == f"{stack.repo}:r1"
    delivery = str(uuid.uuid4())
    answer = _signed_post(webhook, stack.secret, {"image": stack.repo, "tag": "r2", "sha": SHA}, delivery)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["jobs"][0]["job_id"]

    again = _signed_post(webhook, stack.secret, {"image": stack.repo, "tag": "r2", "sha": SHA}, delivery)
    assert again.status_code == 200 and again.json()["jobs"][0]["job_id"] == job_id

    job = stack.wait_ended(job_id)
    assert job["state"] == "succeeded", (job.get("error"), stack.worker.logs()[-3000:])
    assert stack.running_image() == f"{stack.repo}:r2"
    assert job["result"]["previous_tag"] == "r1" and job["result"]["rollback_to"] == "r1"
    assert job["result"]["smoke"][stack.site]["ok"] is True
    checks = {c["name"]: c["ok"] for c in job["result"]["smoke"][stack.site]["checks"]}
    assert checks == {"ping": True, "login": True, "document": True, "realtime": True, "job": True}
    migrate_all = stack.job(job["result"]["migrate_job"])
    assert migrate_all["state"] == "succeeded" and migrate_all["result"]["sites"][stack.site]["state"] == "succeeded"
    assert [call.query for call in stack.portainer.calls] == [{"REGISTRY_IMAGE_TAG": "r2"}]
    wait_for(lambda: any("r2 is live" in t for t in stack.inbox.titles()), timeout=30, what="the release.done notice")
    assert any("r2 started" in t for t in stack.inbox.titles())
    assert stack.env["JERP_SMOKE_PASSWORD"] not in json.dumps(job) + stack.worker.logs()


def test_a_release_failing_its_smoke_checks_rolls_back_to_the_previous_tag(stack: Stack) -> None:
    rc, job = run_job(stack.env, "release", "bad", timeout=600)
    assert rc == 1 and job["state"] == "rolled-back", (job.get("error"), stack.worker.logs()[-3000:])
    assert "login" in job["result"]["rollback_reason"]
    assert stack.running_image() == f"{stack.repo}:r2"
    assert job["result"]["rollback_smoke"][stack.site]["ok"] is True
    steps = {s["name"]: s["state"] for s in job["steps"]}
    assert steps["smoke"] == "failed" and steps["finish"] == "skipped"
    assert all(steps[s] == "success" for s in ("rollback-deploy", "rollback-rollout", "rollback-migrate",
                                               "rollback-smoke", "rollback-finish"))
    assert [call.query["REGISTRY_IMAGE_TAG"] for call in stack.portainer.calls[-2:]] == ["bad", "r2"]
    wait_for(lambda: any("rolled back to r2" in t for t in stack.inbox.titles()), timeout=30,
             what="the rolled-back notice")

    listed = json.loads(jerpctl(stack.env, "--json", "releases").stdout)
    assert [(r["tag"], r["state"]) for r in listed[:2]] == [("bad", "rolled-back"), ("r2", "succeeded")]


def test_a_newer_release_supersedes_the_one_waiting_behind_a_running_release(stack: Stack) -> None:
    first = jerpctl(stack.env, "enqueue", "release", "r3").stdout.strip()
    wait_for(lambda: stack.job(first)["state"] == "running", timeout=60, what="r3 to start")
    waiting = jerpctl(stack.env, "enqueue", "release", "r4").stdout.strip()
    newest = jerpctl(stack.env, "enqueue", "release", "r5").stdout.strip()

    superseded = stack.job(waiting)
    assert superseded["state"] == "superseded" and newest in superseded["error"] and "r5" in superseded["error"]
    assert all(s["state"] in ("pending", "skipped") for s in superseded["steps"])
    assert stack.wait_ended(first)["state"] == "succeeded"
    assert stack.wait_ended(newest)["state"] == "succeeded"
    assert stack.running_image() == f"{stack.repo}:r5"
    deployed = [call.query["REGISTRY_IMAGE_TAG"] for call in stack.portainer.calls]
    assert "r4" not in deployed and deployed[-2:] == ["r3", "r5"]
    first_end = next(s["ended_at"] for s in stack.job(first)["steps"] if s["name"] == "finish")
    newest_start = next(s["started_at"] for s in stack.job(newest)["steps"] if s["name"] == "record")
    assert newest_start >= first_end  # one release at a time: r5 began once r3 had ended
