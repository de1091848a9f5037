"""Smoke checks (jerp_jobs.smoke) against the stand-in Frappe web server (tests/standin/web.py) on loopback."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from jerp_jobs.errors import SmokeFailed
from jerp_jobs.smoke import CHECKS, SmokeReport, ping, smoke_site
from tests.standin.web import CONFIG_FILE, FAULTS_ENV, StandinWebServer, start_server

SITE = "a.example.com"
USER = "smoke@example.com"
PASSWORD = "Sm0ke-Pa55word-xyz"
DEPENDENT = ("document", "realtime", "job")


def write_site(bench: Path, site: str, **web_config: Any) -> None:
    folder = bench / "sites" / site
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "site_config.json").write_text(json.dumps({"db_name": "_" + site.replace(".", "_")}))
    config = {"users": {USER: PASSWORD}, **web_config}
    (folder / CONFIG_FILE).write_text(json.dumps(config))


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    """A bench folder with one site, ``a.example.com``, whose smoke user is ``smoke@example.com``."""
    root = tmp_path / "frappe-bench"
    (root / "sites").mkdir(parents=True)
    (root / "sites" / "common_site_config.json").write_text("{}")
    write_site(root, SITE)
    return root


@pytest.fixture
def web(bench: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandinWebServer]:
    """The stand-in web server on an ephemeral loopback port, without faults from the environment."""
    monkeypatch.delenv(FAULTS_ENV, raising=False)
    server = start_server(bench, job_delay=0.01, poll_wait=5.0)
    yield server
    server.stop()


def run(web: StandinWebServer, site: str = SITE, **overrides: Any) -> SmokeReport:
    options: dict[str, Any] = {"base_url": web.url, "user": USER, "password": PASSWORD, "timeout": 10.0,
                               "poll_interval": 0.01}
    options.update(overrides)
    return smoke_site(site, **options)


def by_name(report: SmokeReport) -> dict[str, Any]:
    return {check.name: check for check in report.checks}


def failing(report: SmokeReport) -> set[str]:
    return {check.name for check in report.checks if not check.ok}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- a healthy site ----------------------------------------------------------------------


def test_every_check_passes_on_a_healthy_site(web: StandinWebServer) -> None:
    report = run(web)

    assert report.ok, report.summary()
    assert [check.name for check in report.checks] == list(CHECKS)
    assert report.summary() == f"site {SITE}: all 5 checks passed"
    checks = by_name(report)
    assert checks["ping"].detail == "pong (frappe 15.0.0-standin)"
    assert checks["login"].detail == f"logged in as {USER}"
    assert checks["realtime"].detail.startswith(f"socket.io namespace /{SITE} connected")
    assert "prepared by a background worker" in checks["job"].detail


def test_report_as_dict_is_json_for_the_job_record(web: StandinWebServer) -> None:
    data = json.loads(json.dumps(run(web).as_dict()))

    assert data["site"] == SITE
    assert data["ok"] is True
    assert [check["name"] for check in data["checks"]] == list(CHECKS)
    assert all(set(check) == {"name", "ok", "detail", "duration_s"} for check in data["checks"])


def test_smoke_leaves_no_document_and_no_session_behind(web: StandinWebServer) -> None:
    assert run(web).ok

    assert web.table(SITE, "ToDo") == {}
    assert web.table(SITE, "Prepared Report") == {}
    assert web.sessions == {}


def test_the_report_version_comes_from_the_running_release(web: StandinWebServer,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_VERSION", "15.42.1")

    assert by_name(run(web))["ping"].detail == "pong (frappe 15.42.1)"


def test_a_session_that_demands_a_csrf_token_gets_it_from_the_desk(bench: Path, web: StandinWebServer) -> None:
    write_site(bench, SITE, csrf_token_at_login=True)

    report = run(web)

    assert report.ok, report.summary()


def test_session_ids_and_csrf_tokens_stay_out_of_the_report_and_the_logs(bench: Path, web: StandinWebServer) -> None:
    write_site(bench, SITE, csrf_token_at_login=True)
    seen: list[str] = []

    class RecordingSessions(dict):  # type: ignore[type-arg]
        def __setitem__(self, sid: str, session: Any) -> None:
            seen.extend([sid, session.csrf_token])
            super().__setitem__(sid, session)

    web.sessions = RecordingSessions()
    with capture_logs() as logs:
        report = run(web)

    assert report.ok and seen
    text = json.dumps(report.as_dict()) + json.dumps(logs, default=str)
    for secret in [*seen, PASSWORD]:
        assert secret not in text


# -- injected faults ---------------------------------------------------------------------


@pytest.mark.parametrize("fault", list(CHECKS))
def test_a_site_fault_fails_its_check_and_only_the_checks_that_need_it(
    bench: Path, web: StandinWebServer, fault: str
) -> None:
    write_site(bench, SITE, faults=[fault])

    report = run(web)

    expected = {fault, *DEPENDENT} if fault == "login" else {fault}
    assert failing(report) == expected, report.summary()
    if fault == "login":
        assert {by_name(report)[name].detail for name in DEPENDENT} == {"not run: login failed"}
    assert not by_name(report)[fault].detail.startswith("not run")


@pytest.mark.parametrize(
    ("fault", "expected_detail"),
    [
        pytest.param("ping", "GET /api/method/ping: HTTP 500 Exception: standin fault injected: ping", id="ping"),
        pytest.param("login", "POST /api/method/login: HTTP 500 Exception: standin fault injected: login",
                     id="login"),
        pytest.param("document", "create ToDo (POST /api/resource/ToDo): HTTP 500 Exception: standin fault injected",
                     id="document"),
        pytest.param("realtime", f"socket.io refused namespace /{SITE}: Unauthorized: TypeError: fetch failed",
                     id="realtime"),
        pytest.param("job", "ended Error: Exception: standin fault injected: job", id="job"),
    ],
)
def test_the_environment_fault_list_fails_the_named_check_with_what_came_back(
    web: StandinWebServer, monkeypatch: pytest.MonkeyPatch, fault: str, expected_detail: str
) -> None:
    monkeypatch.setenv(FAULTS_ENV, fault)

    detail = by_name(run(web))[fault].detail

    assert expected_detail in detail


def test_the_environment_fault_list_takes_several_checks(web: StandinWebServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULTS_ENV, "realtime, job")

    report = run(web)

    assert failing(report) == {"realtime", "job"}
    assert report.summary().endswith("; 3 of 5 checks passed")


def test_a_report_the_site_lacks_times_out_waiting_for_the_worker(web: StandinWebServer) -> None:
    report = run(web, report="No Such Report", timeout=0.5)

    assert failing(report) == {"job"}
    assert "still Started after 0.5s" in by_name(report)["job"].detail
    assert web.table(SITE, "Prepared Report") == {}


def test_maintenance_mode_fails_every_check(bench: Path, web: StandinWebServer) -> None:
    (bench / "sites" / SITE / "site_config.json").write_text(json.dumps({"db_name": "x", "maintenance_mode": 1}))

    report = run(web)

    assert failing(report) == set(CHECKS)
    assert "HTTP 503 SessionStopped" in by_name(report)["ping"].detail


# -- credentials -------------------------------------------------------------------------


def test_a_wrong_password_fails_login_with_401_and_never_shows_the_password(web: StandinWebServer) -> None:
    wrong = "Wr0ng-Secret-Passw0rd"
    with capture_logs() as logs:
        report = run(web, password=wrong)

    checks = by_name(report)
    assert checks["ping"].ok
    assert checks["login"].detail == "POST /api/method/login: HTTP 401 AuthenticationError: Invalid login credentials"
    assert failing(report) == {"login", *DEPENDENT}
    assert report.summary().startswith(f"site {SITE}: login failed (POST /api/method/login: HTTP 401 ")
    assert report.summary().endswith("; 1 of 5 checks passed")
    assert logs, "the checks are logged"
    text = json.dumps(report.as_dict()) + report.summary() + json.dumps(logs, default=str)
    assert wrong not in text
    assert PASSWORD not in text


@pytest.mark.parametrize(("user", "password"), [(None, None), (USER, None), (None, PASSWORD)])
def test_missing_credentials_fail_login_naming_the_settings(web: StandinWebServer, user: str | None,
                                                            password: str | None) -> None:
    report = run(web, user=user, password=password)

    detail = by_name(report)["login"].detail
    assert "JERP_SMOKE_USER" in detail and "JERP_SMOKE_PASSWORD" in detail
    assert failing(report) == {"login", *DEPENDENT}


def test_a_website_user_cannot_pass_login(bench: Path, web: StandinWebServer) -> None:
    write_site(bench, SITE, users={USER: {"password": PASSWORD, "user_type": "Website User"}})

    detail = by_name(run(web))["login"].detail

    assert "answered 'No App', not 'Logged In'" in detail


# -- where the site or the frontend is not -----------------------------------------------


def test_an_unknown_site_fails_ping_with_404(web: StandinWebServer) -> None:
    report = run(web, site="nope.example.com")

    assert failing(report) == set(CHECKS)
    assert by_name(report)["ping"].detail == (
        "GET /api/method/ping: HTTP 404 Not Found (is nope.example.com a site of this bench?)"
    )


def test_an_unreachable_frontend_fails_every_check_without_raising() -> None:
    base_url = f"http://127.0.0.1:{closed_port()}"

    report = smoke_site(SITE, base_url=base_url, user=USER, password=PASSWORD, timeout=5.0)

    assert failing(report) == set(CHECKS)
    checks = by_name(report)
    assert checks["ping"].detail.startswith(f"frontend {base_url} unreachable: ConnectError")
    assert checks["login"].detail.startswith(f"not run: frontend {base_url} unreachable")
    assert {checks[name].detail for name in DEPENDENT} == {"not run: login failed"}


@pytest.mark.parametrize("base_url", ["http://[not-a-host", "frontend:8080"])
def test_a_malformed_frontend_url_fails_every_check_without_raising(base_url: str) -> None:
    report = smoke_site(SITE, base_url=base_url, user=USER, password=PASSWORD, timeout=5.0)

    assert failing(report) == set(CHECKS)
    assert base_url in by_name(report)["ping"].detail


def test_a_transport_that_raises_is_a_failed_check_not_an_exception() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("boom")

    report = smoke_site(SITE, base_url="http://frontend:8080", user=USER, password=PASSWORD,
                        transport=httpx.MockTransport(broken))

    assert by_name(report)["ping"].detail == "unexpected error: RuntimeError: boom"
    assert not report.ok


# -- ping ----------------------------------------------------------------------------------


def test_ping_returns_quietly_for_a_live_site(web: StandinWebServer) -> None:
    ping(SITE, base_url=web.url)


def test_ping_raises_smoke_failed_naming_the_site_and_the_answer(web: StandinWebServer) -> None:
    with pytest.raises(SmokeFailed) as caught:
        ping("nope.example.com", base_url=web.url)

    assert "nope.example.com" in str(caught.value)
    assert "HTTP 404 Not Found" in str(caught.value)
    assert caught.value.fields["site"] == "nope.example.com"


def test_ping_raises_smoke_failed_when_the_frontend_is_unreachable() -> None:
    base_url = f"http://127.0.0.1:{closed_port()}"

    with pytest.raises(SmokeFailed, match=f"site {SITE}: ping failed: frontend {base_url} unreachable"):
        ping(SITE, base_url=base_url, timeout=5.0)


# -- the stand-in itself, where it imitates Frappe ----------------------------------------


@pytest.fixture
def logged_in(web: StandinWebServer) -> Iterator[httpx.Client]:
    """An httpx client of the stand-in with a fresh session of the smoke user."""
    with httpx.Client(base_url=web.url, headers={"Host": SITE}) as client:
        answer = client.post("/api/method/login", data={"usr": USER, "pwd": PASSWORD})
        assert answer.json()["message"] == "Logged In"
        yield client


def test_standin_accepts_session_writes_without_csrf_until_the_desk_issues_a_token(logged_in: httpx.Client) -> None:
    assert logged_in.post("/api/resource/ToDo", json={"description": "before the desk"}).status_code == 200

    desk = logged_in.get("/app")
    token = desk.text.split('frappe.csrf_token = "', 1)[1].split('"', 1)[0]
    refused = logged_in.post("/api/resource/ToDo", json={"description": "no token"})
    accepted = logged_in.post("/api/resource/ToDo", json={"description": "with token"},
                              headers={"X-Frappe-CSRF-Token": token})

    assert (refused.status_code, refused.json()["exc_type"]) == (400, "CSRFTokenError")
    assert accepted.status_code == 200


def test_standin_routes_by_x_frappe_site_name_before_host(web: StandinWebServer) -> None:
    answer = httpx.get(f"{web.url}/api/method/ping", headers={"Host": "frontend", "X-Frappe-Site-Name": SITE})

    assert answer.json() == {"message": "pong"}


def _socketio_connect(web: StandinWebServer, headers: dict[str, str]) -> str:
    with httpx.Client(base_url=web.url, headers=headers) as client:
        opened = client.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
        assert opened.text.startswith("0")
        sid = json.loads(opened.text[1:])["sid"]
        query = {"EIO": "4", "transport": "polling", "sid": sid}
        assert client.post("/socket.io/", params=query, content=f"40/{SITE},").text == "ok"
        return client.get("/socket.io/", params=query).text


@pytest.mark.parametrize(
    ("headers", "refusal"),
    [
        pytest.param({"Origin": f"http://{SITE}"}, "No cookie transmitted.", id="no-cookie"),
        pytest.param({"Origin": f"http://{SITE}", "Cookie": "system_user=yes"},
                     "No authentication method used. Use cookie or authorization header.", id="no-sid"),
        pytest.param({"Origin": "http://evil.example.org", "Cookie": "sid=x"}, "Invalid namespace", id="other-site"),
        pytest.param({"Origin": f"http://{SITE}", "X-Frappe-Site-Name": SITE, "Host": "frontend", "Cookie": "sid=x"},
                     "Invalid origin", id="origin-not-host"),
    ],
)
def test_standin_socketio_refuses_a_namespace_connect_like_frappe(web: StandinWebServer, headers: dict[str, str],
                                                                   refusal: str) -> None:
    answer = _socketio_connect(web, {"Host": SITE, **headers})

    assert answer == f"44/{SITE}," + json.dumps({"message": refusal})


def test_standin_socketio_connects_a_session(logged_in: httpx.Client, web: StandinWebServer) -> None:
    sid = next(value for name, value in logged_in.cookies.items() if name == "sid")

    answer = _socketio_connect(web, {"Host": SITE, "Origin": f"http://{SITE}", "Cookie": f"sid={sid}"})

    assert answer.startswith(f"40/{SITE},{{\"sid\":")
