"""Nginx Proxy Manager (NPM): the proxy host that publishes a platform site.

Every site is served through NPM by one proxy host: its domain, forwarded to the frappe_docker
``frontend`` service (``frontend:8080``) with websockets on, common exploits blocked, HTTP/2, and
a Let's Encrypt certificate requested on creation, SSL forced. :class:`NpmClient` creates it
through NPM's REST API; when NPM is not configured, :func:`manual_instructions` describes what
the operator has to create by hand.

Request bodies follow NPM's JSON schemas — ``backend/schema/paths/nginx/proxy-hosts/post.json``
and ``.../{hostID}/put.json``, whose properties come from ``components/proxy-host-object.json`` —
as of v2.12.6 and v2.13.0 to v2.15.1. Only properties present in all of them are sent, because
NPM rejects unknown ones (``additionalProperties: false``). ``meta`` is a free object there; NPM
hands it to the certificate it requests, so only certificate meta keys go in it.

The Let's Encrypt account email differs between versions:

- v2.12 reads it from the host's ``meta.letsencrypt_email`` (with ``meta.letsencrypt_agree``);
  pass ``letsencrypt_email`` when talking to such a server.
- v2.13 and later use the email of the NPM user making the request, and those two keys left the
  certificate schema: leave ``letsencrypt_email`` unset, and give the API account a real email.

NPM behaviours this client works with:

- A host created with ``certificate_id: "new"`` is stored with ``ssl_forced`` and
  ``http2_support`` off (NPM clears them before the certificate exists; upstream issue #3956),
  so they are set afterwards with a ``PUT``.
- When Let's Encrypt fails, NPM answers 500 yet keeps the host, without a certificate. Calling
  :meth:`NpmClient.create_proxy_host` again finds that host and requests the certificate again.
- An account with two-factor authentication (v2.13.6 and later) gets a challenge instead of a
  token, which cannot be automated: use a dedicated account without 2FA.

Standard library only. Failures raise :class:`IntegrationError`; neither the secret nor the token
appears in an exception message or a log line.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from jerp_jobs.errors import ConfigError, InvalidInput, JerpError
from jerp_jobs.log import get_logger

log = get_logger(__name__)

DEFAULT_FORWARD_HOST = "frontend"
DEFAULT_FORWARD_PORT = 8080

#: Characters NPM's schema refuses in a domain name (``common.json#/properties/domain_names``).
_DOMAIN = re.compile(r"^[^&| @!#%^();:/\\}{=+?<>,~`'\"]+$")


class IntegrationError(JerpError):
    """An external service refused a request, answered nonsense, or could not be reached."""

    def __init__(
        self, message: str, *, service: str, url: str, status: int | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message, service=service, url=url, status=status, detail=detail)
        self.service = service
        self.url = url
        self.status = status
        self.detail = detail


def normalise_domain(domain: str) -> str:
    value = domain.strip().lower()
    if not value or not _DOMAIN.match(value):
        raise InvalidInput(f"invalid domain {domain!r} for a proxy host", domain=domain)
    return value


def proxy_host_request(
    domain: str,
    *,
    forward_host: str = DEFAULT_FORWARD_HOST,
    forward_port: int = DEFAULT_FORWARD_PORT,
    letsencrypt_email: str | None = None,
) -> dict[str, Any]:
    """The body of ``POST /api/nginx/proxy-hosts`` for a platform site.

    ``letsencrypt_email`` is for NPM v2.12 only (see the module docstring).
    """
    meta: dict[str, Any] = {"dns_challenge": False}
    if letsencrypt_email:
        meta |= {"letsencrypt_email": letsencrypt_email, "letsencrypt_agree": True}
    return {
        "domain_names": [normalise_domain(domain)],
        "forward_scheme": "http",
        "forward_host": forward_host,
        "forward_port": forward_port,
        "allow_websocket_upgrade": True,
        "block_exploits": True,
        "http2_support": True,
        "ssl_forced": True,
        "certificate_id": "new",
        "meta": meta,
    }


def manual_instructions(
    domain: str, forward_host: str = DEFAULT_FORWARD_HOST, forward_port: int = DEFAULT_FORWARD_PORT
) -> dict[str, Any]:
    """The proxy host an operator must create by hand in NPM's web UI when NPM is not configured."""
    domain = normalise_domain(domain)
    return {
        "action": "create a proxy host in Nginx Proxy Manager",
        "domain_names": [domain],
        "forward_scheme": "http",
        "forward_host": forward_host,
        "forward_port": forward_port,
        "websockets_support": True,
        "block_common_exploits": True,
        "ssl_certificate": "request a new Let's Encrypt certificate",
        "force_ssl": True,
        "http2_support": True,
        "steps": [
            "Hosts > Proxy Hosts > Add Proxy Host",
            f"Details: Domain Names {domain}, Scheme http, Forward Hostname / IP {forward_host}, "
            f"Forward Port {forward_port}",
            "Details: turn on Block Common Exploits and Websockets Support",
            "SSL: Request a new SSL Certificate (Let's Encrypt), turn on Force SSL and HTTP/2 Support",
            f"Save, then check https://{domain}/ answers",
        ],
        "summary": (
            f"Create an NPM proxy host {domain} -> http://{forward_host}:{forward_port} with websockets on "
            "and a new Let's Encrypt certificate, SSL forced (DNS for the domain must point at NPM first)."
        ),
    }


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: a POST would turn into a GET, and the token would follow elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _api_root(base_url: str) -> str:
    url = base_url.strip().rstrip("/")
    if url.endswith("/api"):
        url = url[: -len("/api")]
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("NPM_URL", "must be an http:// or https:// URL such as http://npm:81")
    return url


def _without_credentials(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class NpmClient:
    """Nginx Proxy Manager's REST API, as one account (``identity`` is its email)."""

    def __init__(
        self,
        base_url: str,
        identity: str,
        secret: str,
        *,
        timeout: float = 10,
        certificate_timeout: float = 180,
    ) -> None:
        #: NPM's address without any credentials: safe in messages and logs.
        self.url = _without_credentials(_api_root(base_url))
        self.identity = identity
        self._secret = secret
        self._token: str | None = None
        self.timeout = timeout
        #: Requests that ask for a certificate wait for certbot inside NPM, hence a longer timeout.
        self.certificate_timeout = certificate_timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

    def __repr__(self) -> str:
        return f"NpmClient({self.url!r}, identity={self.identity!r})"

    @classmethod
    def from_settings(cls, settings: Any) -> NpmClient | None:
        """A client from NPM_URL, NPM_IDENTITY and NPM_SECRET; None when NPM_URL is not set."""
        if not settings.npm_url:
            return None
        if not settings.npm_identity:
            raise ConfigError("NPM_IDENTITY", "is not set; NPM_URL is, and NPM's API needs an account email")
        return cls(settings.npm_url, settings.npm_identity, settings.secret("npm_secret"))

    # -- API ---------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /api/``: ``{"status": "OK", "setup": ..., "version": {...}}``."""
        return self._call("GET", "/", auth=False)

    def token(self) -> str:
        """A bearer token for the account, requested once per client."""
        if self._token is None:
            body = {"identity": self.identity, "secret": self._secret}
            answer = self._call("POST", "/tokens", body, auth=False)
            if answer.get("requires_2fa"):
                raise IntegrationError(
                    f"NPM at {self.url}: the account {self.identity} has two-factor authentication, "
                    "which cannot be automated; create a dedicated NPM account without 2FA for NPM_IDENTITY",
                    service="npm",
                    url=self.url,
                    detail="requires_2fa",
                )
            token = answer.get("token")
            if not isinstance(token, str) or not token:
                raise IntegrationError(
                    f"NPM at {self.url}: POST /api/tokens answered without a token", service="npm", url=self.url
                )
            self._token = token
        return self._token

    def list_proxy_hosts(self) -> list[dict[str, Any]]:
        hosts = self._call("GET", "/nginx/proxy-hosts")
        if not isinstance(hosts, list):
            raise IntegrationError(
                f"NPM at {self.url}: GET /api/nginx/proxy-hosts did not answer a list", service="npm", url=self.url
            )
        return hosts

    def find_proxy_host(self, domain: str) -> dict[str, Any] | None:
        """The proxy host that already serves ``domain``, if this account can see one."""
        wanted = normalise_domain(domain)
        for host in self.list_proxy_hosts():
            if wanted in (name.lower() for name in host.get("domain_names") or []):
                return host
        return None

    def create_proxy_host(
        self,
        domain: str,
        *,
        forward_host: str = DEFAULT_FORWARD_HOST,
        forward_port: int = DEFAULT_FORWARD_PORT,
        letsencrypt_email: str | None = None,
    ) -> dict[str, Any]:
        """The proxy host serving ``domain``: the existing one, else a new one.

        Either way it leaves the host with a certificate, SSL forced and HTTP/2 on, so running it
        again after a failure finishes the work instead of duplicating the host.
        """
        body = proxy_host_request(
            domain, forward_host=forward_host, forward_port=forward_port, letsencrypt_email=letsencrypt_email
        )
        host = self.find_proxy_host(domain)
        if host is None:
            host = self._call("POST", "/nginx/proxy-hosts", body, timeout=self.certificate_timeout)
            log.info("npm proxy host created", npm_url=self.url, domain=body["domain_names"][0], host_id=host.get("id"))
        else:
            log.info("npm proxy host exists", npm_url=self.url, domain=body["domain_names"][0], host_id=host.get("id"))
            if host.get("enabled") is False:
                log.warning("npm proxy host is disabled", npm_url=self.url, host_id=host.get("id"))
        return self._secure(host, body["meta"])

    def point_proxy_host(self, domain: str, *, forward_host: str, forward_port: int) -> dict[str, Any]:
        """Make the proxy host serving ``domain`` forward to ``forward_host:forward_port`` (a site
        moved to another bench): its forward target changed with a ``PUT``, nothing else (its
        certificate and SSL settings stay); a domain without a proxy host gets a new one
        (:meth:`create_proxy_host`). Running it again changes nothing."""
        host = self.find_proxy_host(domain)
        if host is None:
            return self.create_proxy_host(domain, forward_host=forward_host, forward_port=forward_port)
        if host.get("forward_host") == forward_host and host.get("forward_port") == forward_port:
            return host
        updated = self._call("PUT", f"/nginx/proxy-hosts/{host['id']}",
                             {"forward_host": forward_host, "forward_port": forward_port})
        log.info("npm proxy host pointed", npm_url=self.url, domain=normalise_domain(domain), host_id=host["id"],
                 forward=f"{forward_host}:{forward_port}")
        return updated

    def delete_proxy_host(self, domain: str) -> dict[str, Any] | None:
        """Delete the proxy host serving ``domain``; returns the host deleted, None when there was none
        (already deleted: running it again is harmless)."""
        host = self.find_proxy_host(domain)
        if host is None:
            log.info("npm proxy host absent", npm_url=self.url, domain=normalise_domain(domain))
            return None
        answer = self._call("DELETE", f"/nginx/proxy-hosts/{host['id']}")
        if answer is not True:
            raise IntegrationError(f"NPM at {self.url}: DELETE /api/nginx/proxy-hosts/{host['id']} answered "
                                   f"{answer!r}, not true", service="npm", url=self.url)
        log.info("npm proxy host deleted", npm_url=self.url, domain=normalise_domain(domain), host_id=host["id"])
        return host

    def _secure(self, host: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        if not host.get("certificate_id"):
            changes |= {"certificate_id": "new", "meta": meta}
        if not host.get("ssl_forced"):
            changes["ssl_forced"] = True
        if not host.get("http2_support"):
            changes["http2_support"] = True
        if not changes:
            return host
        timeout = self.certificate_timeout if "certificate_id" in changes else self.timeout
        updated = self._call("PUT", f"/nginx/proxy-hosts/{host['id']}", changes, timeout=timeout)
        log.info("npm proxy host ssl set", npm_url=self.url, host_id=host["id"], changed=sorted(changes))
        return updated

    # -- HTTP --------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        auth: bool = True,
        timeout: float | None = None,
    ) -> Any:
        target = f"/api{path}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + target, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token()}")
        try:
            with self._opener.open(request, timeout=timeout or self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise self._refused(method, target, exc) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(method, target, exc) from exc
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise IntegrationError(
                f"NPM at {self.url}: {method} {target} answered something that is not JSON",
                service="npm",
                url=self.url,
            ) from exc

    def _refused(self, method: str, target: str, exc: urllib.error.HTTPError) -> IntegrationError:
        status = exc.code
        try:
            payload = json.loads(exc.read() or b"null")
        except (ValueError, OSError):
            payload = None
        finally:
            exc.close()
        error = payload.get("error") if isinstance(payload, dict) else None
        detail = error.get("message") if isinstance(error, dict) else None
        detail = self._scrub(str(detail) if detail else (exc.reason or http.client.responses.get(status, "")))
        message = f"NPM at {self.url}: {method} {target} answered {status}: {detail}"
        hint = self._hint(method, target, status, detail, exc.headers.get("Location") if exc.headers else None)
        if hint:
            message += f" ({hint})"
        return IntegrationError(message, service="npm", url=self.url, status=status, detail=detail)

    def _unreachable(self, method: str, target: str, exc: BaseException) -> IntegrationError:
        reason = getattr(exc, "reason", None) or exc
        timed_out = isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError)
        detail = "timed out" if timed_out else self._scrub(str(reason))
        message = f"NPM at {self.url} is unreachable: {method} {target} " + (
            detail if timed_out else f"failed ({detail})"
        )
        if timed_out and method in ("POST", "PUT"):
            message += "; NPM may still finish it, and running again finds the host instead of duplicating it"
        return IntegrationError(message, service="npm", url=self.url, detail=detail)

    def _hint(self, method: str, target: str, status: int, detail: str, location: str | None) -> str:
        if 300 <= status < 400:
            return f"redirected to {location or 'another address'}: set NPM_URL to NPM's own address"
        if target == "/api/tokens" and status in (400, 401):
            return "check NPM_IDENTITY and NPM_SECRET"
        if status == 403:
            return f"the account {self.identity} may not manage proxy hosts"
        if "already in use" in detail:
            return "a proxy, redirection or 404 host uses the domain, perhaps one this account cannot see"
        if status >= 500 and method in ("POST", "PUT") and target.startswith("/api/nginx/proxy-hosts"):
            return (
                "if the certificate failed, NPM keeps the host without one: the domain's DNS must point at NPM "
                "and port 80 must be reachable; running again retries the certificate"
            )
        return ""

    def _scrub(self, text: str) -> str:
        for value in (self._secret, self._token):
            if value:
                text = text.replace(value, "***")
        return text
