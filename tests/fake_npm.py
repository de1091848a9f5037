"""A stand-in for Nginx Proxy Manager's REST API: a real HTTP server on 127.0.0.1.

It answers what :mod:`jerp_jobs.integrations.npm` uses, the way NPM v2.13 does:

- ``GET /api/``: health, ``{"status": "OK", "setup": true, "version": {...}}``.
- ``POST /api/tokens``: checks ``identity``/``secret`` (wrong ones: 400 "Invalid email or password",
  401 on v2.12 — see ``auth_status``); with ``two_factor`` it answers a 2FA challenge instead.
- ``GET|POST /api/nginx/proxy-hosts``, ``GET|PUT|DELETE /api/nginx/proxy-hosts/<id>``: need
  ``Authorization: Bearer <token>`` (none: 403 "Permission Denied"; an unknown one: 500, since
  NPM does not make JWT failures public). Bodies are validated against the JSON schemas of
  ``backend/schema/paths/nginx/proxy-hosts/post.json`` and ``{hostID}/put.json`` (properties
  common to v2.12 to v2.15), with Ajv's messages; unlike NPM's Ajv, types are not coerced.
  A domain already used answers 400 "<domain> is already in use".
- ``certificate_id: "new"`` behaves like NPM: the host is stored with ``ssl_forced`` and
  ``http2_support`` cleared, then gets its certificate; with ``certificate_fails`` the host is kept
  without a certificate and the answer is 500 "Internal Error".

Errors have NPM's shape: ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

_BOOLEAN: dict[str, Any] = {"type": "boolean"}

#: ``components/proxy-host-object.json`` properties the create and update schemas refer to.
PROXY_HOST_PROPERTIES: dict[str, Any] = {
    "domain_names": {
        "type": "array",
        "minItems": 1,
        "maxItems": 100,
        "uniqueItems": True,
        "items": {"type": "string", "pattern": "^[^&| @!#%^();:/\\\\}{=+?<>,~`'\"]+$"},
    },
    "forward_scheme": {"type": "string", "enum": ["http", "https"]},
    "forward_host": {"type": "string", "minLength": 1, "maxLength": 255},
    "forward_port": {"type": "integer", "minimum": 1, "maximum": 65535},
    "certificate_id": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^new$"}]},
    "ssl_forced": _BOOLEAN,
    "hsts_enabled": _BOOLEAN,
    "hsts_subdomains": _BOOLEAN,
    "http2_support": _BOOLEAN,
    "block_exploits": _BOOLEAN,
    "caching_enabled": _BOOLEAN,
    "allow_websocket_upgrade": _BOOLEAN,
    "access_list_id": {"type": "integer", "minimum": 0},
    "advanced_config": {"type": "string"},
    "enabled": _BOOLEAN,
    "meta": {"type": "object"},
    "locations": {
        "type": "array",
        "minItems": 0,
        "items": {
            "type": "object",
            "required": ["forward_scheme", "forward_host", "forward_port", "path"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": ["integer", "null"]},
                "path": {"type": "string", "minLength": 1},
                "forward_scheme": {"type": "string", "enum": ["http", "https"]},
                "forward_host": {"type": "string", "minLength": 1, "maxLength": 255},
                "forward_port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "forward_path": {"type": "string"},
                "advanced_config": {"type": "string"},
            },
        },
    },
}

CREATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["domain_names", "forward_scheme", "forward_host", "forward_port"],
    "properties": PROXY_HOST_PROPERTIES,
}
UPDATE_SCHEMA: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": PROXY_HOST_PROPERTIES}
TOKEN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["identity", "secret"],
    "properties": {
        "identity": {"type": "string", "minLength": 1},
        "scope": {"type": "string", "minLength": 1, "enum": ["user"]},
        "secret": {"type": "string", "minLength": 1},
    },
}

_TYPES = {
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def validate(schema: dict[str, Any], value: Any, path: str = "data") -> list[str]:
    """Ajv-style messages for the JSON Schema keywords NPM's schemas above use (all errors)."""
    if "anyOf" in schema:
        branches = [validate(branch, value, path) for branch in schema["anyOf"]]
        if any(not errors for errors in branches):
            return []
        return [e for errors in branches for e in errors] + [f"{path} must match a schema in anyOf"]
    kinds = schema.get("type")
    if kinds:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        if not any(_TYPES[kind](value) for kind in kinds):
            return [f"{path} must be {','.join(kinds)}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path} must be equal to one of the allowed values")
    if isinstance(value, int) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path} must be >= {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path} must be <= {schema['maximum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path} must NOT have fewer than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path} must NOT have more than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f'{path} must match pattern "{schema["pattern"]}"')
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path} must NOT have fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path} must NOT have more than {schema['maxItems']} items")
        if schema.get("uniqueItems"):
            seen = [json.dumps(item, sort_keys=True) for item in value]
            for j, item in enumerate(seen):
                if item in seen[:j]:
                    first = seen.index(item)
                    errors.append(f"{path} must NOT have duplicate items (items ## {first} and {j} are identical)")
                    break
        if "items" in schema:
            for i, item in enumerate(value):
                errors += validate(schema["items"], item, f"{path}/{i}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        missing = [name for name in schema.get("required", []) if name not in value]
        errors += [f"{path} must have required property '{name}'" for name in missing]
        if schema.get("additionalProperties") is False:
            errors += [f"{path} must NOT have additional properties" for name in value if name not in properties]
        for name, item in value.items():
            if name in properties:
                errors += validate(properties[name], item, f"{path}/{name}")
    return errors


def _error(code: int, message: str, **extra: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _clean_ssl(host: dict[str, Any]) -> dict[str, Any]:
    """NPM's rule: no certificate, no forced SSL nor HTTP/2; no forced SSL, no HSTS."""
    if not host.get("certificate_id"):
        host["ssl_forced"] = host["http2_support"] = False
    if not host.get("ssl_forced"):
        host["hsts_enabled"] = False
    if not host.get("hsts_enabled"):
        host["hsts_subdomains"] = False
    return host


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeNpm:
    identity: str = "jerp-bot@example.com"
    secret: str = "s3cret-npm-pass"
    two_factor: bool = False
    #: Status of a wrong password: 400 since v2.13, 401 on v2.12.
    auth_status: int = 400
    certificate_fails: bool = False
    #: Domains used by hosts this account cannot see (or by redirection / 404 hosts).
    hidden_domains: set[str] = field(default_factory=set)
    #: Seconds to wait before answering anything.
    delay: float = 0.0
    #: Answer every request with a 301 to this base URL.
    redirect_to: str | None = None
    version: tuple[int, int, int] = (2, 13, 7)

    hosts: list[dict[str, Any]] = field(default_factory=list)
    certificates: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeNpm:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-npm", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- helpers for tests ---------------------------------------------------------------------

    def add_host(self, domain: str, **fields: Any) -> dict[str, Any]:
        """Store a host as if someone had created it earlier (defaults: served, with a certificate)."""
        cert_id = self._issue_certificate([domain], {})
        host = self._new_host({"domain_names": [domain], "forward_scheme": "http", "forward_host": "frontend",
                               "forward_port": 8080, "certificate_id": cert_id, "ssl_forced": True,
                               "http2_support": True, **fields})
        self.hosts.append(host)
        return host

    def calls(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == path]

    # -- API -----------------------------------------------------------------------------------

    def dispatch(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        if self.redirect_to:
            return 301, None, {"Location": self.redirect_to + path}
        path = urlsplit(path).path
        if path in ("/api", "/api/") and method == "GET":
            version = dict(zip(("major", "minor", "revision"), self.version, strict=True))
            return 200, {"status": "OK", "setup": True, "version": version}, {}
        if path == "/api/tokens" and method == "POST":
            return (*self._token(body), {})
        match = re.fullmatch(r"/api/nginx/proxy-hosts(?:/(\d+))?", path)
        if match and (method in ("GET", "POST") if match[1] is None else method in ("GET", "PUT", "DELETE")):
            refused = self._authorise(headers)
            if refused:
                return (*refused, {})
            with self._lock:
                if match[1] is None:
                    answer = self._list() if method == "GET" else self._create(body)
                else:
                    host_id = int(match[1])
                    answer = (self._get(host_id) if method == "GET" else self._delete(host_id) if method == "DELETE"
                              else self._update(host_id, body))
            return (*answer, {})
        return 404, _error(404, "Not Found"), {}

    def _token(self, body: Any) -> tuple[int, Any]:
        errors = validate(TOKEN_SCHEMA, body)
        if errors:
            return 400, _error(400, ", ".join(errors))
        if body["identity"].strip().lower() != self.identity.lower() or body["secret"] != self.secret:
            refusal = _error(self.auth_status, "Invalid email or password", message_i18n="error.invalid-auth")
            return self.auth_status, refusal
        if self.two_factor:
            return 200, {"requires_2fa": True, "challenge_token": "challenge-" + secrets.token_hex(8)}
        token = "tok-" + secrets.token_hex(16)
        self.tokens.add(token)
        return 200, {"token": token, "expires": (datetime.now(UTC) + timedelta(days=1)).isoformat()}

    def _authorise(self, headers: dict[str, str]) -> tuple[int, Any] | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme != "Bearer" or not token:
            return 403, _error(403, "Permission Denied")
        if token not in self.tokens:
            return 500, _error(500, "Internal Error")
        return None

    def _list(self) -> tuple[int, Any]:
        return 200, sorted(self.hosts, key=lambda h: h["domain_names"])

    def _get(self, host_id: int) -> tuple[int, Any]:
        host = self._find(host_id)
        return (200, self._expanded(host)) if host else (404, _error(404, f"Item Not Found - {host_id}"))

    def _create(self, body: Any) -> tuple[int, Any]:
        errors = validate(CREATE_SCHEMA, body)
        if errors:
            return 400, _error(400, ", ".join(errors))
        taken = self._taken(body["domain_names"])
        if taken:
            return 400, _error(400, f"{taken} is already in use")
        data = dict(body)
        new_certificate = data.get("certificate_id") == "new"
        if new_certificate:
            del data["certificate_id"]
        host = self._new_host(data)
        self.hosts.append(host)
        if new_certificate:
            if self.certificate_fails:
                return 500, _error(500, "Internal Error")
            host["certificate_id"] = self._issue_certificate(host["domain_names"], host["meta"])
        return 201, self._expanded(host)

    def _update(self, host_id: int, body: Any) -> tuple[int, Any]:
        errors = validate(UPDATE_SCHEMA, body)
        if errors:
            return 400, _error(400, ", ".join(errors))
        host = self._find(host_id)
        if host is None:
            return 404, _error(404, f"Item Not Found - {host_id}")
        data = dict(body)
        taken = self._taken(data.get("domain_names", []), ignore=host_id)
        if taken:
            return 400, _error(400, f"{taken} is already in use")
        if data.get("certificate_id") == "new":
            if self.certificate_fails:
                return 500, _error(500, "Internal Error")
            data["certificate_id"] = self._issue_certificate(
                data.get("domain_names", host["domain_names"]), {**host["meta"], **data.get("meta", {})}
            )
        host.update(_clean_ssl({**host, **data}), modified_on=_now())
        return 200, self._expanded(host)

    # -- storage -------------------------------------------------------------------------------

    def _new_host(self, data: dict[str, Any]) -> dict[str, Any]:
        now = _now()
        host = {
            "id": len(self.hosts) + 1, "created_on": now, "modified_on": now, "owner_user_id": 1,
            "access_list_id": 0, "certificate_id": 0, "ssl_forced": False, "caching_enabled": False,
            "block_exploits": False, "advanced_config": "", "meta": {}, "allow_websocket_upgrade": False,
            "http2_support": False, "enabled": True, "locations": [], "hsts_enabled": False,
            "hsts_subdomains": False,
        }
        host.update(data)
        return _clean_ssl(host)

    def _issue_certificate(self, domains: list[str], meta: dict[str, Any]) -> int:
        cert = {"id": len(self.certificates) + 1, "provider": "letsencrypt", "nice_name": ", ".join(domains),
                "domain_names": list(domains), "expires_on": _now(), "meta": {"dns_challenge": False, **meta}}
        self.certificates.append(cert)
        return cert["id"]

    def _delete(self, host_id: int) -> tuple[int, Any]:
        """NPM answers ``true`` (its schema's delete response) once the host is gone."""
        host = self._find(host_id)
        if host is None:
            return 404, _error(404, f"Item Not Found - {host_id}")
        self.hosts.remove(host)
        return 200, True

    def _find(self, host_id: int) -> dict[str, Any] | None:
        return next((h for h in self.hosts if h["id"] == host_id), None)

    def _taken(self, domains: list[str], ignore: int | None = None) -> str | None:
        used = {d.lower() for h in self.hosts if h["id"] != ignore for d in h["domain_names"]}
        used |= {d.lower() for d in self.hidden_domains}
        return next((d for d in domains if d.lower() in used), None)

    def _expanded(self, host: dict[str, Any]) -> dict[str, Any]:
        cert = next((c for c in self.certificates if c["id"] == host["certificate_id"]), None)
        owner = {"id": 1, "email": self.identity, "name": "jerp bot", "roles": ["admin"], "is_disabled": False}
        return {**host, "certificate": cert, "owner": owner, "access_list": None}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        fake: FakeNpm = self.server.fake  # type: ignore[attr-defined]
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        body: Any = {}
        if raw and headers.get("content-type", "").startswith("application/json"):
            try:
                body = json.loads(raw)
            except ValueError:
                self._send(400, _error(400, "Unexpected token in JSON"), {})
                return
        fake.requests.append(Recorded(method, self.path, headers, body))
        if fake.delay:
            time.sleep(fake.delay)
        status, payload, extra = fake.dispatch(method, self.path, headers, body)
        self._send(status, payload, extra)

    def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def fake_npm() -> Iterator[FakeNpm]:
    """A running fake NPM; tests tune its attributes (``two_factor``, ``certificate_fails``...)."""
    server = FakeNpm().start()
    try:
        yield server
    finally:
        server.stop()
