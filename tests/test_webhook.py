"""The webhook service over HTTP (FastAPI's TestClient) on fakeredis: what starts a release,
what is refused, and that nothing is enqueued unless a release was accepted.

The payload parsers have their own tests (tests/test_hooks.py, on upstream examples); the
schema fuzz pass is tests/test_webhook_fuzz.py."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

from jerp_jobs.operations.release import list_releases
from jerp_jobs.runtime import Runtime, build_runtime
from jerp_jobs.settings import load_settings
from jerp_jobs.webhook import create_app, recent_deliveries

SECRET = "hook-secret-\u00e9-42"
TOKEN = "registry-token-7f3a"
REPOSITORY = "acme/erp-image"
IMAGE = "registry.example.com/erpnext-custom"
SHA = "9f2c1e0b7d3a4c5b6e7f8091a2b3c4d5e6f70812"


@pytest.fixture
def rt(fake_redis, fake_executor) -> Runtime:
    settings = load_settings(
        _env_file=None, broker_url="redis://127.0.0.1:1/0", executor="local", bench_dir=Path("/nonexistent"),
        webhook_secret=SECRET, registry_token=TOKEN, github_repository=REPOSITORY, github_branch="main",
        release_image=IMAGE, webhook_max_body=64 * 1024,
    )
    runtime = build_runtime(settings, client=fake_redis, executor=fake_executor)
    runtime.dispatched = []  # type: ignore[attr-defined]
    runtime.dispatch = lambda job_id, step: runtime.dispatched.append((job_id, step))  # type: ignore[attr-defined]
    runtime.notify = lambda *a: None  # type: ignore[method-assign]
    return runtime


@pytest.fixture
def client(rt: Runtime) -> TestClient:
    with TestClient(create_app(rt)) as test_client:
        yield test_client


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def workflow_run(*, conclusion: str = "success", branch: str = "main", sha: str = SHA) -> bytes:
    return json.dumps({
        "action": "completed",
        "workflow_run": {"name": "Build custom ERPNext image", "path": ".github/workflows/build-image.yml",
                         "conclusion": conclusion, "head_branch": branch,
                         "head_sha": sha, "status": "completed"},
        "repository": {"full_name": REPOSITORY},
    }).encode()


def post_github(client: TestClient, body: bytes, *, event: str = "workflow_run", delivery: str = "d-1",
                signature: str | None = None):
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "Content-Type": "application/json",
               "X-Hub-Signature-256": signature if signature is not None else sign(body)}
    return client.post("/hooks/github", content=body, headers=headers)


def test_a_successful_workflow_run_starts_the_release_of_its_short_sha(client, rt):
    answer = post_github(client, workflow_run())
    assert answer.status_code == 202, answer.text
    (job,) = answer.json()["jobs"]
    assert job["tag"] == SHA[:7] and job["created"] is True
    release = rt.store.get(job["job_id"])
    assert release.kind == "release" and release.params["tag"] == SHA[:7] and release.params["sha"] == SHA
    assert rt.dispatched == [(release.id, "record")]


def test_a_redelivery_answers_with_the_same_job_and_enqueues_nothing(client, rt):
    first = post_github(client, workflow_run()).json()
    again = post_github(client, workflow_run())
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert again.json()["jobs"][0]["job_id"] == first["jobs"][0]["job_id"]
    assert len(rt.dispatched) == 1 and len(list_releases(rt)) == 1


def test_a_second_event_for_the_same_tag_answers_with_the_existing_job(client, rt):
    first = post_github(client, workflow_run(), delivery="d-1").json()
    body = json.dumps({"image": IMAGE, "tag": SHA[:7], "sha": SHA}).encode()
    again = client.post("/hooks/release", content=body,
                        headers={"X-Hub-Signature-256": sign(body), "X-GitHub-Delivery": "p-1"})
    assert again.status_code == 200 and again.json()["jobs"][0]["job_id"] == first["jobs"][0]["job_id"]
    assert len(rt.dispatched) == 1


@pytest.mark.parametrize("signature", [
    pytest.param("", id="missing"),
    pytest.param(sign(b"something else"), id="tampered-body"),
    pytest.param(sign(workflow_run(), "wrong secret"), id="wrong-secret"),
    pytest.param("sha1=" + "0" * 40, id="wrong-algorithm"),
])
def test_a_bad_signature_is_401_and_starts_nothing(client, rt, signature):
    body = workflow_run()
    headers = {"X-GitHub-Event": "workflow_run", "X-GitHub-Delivery": "d-9"}
    if signature:
        headers["X-Hub-Signature-256"] = signature
    with capture_logs() as logs:
        answer = client.post("/hooks/github", content=body, headers=headers)
    assert answer.status_code == 401
    assert SECRET not in answer.text and SECRET not in repr(logs)
    assert rt.dispatched == [] and list_releases(rt) == []


def test_malformed_json_is_400_and_starts_nothing(client, rt):
    body = b'{"action": "completed", '
    answer = post_github(client, body)
    assert answer.status_code == 400 and "not JSON" in answer.json()["detail"]
    assert rt.dispatched == []


def test_a_body_over_the_limit_is_413_before_it_is_read(client, rt):
    body = b'{"pad": "' + b"x" * (64 * 1024) + b'"}'
    answer = post_github(client, body)
    assert answer.status_code == 413 and "limit" in answer.json()["detail"]
    assert rt.dispatched == []


@pytest.mark.parametrize(("body", "reason"), [
    pytest.param(workflow_run(conclusion="failure"), "failure", id="failed-run"),
    pytest.param(workflow_run(branch="feature-x"), "feature-x", id="other-branch"),
])
def test_runs_that_do_not_release_are_ignored_with_a_recorded_reason(client, rt, body, reason):
    answer = post_github(client, body)
    assert answer.status_code == 200 and answer.json()["status"] == "ignored"
    assert reason in answer.json()["reason"]
    assert rt.dispatched == []
    (recent,) = recent_deliveries(rt)
    assert recent["outcome"] == "ignored" and reason in recent["reason"] and recent["delivery"] == "d-1"


def test_the_pipelines_signed_release_call_starts_a_release(client, rt):
    body = json.dumps({"image": IMAGE, "tag": "a1b2c3d", "sha": SHA}).encode()
    answer = client.post("/hooks/release", content=body, headers={"X-Hub-Signature-256": sign(body)})
    assert answer.status_code == 202
    assert rt.store.get(answer.json()["jobs"][0]["job_id"]).params["tag"] == "a1b2c3d"


def test_a_release_call_with_a_bad_tag_is_400(client, rt):
    body = json.dumps({"image": IMAGE, "tag": "a b;rm -rf", "sha": SHA}).encode()
    answer = client.post("/hooks/release", content=body, headers={"X-Hub-Signature-256": sign(body)})
    assert answer.status_code == 400 and rt.dispatched == []


def distribution_push(tag: str, *, media: str = "application/vnd.oci.image.index.v1+json") -> dict:
    return {"id": f"ev-{tag}-{media[-8:]}", "action": "push",
            "target": {"mediaType": media, "digest": "sha256:" + "a" * 64, "repository": "erpnext-custom",
                       "tag": tag, "url": f"https://registry.example.com/v2/erpnext-custom/manifests/{tag}"}}


def test_a_registry_manifest_push_with_the_token_starts_a_release(client, rt):
    body = json.dumps({"events": [distribution_push("b2c3d4e")]}).encode()
    answer = client.post("/hooks/registry", content=body, headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/vnd.docker.distribution.events.v2+json"})
    assert answer.status_code == 202, answer.text
    assert [job["tag"] for job in answer.json()["jobs"]] == ["b2c3d4e"]


def test_a_registry_hook_without_the_token_is_401(client, rt):
    body = json.dumps({"events": [distribution_push("b2c3d4e")]}).encode()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        answer = client.post("/hooks/registry", content=body, headers=headers)
        assert answer.status_code == 401
    assert rt.dispatched == []


def test_signed_hooks_are_refused_when_no_secret_is_configured(fake_redis, fake_executor):
    settings = load_settings(_env_file=None, broker_url="redis://127.0.0.1:1/0", executor="local",
                             bench_dir=Path("/nonexistent"))
    runtime = build_runtime(settings, client=fake_redis, executor=fake_executor)
    with TestClient(create_app(runtime)) as client:
        body = workflow_run()
        answer = post_github(client, body, signature=sign(body, ""))
        assert answer.status_code == 503 and "JERP_WEBHOOK_SECRET" in answer.json()["detail"]
        assert client.post("/hooks/registry", content=b"{}").status_code == 503


def test_health_and_the_openapi_schema_are_served(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    schema = client.get("/openapi.json").json()
    assert {"/hooks/github", "/hooks/registry", "/hooks/release", "/healthz"} <= set(schema["paths"])


def test_health_is_503_when_the_job_store_is_down(fake_executor):
    settings = load_settings(_env_file=None, broker_url="redis://127.0.0.1:1/0", executor="local",
                             bench_dir=Path("/nonexistent"))
    import redis

    runtime = build_runtime(settings, client=redis.Redis(port=1, socket_connect_timeout=0.2), executor=fake_executor)
    with TestClient(create_app(runtime)) as client:
        assert client.get("/healthz").status_code == 503


def test_a_store_that_is_down_gives_503_not_a_traceback(fake_executor):
    import redis

    settings = load_settings(_env_file=None, broker_url="redis://127.0.0.1:1/0", executor="local",
                             bench_dir=Path("/nonexistent"), webhook_secret=SECRET, github_repository=REPOSITORY)
    runtime = build_runtime(settings, client=redis.Redis(port=1, socket_connect_timeout=0.2), executor=fake_executor)
    with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
        answer = post_github(client, workflow_run())
        assert answer.status_code == 503 and "could not record" in answer.json()["detail"]


def test_a_push_of_the_moving_production_tag_starts_nothing_beside_the_immutable_one(client, rt):
    events = [distribution_push("15-prod"), distribution_push("c3d4e5f")]
    body = json.dumps({"events": events}).encode()
    answer = client.post("/hooks/registry", content=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert [job["tag"] for job in answer.json()["jobs"]] == ["c3d4e5f"]

    only_moving = json.dumps({"events": [distribution_push("15-prod")]}).encode()
    answer = client.post("/hooks/registry", content=only_moving, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200 and answer.json()["status"] == "ignored" and "15-prod" in answer.json()["reason"]
    assert len(rt.dispatched) == 1


def test_json_nested_too_deeply_is_400_not_a_server_error(client, rt):
    body = b"[" * 100_000 + b"]" * 100_000
    answer = post_github(client, body)
    assert answer.status_code in (400, 413) and rt.dispatched == []
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    answer = client.post("/hooks/release", content=deep, headers={"X-Hub-Signature-256": sign(deep)})
    assert answer.status_code == 400 and rt.dispatched == []
