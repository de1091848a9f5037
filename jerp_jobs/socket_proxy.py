"""A Docker Engine API proxy that lets through only the calls the Docker executor makes.

In the jobs stack only this process mounts the Docker socket; the workers reach Docker through
it (``DOCKER_HOST=tcp://docker-proxy:2375``). Access to the socket is root on the host, so the
proxy answers ``403`` (with a JSON ``message``, which docker-py raises as ``APIError``) to
everything but, with or without a ``/vX.Y`` version prefix:

    GET|HEAD /_ping, GET /version      client start-up (API version negotiation)
    GET  /containers/json              find the backend container by its compose labels
    GET  /containers/{id}/json         the backend's state after a failed command
    POST /containers/{id}/exec         create an exec (never a privileged one)
    POST /exec/{id}/start              run it and stream its output (HTTP upgrade, hijacked)
    GET  /exec/{id}/json               its exit code

With container labels configured (``--container-labels``), inspect and exec are limited to
containers carrying all of them (the platform's backend): a compromised worker can neither
exec into another container (the database, this proxy) nor read another one's environment.

One request per connection. The request head is checked, forwarded with ``Connection: close``
and the response relayed back with ``Connection: close``. An exec start that asks for an
upgrade and gets ``101`` becomes a byte tunnel both ways until Docker ends it. Whatever a
client sends after its request is never parsed as another request, so nothing rides past the
checks. Request bodies need a ``Content-Length`` (Docker's clients send JSON that way).

Deploying (opt-in: ``--allow-deploy`` or ``JERP_PROXY_ALLOW_DEPLOY=1``). When no Portainer
deploys the platform, ``jerp_jobs.deploy.DockerDeployer`` recreates the platform's containers
on a new image; with this option the proxy also lets through exactly the calls it makes, each
only for containers carrying the deploy labels (``--deploy-labels`` /
``JERP_PROXY_DEPLOY_LABELS``; default: the ``com.docker.compose.project`` label of
``--container-labels``, i.e. every container of the platform stack; required):

    GET    /containers/{id}/json     inspect any container of the platform (not only the backend)
    GET    /images/{name}/json       inspect an image (read-only: tells its defaults)
    POST   /containers/create        only when the body's Labels carry the deploy labels, and
                                     nothing in it reaches the host: no Privileged, CapAdd,
                                     Capabilities, Devices, DeviceRequests, DeviceCgroupRules,
                                     VolumesFrom, CgroupParent, other Runtime or VolumeDriver; no
                                     PidMode/IpcMode/NetworkMode/UTSMode/UsernsMode "host" (nor
                                     "container:..."); SecurityOpt only no-new-privileges; every
                                     bind or mount source a named volume (no host path, no
                                     volume driver options: those can bind a host path too);
                                     MaskedPaths/ReadonlyPaths, when given, keep Docker's own
    POST   /containers/{id}/start|stop|rename, DELETE /containers/{id}
                                     labelled containers only, no request body (an old API
                                     version would read a HostConfig from start's body)
    POST   /networks/{id}/connect    only when the body's Container is a labelled container

Create bodies are read the way Docker reads them: keys without regard to case (a key given
twice in two spellings is refused), host settings both under ``HostConfig`` and at the top
level (older API versions read them there). Containers are forwarded by their full id, as for
exec.

Run: ``python -m jerp_jobs.socket_proxy --listen 0.0.0.0:2375 --upstream /var/run/docker.sock``
(or the ``JERP_PROXY_LISTEN``, ``JERP_PROXY_UPSTREAM``, ``JERP_PROXY_CONTAINER_LABELS``,
``JERP_PROXY_ALLOW_DEPLOY`` and ``JERP_PROXY_DEPLOY_LABELS`` variables). Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("jerp_jobs.socket_proxy")

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
MAX_INSPECT = 16 * 1024 * 1024
HEAD_TIMEOUT = 30.0
#: After relaying a ``101``, wait this long before the first stream bytes: docker-py reads the
#: stream from the raw socket under its HTTP parser, so stream bytes that reached the client
#: in the same read as the response head would be lost.
UPGRADE_SETTLE = 0.05
CHUNK = 64 * 1024

_VERSION = r"(?:/v[0-9]{1,2}\.[0-9]{1,3})?"
_CONTAINER = r"(?P<ref>[A-Za-z0-9][A-Za-z0-9_.-]{0,127})"
_EXEC = r"(?P<ref>[A-Za-z0-9]{1,128})"
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)
_REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 413: "Payload Too Large",
            417: "Expectation Failed", 431: "Request Header Fields Too Large", 501: "Not Implemented",
            502: "Bad Gateway"}


@dataclass(frozen=True)
class Rule:
    name: str
    methods: frozenset[str]
    pattern: re.Pattern[str]


def _rule(name: str, methods: str, path: str) -> Rule:
    return Rule(name, frozenset(methods.split("|")), re.compile(_VERSION + path))


RULES: tuple[Rule, ...] = (
    _rule("ping", "GET|HEAD", r"/_ping"),
    _rule("version", "GET", r"/version"),
    _rule("list-containers", "GET", r"/containers/json"),
    _rule("inspect-container", "GET", rf"/containers/{_CONTAINER}/json"),
    _rule("create-exec", "POST", rf"/containers/{_CONTAINER}/exec"),
    _rule("start-exec", "POST", rf"/exec/{_EXEC}/start"),
    _rule("inspect-exec", "GET", rf"/exec/{_EXEC}/json"),
)

_IMAGE = r"(?P<ref>[A-Za-z0-9][A-Za-z0-9_.:/-]{0,255})"
_NETWORK = r"(?P<ref>[A-Za-z0-9][A-Za-z0-9_.-]{0,127})"

#: What ``--allow-deploy`` adds: what ``jerp_jobs.deploy.DockerDeployer`` calls, nothing more.
DEPLOY_RULES: tuple[Rule, ...] = (
    _rule("inspect-image", "GET", rf"/images/{_IMAGE}/json"),
    _rule("create-container", "POST", r"/containers/create"),
    _rule("start-container", "POST", rf"/containers/{_CONTAINER}/start"),
    _rule("stop-container", "POST", rf"/containers/{_CONTAINER}/stop"),
    _rule("rename-container", "POST", rf"/containers/{_CONTAINER}/rename"),
    _rule("remove-container", "DELETE", rf"/containers/{_CONTAINER}"),
    _rule("connect-network", "POST", rf"/networks/{_NETWORK}/connect"),
)
_DEPLOY_RULE_NAMES = frozenset(rule.name for rule in DEPLOY_RULES)


class HttpError(Exception):
    """Answer the client with this status and message instead of forwarding."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Head:
    """A parsed request or response head: its first line and its header fields, in order."""

    start: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[-1] if values else None

    def connection_tokens(self) -> set[str]:
        return {t.strip().lower() for v in self.get_all("connection") for t in v.split(",") if t.strip()}

    def end_to_end(self) -> list[tuple[str, str]]:
        """The header fields without the hop-by-hop ones (and those Connection names)."""
        drop = _HOP_BY_HOP | self.connection_tokens()
        return [(k, v) for k, v in self.headers if k.lower() not in drop]


def parse_head(raw: bytes) -> Head:
    """Parse a head ending in an empty line; strict about line endings and field syntax."""
    text = raw.decode("latin-1")
    if not text.endswith("\r\n\r\n"):
        raise HttpError(400, "incomplete head")
    lines = text[:-4].split("\r\n")
    head = Head(lines[0])
    for line in [lines[0], *lines[1:]]:
        if "\r" in line or "\n" in line or "\0" in line:
            raise HttpError(400, "bare CR, LF or NUL in the head")
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            raise HttpError(400, "folded header lines are not accepted")
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise HttpError(400, f"malformed header line {line[:40]!r}")
        head.headers.append((name, value.strip(" \t")))
    return head


@dataclass
class Request:
    method: str
    target: str
    head: Head

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


def parse_request(raw: bytes) -> Request:
    head = parse_head(raw)
    parts = head.start.split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(400, "malformed request line")
    method, target, _ = parts
    if not target.startswith("/") or "#" in target:
        raise HttpError(400, "the request target must be an absolute path")
    return Request(method, target, head)


def match_rule(method: str, path: str, rules: Sequence[Rule] = RULES) -> tuple[Rule, str | None] | None:
    """The rule allowing ``method path`` and the container or exec it names, or None."""
    for rule in rules:
        m = rule.pattern.fullmatch(path)
        if m and method in rule.methods:
            return rule, m.groupdict().get("ref")
    return None


def body_length(head: Head) -> int:
    if head.get_all("expect"):
        raise HttpError(417, "Expect is not supported; send the body with the request")
    if head.get_all("transfer-encoding"):
        raise HttpError(501, "request bodies must have a Content-Length (no Transfer-Encoding)")
    values = {v.strip() for v in head.get_all("content-length")}
    if not values:
        return 0
    if len(values) > 1 or not all(v.isdigit() for v in values):
        raise HttpError(400, "invalid Content-Length")
    length = int(values.pop())
    if length > MAX_BODY:
        raise HttpError(413, f"request body over {MAX_BODY} bytes")
    return length


def parse_labels(text: str) -> dict[str, str]:
    """``"k=v,k2=v2"`` -> ``{"k": "v", "k2": "v2"}``."""
    labels = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"container label {item!r} is not KEY=VALUE")
        labels[key.strip()] = value.strip()
    return labels


Write = Callable[[bytes], Awaitable[None]]


async def copy_exactly(reader: asyncio.StreamReader, n: int, write: Write) -> None:
    while n > 0:
        data = await reader.read(min(n, CHUNK))
        if not data:
            raise ConnectionError("the Docker API closed the connection in the middle of a body")
        n -= len(data)
        await write(data)


async def copy_to_eof(reader: asyncio.StreamReader, write: Write) -> None:
    while data := await reader.read(CHUNK):
        await write(data)


async def copy_chunked(reader: asyncio.StreamReader, write: Write) -> None:
    """Relay a chunked body verbatim, up to and including its trailer section."""
    while True:
        line = await reader.readuntil(b"\r\n")
        await write(line)
        size_text = line.split(b";", 1)[0].strip()
        if not size_text or not all(c in b"0123456789abcdefABCDEF" for c in size_text):
            raise ConnectionError("malformed chunk size from the Docker API")
        size = int(size_text, 16)
        if size == 0:
            while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                await write(trailer)
            await write(b"\r\n")
            return
        await copy_exactly(reader, size + 2, write)


async def copy_response_body(reader: asyncio.StreamReader, method: str, status: int, head: Head,
                             write: Write) -> None:
    """Relay a response body with the framing its head declares (RFC 9112 section 6.3)."""
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return
    codings = [c.strip().lower() for v in head.get_all("transfer-encoding") for c in v.split(",")]
    if codings:
        if codings[-1] == "chunked":
            await copy_chunked(reader, write)
        else:
            await copy_to_eof(reader, write)
    elif (length := head.get("content-length")) is not None and length.strip().isdigit():
        await copy_exactly(reader, int(length), write)
    else:
        await copy_to_eof(reader, write)


def error_response(status: int, message: str) -> bytes:
    body = json.dumps({"message": f"jerp socket proxy: {message}"}).encode()
    return (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def _render(start: str, headers: Sequence[tuple[str, str]]) -> bytes:
    return ("\r\n".join([start, *(f"{k}: {v}" for k, v in headers)]) + "\r\n\r\n").encode("latin-1")


_PROJECT_LABEL = "com.docker.compose.project"
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_NAMESPACE_FIELDS = ("PidMode", "IpcMode", "NetworkMode", "UTSMode", "UsernsMode")
_EMPTY_REQUIRED = ("CapAdd", "Capabilities", "Devices", "DeviceRequests", "DeviceCgroupRules", "VolumesFrom",
                   "CgroupParent")
#: Docker's defaults (20.10 onwards): a create body may list more, never fewer.
_MASKED_PATHS = frozenset({"/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                           "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                           "/sys/firmware"})
_READONLY_PATHS = frozenset({"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"})
_NO_NEW_PRIVILEGES = re.compile(r"no-new-privileges(?:[=:]true)?", re.IGNORECASE)


def default_deploy_labels(container_labels: Mapping[str, str]) -> dict[str, str]:
    """The compose project label of the container labels (every container of the platform
    stack), or all of them when there is none."""
    if _PROJECT_LABEL in container_labels:
        return {_PROJECT_LABEL: container_labels[_PROJECT_LABEL]}
    return dict(container_labels)


def _fold(key: str) -> str:
    """A JSON key as Docker's decoder compares it to a field name (Unicode case folding: the
    long s, U+017F, counts as ``s``, the Kelvin sign, U+212A, as ``k``)."""
    return key.casefold()


class _Object(dict):  # type: ignore[type-arg]
    """A JSON object that remembers its keys in order, repeated or not."""

    pairs: list[tuple[str, object]]


def load_docker_json(body: bytes, what: str) -> _Object:
    def keep_pairs(pairs: list[tuple[str, object]]) -> _Object:
        obj = _Object(pairs)
        obj.pairs = pairs
        return obj

    try:
        data = json.loads(body or b"{}", object_pairs_hook=keep_pairs)
    except (ValueError, RecursionError):
        raise HttpError(400, f"{what} is not JSON") from None
    if not isinstance(data, _Object):
        raise HttpError(400, f"{what} is not a JSON object")
    return data


def _field(obj: object, name: str) -> object:
    """The value of struct field ``name`` as Docker would decode it; a field given twice (in any
    spelling) is refused, since which one Docker keeps depends on the order."""
    if not isinstance(obj, _Object):
        return None
    values = [v for k, v in obj.pairs if _fold(k) == _fold(name)]
    if len(values) > 1:
        raise HttpError(400, f"the field {name} is given {len(values)} times")
    return values[0] if values else None


def _strings(value: object, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HttpError(400, f"{name} must be a list of strings")
    return value


def _volume_allowed(name: str, project: str | None) -> bool:
    """A named volume; of the compose project (``<project>_...``) or anonymous (64 hex digits)
    when the project is known."""
    if not _VOLUME_NAME.fullmatch(name):
        return False
    return project is None or name.startswith(f"{project}_") or bool(re.fullmatch(r"[0-9a-f]{64}", name))


def _check_host_settings(settings: object, where: str, project: str | None = None) -> None:
    """Refuse what would give a container a way out to the host."""
    if _field(settings, "Privileged"):
        raise HttpError(403, f"privileged containers are not allowed ({where})")
    for name in _EMPTY_REQUIRED:
        if _field(settings, name):
            raise HttpError(403, f"{name} is not allowed ({where})")
    for name in _NAMESPACE_FIELDS:
        mode = _field(settings, name)
        if isinstance(mode, str) and (mode.lower() == "host" or mode.lower().startswith("container:")):
            raise HttpError(403, f"{name} {mode!r} is not allowed ({where})")
    runtime = _field(settings, "Runtime")
    if runtime not in (None, "", "runc"):
        raise HttpError(403, f"the runtime {runtime!r} is not allowed ({where})")
    driver = _field(settings, "VolumeDriver")
    if driver not in (None, "", "local"):
        raise HttpError(403, f"the volume driver {driver!r} is not allowed ({where})")
    for option in _strings(_field(settings, "SecurityOpt"), "SecurityOpt"):
        if not _NO_NEW_PRIVILEGES.fullmatch(option.strip()):
            raise HttpError(403, f"the security option {option!r} is not allowed ({where})")
    for name, required in (("MaskedPaths", _MASKED_PATHS), ("ReadonlyPaths", _READONLY_PATHS)):
        value = _field(settings, name)
        if value is not None and not required <= set(_strings(value, name)):
            raise HttpError(403, f"{name} must keep Docker's defaults ({where})")
    for bind in _strings(_field(settings, "Binds"), "Binds"):
        source, sep, _ = bind.partition(":")
        if sep and not _volume_allowed(source, project):
            raise HttpError(403, f"the bind {bind!r} is not a named volume of the platform ({where})")
    mounts = _field(settings, "Mounts")
    if mounts is not None and not isinstance(mounts, list):
        raise HttpError(400, "Mounts must be a list")
    for mount in mounts or []:
        kind = _field(mount, "Type")
        if kind == "tmpfs":
            continue
        if kind != "volume":
            raise HttpError(403, f"{kind!r} mounts are not allowed ({where})")
        source = _field(mount, "Source")
        if source not in (None, "") and not (isinstance(source, str) and _volume_allowed(source, project)):
            raise HttpError(403, f"the mount source {source!r} is not a named volume of the platform ({where})")
        if _field(_field(mount, "VolumeOptions"), "DriverConfig"):
            raise HttpError(403, f"volume driver options are not allowed ({where})")


def check_create_body(body: bytes, labels: Mapping[str, str]) -> None:
    """Refuse a ``POST /containers/create`` body that does not make a labelled container of the
    platform, or that would reach the host. With the compose project among the labels, volumes
    must be the project's own (``<project>_name``) or anonymous ones."""
    config = load_docker_json(body, "the container configuration")
    project = labels.get(_PROJECT_LABEL)
    given = _field(config, "Labels")
    given = given if isinstance(given, dict) else {}
    missing = {k: v for k, v in labels.items() if given.get(k) != v}
    if missing:
        raise HttpError(403, f"the new container does not carry the labels {missing}")
    _check_host_settings(config, "top level", project)
    host_config = _field(config, "HostConfig")
    if host_config is not None and not isinstance(host_config, _Object):
        raise HttpError(400, "HostConfig must be an object")
    _check_host_settings(host_config, "HostConfig", project)
    networking = _field(config, "NetworkingConfig")
    endpoints = _field(networking, "EndpointsConfig")
    if isinstance(endpoints, dict) and any(_fold(name) == "host" for name in endpoints):
        raise HttpError(403, "the host network is not allowed")


class SocketProxy:
    """Serves the allowlisted part of the Docker API on TCP, from the Docker socket ``upstream``."""

    def __init__(self, upstream: str, *, container_labels: Mapping[str, str] | None = None,
                 rules: Sequence[Rule] = RULES, allow_deploy: bool = False,
                 deploy_labels: Mapping[str, str] | None = None) -> None:
        self.upstream = upstream
        self.container_labels = dict(container_labels or {})
        self.allow_deploy = allow_deploy
        self.deploy_labels = dict(deploy_labels) if deploy_labels else default_deploy_labels(self.container_labels)
        if allow_deploy and not self.deploy_labels:
            raise ValueError("deploying needs labels that mark the platform's containers (--deploy-labels)")
        self.rules = tuple(rules) + (DEPLOY_RULES if allow_deploy else ())

    async def start(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.handle, host, port, limit=MAX_HEAD)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request: Request | None = None
        try:
            try:
                raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                return
            except asyncio.LimitOverrunError:
                raise HttpError(431, f"request head over {MAX_HEAD} bytes") from None
            request = parse_request(raw)
            found = match_rule(request.method, request.path, self.rules)
            if found is None:
                raise HttpError(403, f"{request.method} {request.path} is not allowed")
            rule, ref = found
            length = body_length(request.head)
            body = await reader.readexactly(length) if length else b""
            if rule.name in _DEPLOY_RULE_NAMES:
                target, body = await self._authorize_deploy(rule, ref, request, body)
            else:
                target = await self._authorize(rule, ref, request, body)
            await self._forward(rule, request, target, body, reader, writer)
        except HttpError as exc:
            what = f"{request.method} {request.path}" if request else "request"
            log.warning("refuse %s -> %d (%s)", what, exc.status, exc.message)
            with contextlib.suppress(ConnectionError):
                writer.write(error_response(exc.status, exc.message))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            log.info("connection ended early: %s", exc or type(exc).__name__)
        except Exception:
            log.exception("unexpected error; connection closed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _authorize(self, rule: Rule, ref: str | None, request: Request, body: bytes) -> str:
        """Check what the path alone cannot tell; return the target to forward."""
        if rule.name == "create-exec":
            try:
                config = json.loads(body or b"{}")
            except ValueError:
                raise HttpError(400, "the exec configuration is not JSON") from None
            if not isinstance(config, dict):
                raise HttpError(400, "the exec configuration is not a JSON object")
            # Docker decodes JSON keys case-insensitively: "privileged" counts too.
            if any(key.lower() == "privileged" and value for key, value in config.items()):
                raise HttpError(403, "privileged execs are not allowed")
        if rule.name in ("create-exec", "inspect-container") and self.container_labels:
            assert ref is not None
            if rule.name == "inspect-container" and self.allow_deploy:
                full_id = await self._check_container(ref, self.container_labels, self.deploy_labels)
            else:
                full_id = await self._check_container(ref)
            # Forward by id: a name could be given to another container in the meantime.
            prefix = request.path[: request.path.index("/containers/")]
            suffix = "exec" if rule.name == "create-exec" else "json"
            query = f"?{request.query}" if request.query else ""
            return f"{prefix}/containers/{full_id}/{suffix}{query}"
        return request.target

    async def _authorize_deploy(self, rule: Rule, ref: str | None, request: Request,
                                body: bytes) -> tuple[str, bytes]:
        """The checks of the ``--allow-deploy`` calls; the target and body to forward."""
        query = f"?{request.query}" if request.query else ""
        version = re.match(_VERSION + "(?=/)", request.path)
        prefix = version.group(0) if version else ""
        if rule.name == "inspect-image":
            assert ref is not None
            if any(part in ("", ".", "..") for part in ref.split("/")):
                raise HttpError(403, f"image name {ref!r} is not allowed")
            return request.target, body
        if rule.name == "create-container":
            check_create_body(body, self.deploy_labels)
            return request.target, body
        if rule.name == "connect-network":
            config = load_docker_json(body, "the network connect body")
            container = _field(config, "Container")
            if not isinstance(container, str) or not re.fullmatch(_CONTAINER, container):
                raise HttpError(400, "the network connect body names no container")
            full_id = await self._check_container(container, self.deploy_labels)
            rewritten = {k: v for k, v in config.items() if _fold(k) != "container"}
            rewritten["Container"] = full_id
            return request.target, json.dumps(rewritten).encode()
        assert ref is not None
        if body:
            raise HttpError(400, f"{request.method} {request.path} takes no request body")
        full_id = await self._check_container(ref, self.deploy_labels)
        action = request.path.rsplit("/", 1)[1] if rule.name != "remove-container" else ""
        path = f"{prefix}/containers/{full_id}" + (f"/{action}" if action else "")
        return f"{path}{query}", body

    async def _check_container(self, ref: str, *label_sets: Mapping[str, str]) -> str:
        """The container's full id when it carries every label of one of ``label_sets``
        (default: the container labels); HttpError otherwise."""
        label_sets = label_sets or (self.container_labels,)
        status, body = await self._get(f"/containers/{ref}/json")
        if status == 404:
            raise HttpError(404, f"No such container: {ref}")
        if status != 200:
            raise HttpError(502, f"inspecting container {ref} failed with status {status}")
        try:
            info = json.loads(body)
            labels = (info.get("Config") or {}).get("Labels") or {}
            full_id = str(info["Id"])
        except (ValueError, KeyError, AttributeError, TypeError):
            raise HttpError(502, f"unreadable inspection of container {ref}") from None
        for wanted in label_sets:
            missing = {k: v for k, v in wanted.items() if labels.get(k) != v}
            if not missing:
                return full_id
        raise HttpError(403, f"container {ref} does not carry the labels {missing}")

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(self.upstream, limit=MAX_HEAD)
        except OSError as exc:
            raise HttpError(502, f"cannot reach the Docker socket: {exc.strerror or exc}") from None

    async def _get(self, path: str) -> tuple[int, bytes]:
        """A GET of our own to the Docker API: its status and whole body."""
        up_reader, up_writer = await self._open_upstream()
        try:
            up_writer.write(f"GET {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n".encode())
            await up_writer.drain()
            head = parse_head(await up_reader.readuntil(b"\r\n\r\n"))
            status = int(head.start.split(" ")[1])
            body = bytearray()

            async def collect(data: bytes) -> None:
                body.extend(data)
                if len(body) > MAX_INSPECT:
                    raise HttpError(502, "the Docker API answer is too large")

            await copy_response_body(up_reader, "GET", status, head, collect)
            if head.get_all("transfer-encoding"):
                body = bytearray(_dechunk(bytes(body)))
            return status, bytes(body)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError) as exc:
            raise HttpError(502, f"bad answer from the Docker API: {exc}") from None
        finally:
            up_writer.close()

    async def _forward(self, rule: Rule, request: Request, target: str, body: bytes,
                       reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Send the request on; relay the answer. HttpError only before the client got a byte."""
        upgrade = request.head.get("upgrade") if rule.name == "start-exec" else None
        # The body's length is always ours: a client's Connection header must not be able to
        # strip it and leave Docker reading the body as a request of its own.
        headers = [(k, v) for k, v in request.head.end_to_end() if k.lower() != "content-length"]
        if body or request.method == "POST":
            headers.append(("Content-Length", str(len(body))))
        if upgrade:
            headers += [("Connection", "Upgrade"), ("Upgrade", upgrade)]
        else:
            headers.append(("Connection", "close"))
        up_reader, up_writer = await self._open_upstream()
        try:
            try:
                up_writer.write(_render(f"{request.method} {target} HTTP/1.1", headers) + body)
                await up_writer.drain()
                raw = await up_reader.readuntil(b"\r\n\r\n")
                head = parse_head(raw)
                status = int(head.start.split(" ")[1])
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError,
                    IndexError, HttpError) as exc:
                raise HttpError(502, f"bad answer from the Docker API: {exc or type(exc).__name__}") from None
            log.info("allow %s %s -> %d", request.method, request.path, status)

            async def to_client(data: bytes) -> None:
                writer.write(data)
                await writer.drain()

            if status == 101 and upgrade:
                await to_client(raw)
                await asyncio.sleep(UPGRADE_SETTLE)
                await _tunnel(reader, writer, up_reader, up_writer)
                return
            codings = head.get_all("transfer-encoding")
            await to_client(_render(head.start, [
                *head.end_to_end(), *(("Transfer-Encoding", v) for v in codings), ("Connection", "close")]))
            await copy_response_body(up_reader, request.method, status, head, to_client)
        finally:
            up_writer.close()


async def _tunnel(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                  up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
    """Bytes both ways until Docker closes the stream (the exec ended)."""

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()

    to_docker = asyncio.create_task(pump(client_reader, up_writer))
    try:
        await pump(up_reader, client_writer)
    finally:
        to_docker.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await to_docker


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";", 1)[0], 16)
        if size == 0:
            return bytes(out)
        out += data[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen must be HOST:PORT, not {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(listen: str, upstream: str, container_labels: Mapping[str, str], *, allow_deploy: bool = False,
                deploy_labels: Mapping[str, str] | None = None) -> None:
    host, port = _split_listen(listen)
    proxy = SocketProxy(upstream, container_labels=container_labels, allow_deploy=allow_deploy,
                        deploy_labels=deploy_labels)
    server = await proxy.start(host, port)
    if allow_deploy:
        log.info("deploying allowed for containers labelled %s", proxy.deploy_labels)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.close)
    log.info("listening on %s:%d for the Docker socket %s; container labels %s", host, port, upstream,
             container_labels or "(any container)")
    async with server:
        with contextlib.suppress(asyncio.CancelledError):
            await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> None:
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m jerp_jobs.socket_proxy", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default=env.get("JERP_PROXY_LISTEN", "0.0.0.0:2375"), help="HOST:PORT")
    parser.add_argument("--upstream", default=env.get("JERP_PROXY_UPSTREAM", "/var/run/docker.sock"),
                        help="the Docker socket")
    parser.add_argument("--container-labels", default=env.get("JERP_PROXY_CONTAINER_LABELS", ""),
                        help="KEY=VALUE,... a container needs for inspect and exec (default: any)")
    parser.add_argument("--allow-deploy", action="store_true",
                        default=env.get("JERP_PROXY_ALLOW_DEPLOY", "").strip().lower() in ("1", "true", "yes", "on"),
                        help="also allow what jerp_jobs.deploy.DockerDeployer calls, for labelled containers")
    parser.add_argument("--deploy-labels", default=env.get("JERP_PROXY_DEPLOY_LABELS", ""),
                        help="KEY=VALUE,... a container needs to be deployed (default: the compose project "
                             "label of --container-labels)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s socket-proxy: %(message)s")
    try:
        labels = parse_labels(args.container_labels)
        deploy_labels = parse_labels(args.deploy_labels) or default_deploy_labels(labels)
        _split_listen(args.listen)
        if args.allow_deploy and not deploy_labels:
            raise ValueError("--allow-deploy needs --deploy-labels (or --container-labels)")
    except ValueError as exc:
        parser.error(str(exc))
    asyncio.run(serve(args.listen, args.upstream, labels, allow_deploy=args.allow_deploy,
                      deploy_labels=deploy_labels))


if __name__ == "__main__":
    main()
