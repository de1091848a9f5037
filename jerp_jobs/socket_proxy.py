"""A Docker Engine API proxy that lets through only the calls the Docker executor makes.

In the jobs stack only this process mounts the Docker socket; the workers reach Docker through
it (``DOCKER_HOST=tcp://docker-proxy:2375``). Access to the socket is root on the host, so the
proxy answers ``403`` (with a JSON ``message``, which docker-py raises as ``APIError``) to
everything but, with or without a ``/vX.Y`` version prefix:

    GET|HEAD /_ping, GET /version      client start-up (API version negotiation)
    GET  /containers/json              find the backend container by its compose labels
    GET  /containers/{id}/json         the backend's state after a failed command
    POST /containers/{id}/exec         create an exec (never a privileged one; as the exec user)
    POST /exec/{id}/start              run it and stream its output (HTTP upgrade, hijacked)
    GET  /exec/{id}/json               its exit code

With container labels configured (``--container-labels``), inspect and exec are limited to
containers carrying all of them (the platform's backend): a compromised worker can neither
exec into another container (the database, this proxy) nor read another one's environment.
Exec ids are bound to the container they were created in: only the ids Docker answered to an
exec create through this proxy can be started or inspected (:class:`ExecRegistry`). An exec
runs as the exec user (``--exec-user``, default ``frappe``: the bench's) and no other: not
root, not a uid, not ``user:group``, not the container's default.

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
                                     it holds only what a recreate of a platform container
                                     needs (:func:`check_create_body`): Docker's container
                                     Config at the top level, HostConfig fields from an
                                     allowlist with their allowed values (no host ports, host
                                     namespaces or cgroups, devices, capabilities, remote log
                                     drivers, host paths...), the project's networks
    POST   /containers/{id}/start|stop|rename, DELETE /containers/{id}
                                     labelled containers only, no request body (an old API
                                     version would read a HostConfig from start's body)
    POST   /networks/{id}/connect    only when the body's Container is a labelled container and
                                     the network the project's (``<project>_...``) or one of
                                     ``--deploy-networks``

Create bodies are read the way Docker reads them: keys without regard to case (a key given
twice in two spellings is refused), host settings both under ``HostConfig`` and at the top
level (older API versions read them there). Containers are forwarded by their full id, as for
exec.

TLS (for a bench whose worker runs on another host, docs/fleet.md). By default the proxy speaks
plain HTTP, for the internal network of its own host. With ``--tls-cert``, ``--tls-key`` and
``--tls-client-ca`` (``JERP_PROXY_TLS_CERT``, ``JERP_PROXY_TLS_KEY``,
``JERP_PROXY_TLS_CLIENT_CA``; all three or none) it speaks TLS only (1.2 or later) and requires
every client to present a certificate signed by the client CA: a client without one, or with
one of another CA, is refused during the handshake, before a byte of HTTP is read, and logged
with its address. The allowlist applies unchanged behind it.

Run: ``python -m jerp_jobs.socket_proxy --listen 0.0.0.0:2375 --upstream /var/run/docker.sock``
(or the ``JERP_PROXY_LISTEN``, ``JERP_PROXY_UPSTREAM``, ``JERP_PROXY_CONTAINER_LABELS``,
``JERP_PROXY_EXEC_USER``, ``JERP_PROXY_ALLOW_DEPLOY``, ``JERP_PROXY_DEPLOY_LABELS``,
``JERP_PROXY_DEPLOY_NETWORKS`` and ``JERP_PROXY_TLS_*`` variables). Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
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


@dataclass(frozen=True)
class DeployPolicy:
    """What a container created in deploy mode may have: the deploy ``labels``, volumes and
    networks of the compose project they name (``<project>_...``) plus the extra ``networks``
    by name, and ``CgroupnsMode: host`` only where it is Docker's own default (cgroup v1:
    every container there is created with it)."""

    labels: Mapping[str, str]
    networks: frozenset[str] = frozenset()
    cgroupns_host: bool = False

    @property
    def project(self) -> str | None:
        return self.labels.get(_PROJECT_LABEL)

    def network_allowed(self, name: str) -> bool:
        if name in self.networks:
            return True
        if not _VOLUME_NAME.fullmatch(name) or name in ("host", "bridge", "default", "none"):
            return False
        return self.project is None or name.startswith(f"{self.project}_")


#: The fields of a create body's top level (Docker's container Config). Host settings there
#: (which old API versions read) are refused: the project sends them under HostConfig.
_CONFIG_FIELDS = frozenset(_fold(name) for name in (
    "Hostname", "Domainname", "User", "AttachStdin", "AttachStdout", "AttachStderr", "ExposedPorts", "Tty",
    "OpenStdin", "StdinOnce", "Env", "Cmd", "Healthcheck", "ArgsEscaped", "Image", "Volumes", "WorkingDir",
    "Entrypoint", "NetworkDisabled", "MacAddress", "OnBuild", "Labels", "StopSignal", "StopTimeout", "Shell",
    "HostConfig", "NetworkingConfig"))
#: Local log drivers (nothing leaves the host) and the options each may have.
_LOG_OPTIONS: dict[str, frozenset[str]] = {
    "json-file": frozenset({"max-size", "max-file", "compress", "labels", "labels-regex", "env", "env-regex",
                            "tag"}),
    "local": frozenset({"max-size", "max-file", "compress"}),
    "journald": frozenset({"labels", "labels-regex", "env", "env-regex", "tag"}),
    "none": frozenset(),
}
_LOG_VALUES = {"max-size": re.compile(r"[0-9]{1,15}[kmgKMG]?"), "max-file": re.compile(r"[0-9]{1,4}"),
               "compress": re.compile(r"true|false")}
_LOG_VALUE_MAX = 256
#: Network modes that name no network of their own: the default bridge, or no network at all.
_PLAIN_NETWORK_MODES = frozenset({"", "default", "bridge", "none"})

HostCheck = Callable[[str, object, "_Object", DeployPolicy], None]


def _free(name: str, value: object, settings: _Object, policy: DeployPolicy) -> None:
    """Settings that only limit or describe the container itself."""


def _empty(name: str, value: object, settings: _Object, policy: DeployPolicy) -> None:
    if value not in (None, "", 0, False, [], {}):
        raise HttpError(403, f"{name} {_shown(value)} is not allowed (HostConfig)")


def _one_of(*allowed: object) -> HostCheck:
    def check(name: str, value: object, settings: _Object, policy: DeployPolicy) -> None:
        if value is not None and value not in allowed:
            raise HttpError(403, f"{name} {_shown(value)} is not allowed (HostConfig)")
    return check


def _shown(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _privileged(name: str, value: object, settings: _Object, policy: DeployPolicy) -> None:
    if value:
        raise HttpError(403, "privileged containers are not allowed (HostConfig)")


def _port_bindings(name: str, value: object, settings: _Object, policy: DeployPolicy) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or any(binding not in (None, []) for binding in value.values()):
        raise HttpError(403, f"PortBindings {_shown(value)} is not allowed: no host port is published (HostConfig)")


def _cgroupns_mode(name: str, value: object, settings: _Object, policy: DeployPolicy) -> None:
    if value in (None, "", "private") or (value == "host" and policy.cgroupns_host):
        return
    raise HttpError(403, f"CgroupnsMode {_shown(value)} is not allowed (HostConfig): only private, or host "
                         "where it is Docker's default (cgroup v1)")


def _network_mode(name: str, value: object, settings: _Object, policy: DeployPolicy) -> None:
    if value is None or value in _PLAIN_NETWORK_MODES:
        return
    if not isinstance(value, str) or not policy.network_allowed(value):
        raise HttpError(403, f"NetworkMode {_shown(value)} is not allowed (HostConfig): only a network of the "
                             "platform, bridge or none")


def _links(name: str, value: object, settings: _Object, policy: DeployPolicy) -> None:
    """Legacy links share the linked container's environment on the default bridge; on a
    user-defined network they are aliases only."""
    if not _strings(value, "Links"):
        return
    mode = _field(settings, "NetworkMode")
    if mode is None or mode in _PLAIN_NETWORK_MODES:
        raise HttpError(403, "Links are allowed only on a network of the platform (HostConfig)")


def _log_config(name: str, value: object, settings: _Object, policy: DeployPolicy) -> None:
    if value is None:
        return
    if not isinstance(value, _Object):
        raise HttpError(400, "LogConfig must be an object")
    for key, _ in value.pairs:
        if _fold(key) not in ("type", "config"):
            raise HttpError(403, f"the LogConfig field {key!r} is not allowed")
    driver = _field(value, "Type")
    options = _field(value, "Config")
    if options is not None and not isinstance(options, dict):
        raise HttpError(400, "LogConfig.Config must be an object")
    options = options or {}
    if driver in (None, ""):
        # Options without a driver are given to the daemon's default driver, whatever it is.
        if options:
            raise HttpError(403, "log options without a log driver are not allowed (LogConfig)")
        return
    if driver not in _LOG_OPTIONS:
        raise HttpError(403, f"the log driver {_shown(driver)} is not allowed (LogConfig): only "
                             f"{', '.join(sorted(_LOG_OPTIONS))}, which keep the logs on the host")
    for key, option in options.items():
        if key not in _LOG_OPTIONS[driver]:
            raise HttpError(403, f"the log option {key!r} is not allowed for {driver} (LogConfig)")
        pattern = _LOG_VALUES.get(key)
        if not isinstance(option, str) or len(option) > _LOG_VALUE_MAX or (pattern and not pattern.fullmatch(option)):
            raise HttpError(403, f"the log option {key}={_shown(option)} is not allowed (LogConfig)")


def _runtime(name: str, value: object, settings: _Object, policy: DeployPolicy) -> None:
    if value not in (None, "", "runc"):
        raise HttpError(403, f"the runtime {value!r} is not allowed (HostConfig)")


def _volume_driver(name: str, value: object, settings: _Object, policy: DeployPolicy) -> None:
    if value not in (None, "", "local"):
        raise HttpError(403, f"the volume driver {value!r} is not allowed (HostConfig)")


def _security_opt(name: str, value: object, settings: _Object, policy: DeployPolicy) -> None:
    for option in _strings(value, "SecurityOpt"):
        if not _NO_NEW_PRIVILEGES.fullmatch(option.strip()):
            raise HttpError(403, f"the security option {option!r} is not allowed (HostConfig)")


def _default_paths(required: frozenset[str]) -> HostCheck:
    def check(name: str, value: object, settings: _Object, policy: DeployPolicy) -> None:
        if value is not None and not required <= set(_strings(value, name)):
            raise HttpError(403, f"{name} must keep Docker's defaults (HostConfig)")
    return check


def _oom_score_adj(name: str, value: object, settings: _Object, policy: DeployPolicy) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1000):
        raise HttpError(403, f"OomScoreAdj {_shown(value)} is not allowed (HostConfig): only 0 to 1000")


def _binds(name: str, value: object, settings: _Object, policy: DeployPolicy) -> None:
    for bind in _strings(value, "Binds"):
        source, sep, _ = bind.partition(":")
        if sep and not _volume_allowed(source, policy.project):
            raise HttpError(403, f"the bind {bind!r} is not a named volume of the platform (HostConfig)")


def _mounts(name: str, value: object, settings: _Object, policy: DeployPolicy) -> None:
    if value is not None and not isinstance(value, list):
        raise HttpError(400, "Mounts must be a list")
    for mount in value or []:
        kind = _field(mount, "Type")
        if kind == "tmpfs":
            continue
        if kind != "volume":
            raise HttpError(403, f"{kind!r} mounts are not allowed (HostConfig)")
        source = _field(mount, "Source")
        if source not in (None, "") and not (isinstance(source, str) and _volume_allowed(source, policy.project)):
            raise HttpError(403, f"the mount source {source!r} is not a named volume of the platform (HostConfig)")
        if _field(_field(mount, "VolumeOptions"), "DriverConfig"):
            raise HttpError(403, "volume driver options are not allowed (HostConfig)")


#: Every HostConfig field Docker reports when inspecting a container (API 1.41 to 1.47), which
#: is what ``jerp_jobs.deploy.replacement_config`` sends back, each with what it may hold: any
#: value where it only limits or describes the container, the zero value where anything else
#: would reach the host. A field not listed is refused.
_HOST_CONFIG: dict[str, HostCheck] = {
    # Limits and plain settings of the container itself.
    **dict.fromkeys((
        "RestartPolicy", "AutoRemove", "ConsoleSize", "CapDrop", "Dns", "DnsOptions", "DnsSearch", "ExtraHosts",
        "GroupAdd", "ReadonlyRootfs", "ShmSize", "Tmpfs", "Init", "CpuShares", "Memory", "NanoCpus",
        "BlkioWeight", "CpuPeriod", "CpuQuota", "CpusetCpus", "CpusetMems", "MemoryReservation", "MemorySwap",
        "MemorySwappiness", "PidsLimit", "Ulimits", "CpuCount", "CpuPercent", "IOMaximumIOps",
        "IOMaximumBandwidth", "KernelMemory", "KernelMemoryTCP"), _free),
    # The zero value only: anything else reaches the host or another container.
    **dict.fromkeys((
        "ContainerIDFile", "CapAdd", "Capabilities", "Devices", "DeviceRequests", "DeviceCgroupRules",
        "VolumesFrom", "CgroupParent", "Cgroup", "PidMode", "UTSMode", "UsernsMode", "PublishAllPorts",
        "Sysctls", "StorageOpt", "Annotations", "OomKillDisable", "CpuRealtimePeriod", "CpuRealtimeRuntime",
        "BlkioWeightDevice", "BlkioDeviceReadBps", "BlkioDeviceWriteBps", "BlkioDeviceReadIOps",
        "BlkioDeviceWriteIOps"), _empty),
    "Privileged": _privileged,
    "PortBindings": _port_bindings,
    "CgroupnsMode": _cgroupns_mode,
    "IpcMode": _one_of("", "private", "shareable", "none"),
    "Isolation": _one_of("", "default"),
    "NetworkMode": _network_mode,
    "Links": _links,
    "LogConfig": _log_config,
    "Runtime": _runtime,
    "VolumeDriver": _volume_driver,
    "SecurityOpt": _security_opt,
    "MaskedPaths": _default_paths(_MASKED_PATHS),
    "ReadonlyPaths": _default_paths(_READONLY_PATHS),
    "OomScoreAdj": _oom_score_adj,
    "Binds": _binds,
    "Mounts": _mounts,
}
_HOST_CONFIG_BY_FOLD = {_fold(name): (name, check) for name, check in _HOST_CONFIG.items()}


def _check_known_fields(obj: _Object, known: Callable[[str], bool], where: str) -> None:
    """Refuse a field given twice (in any spelling) or one ``known`` does not accept."""
    seen: dict[str, int] = {}
    for key, _ in obj.pairs:
        seen[_fold(key)] = seen.get(_fold(key), 0) + 1
        if seen[_fold(key)] > 1:
            raise HttpError(400, f"the field {key} is given {seen[_fold(key)]} times")
    for key, _ in obj.pairs:
        if not known(_fold(key)):
            raise HttpError(403, f"the field {key!r} is not allowed {where}: only what a recreate of the "
                                 "platform's containers sends is")


def check_host_config(host_config: object, policy: DeployPolicy) -> None:
    """Refuse a HostConfig with a field not in the allowlist, or a value that reaches the host."""
    if host_config is None:
        return
    if not isinstance(host_config, _Object):
        raise HttpError(400, "HostConfig must be an object")
    _check_known_fields(host_config, lambda key: key in _HOST_CONFIG_BY_FOLD, "in HostConfig")
    for key, value in host_config.pairs:
        name, check = _HOST_CONFIG_BY_FOLD[_fold(key)]
        check(name, value, host_config, policy)


def _check_endpoints(endpoints: object, policy: DeployPolicy) -> None:
    if endpoints is None:
        return
    if not isinstance(endpoints, dict):
        raise HttpError(400, "EndpointsConfig must be an object")
    for network, endpoint in endpoints.items():
        _check_network(network, policy)
        _check_endpoint(endpoint)


def _check_network(network: str, policy: DeployPolicy) -> None:
    if network.casefold() == "host":
        raise HttpError(403, "the host network is not allowed")
    if not policy.network_allowed(network):
        raise HttpError(403, f"the network {network!r} is not a network of the platform")


def _check_endpoint(endpoint: object) -> None:
    if endpoint is not None and not isinstance(endpoint, dict):
        raise HttpError(400, "an endpoint configuration must be an object")
    if _field(endpoint, "DriverOpts"):
        raise HttpError(403, "network driver options are not allowed")


def check_create_body(body: bytes, policy: DeployPolicy) -> None:
    """Refuse a ``POST /containers/create`` body that does not make a labelled container of the
    platform, or that has anything a recreate of one does not need: top-level fields are the
    container's own (Docker's Config), HostConfig fields are allowlisted with their values
    (:data:`_HOST_CONFIG`), networks are the platform's. With the compose project among the
    labels, volumes must be the project's own (``<project>_name``) or anonymous ones."""
    config = load_docker_json(body, "the container configuration")
    given = _field(config, "Labels")
    given = given if isinstance(given, dict) else {}
    missing = {k: v for k, v in policy.labels.items() if given.get(k) != v}
    if missing:
        raise HttpError(403, f"the new container does not carry the labels {missing}")
    _check_known_fields(config, lambda key: key in _CONFIG_FIELDS, "at the top level of the container configuration")
    check_host_config(_field(config, "HostConfig"), policy)
    networking = _field(config, "NetworkingConfig")
    if networking is not None:
        if not isinstance(networking, _Object):
            raise HttpError(400, "NetworkingConfig must be an object")
        _check_known_fields(networking, lambda key: key == _fold("EndpointsConfig"), "in NetworkingConfig")
        _check_endpoints(_field(networking, "EndpointsConfig"), policy)


def _wants_host_cgroupns(body: bytes) -> bool:
    """Whether a create body asks for ``CgroupnsMode: host`` (then the daemon's cgroup version
    decides)."""
    try:
        return _field(_field(load_docker_json(body, "the container configuration"), "HostConfig"),
                      "CgroupnsMode") == "host"
    except HttpError:
        return False


#: How many execs the proxy remembers, and for how long after their last use (a running exec's
#: stream counts as use until it ends).
EXEC_LIMIT = 65536
EXEC_TTL = 24 * 3600.0
DEFAULT_EXEC_USER = "frappe"


class ExecRegistry:
    """The execs this proxy created, by id, with the container each was created in.

    Only these may be started or inspected through the proxy: an exec id learnt elsewhere (one
    created in another container by another client of the Docker socket, or guessed) is refused.
    Bounded: past ``limit`` ids the least recently used idle one is forgotten; an id unused for
    ``ttl`` seconds (its stream closed) is forgotten too. Kept in memory: after a restart of the
    proxy, execs created before it can no longer be started or inspected through it.
    """

    def __init__(self, *, limit: int = EXEC_LIMIT, ttl: float = EXEC_TTL,
                 clock: Callable[[], float] | None = None) -> None:
        self.limit = limit
        self.ttl = ttl
        self._clock = clock or time.monotonic
        self._entries: collections.OrderedDict[str, tuple[str, float]] = collections.OrderedDict()
        self._open: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, exec_id: str, container_id: str) -> None:
        self._entries[exec_id] = (container_id, self._clock())
        self._entries.move_to_end(exec_id)
        self._prune()

    def container_of(self, exec_id: str) -> str | None:
        """The container the exec was created in (and the exec counts as used now), or None."""
        entry = self._entries.get(exec_id)
        if entry is None:
            return None
        if exec_id not in self._open and self._clock() - entry[1] > self.ttl:
            del self._entries[exec_id]
            return None
        self._entries[exec_id] = (entry[0], self._clock())
        self._entries.move_to_end(exec_id)
        return entry[0]

    @contextlib.contextmanager
    def in_use(self, exec_id: str) -> Iterator[None]:
        """While the exec's stream is open: never forgotten, and used until its end."""
        self._open[exec_id] = self._open.get(exec_id, 0) + 1
        try:
            yield
        finally:
            self._open[exec_id] -= 1
            if not self._open[exec_id]:
                del self._open[exec_id]
            if exec_id in self._entries:
                self._entries[exec_id] = (self._entries[exec_id][0], self._clock())
                self._entries.move_to_end(exec_id)

    def _prune(self) -> None:
        now = self._clock()
        for exec_id, (_, used) in list(self._entries.items()):
            if len(self._entries) <= self.limit and now - used <= self.ttl:
                break  # oldest first: the rest are newer
            if exec_id not in self._open:
                del self._entries[exec_id]


class SocketProxy:
    """Serves the allowlisted part of the Docker API on TCP, from the Docker socket ``upstream``."""

    def __init__(self, upstream: str, *, container_labels: Mapping[str, str] | None = None,
                 rules: Sequence[Rule] = RULES, allow_deploy: bool = False,
                 deploy_labels: Mapping[str, str] | None = None, deploy_networks: Sequence[str] = (),
                 exec_user: str = DEFAULT_EXEC_USER, execs: ExecRegistry | None = None) -> None:
        self.upstream = upstream
        self.container_labels = dict(container_labels or {})
        self.allow_deploy = allow_deploy
        self.deploy_labels = dict(deploy_labels) if deploy_labels else default_deploy_labels(self.container_labels)
        if allow_deploy and not self.deploy_labels:
            raise ValueError("deploying needs labels that mark the platform's containers (--deploy-labels)")
        self.deploy_networks = frozenset(n for n in deploy_networks if n)
        if not exec_user or not exec_user.strip() or exec_user != exec_user.strip():
            raise ValueError("the exec user must be a user name (--exec-user)")
        self.exec_user = exec_user
        self.execs = execs if execs is not None else ExecRegistry()
        self.rules = tuple(rules) + (DEPLOY_RULES if allow_deploy else ())
        self._cgroup_v1: bool | None = None

    async def start(self, host: str, port: int, *, tls: ssl.SSLContext | None = None) -> asyncio.Server:
        """Listen on ``host:port``; with ``tls`` (:func:`server_tls_context`) over TLS only: each
        connection's handshake is made before anything is read, and a refused one is logged."""
        if tls is None:
            return await asyncio.start_server(self.handle, host, port, limit=MAX_HEAD)

        async def handle_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername")
            try:
                await writer.start_tls(tls, ssl_handshake_timeout=HEAD_TIMEOUT)
            except (ssl.SSLError, ConnectionError, OSError, asyncio.TimeoutError) as exc:
                # a connection closed before it said anything (a health check, a port scan) is
                # not a client that was refused
                quiet = isinstance(exc, (ssl.SSLEOFError, ConnectionError)) or (
                    isinstance(exc, ssl.SSLError) and exc.reason == "UNEXPECTED_EOF_WHILE_READING")
                log.log(logging.DEBUG if quiet else logging.WARNING, "refuse a TLS client from %s: %s",
                        _peer(peer), _tls_reason(exc))
                writer.transport.abort()
                return
            await self.handle(reader, writer)

        return await asyncio.start_server(handle_tls, host, port, limit=MAX_HEAD)

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
            if rule.name == "create-exec":
                await self._forward_create_exec(request, target, body, writer)
            elif rule.name == "start-exec":
                assert ref is not None
                with self.execs.in_use(ref):
                    await self._forward(rule, request, target, body, reader, writer)
            else:
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
            self._check_exec_config(body)
        if rule.name in ("start-exec", "inspect-exec"):
            assert ref is not None
            self._check_exec_id(ref)
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

    def _check_exec_config(self, body: bytes) -> None:
        """An exec runs unprivileged, as the configured user (the bench's), nobody else.

        Docker decodes JSON keys without regard to case (``privileged``, ``user`` count too);
        a field given twice is refused. ``User`` must be exactly the exec user: no other name,
        no uid, no ``user:group``, and not left out (the container's default user)."""
        config = load_docker_json(body, "the exec configuration")
        if _field(config, "Privileged"):
            raise HttpError(403, "privileged execs are not allowed")
        user = _field(config, "User")
        if user != self.exec_user:
            shown = "no user" if user in (None, "") else f"the user {_shown(user)}"
            raise HttpError(403, f"execs run as {self.exec_user!r} only, not as {shown}")

    def _check_exec_id(self, exec_id: str) -> None:
        if self.execs.container_of(exec_id) is None:
            raise HttpError(403, f"exec {exec_id} was not created through this proxy (or is forgotten): only "
                                 "execs it created in an allowed container may be started or inspected")

    async def _forward_create_exec(self, request: Request, target: str, body: bytes,
                                   writer: asyncio.StreamWriter) -> None:
        """Create the exec; remember the id Docker gives it, for the container it is in; relay
        the answer."""
        headers = [(k, v) for k, v in request.head.end_to_end() if k.lower() != "content-length"]
        headers += [("Content-Length", str(len(body))), ("Connection", "close")]
        head, status, answer = await self._exchange(f"{request.method} {target} HTTP/1.1", headers, body)
        log.info("allow %s %s -> %d", request.method, request.path, status)
        if status == 201:
            container = target.split("/containers/", 1)[1].split("/", 1)[0]
            try:
                exec_id = json.loads(answer)["Id"]
            except (ValueError, KeyError, TypeError):
                raise HttpError(502, "the Docker API answered an exec create without an id") from None
            if not isinstance(exec_id, str) or not re.fullmatch(_EXEC, exec_id):
                raise HttpError(502, "the Docker API answered an exec create with an unusable id")
            self.execs.remember(exec_id, container)
        kept = [(k, v) for k, v in head.end_to_end() if k.lower() != "content-length"]
        with contextlib.suppress(ConnectionError):
            writer.write(_render(head.start, [*kept, ("Content-Length", str(len(answer))), ("Connection", "close")])
                         + answer)
            await writer.drain()

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
            cgroupns_host = await self._cgroup_is_v1() if _wants_host_cgroupns(body) else False
            check_create_body(body, self._deploy_policy(cgroupns_host=cgroupns_host))
            return request.target, body
        if rule.name == "connect-network":
            assert ref is not None
            _check_network(ref, self._deploy_policy())
            config = load_docker_json(body, "the network connect body")
            _check_endpoint(_field(config, "EndpointConfig"))
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

    def _deploy_policy(self, *, cgroupns_host: bool = False) -> DeployPolicy:
        return DeployPolicy(self.deploy_labels, self.deploy_networks, cgroupns_host)

    async def _cgroup_is_v1(self) -> bool:
        """Whether the daemon runs on cgroup v1 (``GET /info``; asked once)."""
        if self._cgroup_v1 is None:
            status, body = await self._get("/info")
            try:
                version = json.loads(body).get("CgroupVersion") if status == 200 else None
            except (ValueError, AttributeError):
                version = None
            self._cgroup_v1 = version == "1"
        return self._cgroup_v1

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
        _, status, body = await self._exchange(f"GET {path} HTTP/1.1", [("Host", "docker"), ("Connection", "close")])
        return status, body

    async def _exchange(self, start: str, headers: Sequence[tuple[str, str]],
                        body: bytes = b"") -> tuple[Head, int, bytes]:
        """One request to the Docker API: the answer's head, status and whole (de-chunked) body."""
        method = start.split(" ", 1)[0]
        up_reader, up_writer = await self._open_upstream()
        try:
            up_writer.write(_render(start, headers) + body)
            await up_writer.drain()
            head = parse_head(await up_reader.readuntil(b"\r\n\r\n"))
            status = int(head.start.split(" ")[1])
            answer = bytearray()

            async def collect(data: bytes) -> None:
                answer.extend(data)
                if len(answer) > MAX_INSPECT:
                    raise HttpError(502, "the Docker API answer is too large")

            await copy_response_body(up_reader, method, status, head, collect)
            if head.get_all("transfer-encoding"):
                answer = bytearray(_dechunk(bytes(answer)))
            return head, status, bytes(answer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError,
                IndexError) as exc:
            raise HttpError(502, f"bad answer from the Docker API: {exc or type(exc).__name__}") from None
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


def _peer(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "?")


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason
    return str(exc) or type(exc).__name__


def server_tls_context(cert: str, key: str, client_ca: str) -> ssl.SSLContext:
    """TLS for the proxy: its certificate and key; TLS 1.2 or later; every client must present
    a certificate signed by ``client_ca`` (checked in the handshake). ValueError naming the
    file that cannot be used."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot use the certificate {cert!r} with the key {key!r}: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        context.load_verify_locations(cafile=client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot use the client CA {client_ca!r}: {getattr(exc, 'strerror', None) or exc}") from None
    return context


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen must be HOST:PORT, not {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(listen: str, upstream: str, container_labels: Mapping[str, str], *, allow_deploy: bool = False,
                deploy_labels: Mapping[str, str] | None = None, deploy_networks: Sequence[str] = (),
                exec_user: str = DEFAULT_EXEC_USER, tls: ssl.SSLContext | None = None) -> None:
    host, port = _split_listen(listen)
    proxy = SocketProxy(upstream, container_labels=container_labels, allow_deploy=allow_deploy,
                        deploy_labels=deploy_labels, deploy_networks=deploy_networks, exec_user=exec_user)
    server = await proxy.start(host, port, tls=tls)
    if allow_deploy:
        log.info("deploying allowed for containers labelled %s; extra networks %s", proxy.deploy_labels,
                 sorted(proxy.deploy_networks) or "(none)")
    log.info("execs run as %r only", proxy.exec_user)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.close)
    log.info("listening on %s:%d (%s) for the Docker socket %s; container labels %s", host, port,
             "TLS, client certificates required" if tls is not None else "plain HTTP", upstream,
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
    parser.add_argument("--deploy-networks", default=env.get("JERP_PROXY_DEPLOY_NETWORKS", ""),
                        help="NAME,... networks a deployed container may join besides its compose project's "
                             "(<project>_...)")
    parser.add_argument("--exec-user", default=env.get("JERP_PROXY_EXEC_USER", DEFAULT_EXEC_USER),
                        help="the only user an exec may run as (the bench's; default: frappe)")
    parser.add_argument("--tls-cert", default=env.get("JERP_PROXY_TLS_CERT", ""),
                        help="serve TLS with this certificate (PEM; with --tls-key and --tls-client-ca)")
    parser.add_argument("--tls-key", default=env.get("JERP_PROXY_TLS_KEY", ""), help="the certificate's key (PEM)")
    parser.add_argument("--tls-client-ca", default=env.get("JERP_PROXY_TLS_CLIENT_CA", ""),
                        help="clients must present a certificate signed by this CA (PEM)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s socket-proxy: %(message)s")
    try:
        labels = parse_labels(args.container_labels)
        deploy_labels = parse_labels(args.deploy_labels) or default_deploy_labels(labels)
        _split_listen(args.listen)
        if args.allow_deploy and not deploy_labels:
            raise ValueError("--allow-deploy needs --deploy-labels (or --container-labels)")
        deploy_networks = [n.strip() for n in args.deploy_networks.split(",") if n.strip()]
        exec_user = args.exec_user.strip()
        if not exec_user:
            raise ValueError("--exec-user (JERP_PROXY_EXEC_USER) must name the bench's user")
        tls = tls_from_options(args.tls_cert, args.tls_key, args.tls_client_ca)
    except ValueError as exc:
        parser.error(str(exc))
    asyncio.run(serve(args.listen, args.upstream, labels, allow_deploy=args.allow_deploy,
                      deploy_labels=deploy_labels, deploy_networks=deploy_networks, exec_user=exec_user,
                      tls=tls))


def tls_from_options(cert: str, key: str, client_ca: str) -> ssl.SSLContext | None:
    """The TLS context the three options describe; None when none is given; ValueError when
    only some are (TLS here always requires client certificates)."""
    given = {"--tls-cert (JERP_PROXY_TLS_CERT)": cert.strip(), "--tls-key (JERP_PROXY_TLS_KEY)": key.strip(),
             "--tls-client-ca (JERP_PROXY_TLS_CLIENT_CA)": client_ca.strip()}
    if not any(given.values()):
        return None
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise ValueError(f"TLS needs a certificate, its key and the CA of the clients' certificates: "
                         f"{', '.join(missing)} not set")
    return server_tls_context(cert.strip(), key.strip(), client_ca.strip())


if __name__ == "__main__":
    main()
