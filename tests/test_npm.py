"""The NPM client against a real HTTP server that behaves like Nginx Proxy Manager."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from jerp_jobs.errors import ConfigError, InvalidInput, JerpError
from jerp_jobs.integrations.npm import IntegrationError, NpmClient, manual_instructions, proxy_host_request
from tests.fake_npm import CREATE_SCHEMA, FakeNpm, fake_npm, validate  # noqa: F401  (fixture)

DOMAIN = "acme.erp.example.com"
HOSTS = "/api/nginx/proxy-hosts"


def client(fake: FakeNpm, **kwargs: object) -> NpmClient:
    return NpmClient(fake.url, fake.identity, fake.secret, **kwargs)  # type: ignore[arg-type]


def test_request_body_fits_npm_create_schema() -> None:
    body = proxy_host_request(DOMAIN)
    assert validate(CREATE_SCHEMA, body) == []
    assert body["forward_host"] == "frontend" and body["forward_port"] == 8080
    assert body["certificate_id"] == "new" and body["allow_websocket_upgrade"] is True
    assert body["meta"] == {"dns_challenge": False}
    v212 = proxy_host_request(DOMAIN, letsencrypt_email="ops@example.com")
    assert v212["meta"] == {"dns_challenge": False, "letsencrypt_email": "ops@example.com", "letsencrypt_agree": True}
    assert validate(CREATE_SCHEMA, v212) == []


def test_request_rejects_a_domain_npm_would_refuse() -> None:
    with pytest.raises(InvalidInput):
        proxy_host_request("acme.example.com/admin")


def test_creates_proxy_host_end_to_end(fake_npm: FakeNpm) -> None:
    host = client(fake_npm).create_proxy_host(DOMAIN)

    (post,) = fake_npm.calls("POST", HOSTS)
    assert post.headers["authorization"] == f"Bearer {next(iter(fake_npm.tokens))}"
    assert post.body == proxy_host_request(DOMAIN)
    (stored,) = fake_npm.hosts
    assert stored["domain_names"] == [DOMAIN]
    assert (stored["forward_scheme"], stored["forward_host"], stored["forward_port"]) == ("http", "frontend", 8080)
    assert stored["allow_websocket_upgrade"] and stored["block_exploits"]
    assert stored["certificate_id"] == 1 and fake_npm.certificates[0]["domain_names"] == [DOMAIN]
    # NPM clears ssl_forced/http2 when it creates the certificate with the host: the client sets them again.
    (put,) = fake_npm.calls("PUT", f"{HOSTS}/{stored['id']}")
    assert put.body == {"ssl_forced": True, "http2_support": True}
    assert stored["ssl_forced"] and stored["http2_support"]
    assert host["id"] == stored["id"] and host["ssl_forced"] is True and host["certificate"]["id"] == 1


def test_second_call_returns_the_existing_host(fake_npm: FakeNpm) -> None:
    npm = client(fake_npm)
    first = npm.create_proxy_host(DOMAIN)
    again = client(fake_npm).create_proxy_host(DOMAIN.upper())
    assert again["id"] == first["id"]
    assert len(fake_npm.hosts) == 1
    assert len(fake_npm.calls("POST", HOSTS)) == 1 and len(fake_npm.calls("PUT", f"{HOSTS}/1")) == 1
    assert npm.find_proxy_host(DOMAIN)["id"] == first["id"]  # type: ignore[index]
    assert npm.find_proxy_host("other.example.com") is None


def test_token_is_requested_once_per_client(fake_npm: FakeNpm) -> None:
    npm = client(fake_npm)
    npm.find_proxy_host(DOMAIN)
    npm.create_proxy_host(DOMAIN)
    assert len(fake_npm.calls("POST", "/api/tokens")) == 1
    assert fake_npm.calls("POST", "/api/tokens")[0].body == {"identity": fake_npm.identity, "secret": fake_npm.secret}


def test_host_left_without_certificate_is_finished_on_the_next_run(fake_npm: FakeNpm) -> None:
    fake_npm.certificate_fails = True
    with pytest.raises(IntegrationError) as failed:
        client(fake_npm).create_proxy_host(DOMAIN)
    assert failed.value.status == 500 and "running again retries the certificate" in str(failed.value)
    assert fake_npm.hosts[0]["certificate_id"] == 0

    fake_npm.certificate_fails = False
    host = client(fake_npm).create_proxy_host(DOMAIN)
    assert len(fake_npm.hosts) == 1
    (put,) = fake_npm.calls("PUT", f"{HOSTS}/1")
    assert put.body == {"certificate_id": "new", "meta": {"dns_challenge": False}, "ssl_forced": True,
                        "http2_support": True}
    assert host["certificate_id"] == 1 and host["ssl_forced"] and host["http2_support"]


def test_wrong_credentials(fake_npm: FakeNpm) -> None:
    npm = NpmClient(fake_npm.url, fake_npm.identity, "not-the-password-xyz")
    with pytest.raises(IntegrationError) as caught:
        npm.create_proxy_host(DOMAIN)
    err = caught.value
    assert isinstance(err, JerpError) and err.status == 400
    assert "answered 400" in str(err) and "Invalid email or password" in str(err)
    assert "NPM_SECRET" in str(err) and fake_npm.url in str(err)
    assert "not-the-password-xyz" not in str(err) and "not-the-password-xyz" not in repr(err.fields)
    assert not fake_npm.hosts


def test_wrong_credentials_on_v2_12_answer_401(fake_npm: FakeNpm) -> None:
    fake_npm.auth_status = 401
    with pytest.raises(IntegrationError, match="answered 401: Invalid email or password") as caught:
        NpmClient(fake_npm.url, fake_npm.identity, "nope").token()
    assert caught.value.status == 401


def test_two_factor_account_is_a_clear_error(fake_npm: FakeNpm) -> None:
    fake_npm.two_factor = True
    with pytest.raises(IntegrationError) as caught:
        client(fake_npm).create_proxy_host(DOMAIN)
    message = str(caught.value)
    assert "two-factor" in message and "dedicated NPM account without 2FA" in message
    assert fake_npm.secret not in message and "challenge-" not in message
    assert not fake_npm.calls("POST", HOSTS)


def test_unknown_field_is_rejected_with_npm_message(fake_npm: FakeNpm) -> None:
    npm = client(fake_npm)
    with pytest.raises(IntegrationError) as caught:
        npm._call("POST", "/nginx/proxy-hosts", {**proxy_host_request(DOMAIN), "websockets": True})
    assert caught.value.status == 400
    assert caught.value.detail == "data must NOT have additional properties"
    assert "answered 400: data must NOT have additional properties" in str(caught.value)
    assert not fake_npm.hosts


def test_fake_validates_like_npm() -> None:
    assert validate(CREATE_SCHEMA, {"domain_names": [DOMAIN], "forward_scheme": "ftp", "forward_host": "frontend",
                                    "forward_port": "8080", "certificate_id": "old"}) == [
        "data/forward_scheme must be equal to one of the allowed values",
        "data/forward_port must be integer",
        "data/certificate_id must be integer",
        'data/certificate_id must match pattern "^new$"',
        "data/certificate_id must match a schema in anyOf",
    ]
    assert validate(CREATE_SCHEMA, {"domain_names": []}) == [
        "data must have required property 'forward_scheme'",
        "data must have required property 'forward_host'",
        "data must have required property 'forward_port'",
        "data/domain_names must NOT have fewer than 1 items",
    ]


def test_bearer_token_is_required(fake_npm: FakeNpm) -> None:
    npm = client(fake_npm)
    with pytest.raises(IntegrationError, match="answered 403: Permission Denied"):
        npm._call("GET", "/nginx/proxy-hosts", auth=False)


def test_domain_used_elsewhere_is_explained(fake_npm: FakeNpm) -> None:
    fake_npm.hidden_domains.add(DOMAIN)
    with pytest.raises(IntegrationError, match=f"{DOMAIN} is already in use .*cannot see"):
        client(fake_npm).create_proxy_host(DOMAIN)


def test_server_down() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    npm = NpmClient(f"http://127.0.0.1:{port}/", "bot@example.com", "pw-down-123")
    with pytest.raises(IntegrationError, match=f"NPM at http://127.0.0.1:{port} is unreachable") as caught:
        npm.create_proxy_host(DOMAIN)
    assert caught.value.status is None and "pw-down-123" not in str(caught.value)


def test_timeout(fake_npm: FakeNpm) -> None:
    fake_npm.delay = 0.5
    with pytest.raises(IntegrationError, match="timed out"):
        client(fake_npm, timeout=0.1).health()


def test_redirect_is_not_followed(fake_npm: FakeNpm) -> None:
    fake_npm.redirect_to = "http://elsewhere.invalid"
    with pytest.raises(IntegrationError, match="answered 301.*set NPM_URL"):
        client(fake_npm).token()
    assert len(fake_npm.requests) == 1


def test_url_is_normalised_and_credentials_never_shown(fake_npm: FakeNpm) -> None:
    npm = NpmClient(fake_npm.url.replace("http://", "http://user:urlpass@") + "/api/", "bot@example.com", "pw")
    assert npm.url == fake_npm.url and "urlpass" not in repr(npm)
    assert npm.health()["status"] == "OK"
    with pytest.raises(ConfigError, match="NPM_URL"):
        NpmClient("npm:81", "bot@example.com", "pw")


def test_from_settings() -> None:
    def settings(**fields: object) -> SimpleNamespace:
        values = {"npm_url": None, "npm_identity": None, "npm_secret": None, **fields}
        ns = SimpleNamespace(**values)

        def secret(name: str) -> str:
            if not values[name]:
                raise ConfigError("NPM_SECRET", "is not set")
            return str(values[name])

        ns.secret = secret
        return ns

    assert NpmClient.from_settings(settings()) is None
    with pytest.raises(ConfigError, match="NPM_IDENTITY"):
        NpmClient.from_settings(settings(npm_url="http://npm:81"))
    with pytest.raises(ConfigError, match="NPM_SECRET"):
        NpmClient.from_settings(settings(npm_url="http://npm:81", npm_identity="bot@example.com"))
    npm = NpmClient.from_settings(settings(npm_url="http://npm:81", npm_identity="bot@example.com", npm_secret="pw"))
    assert npm is not None and npm.url == "http://npm:81"


def test_manual_instructions() -> None:
    info = manual_instructions(DOMAIN, "frontend", 8080)
    assert info["domain_names"] == [DOMAIN]
    assert (info["forward_scheme"], info["forward_host"], info["forward_port"]) == ("http", "frontend", 8080)
    assert info["websockets_support"] is True and info["force_ssl"] is True
    assert "Let's Encrypt" in info["ssl_certificate"]
    assert f"{DOMAIN} -> http://frontend:8080" in info["summary"] and "websockets" in info["summary"]
    assert any("Websockets Support" in step for step in info["steps"])
    assert manual_instructions(DOMAIN)["forward_port"] == 8080


def test_deletes_the_proxy_host_of_a_domain_once(fake_npm: FakeNpm) -> None:
    npm = client(fake_npm)
    host = npm.create_proxy_host(DOMAIN)
    other = npm.create_proxy_host("other.example.com")
    deleted = npm.delete_proxy_host(DOMAIN.upper())
    assert deleted is not None and deleted["id"] == host["id"]
    assert [h["id"] for h in npm.list_proxy_hosts()] == [other["id"]]
    assert npm.delete_proxy_host(DOMAIN) is None  # gone already: nothing to do
    assert len(fake_npm.calls("DELETE", f"{HOSTS}/{host['id']}")) == 1
