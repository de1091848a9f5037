"""A fuzz pass over the webhook service's HTTP API: schemathesis generates requests from the
served OpenAPI schema (bodies, headers, wrong types); no answer may be a server error."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from jerp_jobs.bootstrap import build_runtime
from jerp_jobs.settings import load_settings
from jerp_jobs.webhook import create_app


def _app():
    import fakeredis

    from tests.fake_executor import FakeExecutor

    config = load_settings(
        _env_file=None, broker_url="redis://127.0.0.1:1/0", executor="local", bench_dir=Path("/nonexistent"),
        webhook_secret="fuzz-secret", registry_token="fuzz-token", github_repository="acme/erp-image",
        release_image="registry.example.com/erpnext-custom", webhook_docs=True,
    )
    runtime = build_runtime(config, client=fakeredis.FakeRedis(), executor=FakeExecutor())
    runtime.dispatch = lambda job_id, step: None
    return create_app(runtime)


schemathesis.experimental.OPEN_API_3_1.enable()  # FastAPI serves OpenAPI 3.1
schema = schemathesis.from_asgi("/openapi.json", app=_app())


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_service_fail(case):
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/json")


def test_the_fuzzer_reaches_every_endpoint():
    operations = {op.ok().path for op in schema.get_all_operations()}
    assert {"/hooks/github", "/hooks/registry", "/hooks/release", "/healthz"} <= operations
