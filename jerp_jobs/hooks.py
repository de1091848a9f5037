"""Hook deliveries in, release requests out: pure functions, standard library only.

The webhook service authenticates a delivery, parses its JSON, and hands it here. Every parser
returns a :class:`ReleaseRequest` (start a release of this tag), an :class:`Ignored` (start
nothing, and record why), or raises :class:`~jerp_jobs.errors.InvalidInput` naming the field
whose shape is wrong (the service answers 400). Nothing else escapes, whatever JSON comes in.

Authentication
    ``verify_signature``: GitHub's ``X-Hub-Signature-256: sha256=<hex>``, an HMAC-SHA256 of the
    raw body keyed with the webhook secret (also what the image pipeline sends to
    /hooks/release). ``verify_bearer``: ``Authorization: Bearer <token>`` for registries.
    Both compare in constant time and raise :class:`~jerp_jobs.errors.Unauthorized`; an empty
    configured secret refuses every delivery. Messages never carry the secret or the digest.

GitHub (``parse_github``)
    ``workflow_run``: a release when the run is ``completed``, of ``repository`` (not a fork),
    of the image workflow (``workflow``: its file path, by default the pipeline's
    .github/workflows/build-image.yml; ``None`` accepts any workflow), on ``branch``, with
    conclusion ``success``. The tag is the pipeline's immutable tag: the first 7 characters of
    ``head_sha``. ``registry_package`` / ``package``: a release when ``published``, the package
    type is ``container`` (ghcr.io) or ``docker`` (the old docker.pkg.github.com), and the
    version has a tag (an untagged per-architecture manifest is ignored). The package must be
    the configured image: its name is the trailing path of ``image_repository`` (``erpnext``
    matches ``team/erpnext``); when ``repository`` is set, ``repository.full_name`` must match
    too; when neither is set nothing is accepted. GitHub names compare case-insensitively.
    ``ping`` and every other event are ignored.

Registries (``parse_registry``, by the shape of the body)
    CNCF Distribution (``{"events": [...]}``, envelope v1 or v2): a ``push`` of a manifest or an
    index (Docker v2 manifest or manifest list, OCI manifest or index) with a tag, to
    ``repository``. Blob pushes, pushes by digest, pulls, deletes, other repositories are
    skipped. Harbor (``{"type": "PUSH_ARTIFACT", "event_data": ...}``, the Default payload
    format): the repository (``repo_full_name``, else ``namespace/name``) must be
    ``repository``; untagged resources are skipped. Either way one request per distinct tag, in
    order of appearance; a tag seen several times (a multi-arch push) keeps the digest of its
    index when one is seen, else its first digest.

The pipeline (``parse_release_call``)
    ``{"image", "tag", "sha", "timestamp"}`` as .github/workflows/build-image.yml sends it: all
    four required and checked the way the pipeline checks them before sending. ``timestamp`` is
    when the pipeline sent the request (RFC 3339, UTC: ``2024-05-06T07:08:09Z``); it is inside
    the signed bytes, so a captured body cannot be given a new time. ``check_request_time``
    refuses (:class:`StaleRequest`) a request older than the service's window or further in the
    future than :data:`CLOCK_SKEW_S`: a body replayed later, even with a new delivery id, starts
    nothing.

Request times
    Every :class:`ReleaseRequest` carries ``requested_at`` (seconds since the epoch) when the
    delivery says when it was made: the pipeline's ``timestamp``, a ``workflow_run``'s
    ``updated_at`` (when the run completed), a package version's ``updated_at`` or
    ``created_at``, a Distribution event's ``timestamp``, Harbor's ``occur_at``. The service
    uses the arrival time for the others. Releases compare these times, never the order of
    arrival, to decide which request is the newer one. GitHub events get no age window: GitHub
    may deliver late and lets an operator redeliver a failed delivery for days; a replayed
    event still starts nothing, because a tag is started by a hook once only and a request
    older than the newest one is declined (:func:`jerp_jobs.operations.release.requests.request_release`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from jerp_jobs.errors import InvalidInput, Unauthorized

__all__ = [
    "BUILD_WORKFLOW",
    "CLOCK_SKEW_S",
    "Ignored",
    "ReleaseRequest",
    "StaleRequest",
    "check_request_time",
    "format_time",
    "parse_github",
    "parse_registry",
    "parse_release_call",
    "parse_timestamp",
    "validate_tag",
    "verify_bearer",
    "verify_signature",
]

#: The workflow file whose successful runs publish the image (see .github/workflows/build-image.yml).
BUILD_WORKFLOW = ".github/workflows/build-image.yml"

_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_IMAGE = re.compile(r"[A-Za-z0-9._:/-]{1,255}")
_SHORT_SHA = 7  # the pipeline's immutable tag: short_sha=${GITHUB_SHA:0:7}
#: RFC 3339 date-time: date, 'T' (or a space), time, optional fraction, 'Z' or an offset
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)
_UTC_OFFSETS = frozenset({"Z", "z", "+00:00"})
#: how far ahead of this host's clock a request's time may be (the sender's clock differs a little)
CLOCK_SKEW_S = 60.0

_INDEX_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    }
)
_MANIFEST_TYPES = _INDEX_TYPES | {
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
}
_CONTAINER_PACKAGE_TYPES = frozenset({"container", "docker"})


@dataclass(frozen=True)
class ReleaseRequest:
    """Start a release of ``tag``; the rest tells where the request came from."""

    tag: str
    source: str  # github:workflow_run, github:registry_package, github:package, registry, harbor, pipeline
    image: str | None = None
    sha: str | None = None
    digest: str | None = None
    requested_at: float | None = None  # when the sender made the request (seconds since the epoch)


class StaleRequest(InvalidInput):
    """An authentic request whose time is outside the accepted window (too old, or in the future)."""


@dataclass(frozen=True)
class Ignored:
    """Start nothing: ``reason`` says why, for the service to record."""

    reason: str


# -- authentication -------------------------------------------------------------------------------


def verify_signature(secret: str | Sequence[str], body: bytes, header: str | None) -> int:
    """Check ``X-Hub-Signature-256`` against an HMAC-SHA256 of the raw ``body``; Unauthorized if not.

    ``secret`` may be several secrets (during a rotation: the new one first, then the one being
    retired); returns the index of the one that matched. Every secret is compared (constant time
    each), whichever matches."""
    secrets = [secret] if isinstance(secret, str) else [s for s in secret if s]
    if not secrets or not secrets[0]:
        raise Unauthorized("no webhook secret is configured: every delivery is refused", problem="unconfigured")
    if not header:
        raise Unauthorized("the X-Hub-Signature-256 header is missing", problem="missing")
    match = _SIGNATURE.fullmatch(header.strip())
    if match is None:
        raise Unauthorized(
            "the X-Hub-Signature-256 header is malformed: expected sha256= and 64 hexadecimal digits",
            problem="malformed",
        )
    given = match.group(1).lower().encode()
    matched = [hmac.compare_digest(hmac.new(key.encode(), body, hashlib.sha256).hexdigest().encode(), given)
               for key in secrets]
    if not any(matched):
        raise Unauthorized("the X-Hub-Signature-256 signature does not match the body", problem="mismatch")
    return matched.index(True)


def verify_bearer(expected: str | Sequence[str], header: str | None) -> int:
    """Check ``Authorization: Bearer <token>`` against ``expected`` in constant time; Unauthorized if not.
    Several tokens may be expected (a rotation); returns the index of the one that matched."""
    tokens = [expected] if isinstance(expected, str) else [t for t in expected if t]
    if not tokens or not tokens[0]:
        raise Unauthorized("no hook token is configured: every delivery is refused", problem="unconfigured")
    if not header:
        raise Unauthorized("the Authorization header is missing", problem="missing")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header is not of the form 'Bearer <token>'", problem="malformed")
    matched = [hmac.compare_digest(want.encode(), token.encode()) for want in tokens]
    if not any(matched):
        raise Unauthorized("the bearer token does not match", problem="mismatch")
    return matched.index(True)


# -- checks ---------------------------------------------------------------------------------------


def validate_tag(tag: object) -> str:
    """``tag`` when it is a valid image tag; InvalidInput naming it otherwise."""
    if not isinstance(tag, str) or _TAG.fullmatch(tag) is None:
        raise InvalidInput(
            f"invalid image tag {_show(tag)}: a tag is 1 to 128 letters, digits, '_', '.' or '-', "
            "not starting with '.' or '-'",
            tag=_show(tag),
        )
    return tag


def parse_timestamp(value: object, *, field: str = "timestamp", utc_only: bool = True) -> float:
    """Seconds since the epoch of an RFC 3339 date-time; InvalidInput naming ``field`` otherwise.

    ``utc_only`` accepts only the UTC designators ``Z`` and ``+00:00``."""
    example = "an RFC 3339 date-time in UTC such as 2024-05-06T07:08:09Z"
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be {example}, not {_json_type(value)}", field=field)
    match = _RFC3339.fullmatch(value.strip())
    if match is None:
        raise InvalidInput(f"{field} {_show(value)} is not {example}", field=field)
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    if utc_only and offset not in _UTC_OFFSETS:
        raise InvalidInput(f"{field} {_show(value)} is not in UTC: end it with Z (e.g. 2024-05-06T07:08:09Z)",
                           field=field)
    zone = "+00:00" if offset in ("Z", "z") else offset
    micros = (fraction or "").ljust(6, "0")[:6]
    try:
        return datetime.fromisoformat(f"{year}-{month}-{day}T{hour}:{minute}:{second}.{micros}{zone}").timestamp()
    except (ValueError, OverflowError) as exc:
        raise InvalidInput(f"{field} {_show(value)} is not a valid date-time: {exc}", field=field) from None


def format_time(seconds: float) -> str:
    """``seconds`` since the epoch as RFC 3339 UTC, to the second."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_request_time(requested_at: float, *, now: float, max_age: float, skew: float = CLOCK_SKEW_S) -> None:
    """StaleRequest unless ``requested_at`` lies between ``now - max_age`` and ``now + skew``."""
    age = now - requested_at
    if age > max_age:
        raise StaleRequest(
            f"the request is too old: its timestamp {format_time(requested_at)} is {age:.0f} s old, over the "
            f"limit of {max_age:.0f} s (JERP_WEBHOOK_MAX_AGE); a replayed or delayed request starts nothing "
            "(an operator can start the release with jerpctl enqueue release TAG)",
            problem="too-old", age=round(age, 3),
        )
    if -age > skew:
        raise StaleRequest(
            f"the request's timestamp {format_time(requested_at)} is {-age:.0f} s in the future, more than the "
            f"{skew:.0f} s clock difference allowed: check the sender's clock",
            problem="in-the-future", age=round(age, 3),
        )


def _event_time(node: Mapping[str, Any], *paths: str, where: str = "") -> float | None:
    """The first of ``paths`` below ``node`` that is an RFC 3339 date-time (any offset), else None:
    a time only orders requests, so a delivery without a readable one is not refused for it."""
    for path in paths:
        try:
            value = _get(node, path, str, required=False, where=where)
            if value:
                return parse_timestamp(value, field=path, utc_only=False)
        except (InvalidInput, OverflowError):
            continue
    return None


def _epoch(value: object) -> float | None:
    """A number of seconds since the epoch, when ``value`` is a finite one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None


# -- GitHub ---------------------------------------------------------------------------------------


def parse_github(
    event: str,
    payload: Mapping[str, Any],
    *,
    repository: str | None,
    branch: str,
    image_repository: str | None,
    workflow: str | None = BUILD_WORKFLOW,
) -> ReleaseRequest | Ignored:
    """What a GitHub delivery of ``event`` (the X-GitHub-Event header) asks for."""
    _require_object(payload)
    if event == "ping":
        return Ignored("ping")
    if event == "workflow_run":
        return _workflow_run(payload, repository=repository, branch=branch, workflow=workflow)
    if event in ("registry_package", "package"):
        return _package(event, payload, repository=repository, image_repository=image_repository)
    return Ignored(f"GitHub event {_show(event)} does not announce an image")


def _workflow_run(
    payload: Mapping[str, Any], *, repository: str | None, branch: str, workflow: str | None
) -> ReleaseRequest | Ignored:
    action = _get(payload, "action", str)
    if action != "completed":
        return Ignored(f"workflow_run {action}: only completed runs release")
    if repository is None:
        return Ignored("JERP_GITHUB_REPOSITORY is not set")
    full_name = _get(payload, "repository.full_name", str)
    if not _same_github_name(full_name, repository):
        return Ignored(f"repository {full_name} is not {repository}")
    run = _get(payload, "workflow_run", Mapping)
    if workflow is not None:
        path = _get(run, "path", str, required=False, where="workflow_run")
        path = path or _get(payload, "workflow.path", str, required=False)
        if path is None:
            return Ignored(f"the delivery names no workflow file (expected {workflow})")
        path = path.partition("@")[0]
        if path != workflow:
            return Ignored(f"workflow {path} is not {workflow}")
    head_repository = _get(run, "head_repository.full_name", str, required=False, where="workflow_run")
    if head_repository is not None and not _same_github_name(head_repository, repository):
        return Ignored(f"run of {head_repository}, not of {repository}")
    head_branch = _get(run, "head_branch", str, required=False, where="workflow_run")
    if head_branch != branch:
        return Ignored(f"branch {head_branch or '(none)'} is not {branch}")
    conclusion = _get(run, "conclusion", str, required=False, where="workflow_run")
    if conclusion != "success":
        return Ignored(f"workflow_run conclusion {conclusion or '(none)'}")
    head_sha = _get(run, "head_sha", str, where="workflow_run")
    if _COMMIT.fullmatch(head_sha) is None:
        raise InvalidInput(f"workflow_run.head_sha {_show(head_sha)} is not a commit id", field="workflow_run.head_sha")
    return ReleaseRequest(tag=head_sha[:_SHORT_SHA], source="github:workflow_run", sha=head_sha,
                          requested_at=_event_time(run, "updated_at", "run_started_at", where="workflow_run"))


def _package(
    event: str, payload: Mapping[str, Any], *, repository: str | None, image_repository: str | None
) -> ReleaseRequest | Ignored:
    action = _get(payload, "action", str)
    if action != "published":
        return Ignored(f"{event} {action}: only published versions release")
    package = _get(payload, event, Mapping)
    package_type = _get(package, "package_type", str, where=event)
    if package_type.lower() not in _CONTAINER_PACKAGE_TYPES:
        return Ignored(f"package type {package_type} is not a container image")
    name = _get(package, "name", str, where=event)
    if image_repository is None and repository is None:
        return Ignored(
            "neither the image repository (JERP_REGISTRY_REPOSITORY, JERP_RELEASE_IMAGE) "
            "nor JERP_GITHUB_REPOSITORY is set"
        )
    if image_repository is not None and not _is_trailing_path(name, image_repository):
        return Ignored(f"package {name} is not the image {image_repository}")
    if repository is not None:
        full_name = _get(payload, "repository.full_name", str, required=False)
        if full_name is None or not _same_github_name(full_name, repository):
            return Ignored(f"package of repository {full_name or '(none)'}, not of {repository}")
    where = f"{event}.package_version"
    version = _get(package, "package_version", Mapping, required=False, where=event)
    if version is None:
        return Ignored(f"{event} has no package_version")
    metadata = _get(version, "container_metadata", Mapping, required=False, where=where)
    if metadata is None:
        return Ignored(f"package {name}: the version has no container metadata")
    where += ".container_metadata"
    tag = _get(metadata, "tag.name", str, required=False, where=where)
    digest = _get(metadata, "tag.digest", str, required=False, where=where)
    if not tag:
        return Ignored(f"package {name}: untagged version {digest or '(no digest)'} (a part of a multi-arch image)")
    return ReleaseRequest(
        tag=validate_tag(tag),
        source=f"github:{event}",
        image=name,
        sha=_revision(metadata, where),
        digest=digest or None,
        requested_at=_event_time(version, "updated_at", "created_at", where=f"{event}.package_version"),
    )


def _revision(metadata: Mapping[str, Any], where: str) -> str | None:
    """The commit the image was built from, from its OCI labels, when it looks like one."""
    labels = _get(metadata, "labels", Mapping, required=False, where=where) or {}
    where += ".labels"
    revision = _get(labels, "revision", str, required=False, where=where)
    if not revision:
        all_labels = _get(labels, "all_labels", Mapping, required=False, where=where) or {}
        revision = _get(
            all_labels, ("org.opencontainers.image.revision",), str, required=False, where=f"{where}.all_labels"
        )
    return revision if revision and _COMMIT.fullmatch(revision) else None


def _same_github_name(a: str, b: str) -> bool:
    return a.casefold() == b.casefold()


def _is_trailing_path(name: str, image_repository: str) -> bool:
    name, image_repository = name.casefold(), image_repository.casefold()
    return bool(name) and (image_repository == name or image_repository.endswith("/" + name))


# -- registries -----------------------------------------------------------------------------------


def parse_registry(payload: Mapping[str, Any], *, repository: str | None) -> list[ReleaseRequest] | Ignored:
    """What a registry notification asks for: Distribution's envelope or Harbor's event, by shape."""
    _require_object(payload)
    if "events" in payload:
        return _distribution(payload, repository)
    if "specversion" in payload:
        return Ignored("a CloudEvents notification: set the Harbor webhook's payload format to Default")
    if "type" in payload:
        return _harbor(payload, repository)
    raise InvalidInput(
        'not a registry notification: expected a Distribution envelope {"events": [...]} '
        'or a Harbor event {"type": ..., "event_data": ...}'
    )


def _distribution(payload: Mapping[str, Any], repository: str | None) -> list[ReleaseRequest] | Ignored:
    events = _get(payload, "events", list)
    if repository is None:
        return Ignored("the image repository is not set (JERP_REGISTRY_REPOSITORY or JERP_RELEASE_IMAGE)")
    found: dict[str, ReleaseRequest] = {}
    skipped: dict[str, int] = {}
    for index, event in enumerate(events):
        where = f"events[{index}]"
        if not isinstance(event, Mapping):
            raise InvalidInput(f"{where} must be an object, not {_json_type(event)}", field=where)
        action = _get(event, "action", str, where=where)
        target = _get(event, "target", Mapping, where=where)
        where += ".target"
        media_type = _get(target, "mediaType", str, required=False, where=where)
        tag = _get(target, "tag", str, required=False, where=where)
        target_repository = _get(target, "repository", str, required=False, where=where)
        digest = _get(target, "digest", str, required=False, where=where)
        if action != "push":
            why = action
        elif media_type not in _MANIFEST_TYPES:
            why = "push of a blob or another media type"
        elif not tag:
            why = "manifest push without a tag"
        elif target_repository != repository:
            why = f"push to {target_repository or '(no repository)'}"
        else:
            why = ""
        if why:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        request = ReleaseRequest(tag=validate_tag(tag), source="registry", image=target_repository, digest=digest,
                                 requested_at=_event_time(event, "timestamp", where=f"events[{index}]"))
        _add(found, request, is_index=media_type in _INDEX_TYPES)
    if found:
        return list(found.values())
    seen = ", ".join(f"{count} x {why}" for why, count in skipped.items()) or "no events"
    return Ignored(f"no tagged manifest push to {repository} ({seen})")


def _harbor(payload: Mapping[str, Any], repository: str | None) -> list[ReleaseRequest] | Ignored:
    kind = _get(payload, "type", str)
    if kind != "PUSH_ARTIFACT":
        return Ignored(f"Harbor event {kind}: only PUSH_ARTIFACT releases")
    if repository is None:
        return Ignored("the image repository is not set (JERP_REGISTRY_REPOSITORY or JERP_RELEASE_IMAGE)")
    full_name = _get(payload, "event_data.repository.repo_full_name", str, required=False)
    if not full_name:
        namespace = _get(payload, "event_data.repository.namespace", str)
        full_name = f"{namespace}/{_get(payload, 'event_data.repository.name', str)}"
    if full_name != repository:
        return Ignored(f"Harbor push to {full_name}, not {repository}")
    at = _epoch(payload.get("occur_at"))
    found: dict[str, ReleaseRequest] = {}
    for index, resource in enumerate(_get(payload, "event_data.resources", list)):
        where = f"event_data.resources[{index}]"
        if not isinstance(resource, Mapping):
            raise InvalidInput(f"{where} must be an object, not {_json_type(resource)}", field=where)
        tag = _get(resource, "tag", str, required=False, where=where)
        digest = _get(resource, "digest", str, required=False, where=where)
        if tag:
            _add(found, ReleaseRequest(tag=validate_tag(tag), source="harbor", image=full_name, digest=digest,
                                       requested_at=at))
    if found:
        return list(found.values())
    return Ignored(f"Harbor push to {full_name} without a tag")


def _add(found: dict[str, ReleaseRequest], request: ReleaseRequest, *, is_index: bool = False) -> None:
    """One request per tag, in first-seen order; an index's digest wins over its manifests'."""
    if request.tag not in found:
        found[request.tag] = request
    elif is_index:
        found[request.tag] = replace(found[request.tag], digest=request.digest)


# -- the pipeline's own call ----------------------------------------------------------------------


def parse_release_call(payload: Mapping[str, Any]) -> ReleaseRequest:
    """The pipeline's ``{"image", "tag", "sha", "timestamp"}``; InvalidInput naming a missing or
    bad field. Its age is checked apart (:func:`check_request_time`): parsing needs no clock."""
    _require_object(payload)
    image = _get(payload, "image", str)
    if _IMAGE.fullmatch(image) is None:
        raise InvalidInput(f"invalid image {_show(image)}: expected registry/name", field="image")
    tag = validate_tag(_get(payload, "tag", str))
    sha = _get(payload, "sha", str)
    if _COMMIT.fullmatch(sha) is None:
        raise InvalidInput(f"invalid sha {_show(sha)}: expected a full commit id (40 or 64 hex digits)", field="sha")
    if payload.get("timestamp") is None:
        raise InvalidInput(
            "timestamp is missing: the signed body must say when it was sent (RFC 3339, UTC, e.g. "
            "2024-05-06T07:08:09Z); a body without one could be replayed at any time",
            field="timestamp",
        )
    requested_at = parse_timestamp(payload["timestamp"])
    return ReleaseRequest(tag=tag, source="pipeline", image=image, sha=sha, requested_at=requested_at)


# -- reading JSON safely --------------------------------------------------------------------------


def _require_object(payload: object) -> None:
    if not isinstance(payload, Mapping):
        raise InvalidInput(f"the body must be a JSON object, not {_json_type(payload)}", field="")


def _get(
    node: object,
    path: str | tuple[str, ...],
    kind: type,
    *,
    required: bool = True,
    where: str = "",
) -> Any:
    """The value at ``path`` (dotted, or a tuple of keys) below ``node``, of type ``kind``.

    A missing or null value is None when not ``required``; otherwise, and for a value (or an
    object on the way) of the wrong type, InvalidInput names the field, prefixed by ``where``.
    """
    keys = tuple(path.split(".")) if isinstance(path, str) else path
    walked = [where] if where else []
    for key in keys:
        if not isinstance(node, Mapping):
            name = ".".join(walked) or "the body"
            raise InvalidInput(f"{name} must be an object, not {_json_type(node)}", field=".".join(walked))
        walked.append(key)
        node = node.get(key)
        if node is None:
            if required:
                raise InvalidInput(f"{'.'.join(walked)} is missing", field=".".join(walked))
            return None
    if not isinstance(node, kind):
        name = ".".join(walked)
        raise InvalidInput(f"{name} must be {_KIND_NAMES.get(kind, kind.__name__)}, not {_json_type(node)}", field=name)
    return node


_KIND_NAMES: dict[type, str] = {str: "a string", list: "an array", Mapping: "an object"}


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _show(value: object, limit: int = 80) -> str:
    """A short repr of untrusted input for a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
