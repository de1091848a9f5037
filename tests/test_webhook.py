"""The webhook service over HTTP (FastAPI's TestClient) on fakeredis: what starts a release,
what is refused, and that nothing is enqueued unless a release was accepted. Replays and the
order of release requests run on the real Redis (the records that make a tag start once).

The payload parsers have their own tests (tests/test_hooks.py, on upstream examples); the
schema fuzz pass is tests/test_webhook_fuzz.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

from jerp_jobs.cli import Ctx, cli
from jerp_jobs.operations.release import ACTIVE, list_releases
from jerp_jobs.bootstrap import build_runtime
from jerp_jobs.runtime import Runtime
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


@pytest.fixture
def real_rt(real_redis, fake_executor) -> Runtime:
    """The same service settings on the real Redis."""
    settings = load_settings(
        _env_file=None, broker_url="redis://127.0.0.1:1/0", executor="local", bench_dir=Path("/nonexistent"),
        webhook_secret=SECRET, registry_token=TOKEN, github_repository=REPOSITORY, github_branch="main",
        release_image=IMAGE, webhook_max_body=64 * 1024,
    )
    runtime = build_runtime(settings, client=real_redis, executor=fake_executor)
    runtime.dispatched = []  # type: ignore[attr-defined]
    runtime.dispatch = lambda job_id, step: runtime.dispatched.append((job_id, step))  # type: ignore[attr-defined]
    runtime.notify = lambda *a: None  # type: ignore[method-assign]
    return runtime


@pytest.fixture
def real_client(real_rt: Runtime) -> TestClient:
    with TestClient(create_app(real_rt)) as test_client:
        yield test_client


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def workflow_run(*, conclusion: str = "success", branch: str = "main", sha: str = SHA,
                 updated_at: float | None = None) -> bytes:
    run = {"name": "Build custom ERPNext image", "path": ".github/workflows/build-image.yml",
           "conclusion": conclusion, "head_branch": branch, "head_sha": sha, "status": "completed"}
    if updated_at is not None:
        run["updated_at"] = rfc3339(updated_at)
    return json.dumps({"action": "completed", "workflow_run": run, "repository": {"full_name": REPOSITORY}}).encode()


def rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def release_body(tag: str, *, at: float | None = None, sha: str = SHA) -> bytes:
    """The pipeline's call as .github/workflows/build-image.yml sends it, made at ``at`` (now)."""
    stamp = rfc3339(time.time() if at is None else at)
    return json.dumps({"image": IMAGE, "tag": tag, "sha": sha, "timestamp": stamp}, separators=(",", ":")).encode()


def post_release(client: TestClient, body: bytes, *, delivery: str | None = None):
    """POST /hooks/release signed, with a new delivery id unless one is given (a replay sends a new one)."""
    return client.post("/hooks/release", content=body, headers={
        "Content-Type": "application/json", "X-Hub-Signature-256": sign(body),
        "X-GitHub-Delivery": delivery or str(uuid.uuid4())})


def expire_every_record_with_a_ttl(redis_client) -> None:
    """What time does to the store: every key with an expiry (job records, delivery ids) lapses."""
    for key in redis_client.scan_iter(count=1000):
        if redis_client.pttl(key) > 0:
            redis_client.pexpire(key, 1)
    time.sleep(0.05)
    assert all(redis_client.pttl(key) == -1 for key in redis_client.scan_iter(count=1000))


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
    from jerp_jobs import audit

    (entry,) = [e for e in audit.entries(rt.redis) if e.get("job_id") == release.id]
    assert entry["actor"] == "webhook github:workflow_run delivery d-1" and entry["action"] == "job.created"


def test_a_redelivery_answers_with_the_same_job_and_enqueues_nothing(client, rt):
    first = post_github(client, workflow_run()).json()
    again = post_github(client, workflow_run())
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert again.json()["jobs"][0]["job_id"] == first["jobs"][0]["job_id"]
    assert len(rt.dispatched) == 1 and len(list_releases(rt)) == 1


def test_a_second_event_for_the_same_tag_answers_with_the_existing_job(client, rt):
    first = post_github(client, workflow_run(), delivery="d-1").json()
    again = post_release(client, release_body(SHA[:7]), delivery="p-1")
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
    made = time.time() - 5
    answer = post_release(client, release_body("a1b2c3d", at=made))
    assert answer.status_code == 202, answer.text
    release = rt.store.get(answer.json()["jobs"][0]["job_id"])
    assert release.params["tag"] == "a1b2c3d" and release.params["requested_at"] == int(made)


def test_a_release_call_with_a_bad_tag_is_400(client, rt):
    body = json.dumps({"image": IMAGE, "tag": "a b;rm -rf", "sha": SHA, "timestamp": rfc3339(time.time())}).encode()
    answer = client.post("/hooks/release", content=body, headers={"X-Hub-Signature-256": sign(body)})
    assert answer.status_code == 400 and rt.dispatched == []


# -- replays and the order of requests ----------------------------------------------------------


def test_an_old_signed_release_body_replayed_with_a_new_delivery_is_refused_as_too_old(real_client, real_rt):
    old = release_body("0ab1ce2", at=time.time() - 11 * 60)  # signed and sent 11 minutes ago
    answer = post_release(real_client, old, delivery=str(uuid.uuid4()))
    assert answer.status_code == 403, answer.text
    assert "too old" in answer.json()["detail"] and "JERP_WEBHOOK_MAX_AGE" in answer.json()["detail"]
    assert real_rt.dispatched == [] and list_releases(real_rt) == []
    (recent,) = recent_deliveries(real_rt)
    assert recent["outcome"] == "refused" and recent["status"] == 403 and "too old" in recent["reason"]


def test_a_release_body_dated_in_the_future_is_refused(real_client, real_rt):
    answer = post_release(real_client, release_body("0ab1ce2", at=time.time() + 10 * 60))
    assert answer.status_code == 403 and "in the future" in answer.json()["detail"]
    assert real_rt.dispatched == [] and recent_deliveries(real_rt)[0]["outcome"] == "refused"


@pytest.mark.parametrize("stamp", [None, "", "yesterday", "2024-05-06T07:08:09+02:00", 1714979289])
def test_a_release_body_without_a_readable_utc_timestamp_is_refused(real_client, real_rt, stamp):
    payload = {"image": IMAGE, "tag": "0ab1ce2", "sha": SHA}
    if stamp is not None:
        payload["timestamp"] = stamp
    answer = post_release(real_client, json.dumps(payload).encode())
    assert answer.status_code == 400, answer.text
    assert "timestamp" in answer.json()["detail"]
    assert real_rt.dispatched == [] and list_releases(real_rt) == []
    (recent,) = recent_deliveries(real_rt)
    assert recent["outcome"] == "refused" and recent["status"] == 400 and "timestamp" in recent["reason"]


def _forget_job(rt: Runtime, job_id: str, how: str) -> None:
    if how == "deleted":
        rt.redis.delete(f"jerp:job:{job_id}")
    elif how == "expired":
        expire_every_record_with_a_ttl(rt.redis)
    if how in ("deleted", "expired"):
        assert not rt.store.exists(job_id)


@pytest.mark.parametrize("how", ["deleted", "expired", "superseded"])
def test_a_fresh_release_body_replayed_after_its_job_is_gone_or_superseded_starts_nothing(real_client, real_rt, how):
    body = release_body("1111111", at=time.time() - 60)
    first = post_release(real_client, body)
    assert first.status_code == 202, first.text
    job_id = first.json()["jobs"][0]["job_id"]
    if how == "superseded":
        newer = post_release(real_client, release_body("2222222", at=time.time() - 30))
        assert newer.status_code == 202, newer.text
        assert real_rt.store.get(job_id).state == "superseded"
    _forget_job(real_rt, job_id, how)
    dispatched = list(real_rt.dispatched)

    replay = post_release(real_client, body)  # the same signed bytes, still inside the window, a new delivery id
    assert replay.status_code == 200, replay.text
    assert real_rt.dispatched == dispatched  # nothing started
    assert [j.id for j in list_releases(real_rt) if j.params.get("tag") == "1111111"] == (
        [job_id] if how == "superseded" else [])
    if how == "superseded":
        assert replay.json()["status"] == "duplicate" and replay.json()["jobs"][0]["job_id"] == job_id
        assert real_rt.store.get(job_id).state == "superseded"
    else:
        assert replay.json()["status"] == "ignored" and "requested before" in replay.json()["reason"]
        assert "jerpctl enqueue release 1111111" in replay.json()["reason"]
        assert recent_deliveries(real_rt)[0]["outcome"] == "ignored"


@pytest.mark.parametrize("newer_is", ["waiting", "running"])
def test_an_older_request_arriving_after_a_newer_one_does_not_supersede_it(real_client, real_rt, newer_is):
    now = time.time()
    newer = post_release(real_client, release_body("bbbbbbb", at=now - 30))
    assert newer.status_code == 202, newer.text
    newer_id = newer.json()["jobs"][0]["job_id"]
    if newer_is == "running":
        real_rt.redis.set(ACTIVE, newer_id)  # it holds the release slot

    older = post_release(real_client, release_body("aaaaaaa", at=now - 90))  # made earlier, arrives later
    assert older.status_code == 200, older.text
    assert older.json()["status"] == "ignored" and "before the newest release request" in older.json()["reason"]
    assert real_rt.store.get(newer_id).state == "queued"
    assert [j.params["tag"] for j in list_releases(real_rt)] == ["bbbbbbb"]
    assert [job for job, _ in real_rt.dispatched] == [newer_id]

    # a later announcement of the older tag does not start it either: it was requested once
    again = post_release(real_client, release_body("aaaaaaa", at=now))
    assert again.status_code == 200 and again.json()["status"] == "ignored"

    newest = post_release(real_client, release_body("ccccccc", at=now))  # a newer one still supersedes
    assert newest.status_code == 202
    assert real_rt.store.get(newer_id).state == ("superseded" if newer_is == "waiting" else "queued")


def test_an_operator_still_releases_a_tag_the_hooks_will_not_start_again(real_client, real_rt):
    from click.testing import CliRunner

    body = release_body("1111111", at=time.time() - 60)
    assert post_release(real_client, body).status_code == 202
    assert post_release(real_client, release_body("2222222")).status_code == 202
    expire_every_record_with_a_ttl(real_rt.redis)
    assert post_release(real_client, body).json()["status"] == "ignored"

    result = CliRunner().invoke(cli, ["enqueue", "release", "1111111"], obj=Ctx(rt=real_rt), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    job = real_rt.store.get(result.output.strip())
    assert job.params["tag"] == "1111111" and job.params["source"] == "operator" and job.state == "queued"
    assert real_rt.dispatched[-1] == (job.id, "record")


def test_github_and_registry_announcements_of_a_tag_start_it_once_whatever_became_of_its_job(real_client, real_rt):
    now = time.time()
    run = workflow_run(sha="3" * 40, updated_at=now - 120)
    assert post_github(real_client, run, delivery="gh-1").status_code == 202
    push = json.dumps({"events": [dict(distribution_push("4444444"), timestamp=rfc3339(now - 60))]}).encode()
    registry = {"Authorization": f"Bearer {TOKEN}"}
    assert real_client.post("/hooks/registry", content=push, headers=registry).status_code == 202
    expire_every_record_with_a_ttl(real_rt.redis)
    dispatched = list(real_rt.dispatched)

    # GitHub redelivers (or someone replays) the run with a new delivery id; the registry repeats its push
    again = post_github(real_client, run, delivery="gh-2")
    assert again.status_code == 200 and again.json()["status"] == "ignored", again.text
    assert "3333333 was requested before" in again.json()["reason"]
    repeat = real_client.post("/hooks/registry", content=push, headers=registry)
    assert repeat.status_code == 200 and repeat.json()["status"] == "ignored", repeat.text
    # an older run of a commit never announced comes late: it would undo the newer release
    late = post_github(real_client, workflow_run(sha="5" * 40, updated_at=now - 600), delivery="gh-3")
    assert late.status_code == 200 and "before the newest release request" in late.json()["reason"]
    assert real_rt.dispatched == dispatched and list_releases(real_rt) == []


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


def test_health_is_served_and_the_docs_are_not_by_default(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    for path in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"):
        assert client.get(path).status_code == 404, path


def test_the_docs_are_served_when_the_setting_turns_them_on(fake_redis, fake_executor):
    settings = load_settings(_env_file=None, broker_url="redis://127.0.0.1:1/0", executor="local",
                             bench_dir=Path("/nonexistent"), webhook_docs=True)
    with TestClient(create_app(build_runtime(settings, client=fake_redis, executor=fake_executor))) as client:
        schema = client.get("/openapi.json").json()
        assert {"/hooks/github", "/hooks/registry", "/hooks/release", "/healthz"} <= set(schema["paths"])
        assert "/docs" not in schema["paths"]
        assert "swagger" in client.get("/docs").text.lower() and "redoc" in client.get("/redoc").text.lower()


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


def test_a_rotation_accepts_the_new_and_the_retiring_secret_and_nothing_else(fake_redis, fake_executor):
    """JERP_WEBHOOK_SECRET_PREVIOUS / JERP_REGISTRY_TOKEN_PREVIOUS: both secrets work while the
    senders switch; a third, or the retired one once the setting is removed, is refused."""
    def app_with(**secrets: str) -> TestClient:
        settings = load_settings(
            _env_file=None, broker_url="redis://127.0.0.1:1/0", executor="local", bench_dir=Path("/nonexistent"),
            github_repository=REPOSITORY, github_branch="main", release_image=IMAGE, **secrets)
        runtime = build_runtime(settings, client=fake_redis, executor=fake_executor)
        runtime.dispatch = lambda job_id, step: None  # type: ignore[method-assign]
        return TestClient(create_app(runtime))

    rotating = app_with(webhook_secret="new-secret", webhook_secret_previous=SECRET,
                        registry_token="new-token", registry_token_previous=TOKEN)
    body = workflow_run(sha="1" * 40)
    for secret in ("new-secret", SECRET):
        answer = post_github(rotating, body, delivery=str(uuid.uuid4()), signature=sign(body, secret))
        assert answer.status_code in (200, 202), answer.text
    assert post_github(rotating, body, delivery="x", signature=sign(body, "someone-else")).status_code == 401
    push = json.dumps({"events": []}).encode()
    for token, status in (("new-token", {200, 202, 400}), (TOKEN, {200, 202, 400}), ("other", {401})):
        answer = rotating.post("/hooks/registry", content=push, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        assert answer.status_code in status, (token, answer.status_code, answer.text)
    retired = app_with(webhook_secret="new-secret", registry_token="new-token")
    assert post_github(retired, body, delivery="y", signature=sign(body, SECRET)).status_code == 401
    other_body = workflow_run(sha="2" * 40)
    assert post_github(retired, other_body, delivery="z", signature=sign(body, "new-secret")).status_code == 401
