"""jerp_jobs.hooks: authentication of deliveries and the parsers that turn them into release requests.

The payloads under tests/payloads/ are trimmed copies of the upstream projects' own examples
(octokit/webhooks, distribution/distribution, goharbor/website: see tests/payloads/README.md);
the tests change only the fields that tie a delivery to this installation (repository, branch,
workflow file, tag).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jerp_jobs.errors import InvalidInput, Unauthorized
from jerp_jobs.hooks import (
    BUILD_WORKFLOW,
    CLOCK_SKEW_S,
    Ignored,
    ReleaseRequest,
    StaleRequest,
    check_request_time,
    parse_github,
    parse_registry,
    parse_release_call,
    validate_tag,
    verify_bearer,
    verify_signature,
)

PAYLOADS = Path(__file__).parent / "payloads"

# From GitHub's "Validating webhook deliveries" page, section "Testing the webhook payload validation".
GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIGNATURE = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

REPO = "acme/jerp"
IMAGE_REPO = "team/erpnext-custom"
HEAD_SHA = "3484a3fb816e0859fd6e1cea078d76385ff50625"  # workflow_run.head_sha of the upstream example
RUN_UPDATED_AT = 1601915629.0  # its workflow_run.updated_at, 2020-10-05T16:33:49Z (date -u -d ... +%s)
DISTRIBUTION_AT = 1136214245.0  # the Distribution examples' event timestamp, 2006-01-02T15:04:05Z
HARBOR_OCCUR_AT = 1586922308.0  # the Harbor example's occur_at
PIPELINE_AT = 1714979289.0  # pipeline_release.json's timestamp, 2024-05-06T07:08:09Z
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def load(name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / name).read_text())


def changed(payload: Mapping[str, Any], *edits: tuple[str, Any]) -> dict[str, Any]:
    """A deep copy of ``payload`` with each dotted path (list indices as numbers) set to a value."""
    result = copy.deepcopy(dict(payload))
    for path, value in edits:
        keys: list[Any] = [int(key) if key.isdigit() else key for key in path.split(".")]
        node: Any = result
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return result


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# -- signatures and tokens ------------------------------------------------------------------------


def test_signature_of_githubs_published_test_vector_is_accepted() -> None:
    assert sign(GITHUB_SECRET, GITHUB_BODY) == f"sha256={GITHUB_SIGNATURE}"
    verify_signature(GITHUB_SECRET, GITHUB_BODY, f"sha256={GITHUB_SIGNATURE}")


def test_signature_hex_digits_are_accepted_in_upper_case() -> None:
    verify_signature(GITHUB_SECRET, GITHUB_BODY, f"sha256={GITHUB_SIGNATURE.upper()}")


@pytest.mark.parametrize(
    ("secret", "body", "header", "problem"),
    [
        pytest.param(GITHUB_SECRET, b"Hello, World?", f"sha256={GITHUB_SIGNATURE}", "mismatch", id="tampered-body"),
        pytest.param("another secret", GITHUB_BODY, f"sha256={GITHUB_SIGNATURE}", "mismatch", id="wrong-secret"),
        pytest.param(GITHUB_SECRET, GITHUB_BODY, None, "missing", id="missing-header"),
        pytest.param(GITHUB_SECRET, GITHUB_BODY, "", "missing", id="empty-header"),
        pytest.param(GITHUB_SECRET, GITHUB_BODY, GITHUB_SIGNATURE, "malformed", id="no-sha256-prefix"),
        pytest.param(GITHUB_SECRET, GITHUB_BODY, f"sha1={GITHUB_SIGNATURE}", "malformed", id="sha1-prefix"),
        pytest.param(GITHUB_SECRET, GITHUB_BODY, f"sha256={GITHUB_SIGNATURE[:-1]}", "malformed", id="63-digits"),
        pytest.param(GITHUB_SECRET, GITHUB_BODY, f"sha256={GITHUB_SIGNATURE}0", "malformed", id="65-digits"),
        pytest.param(GITHUB_SECRET, GITHUB_BODY, "sha256=" + "g" * 64, "malformed", id="not-hex"),
        pytest.param(GITHUB_SECRET, GITHUB_BODY, "sha256=" + "é" * 64, "malformed", id="not-ascii"),
        pytest.param("", GITHUB_BODY, f"sha256={GITHUB_SIGNATURE}", "unconfigured", id="no-secret-configured"),
    ],
)
def test_signature_problems_raise_unauthorized_naming_the_problem(
    secret: str, body: bytes, header: str | None, problem: str
) -> None:
    with pytest.raises(Unauthorized) as caught:
        verify_signature(secret, body, header)
    assert caught.value.fields["problem"] == problem
    message = str(caught.value)
    assert "X-Hub-Signature-256" in message or problem == "unconfigured"
    expected_digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert expected_digest not in message
    assert not secret or secret not in message


def test_signature_covers_the_raw_bytes_not_the_reserialized_json() -> None:
    body = b'{"tag": "3484a3f",  "sha": "x"}'
    header = sign("s3cret", body)
    verify_signature("s3cret", body, header)
    reserialized = json.dumps(json.loads(body)).encode()
    with pytest.raises(Unauthorized, match="does not match"):
        verify_signature("s3cret", reserialized, header)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Bearer t0ken", id="canonical"),
        pytest.param("bearer t0ken", id="scheme-lower-case"),
        pytest.param("  Bearer   t0ken ", id="extra-spaces"),
    ],
)
def test_bearer_token_that_matches_is_accepted(header: str) -> None:
    verify_bearer("t0ken", header)


@pytest.mark.parametrize(
    ("expected", "header", "problem"),
    [
        pytest.param("t0ken", None, "missing", id="missing-header"),
        pytest.param("t0ken", "", "missing", id="empty-header"),
        pytest.param("t0ken", "Basic dXNlcjpwYXNz", "malformed", id="basic-scheme"),
        pytest.param("t0ken", "t0ken", "malformed", id="no-scheme"),
        pytest.param("t0ken", "Bearer ", "malformed", id="empty-token"),
        pytest.param("t0ken", "Bearer t0ke", "mismatch", id="prefix-of-token"),
        pytest.param("t0ken", "Bearer t0ken2", "mismatch", id="longer-token"),
        pytest.param("t0ken", "Bearer tökén", "mismatch", id="non-ascii-token"),
        pytest.param("", "Bearer ", "unconfigured", id="no-token-configured"),
    ],
)
def test_bearer_problems_raise_unauthorized_without_echoing_the_token(
    expected: str, header: str | None, problem: str
) -> None:
    with pytest.raises(Unauthorized) as caught:
        verify_bearer(expected, header)
    assert caught.value.fields["problem"] == problem
    assert not expected or expected not in str(caught.value)


# -- tags -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tag",
    [
        pytest.param("3484a3f", id="short-sha"),
        pytest.param("15-prod", id="production-tag"),
        pytest.param("v1.2.3", id="dotted"),
        pytest.param("_build", id="leading-underscore"),
        pytest.param("a" * 128, id="128-characters"),
    ],
)
def test_valid_tags_are_returned_unchanged(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize(
    "tag",
    [
        pytest.param("", id="empty"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param("-x", id="leading-dash"),
        pytest.param("a" * 129, id="129-characters"),
        pytest.param("a b", id="space"),
        pytest.param("team/x", id="slash"),
        pytest.param("x:y", id="colon"),
        pytest.param("abc\n", id="trailing-newline"),
        pytest.param("tág", id="non-ascii"),
        pytest.param(None, id="null"),
        pytest.param(7, id="number"),
        pytest.param(["x"], id="array"),
    ],
)
def test_invalid_tags_raise_invalid_input_naming_the_tag(tag: object) -> None:
    with pytest.raises(InvalidInput, match="invalid image tag") as caught:
        validate_tag(tag)
    assert repr(tag)[:20] in str(caught.value)


# -- GitHub workflow_run --------------------------------------------------------------------------


@pytest.fixture
def workflow_run() -> dict[str, Any]:
    """The upstream workflow_run completed example, made a successful run of our build on main."""
    return changed(
        load("github_workflow_run_completed.json"),
        ("repository.full_name", REPO),
        ("workflow.path", BUILD_WORKFLOW),
        ("workflow_run.head_branch", "main"),
        ("workflow_run.head_repository.full_name", REPO),
        ("workflow_run.repository.full_name", REPO),
    )


def github(event: str, payload: Mapping[str, Any], **overrides: Any) -> ReleaseRequest | Ignored:
    options: dict[str, Any] = {"repository": REPO, "branch": "main", "image_repository": IMAGE_REPO}
    options.update(overrides)
    return parse_github(event, payload, **options)


def test_successful_build_on_main_releases_the_short_sha_tag(workflow_run: dict[str, Any]) -> None:
    assert github("workflow_run", workflow_run) == ReleaseRequest(
        tag="3484a3f", source="github:workflow_run", sha=HEAD_SHA, requested_at=RUN_UPDATED_AT
    )


def test_upstream_workflow_run_example_unchanged_releases_when_configured_for_it() -> None:
    payload = load("github_workflow_run_completed.json")
    result = github(
        "workflow_run", payload, repository="octo-org/octo-repo", branch="master", workflow=".github/workflows/test.yml"
    )
    assert result == ReleaseRequest(tag=HEAD_SHA[:7], source="github:workflow_run", sha=HEAD_SHA,
                                    requested_at=RUN_UPDATED_AT)


@pytest.mark.parametrize(
    ("edits", "options", "reason"),
    [
        pytest.param([("workflow_run.conclusion", "failure")], {}, "workflow_run conclusion failure", id="failure"),
        pytest.param(
            [("workflow_run.conclusion", "cancelled")], {}, "workflow_run conclusion cancelled", id="cancelled"
        ),
        pytest.param([("workflow_run.conclusion", None)], {}, "workflow_run conclusion (none)", id="no-conclusion"),
        pytest.param([("workflow_run.head_branch", "feature-x")], {}, "branch feature-x is not main", id="branch"),
        pytest.param([("workflow_run.head_branch", None)], {}, "branch (none) is not main", id="no-branch"),
        pytest.param(
            [("repository.full_name", "octo-org/octo-repo")],
            {},
            "repository octo-org/octo-repo is not acme/jerp",
            id="other-repository",
        ),
        pytest.param(
            [("workflow_run.head_repository.full_name", "mallory/jerp")],
            {},
            "run of mallory/jerp, not of acme/jerp",
            id="fork",
        ),
        pytest.param(
            [("workflow.path", ".github/workflows/tests.yml")],
            {},
            f"workflow .github/workflows/tests.yml is not {BUILD_WORKFLOW}",
            id="tests-workflow",
        ),
        pytest.param(
            [("workflow", {})], {}, f"the delivery names no workflow file (expected {BUILD_WORKFLOW})", id="no-workflow"
        ),
        pytest.param(
            [("action", "requested")], {}, "workflow_run requested: only completed runs release", id="requested"
        ),
        pytest.param([], {"repository": None}, "JERP_GITHUB_REPOSITORY is not set", id="repository-not-configured"),
        pytest.param([], {"branch": "release"}, "branch main is not release", id="other-configured-branch"),
    ],
)
def test_workflow_run_that_should_not_release_is_ignored_with_a_precise_reason(
    workflow_run: dict[str, Any], edits: list[tuple[str, Any]], options: dict[str, Any], reason: str
) -> None:
    assert github("workflow_run", changed(workflow_run, *edits), **options) == Ignored(reason)


def test_failure_on_a_feature_branch_reports_the_branch_first(workflow_run: dict[str, Any]) -> None:
    payload = changed(workflow_run, ("workflow_run.head_branch", "feature-x"), ("workflow_run.conclusion", "failure"))
    assert github("workflow_run", payload) == Ignored("branch feature-x is not main")


def test_github_repository_names_compare_case_insensitively(workflow_run: dict[str, Any]) -> None:
    payload = changed(workflow_run, ("repository.full_name", "ACME/Jerp"))
    assert isinstance(github("workflow_run", payload), ReleaseRequest)


def test_workflow_run_path_of_newer_payloads_is_used_and_its_ref_suffix_dropped(workflow_run: dict[str, Any]) -> None:
    payload = changed(
        workflow_run,
        ("workflow.path", ".github/workflows/tests.yml"),
        ("workflow_run.path", f"{BUILD_WORKFLOW}@refs/heads/main"),
    )
    assert isinstance(github("workflow_run", payload), ReleaseRequest)


def test_workflow_check_can_be_turned_off(workflow_run: dict[str, Any]) -> None:
    payload = changed(workflow_run, ("workflow.path", ".github/workflows/tests.yml"))
    assert isinstance(github("workflow_run", payload, workflow=None), ReleaseRequest)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        pytest.param("ping", "ping", id="ping"),
        pytest.param("push", "GitHub event 'push' does not announce an image", id="push"),
        pytest.param("", "GitHub event '' does not announce an image", id="no-event-header"),
    ],
)
def test_other_github_events_are_ignored(event: str, reason: str) -> None:
    assert github(event, {"zen": "Keep it logically awesome.", "hook_id": 1}) == Ignored(reason)


# -- GitHub registry_package / package ------------------------------------------------------------

PACKAGE_EXAMPLES = [
    pytest.param("registry_package", "github_registry_package_published_docker.json", id="registry_package"),
    pytest.param("package", "github_package_published_docker.json", id="package"),
]
PACKAGE_REPO = "Codertocat/hello-world-npm"  # repository.full_name of the upstream examples
PACKAGE_IMAGE = "codertocat/hello-world-npm"  # package name: hello-world-npm


def container_package(event: str, file: str, tag: str = "3484a3f") -> dict[str, Any]:
    """The upstream example as a ghcr.io container (type CONTAINER) version tagged ``tag``."""
    return changed(
        load(file),
        (f"{event}.package_type", "CONTAINER"),
        (f"{event}.package_version.container_metadata.tag.name", tag),
    )


def package_hook(event: str, payload: Mapping[str, Any], **overrides: Any) -> ReleaseRequest | Ignored:
    options: dict[str, Any] = {"repository": PACKAGE_REPO, "image_repository": PACKAGE_IMAGE}
    options.update(overrides)
    return github(event, payload, **options)


@pytest.mark.parametrize(("event", "file"), PACKAGE_EXAMPLES)
def test_published_container_version_with_a_tag_releases_it(event: str, file: str) -> None:
    assert package_hook(event, container_package(event, file)) == ReleaseRequest(
        tag="3484a3f",
        source=f"github:{event}",
        image="hello-world-npm",
        sha="6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b",  # its org.opencontainers.image.revision label
        digest="sha256:6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b",
    )


@pytest.mark.parametrize(("event", "file"), PACKAGE_EXAMPLES)
def test_untagged_container_version_is_ignored(event: str, file: str) -> None:
    result = package_hook(event, container_package(event, file, tag=""))
    assert result == Ignored(
        "package hello-world-npm: untagged version sha256:6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b "
        "(a part of a multi-arch image)"
    )


@pytest.mark.parametrize(("event", "file"), PACKAGE_EXAMPLES)
def test_legacy_docker_package_type_counts_as_a_container(event: str, file: str) -> None:
    payload = changed(container_package(event, file), (f"{event}.package_type", "docker"))
    assert isinstance(package_hook(event, payload), ReleaseRequest)


@pytest.mark.parametrize(("event", "file"), PACKAGE_EXAMPLES)
@pytest.mark.parametrize(
    ("edits", "options", "reason"),
    [
        pytest.param([("{e}.package_type", "npm")], {}, "package type npm is not a container image", id="npm-type"),
        pytest.param([("action", "updated")], {}, "{e} updated: only published versions release", id="updated-action"),
        pytest.param(
            [("{e}.name", "other-image")],
            {},
            f"package other-image is not the image {PACKAGE_IMAGE}",
            id="other-package",
        ),
        pytest.param(
            [("repository.full_name", "mallory/hello-world-npm")],
            {},
            f"package of repository mallory/hello-world-npm, not of {PACKAGE_REPO}",
            id="other-repository",
        ),
        pytest.param([("{e}.package_version", None)], {}, "{e} has no package_version", id="no-version"),
        pytest.param(
            [("{e}.package_version.container_metadata", None)],
            {},
            "package hello-world-npm: the version has no container metadata",
            id="no-container-metadata",
        ),
        pytest.param(
            [],
            {"repository": None, "image_repository": None},
            "neither the image repository (JERP_REGISTRY_REPOSITORY, JERP_RELEASE_IMAGE) "
            "nor JERP_GITHUB_REPOSITORY is set",
            id="nothing-configured",
        ),
    ],
)
def test_package_event_that_should_not_release_is_ignored(
    event: str, file: str, edits: list[tuple[str, Any]], options: dict[str, Any], reason: str
) -> None:
    payload = changed(container_package(event, file), *[(path.format(e=event), value) for path, value in edits])
    assert package_hook(event, payload, **options) == Ignored(reason.format(e=event))


@pytest.mark.parametrize(
    ("options", "releases"),
    [
        pytest.param({"image_repository": None}, True, id="repository-only"),
        pytest.param({"repository": None}, True, id="image-only"),
        pytest.param({"image_repository": "hello-world-npm"}, True, id="bare-name"),
        pytest.param({"image_repository": "Codertocat/Hello-World-NPM"}, True, id="case-insensitive"),
        pytest.param({"image_repository": "codertocat/world-npm"}, False, id="suffix-is-not-a-path-component"),
    ],
)
def test_package_is_matched_by_the_trailing_path_of_the_image_and_the_repository(
    options: dict[str, Any], releases: bool
) -> None:
    result = package_hook("package", container_package("package", "github_package_published_docker.json"), **options)
    assert isinstance(result, ReleaseRequest) is releases


def test_upstream_package_examples_unchanged_are_ignored_as_not_containers() -> None:
    for event, file in [
        ("package", "github_package_published_npm.json"),
        ("package", "github_package_published_docker.json"),
        ("registry_package", "github_registry_package_published_docker.json"),
    ]:
        assert package_hook(event, load(file)) == Ignored("package type npm is not a container image")


def test_revision_label_that_is_not_a_commit_gives_no_sha() -> None:
    payload = changed(
        container_package("package", "github_package_published_docker.json"),
        ("package.package_version.container_metadata.labels.revision", "nightly"),
    )
    result = package_hook("package", payload)
    assert isinstance(result, ReleaseRequest)
    assert result.sha is None


# -- Distribution registry ------------------------------------------------------------------------


def manifest_event(tag: str, digest: str, media_type: str = DOCKER_MANIFEST, repository: str = "library/test") -> dict:
    """The manifest push of the upstream v2 envelope, by ``tag``."""
    return changed(
        load("distribution_events_v2_push.json")["events"][0],
        ("target.tag", tag),
        ("target.digest", digest),
        ("target.mediaType", media_type),
        ("target.repository", repository),
    )


@pytest.mark.parametrize(
    "file",
    [
        pytest.param("distribution_events_v2_push.json", id="v2"),
        pytest.param("distribution_events_v1_push.json", id="v1"),
    ],
)
def test_tagged_manifest_push_releases_and_blob_pushes_are_skipped(file: str) -> None:
    payload = changed(load(file), ("events.0.target.tag", "3484a3f"), ("events.0.target.mediaType", DOCKER_MANIFEST))
    digest = payload["events"][0]["target"]["digest"]
    assert parse_registry(payload, repository="library/test") == [
        ReleaseRequest(tag="3484a3f", source="registry", image="library/test", digest=digest,
                       requested_at=DISTRIBUTION_AT)
    ]


def test_upstream_v2_envelope_unchanged_has_no_tagged_push() -> None:
    assert parse_registry(load("distribution_events_v2_push.json"), repository="library/test") == Ignored(
        "no tagged manifest push to library/test "
        "(1 x manifest push without a tag, 2 x push of a blob or another media type)"
    )


def test_upstream_v1_envelope_unchanged_has_no_deployable_push() -> None:
    payload = changed(load("distribution_events_v1_push.json"), ("events.0.target.tag", "latest"))
    assert parse_registry(payload, repository="library/test") == Ignored(
        "no tagged manifest push to library/test (3 x push of a blob or another media type)"
    )


def test_pull_is_ignored() -> None:
    assert parse_registry(load("distribution_events_v2_pull.json"), repository="hello-world") == Ignored(
        "no tagged manifest push to hello-world (1 x pull)"
    )


def test_push_to_another_repository_is_ignored() -> None:
    payload = {"events": [manifest_event("3484a3f", "sha256:aa", repository="library/test")]}
    assert parse_registry(payload, repository=IMAGE_REPO) == Ignored(
        f"no tagged manifest push to {IMAGE_REPO} (1 x push to library/test)"
    )


def test_delete_event_with_only_digest_and_repository_is_skipped() -> None:
    delete = {"action": "delete", "target": {"digest": "sha256:d89e", "repository": IMAGE_REPO}}
    payload = {"events": [delete, manifest_event("3484a3f", "sha256:aa", repository=IMAGE_REPO)]}
    assert parse_registry(payload, repository=IMAGE_REPO) == [
        ReleaseRequest(tag="3484a3f", source="registry", image=IMAGE_REPO, digest="sha256:aa",
                       requested_at=DISTRIBUTION_AT)
    ]


@pytest.mark.parametrize(
    "media_type",
    [
        pytest.param(DOCKER_MANIFEST, id="docker-manifest"),
        pytest.param(DOCKER_LIST, id="docker-manifest-list"),
        pytest.param(OCI_MANIFEST, id="oci-manifest"),
        pytest.param(OCI_INDEX, id="oci-index"),
    ],
)
def test_every_manifest_and_index_media_type_releases(media_type: str) -> None:
    payload = {"events": [manifest_event("3484a3f", "sha256:aa", media_type)]}
    assert parse_registry(payload, repository="library/test") == [
        ReleaseRequest(tag="3484a3f", source="registry", image="library/test", digest="sha256:aa",
                       requested_at=DISTRIBUTION_AT)
    ]


def test_multi_arch_push_of_one_tag_is_one_request_with_the_index_digest() -> None:
    payload = {
        "events": [
            manifest_event("3484a3f", "sha256:amd64", OCI_MANIFEST),
            manifest_event("3484a3f", "sha256:arm64", OCI_MANIFEST),
            manifest_event("3484a3f", "sha256:index", OCI_INDEX),
            manifest_event("15-prod", "sha256:index", OCI_INDEX),
            manifest_event("3484a3f", "sha256:amd64", OCI_MANIFEST),
        ]
    }
    assert parse_registry(payload, repository="library/test") == [
        ReleaseRequest(tag="3484a3f", source="registry", image="library/test", digest="sha256:index",
                       requested_at=DISTRIBUTION_AT),
        ReleaseRequest(tag="15-prod", source="registry", image="library/test", digest="sha256:index",
                       requested_at=DISTRIBUTION_AT),
    ]


@pytest.mark.parametrize(
    ("payload", "repository", "reason"),
    [
        pytest.param({"events": []}, "library/test", "no tagged manifest push to library/test (no events)", id="empty"),
        pytest.param(
            load("distribution_events_v2_push.json"),
            None,
            "the image repository is not set (JERP_REGISTRY_REPOSITORY or JERP_RELEASE_IMAGE)",
            id="repository-not-configured",
        ),
    ],
)
def test_envelope_without_anything_to_do_is_ignored(
    payload: dict[str, Any], repository: str | None, reason: str
) -> None:
    assert parse_registry(payload, repository=repository) == Ignored(reason)


# -- Harbor ---------------------------------------------------------------------------------------


def test_harbor_push_artifact_releases_its_tag() -> None:
    assert parse_registry(load("harbor_push_artifact.json"), repository="test-webhook/debian") == [
        ReleaseRequest(
            tag="latest",
            source="harbor",
            image="test-webhook/debian",
            digest="sha256:8a9e9863dbb6e10edb5adfe917c00da84e1700fa76e7ed02476aa6e6fb8ee0d8",
            requested_at=HARBOR_OCCUR_AT,
        )
    ]


def test_harbor_repository_falls_back_to_namespace_and_name() -> None:
    payload = changed(load("harbor_push_artifact.json"), ("event_data.repository.repo_full_name", None))
    assert isinstance(parse_registry(payload, repository="test-webhook/debian"), list)


def test_harbor_duplicate_tags_give_one_request_and_untagged_resources_are_skipped() -> None:
    harbor = load("harbor_push_artifact.json")
    first = harbor["event_data"]["resources"][0]
    resources = [
        {**first, "tag": ""},
        {**first, "tag": "3484a3f"},
        {**first, "tag": "3484a3f", "digest": "sha256:other"},
        {**first, "tag": "15-prod"},
    ]
    result = parse_registry(changed(harbor, ("event_data.resources", resources)), repository="test-webhook/debian")
    assert isinstance(result, list)
    assert [(request.tag, request.digest) for request in result] == [
        ("3484a3f", first["digest"]),
        ("15-prod", first["digest"]),
    ]


@pytest.mark.parametrize(
    ("edits", "repository", "reason"),
    [
        pytest.param([], IMAGE_REPO, f"Harbor push to test-webhook/debian, not {IMAGE_REPO}", id="other-repository"),
        pytest.param(
            [("event_data.resources.0.tag", "")],
            "test-webhook/debian",
            "Harbor push to test-webhook/debian without a tag",
            id="untagged",
        ),
        pytest.param(
            [("type", "PULL_ARTIFACT")],
            "test-webhook/debian",
            "Harbor event PULL_ARTIFACT: only PUSH_ARTIFACT releases",
            id="pull",
        ),
        pytest.param(
            [],
            None,
            "the image repository is not set (JERP_REGISTRY_REPOSITORY or JERP_RELEASE_IMAGE)",
            id="repository-not-configured",
        ),
    ],
)
def test_harbor_event_that_should_not_release_is_ignored(
    edits: list[tuple[str, Any]], repository: str | None, reason: str
) -> None:
    assert parse_registry(changed(load("harbor_push_artifact.json"), *edits), repository=repository) == Ignored(reason)


def test_harbor_cloudevents_format_is_ignored_with_a_hint() -> None:
    payload = {"specversion": "1.0", "type": "harbor.artifact.pushed", "data": {}}
    result = parse_registry(payload, repository="test-webhook/debian")
    assert isinstance(result, Ignored)
    assert "payload format to Default" in result.reason


# -- the pipeline's call --------------------------------------------------------------------------


def test_pipeline_release_call_gives_its_image_tag_sha_and_time() -> None:
    assert parse_release_call(load("pipeline_release.json")) == ReleaseRequest(
        tag="3484a3f", source="pipeline", image="registry.example.com/team/erpnext-custom", sha=HEAD_SHA,
        requested_at=PIPELINE_AT,
    )


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        pytest.param("2024-05-06T07:08:09Z", PIPELINE_AT, id="z"),
        pytest.param("2024-05-06t07:08:09z", PIPELINE_AT, id="lower-case"),
        pytest.param("2024-05-06T07:08:09+00:00", PIPELINE_AT, id="zero-offset"),
        pytest.param("2024-05-06T07:08:09.250Z", PIPELINE_AT + 0.25, id="fraction"),
        pytest.param("2024-05-06T07:08:09.123456789Z", PIPELINE_AT + 0.123456, id="nanoseconds"),
    ],
)
def test_pipeline_timestamps_in_rfc3339_utc_are_read(timestamp: str, expected: float) -> None:
    request = parse_release_call(_release(("timestamp", timestamp)))
    assert request.requested_at == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("timestamp", "message"),
    [
        pytest.param(None, "timestamp is missing", id="null"),
        pytest.param("", "is not an RFC 3339 date-time", id="empty"),
        pytest.param("2024-05-06", "is not an RFC 3339 date-time", id="date-only"),
        pytest.param("2024-05-06T07:08:09", "is not an RFC 3339 date-time", id="no-zone"),
        pytest.param("1714979289", "is not an RFC 3339 date-time", id="epoch-string"),
        pytest.param(1714979289, "must be an RFC 3339 date-time in UTC", id="epoch-number"),
        pytest.param("2024-05-06T09:08:09+02:00", "is not in UTC", id="other-offset"),
        pytest.param("2024-02-30T07:08:09Z", "is not a valid date-time", id="no-such-day"),
        pytest.param("2024-05-06T25:08:09Z", "is not a valid date-time", id="no-such-hour"),
    ],
)
def test_a_pipeline_call_without_a_readable_utc_timestamp_is_refused(timestamp: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as caught:
        parse_release_call(_release(("timestamp", timestamp)))
    assert caught.value.fields["field"] == "timestamp"


def test_a_pipeline_call_from_before_timestamps_is_refused_naming_the_field() -> None:
    payload = load("pipeline_release.json")
    del payload["timestamp"]
    with pytest.raises(InvalidInput, match="timestamp is missing.*replayed"):
        parse_release_call(payload)


def test_a_request_inside_the_window_passes_and_outside_it_is_stale() -> None:
    check_request_time(PIPELINE_AT, now=PIPELINE_AT + 599, max_age=600)
    check_request_time(PIPELINE_AT, now=PIPELINE_AT - CLOCK_SKEW_S + 1, max_age=600)  # sender's clock a bit ahead
    with pytest.raises(StaleRequest, match=r"too old: its timestamp 2024-05-06T07:08:09Z is 601 s old.*600 s") as old:
        check_request_time(PIPELINE_AT, now=PIPELINE_AT + 601, max_age=600)
    assert old.value.fields["problem"] == "too-old"
    with pytest.raises(StaleRequest, match="in the future") as ahead:
        check_request_time(PIPELINE_AT, now=PIPELINE_AT - CLOCK_SKEW_S - 5, max_age=600)
    assert ahead.value.fields["problem"] == "in-the-future"


def test_event_times_that_cannot_be_read_leave_the_request_without_one(workflow_run: dict[str, Any]) -> None:
    for value in ("yesterday", 12, ["2024-05-06T07:08:09Z"]):
        broken = changed(workflow_run, ("workflow_run.updated_at", value), ("workflow_run.run_started_at", None))
        result = github("workflow_run", broken)
        assert isinstance(result, ReleaseRequest) and result.requested_at is None
    harbor = changed(load("harbor_push_artifact.json"), ("occur_at", 10**400))
    assert [r.requested_at for r in parse_registry(harbor, repository="test-webhook/debian")] == [None]


# -- malformed shapes -----------------------------------------------------------------------------


def _workflow_run_payload(*edits: tuple[str, Any]) -> dict[str, Any]:
    base = changed(
        load("github_workflow_run_completed.json"),
        ("repository.full_name", REPO),
        ("workflow.path", BUILD_WORKFLOW),
        ("workflow_run.head_branch", "main"),
        ("workflow_run.head_repository.full_name", REPO),
    )
    return changed(base, *edits)


def _release(*edits: tuple[str, Any]) -> dict[str, Any]:
    return changed(load("pipeline_release.json"), *edits)


def _call_workflow_run(payload: Any) -> object:
    return github("workflow_run", payload)


def _call_package(payload: Any) -> object:
    return package_hook("package", payload)


def _call_registry(payload: Any) -> object:
    return parse_registry(payload, repository="test-webhook/debian")


def _call_distribution(payload: Any) -> object:
    return parse_registry(payload, repository="library/test")


MALFORMED: list[Any] = [
    pytest.param(_call_workflow_run, [1, 2], "the body must be a JSON object", id="github-body-array"),
    pytest.param(
        _call_workflow_run,
        _workflow_run_payload(("action", ["completed"])),
        "action must be a string",
        id="action-array",
    ),
    pytest.param(
        _call_workflow_run,
        _workflow_run_payload(("repository", "acme/jerp")),
        "repository must be an object",
        id="repository-string",
    ),
    pytest.param(
        _call_workflow_run,
        _workflow_run_payload(("workflow_run", "run")),
        "workflow_run must be an object",
        id="run-string",
    ),
    pytest.param(
        _call_workflow_run,
        _workflow_run_payload(("workflow_run.head_sha", 3484)),
        "workflow_run.head_sha must be a string",
        id="sha-number",
    ),
    pytest.param(
        _call_workflow_run,
        _workflow_run_payload(("workflow_run.head_sha", None)),
        "workflow_run.head_sha is missing",
        id="sha-null",
    ),
    pytest.param(
        _call_workflow_run,
        _workflow_run_payload(("workflow_run.head_sha", "HEAD")),
        "workflow_run.head_sha 'HEAD' is not a commit id",
        id="sha-not-hex",
    ),
    pytest.param(
        _call_workflow_run,
        _workflow_run_payload(("workflow_run.head_branch", ["main"])),
        "workflow_run.head_branch must be a string",
        id="branch-array",
    ),
    pytest.param(
        _call_workflow_run,
        _workflow_run_payload(("workflow", "build")),
        "workflow must be an object",
        id="workflow-string",
    ),
    pytest.param(
        _call_package,
        changed(container_package("package", "github_package_published_docker.json"), ("package.package_version", [])),
        "package.package_version must be an object",
        id="version-array",
    ),
    pytest.param(
        _call_package,
        changed(
            container_package("package", "github_package_published_docker.json"),
            ("package.package_version.container_metadata.tag", "v1"),
        ),
        "package.package_version.container_metadata.tag must be an object",
        id="container-tag-string",
    ),
    pytest.param(
        _call_package,
        changed(
            container_package("package", "github_package_published_docker.json"),
            ("package.package_version.container_metadata.tag.name", 7),
        ),
        "package.package_version.container_metadata.tag.name must be a string",
        id="tag-name-number",
    ),
    pytest.param(
        _call_package,
        changed(
            container_package("package", "github_package_published_docker.json"),
            ("package.package_version.container_metadata.tag.name", "v 1"),
        ),
        "invalid image tag 'v 1'",
        id="tag-name-invalid",
    ),
    pytest.param(
        _call_package,
        changed(
            container_package("package", "github_package_published_docker.json"),
            ("package.package_version.container_metadata.labels.all_labels", "x"),
        ),
        "labels.all_labels must be an object",
        id="labels-string",
    ),
    pytest.param(_call_package, {"action": "published"}, "package is missing", id="package-missing"),
    pytest.param(_call_registry, [], "the body must be a JSON object, not an array", id="registry-body-array"),
    pytest.param(_call_registry, {"hello": "world"}, "not a registry notification", id="registry-unknown-shape"),
    pytest.param(
        _call_distribution, {"events": {"0": {}}}, "events must be an array, not an object", id="events-object"
    ),
    pytest.param(
        _call_distribution, {"events": ["push"]}, "events[0] must be an object, not a string", id="event-string"
    ),
    pytest.param(
        _call_distribution, {"events": [{"action": "push"}]}, "events[0].target is missing", id="target-missing"
    ),
    pytest.param(_call_distribution, {"events": [{"target": {}}]}, "events[0].action is missing", id="action-missing"),
    pytest.param(
        _call_distribution,
        {"events": [changed(manifest_event("x", "sha256:aa"), ("target.tag", 1.5))]},
        "events[0].target.tag must be a string, not a number",
        id="target-tag-number",
    ),
    pytest.param(
        _call_distribution,
        {"events": [manifest_event("bad tag!", "sha256:aa")]},
        "invalid image tag 'bad tag!'",
        id="target-tag-invalid",
    ),
    pytest.param(
        _call_registry,
        changed(load("harbor_push_artifact.json"), ("event_data.resources", {"tag": "x"})),
        "event_data.resources must be an array",
        id="harbor-resources-object",
    ),
    pytest.param(
        _call_registry,
        changed(load("harbor_push_artifact.json"), ("event_data.resources", ["latest"])),
        "event_data.resources[0] must be an object, not a string",
        id="harbor-resource-string",
    ),
    pytest.param(
        _call_registry,
        changed(load("harbor_push_artifact.json"), ("event_data", None)),
        "event_data is missing",
        id="harbor-event-data-missing",
    ),
    pytest.param(
        _call_registry,
        changed(load("harbor_push_artifact.json"), ("type", True)),
        "type must be a string, not a boolean",
        id="harbor-type-boolean",
    ),
    pytest.param(
        parse_release_call, "3484a3f", "the body must be a JSON object, not a string", id="release-body-string"
    ),
    pytest.param(parse_release_call, _release(("tag", None)), "tag is missing", id="release-tag-missing"),
    pytest.param(parse_release_call, _release(("tag", "-x")), "invalid image tag '-x'", id="release-tag-invalid"),
    pytest.param(parse_release_call, _release(("sha", "3484a3f")), "invalid sha '3484a3f'", id="release-sha-short"),
    pytest.param(parse_release_call, _release(("sha", 1)), "sha must be a string", id="release-sha-number"),
    pytest.param(parse_release_call, _release(("image", "a b")), "invalid image 'a b'", id="release-image-space"),
    pytest.param(parse_release_call, _release(("image", None)), "image is missing", id="release-image-missing"),
]


@pytest.mark.parametrize(("parse", "payload", "message"), MALFORMED)
def test_malformed_shape_raises_invalid_input_naming_the_field(
    parse: Callable[[Any], object], payload: Any, message: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse(payload)
    assert message in str(caught.value)


# -- properties: arbitrary JSON gives a result or InvalidInput, nothing else ----------------------

# Keys and strings the parsers look for, so that generated documents reach past the first check.
KEYS = st.sampled_from(
    [
        "action",
        "repository",
        "full_name",
        "workflow",
        "path",
        "workflow_run",
        "head_branch",
        "head_sha",
        "head_repository",
        "conclusion",
        "package",
        "registry_package",
        "package_type",
        "name",
        "package_version",
        "container_metadata",
        "tag",
        "digest",
        "labels",
        "all_labels",
        "revision",
        "org.opencontainers.image.revision",
        "events",
        "target",
        "mediaType",
        "type",
        "event_data",
        "resources",
        "repo_full_name",
        "namespace",
        "specversion",
        "image",
        "sha",
    ]
) | st.text(max_size=6)
WORDS = st.sampled_from(
    [
        "completed",
        "success",
        "failure",
        "main",
        REPO,
        BUILD_WORKFLOW,
        HEAD_SHA,
        "3484a3f",
        "published",
        "CONTAINER",
        "docker",
        "erpnext-custom",
        IMAGE_REPO,
        "push",
        "pull",
        DOCKER_MANIFEST,
        OCI_INDEX,
        "PUSH_ARTIFACT",
        "",
        "bad tag",
        "-x",
    ]
) | st.text(max_size=12)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | WORDS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=40,
)


def _our_package(event: str, file: str) -> dict[str, Any]:
    return changed(container_package(event, file), (f"{event}.name", "erpnext-custom"), ("repository.full_name", REPO))


EXAMPLES = [
    ("workflow_run", _workflow_run_payload()),
    ("package", _our_package("package", "github_package_published_docker.json")),
    ("registry_package", _our_package("registry_package", "github_registry_package_published_docker.json")),
    ("registry", {"events": [manifest_event("3484a3f", "sha256:aa", repository=IMAGE_REPO)]}),
    ("registry", changed(load("harbor_push_artifact.json"), ("event_data.repository.repo_full_name", IMAGE_REPO))),
    ("release", load("pipeline_release.json")),
]
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _run_all(kind: str, payload: Any, configured: bool) -> None:
    """Feed ``payload`` to the parser(s) for ``kind``; only a result or InvalidInput may come out."""
    repository = REPO if configured else None
    image_repository = IMAGE_REPO if configured else None
    calls: list[Callable[[], object]]
    if kind == "github":
        calls = [
            lambda event=event: parse_github(
                event, payload, repository=repository, branch="main", image_repository=image_repository
            )
            for event in ("workflow_run", "registry_package", "package", "ping", "push")
        ]
    elif kind == "registry":
        calls = [lambda: parse_registry(payload, repository=image_repository)]
    else:
        calls = [lambda: parse_release_call(payload)]
    for call in calls:
        try:
            result = call()
        except InvalidInput as exc:
            assert str(exc)
            continue
        requests = result if isinstance(result, list) else [result]
        assert requests, "an empty list is never returned: Ignored says why instead"
        for request in requests:
            assert isinstance(request, (ReleaseRequest, Ignored))
            if isinstance(request, ReleaseRequest):
                assert validate_tag(request.tag) == request.tag
            else:
                assert request.reason


@PROPERTY_SETTINGS
@given(payload=JSON, kind=st.sampled_from(["github", "registry", "release"]), configured=st.booleans())
def test_arbitrary_json_gives_a_result_or_invalid_input(payload: Any, kind: str, configured: bool) -> None:
    _run_all(kind, payload, configured)


def _mutate(data: st.DataObject, document: Any) -> Any:
    """``document`` with one value somewhere inside (chosen by ``data``) replaced by arbitrary JSON."""
    document = copy.deepcopy(document)
    parent: Any = None
    key: Any = None
    node = document
    while isinstance(node, (dict, list)) and node and data.draw(st.integers(0, 4)) > 0:
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        parent, node = node, node[key]
    value = data.draw(st.none() | WORDS | JSON)
    if parent is None:
        return value
    parent[key] = value
    return document


@PROPERTY_SETTINGS
@given(data=st.data(), example=st.sampled_from(EXAMPLES), configured=st.booleans())
def test_upstream_examples_with_any_field_replaced_give_a_result_or_invalid_input(
    data: st.DataObject, example: tuple[str, dict[str, Any]], configured: bool
) -> None:
    kind, payload = example
    kind = {"workflow_run": "github", "package": "github", "registry_package": "github"}.get(kind, kind)
    _run_all(kind, _mutate(data, payload), configured)
