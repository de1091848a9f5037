"""Who may use the dashboard: password hashes, a trusted proxy's header, signed sessions, CSRF.

Users (``JERP_DASHBOARD_USERS``): ``name:role:hash`` entries, comma-separated. A role is
``operator`` (may act: cancel, clear a mark, start a backup or a drill) or ``read-only``. A hash
is scrypt (stdlib :func:`hashlib.scrypt`) with a random salt, written
``scrypt.N.r.p.SALT.HASH`` (URL-safe base64 without padding: no ``$``, ``:`` or ``,``, so it goes
into an env file and compose as it is); :func:`hash_password` makes one
(``python -m jerp_jobs.dashboard hash``).

A trusted reverse proxy may name the user instead (``JERP_DASHBOARD_PROXY_HEADER``); the
header counts only on a request whose peer address is in ``JERP_DASHBOARD_TRUSTED_PROXIES``.
Proxy users are read-only unless listed in ``JERP_DASHBOARD_PROXY_OPERATORS``.

Sessions: a cookie holding the user, how they logged in, a CSRF token and its issue time,
signed with HMAC-SHA256 under ``JERP_DASHBOARD_SECRET``; HttpOnly, SameSite=Strict, Secure
when ``JERP_DASHBOARD_SECURE_COOKIE``. The role is read from the settings at every request, so
a user removed or demoted loses access at once. Every action is a POST carrying the session's
CSRF token, from a page of the dashboard's own origin (``Origin``, else ``Referer``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from jerp_jobs.errors import ConfigError

OPERATOR = "operator"
READ_ONLY = "read-only"
ROLES = (OPERATOR, READ_ONLY)
COOKIE = "jerp_dashboard"

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
#: failed logins are counted over this window, and refused for as long once over the limit
LOGIN_WINDOW_S = 900


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, n: int = _SCRYPT_N, r: int = _SCRYPT_R, p: int = _SCRYPT_P) -> str:
    """``scrypt.N.r.p.SALT.HASH`` of ``password`` with a fresh 16-byte salt."""
    if not password:
        raise ValueError("an empty password")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=2**27)
    return f"scrypt.{n}.{r}.{p}.{_b64(salt)}.{_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches the ``stored`` hash (compared in constant time)."""
    try:
        scheme, n, r, p, salt, digest = stored.split(".")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(_unb64(digest)), maxmem=2**27)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(digest))


#: checked against when the user is unknown, so that the answer takes as long
_DUMMY_HASH = "scrypt.16384.8.1.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


@dataclass(frozen=True)
class User:
    name: str
    role: str
    #: "password" or "proxy"
    via: str

    @property
    def operator(self) -> bool:
        return self.role == OPERATOR


def parse_users(text: str | None) -> dict[str, tuple[str, str]]:
    """``name:role:hash,...`` -> {name: (role, hash)}; ConfigError naming the variable on a bad entry."""
    users: dict[str, tuple[str, str]] = {}
    for entry in (text or "").replace("\n", ",").split(","):
        entry = entry.strip()
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3 or not parts[0] or parts[1] not in ROLES or not parts[2].startswith("scrypt."):
            name = parts[0] if parts else "?"
            raise ConfigError("JERP_DASHBOARD_USERS", f"has a malformed entry for {name!r}: "
                              f"name:role:hash, role one of {', '.join(ROLES)}, hash from "
                              "`python -m jerp_jobs.dashboard hash`")
        users[parts[0]] = (parts[1], parts[2])
    return users


class Auth:
    """The dashboard's authentication and session rules, from the settings."""

    def __init__(self, settings: Any) -> None:
        if settings.dashboard_secret is None or len(settings.dashboard_secret.get_secret_value()) < 16:
            raise ConfigError("JERP_DASHBOARD_SECRET", "is not set (or shorter than 16 characters); the dashboard "
                              "signs its sessions with it")
        self._key = settings.dashboard_secret.get_secret_value().encode()
        self.users = parse_users(settings.dashboard_users.get_secret_value() if settings.dashboard_users else None)
        self.proxy_header = (settings.dashboard_proxy_header or "").lower() or None
        self.proxies = [ipaddress.ip_network(p, strict=False) for p in settings.dashboard_trusted_proxies]
        self.proxy_operators = set(settings.dashboard_proxy_operators)
        self.session_s = int(settings.dashboard_session_hours * 3600)
        self.secure = settings.dashboard_secure_cookie
        self.max_failures = settings.dashboard_login_attempts
        if not self.users and not self.proxy_header:
            raise ConfigError("JERP_DASHBOARD_USERS", "is not set and neither is JERP_DASHBOARD_PROXY_HEADER: "
                              "nobody could log in")

    # -- passwords ---------------------------------------------------------------------------

    def login(self, name: str, password: str) -> User | None:
        """The user when the password matches; None otherwise (after as long a check)."""
        role, stored = self.users.get(name, (None, _DUMMY_HASH))
        ok = check_password(password, stored)
        return User(name, role, "password") if ok and role else None

    # -- the proxy's header ------------------------------------------------------------------

    def trusted_peer(self, peer: str | None) -> bool:
        if not peer or not self.proxies:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.proxies)

    def proxy_user(self, headers: Any, peer: str | None) -> User | None:
        """The user the trusted proxy names, or None (no header, or a peer that is not the proxy)."""
        if not self.proxy_header or not self.trusted_peer(peer):
            return None
        name = (headers.get(self.proxy_header) or "").strip()
        if not name:
            return None
        return User(name, OPERATOR if name in self.proxy_operators else READ_ONLY, "proxy")

    # -- sessions ----------------------------------------------------------------------------

    def issue(self, user: User) -> tuple[str, str]:
        """A new session cookie's value for ``user``, and its CSRF token."""
        csrf = secrets.token_urlsafe(24)
        payload = _b64(json.dumps({"u": user.name, "v": user.via, "c": csrf, "t": int(time.time())},
                                  separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}", csrf

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def read(self, cookie: str | None) -> dict[str, Any] | None:
        """The session in a cookie value: signature checked, not expired; None otherwise."""
        if not cookie or "." not in cookie:
            return None
        payload, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            session = json.loads(_unb64(payload))
        except ValueError:
            return None
        if not isinstance(session, dict) or time.time() - float(session.get("t", 0)) > self.session_s:
            return None
        return session

    def session_user(self, session: dict[str, Any] | None) -> User | None:
        """The user of a password session, with the role the settings give them now."""
        if not session or session.get("v") != "password":
            return None
        found = self.users.get(session.get("u", ""))
        return User(session["u"], found[0], "password") if found else None

    def cookie_options(self) -> dict[str, Any]:
        return {"key": COOKIE, "max_age": self.session_s, "httponly": True, "samesite": "strict",
                "secure": self.secure, "path": "/"}


def same_origin(headers: Any) -> bool:
    """Whether a POST comes from a page of this site: the host of ``Origin`` (else ``Referer``)
    is the request's ``Host`` (the scheme is not compared: a TLS proxy in front changes it). A
    request with neither is refused."""
    from urllib.parse import urlsplit

    source = headers.get("origin") or headers.get("referer")
    host = headers.get("host")
    if not source or not host or source == "null":
        return False
    return urlsplit(source).netloc.lower() == host.lower()
