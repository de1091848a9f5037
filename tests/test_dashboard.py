"""The dashboard on the real Redis through FastAPI's TestClient: who may see and do what,
CSRF and origin checks, the pages and their filters, the live stream, and 10,000 job records."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from jerp_jobs import audit
from jerp_jobs.bootstrap import build_runtime
from jerp_jobs.dashboard import server as dashboard_app
from jerp_jobs.dashboard.auth import check_password, hash_password, parse_users
from jerp_jobs.errors import ConfigError
from jerp_jobs.runtime import Runtime
from jerp_jobs.settings import load_settings
from jerp_jobs.sites import BENCH_SITE_COUNT
from tests.conftest import recording
from tests.fake_executor import FakeExecutor

BASE = "http://dash.test"
ORIGIN = {"Origin": BASE}
SECRET = "dashboard-test-secret-0123456789abcdef"
PASSWORDS = {"alice": "alice-operator-pw", "bob": "bob-reader-pw"}
HASHES = {name: hash_password(pw) for name, pw in PASSWORDS.items()}
SITES = ("one.example.com", "two.example.com")


@pytest.fixture
def sites_dir(tmp_path: Path) -> Path:
    """A sites folder with two sites, as the bench's volume shows them."""
    for site in SITES:
        (tmp_path / "sites" / site).mkdir(parents=True)
        (tmp_path / "sites" / site / "site_config.json").write_text('{"db_name": "x"}')
    (tmp_path / "sites" / "apps.txt").write_text("frappe\nerpnext\n")
    return tmp_path / "sites"


@pytest.fixture
def rt(real_redis: redis.Redis, sites_dir: Path) -> Runtime:
    """A runtime on the real Redis whose bench counts the two sites; published steps recorded."""
    settings = load_settings(
        _env_file=None, executor="local", bench_dir=sites_dir.parent, sites_dir=sites_dir,
        dashboard_secret=SECRET,
        dashboard_users=f"alice:operator:{HASHES['alice']},bob:read-only:{HASHES['bob']}",
        dashboard_proxy_header="X-Forwarded-User", dashboard_trusted_proxies=["10.9.0.0/16"],
        dashboard_proxy_operators=["carol"], dashboard_poll_s=0.1,
        frappe_admin_password="Adm1n-not-on-any-page",
    )
    executor = FakeExecutor().on(BENCH_SITE_COUNT, output=["." * len(SITES)])
    return recording(build_runtime(settings, client=real_redis, executor=executor))


@pytest.fixture(autouse=True)
def _no_login_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dashboard_app, "FAILED_LOGIN_DELAY_S", 0.0)


@pytest.fixture
def client(rt: Runtime) -> Iterator[TestClient]:
    with TestClient(dashboard_app.create_app(rt, celery_app=None), base_url=BASE, follow_redirects=False) as c:
        yield c


def login(client: TestClient, name: str) -> TestClient:
    answer = client.post("/login", data={"username": name, "password": PASSWORDS[name], "next": "/jobs"},
                         headers=ORIGIN)
    assert answer.status_code == 303, answer.text
    return client


def csrf_of(client: TestClient, path: str = "/jobs") -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


# -- passwords and users ---------------------------------------------------------------------


def test_a_password_hash_checks_only_its_password() -> None:
    stored = hash_password("s3cret-pass")
    assert stored.startswith("scrypt.16384.8.1.") and ":" not in stored and "$" not in stored
    assert check_password("s3cret-pass", stored)
    assert not check_password("s3cret-pasS", stored)
    assert not check_password("s3cret-pass", "pbkdf2.1.x.y")
    assert hash_password("s3cret-pass") != stored  # salted


def test_a_malformed_user_entry_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="JERP_DASHBOARD_USERS"):
        parse_users("alice:admin:scrypt.1.2.3.a.b")
    assert parse_users(f"a:operator:{HASHES['alice']}, b:read-only:{HASHES['bob']}")["b"][0] == "read-only"


def test_the_hash_command_prints_a_hash_of_the_password_read_from_stdin() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "jerp_jobs.dashboard", "hash", "--stdin"], input="a-long-password\n",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert check_password("a-long-password", done.stdout.strip())


def test_the_app_refuses_to_start_without_a_session_secret(rt: Runtime) -> None:
    rt.settings = load_settings(_env_file=None, dashboard_users=f"alice:operator:{HASHES['alice']}")
    with pytest.raises(ConfigError, match="JERP_DASHBOARD_SECRET"):
        with TestClient(dashboard_app.create_app(rt, celery_app=None)):
            pass


# -- anonymous requests ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/jobs", "/jobs/abc", "/sites", "/releases", "/fanouts", "/workers", "/audit",
                                  "/actions/cancel?target=abc"])
def test_an_anonymous_page_request_is_sent_to_the_login_page(client: TestClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/login?next=")


@pytest.mark.parametrize("path", ["/api/jobs/abc", "/jobs/abc/events"])
def test_an_anonymous_api_or_event_stream_request_gets_401(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 401


def test_healthz_is_open(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_an_anonymous_action_is_refused_and_changes_nothing(client: TestClient, rt: Runtime) -> None:
    job = rt.store.create("backup", ["backup"], site=SITES[0])
    answer = client.post("/actions/cancel", data={"target": job.id, "confirm": "yes"}, headers=ORIGIN)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
    assert not rt.store.get(job.id).cancel_requested


# -- logging in ------------------------------------------------------------------------------


def test_login_sets_a_signed_httponly_strict_cookie(client: TestClient) -> None:
    answer = client.post("/login", data={"username": "alice", "password": PASSWORDS["alice"], "next": "/sites"},
                         headers=ORIGIN)
    assert answer.status_code == 303 and answer.headers["location"] == "/sites"
    cookie = answer.headers["set-cookie"]
    assert "jerp_dashboard=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert client.get("/jobs").status_code == 200


def test_a_wrong_password_is_refused(client: TestClient) -> None:
    answer = client.post("/login", data={"username": "alice", "password": "nope"}, headers=ORIGIN)
    assert answer.status_code == 401 and "wrong password" in answer.text
    assert client.get("/jobs").status_code == 303


def test_login_refuses_an_outside_redirect(client: TestClient) -> None:
    answer = client.post("/login", data={"username": "alice", "password": PASSWORDS["alice"],
                                         "next": "//evil.example/x"}, headers=ORIGIN)
    assert answer.headers["location"] == "/jobs"


def test_login_from_another_origin_is_refused(client: TestClient) -> None:
    answer = client.post("/login", data={"username": "alice", "password": PASSWORDS["alice"]},
                         headers={"Origin": "http://evil.example"})
    assert answer.status_code == 403 and "set-cookie" not in answer.headers


def test_failed_logins_are_limited_even_for_the_right_password(client: TestClient, rt: Runtime) -> None:
    for _ in range(rt.settings.dashboard_login_attempts):
        assert client.post("/login", data={"username": "alice", "password": "guess"}, headers=ORIGIN).status_code == 401
    answer = client.post("/login", data={"username": "alice", "password": PASSWORDS["alice"]}, headers=ORIGIN)
    assert answer.status_code == 429 and "set-cookie" not in answer.headers


def test_a_tampered_or_foreign_cookie_is_anonymous(client: TestClient) -> None:
    login(client, "bob")
    value = client.cookies["jerp_dashboard"]
    payload, _, signature = value.rpartition(".")
    client.cookies.set("jerp_dashboard", payload.replace("b", "c", 1) + "." + signature)
    assert client.get("/jobs").status_code == 303
    client.cookies.set("jerp_dashboard", payload + "." + signature[::-1])
    assert client.get("/jobs").status_code == 303


def test_a_user_removed_from_the_settings_loses_access_at_once(client: TestClient, rt: Runtime) -> None:
    login(client, "bob")
    assert client.get("/jobs").status_code == 200
    rt.settings = load_settings(_env_file=None, dashboard_secret=SECRET,
                                dashboard_users=f"alice:operator:{HASHES['alice']}")
    with TestClient(dashboard_app.create_app(rt, celery_app=None), base_url=BASE, follow_redirects=False,
                    cookies=dict(client.cookies)) as other:
        assert other.get("/jobs").status_code == 303


def test_logout_needs_the_csrf_token_and_ends_the_session(client: TestClient) -> None:
    login(client, "bob")
    assert client.post("/logout", data={}, headers=ORIGIN).status_code == 403
    token = csrf_of(client)
    answer = client.post("/logout", data={"csrf": token}, headers=ORIGIN)
    assert answer.status_code == 303
    assert client.get("/jobs").status_code == 303


# -- the trusted proxy's header --------------------------------------------------------------


def test_the_proxy_header_counts_only_from_a_trusted_proxy(rt: Runtime) -> None:
    app = dashboard_app.create_app(rt, celery_app=None)
    with TestClient(app, base_url=BASE, follow_redirects=False, client=("10.9.3.4", 5000)) as trusted:
        page = trusted.get("/jobs", headers={"X-Forwarded-User": "dave"})
        assert page.status_code == 200 and "dave" in page.text and "read-only" in page.text
        assert trusted.get("/actions/cancel?target=abc", headers={"X-Forwarded-User": "dave"}).status_code == 403
        assert trusted.get("/jobs").status_code == 303  # no header: nobody
    with TestClient(app, base_url=BASE, follow_redirects=False, client=("192.0.2.7", 5000)) as outsider:
        assert outsider.get("/jobs", headers={"X-Forwarded-User": "carol"}).status_code == 303


def test_a_proxy_operator_acts_with_the_csrf_token_of_the_session_issued_to_them(rt: Runtime) -> None:
    job = rt.store.create("backup", ["backup"], site=SITES[0])
    who = {"X-Forwarded-User": "carol"}
    with TestClient(dashboard_app.create_app(rt, celery_app=None), base_url=BASE, follow_redirects=False,
                    client=("10.9.0.2", 5000), headers=who) as c:
        token = csrf_of(c, f"/actions/cancel?target={job.id}")
        answer = c.post("/actions/cancel", data={"csrf": token, "target": job.id, "confirm": "yes"}, headers=ORIGIN)
        assert answer.status_code == 303, answer.text
    assert rt.store.get(job.id).cancel_requested
    assert audit.newest(rt.redis, limit=1)[0]["actor"] == "dashboard carol (proxy)"


# -- actions: roles, CSRF, origin, confirmation ----------------------------------------------


def test_a_read_only_user_may_not_act(client: TestClient, rt: Runtime) -> None:
    job = rt.store.create("backup", ["backup"], site=SITES[0])
    login(client, "bob")
    token = csrf_of(client)
    assert client.get(f"/actions/cancel?target={job.id}").status_code == 403
    answer = client.post("/actions/cancel", data={"csrf": token, "target": job.id, "confirm": "yes"}, headers=ORIGIN)
    assert answer.status_code == 403
    assert not rt.store.get(job.id).cancel_requested
    assert "Cancel this job" not in client.get(f"/jobs/{job.id}").text


@pytest.mark.parametrize("headers,with_token", [
    pytest.param(ORIGIN, False, id="no-csrf-token"),
    pytest.param({"Origin": "http://evil.example"}, True, id="other-origin"),
    pytest.param({}, True, id="no-origin-nor-referer"),
])
def test_an_action_without_token_or_from_elsewhere_is_refused(client: TestClient, rt: Runtime, headers: dict,
                                                             with_token: bool) -> None:
    job = rt.store.create("backup", ["backup"], site=SITES[0])
    login(client, "alice")
    data = {"target": job.id, "confirm": "yes"}
    if with_token:
        data["csrf"] = csrf_of(client)
    assert client.post("/actions/cancel", data=data, headers=headers).status_code == 403
    assert not rt.store.get(job.id).cancel_requested


def test_a_token_of_another_session_is_refused(client: TestClient, rt: Runtime) -> None:
    job = rt.store.create("backup", ["backup"], site=SITES[0])
    login(client, "alice")
    stale = csrf_of(client)
    login(client, "alice")  # a new session, a new token
    answer = client.post("/actions/cancel", data={"csrf": stale, "target": job.id, "confirm": "yes"}, headers=ORIGIN)
    assert answer.status_code == 403


def test_cancel_asks_for_confirmation_then_cancels_and_records_who(client: TestClient, rt: Runtime) -> None:
    job = rt.store.create("backup", ["backup"], site=SITES[0])
    login(client, "alice")
    confirm = client.get(f"/jobs/{job.id}")
    assert f'href="/actions/cancel?target={job.id}"' in confirm.text
    page = client.get(f"/actions/cancel?target={job.id}")
    assert page.status_code == 200 and "Yes, cancel" in page.text
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    unconfirmed = client.post("/actions/cancel", data={"csrf": token, "target": job.id}, headers=ORIGIN)
    assert unconfirmed.status_code == 303 and unconfirmed.headers["location"].startswith("/actions/cancel")
    assert not rt.store.get(job.id).cancel_requested
    done = client.post("/actions/cancel", data={"csrf": token, "target": job.id, "confirm": "yes"}, headers=ORIGIN)
    assert done.status_code == 303 and done.headers["location"].startswith(f"/jobs/{job.id}")
    assert rt.store.get(job.id).cancel_requested
    entry = audit.newest(rt.redis, limit=1)[0]
    assert (entry["action"], entry["job_id"], entry["actor"]) == ("job.cancel-requested", job.id,
                                                                  "dashboard alice (password)")


def test_cancelling_an_ended_job_says_why(client: TestClient, rt: Runtime) -> None:
    job = rt.store.create("backup", ["backup"], site=SITES[0])
    rt.store.set_state(job.id, "succeeded")
    login(client, "alice")
    token = csrf_of(client)
    answer = client.post("/actions/cancel", data={"csrf": token, "target": job.id, "confirm": "yes"}, headers=ORIGIN)
    assert answer.status_code == 409 and "already ended succeeded" in answer.text


def test_clearing_an_attention_mark(client: TestClient, rt: Runtime) -> None:
    rt.sites.mark_attention(SITES[1], job_id="abc123", reason="restore failed: disk full")
    login(client, "alice")
    sites = client.get("/sites").text
    assert "restore failed: disk full" in sites and "needs attention" in sites
    token = csrf_of(client, f"/actions/clear-attention?target={SITES[1]}")
    answer = client.post("/actions/clear-attention", data={"csrf": token, "target": SITES[1], "confirm": "yes"},
                         headers=ORIGIN)
    assert answer.status_code == 303
    assert rt.sites.attention(SITES[1]) is None
    assert "attention mark of two.example.com cleared" in client.get(answer.headers["location"]).text
    entry = audit.newest(rt.redis, limit=1)[0]
    assert (entry["action"], entry["site"], entry["actor"]) == ("site.attention-cleared", SITES[1],
                                                                "dashboard alice (password)")


@pytest.mark.parametrize("action", ["backup", "drill"])
def test_starting_a_backup_or_a_drill_goes_through_start_job(client: TestClient, rt: Runtime, action: str) -> None:
    login(client, "alice")
    token = csrf_of(client, f"/actions/{action}?target={SITES[0]}")
    answer = client.post(f"/actions/{action}", data={"csrf": token, "target": SITES[0], "confirm": "yes"},
                         headers=ORIGIN)
    assert answer.status_code == 303, answer.text
    job_id = answer.headers["location"].split("/")[2].split("?")[0]
    job = rt.store.get(job_id)
    assert (job.kind, job.site) == (action, SITES[0])
    assert rt.dispatched and rt.dispatched[0][0] == job_id  # its first step published
    entry = audit.newest(rt.redis, limit=1)[0]
    assert (entry["action"], entry["actor"]) == ("job.created", "dashboard alice (password)")


def test_an_action_on_a_bad_site_name_is_refused(client: TestClient) -> None:
    login(client, "alice")
    assert client.get("/actions/backup?target=../etc").status_code == 404


# -- pages -----------------------------------------------------------------------------------


def _finished_job(rt: Runtime, kind: str = "backup", site: str = SITES[0], state: str = "failed") -> str:
    job = rt.store.create(kind, ["backup", "upload-offsite"], site=site)
    step = rt.store.start_step(job.id, "backup", worker="w1")
    rt.store.finish_step(job.id, step, "failed", exit_code=3, output="dumping\nERROR 1045: access denied\n",
                         error="backup failed")
    rt.store.skip_pending(job.id, reason="an earlier step failed")
    rt.store.set_state(job.id, state, error="backup failed: access denied")
    return job.id


def test_a_job_page_shows_steps_durations_output_and_no_secret(client: TestClient, rt: Runtime) -> None:
    job_id = _finished_job(rt)
    login(client, "bob")
    page = client.get(f"/jobs/{job_id}")
    assert page.status_code == 200
    text = page.text
    assert 'id="step-backup"' in text and "ERROR 1045: access denied" in text and "exit 3" in text
    assert "an earlier step failed" in text and "backup failed: access denied" in text
    assert "data-events" not in text  # an ended job opens no stream
    for secret in (SECRET, "Adm1n-not-on-any-page", HASHES["alice"], PASSWORDS["alice"]):
        for path in (f"/jobs/{job_id}", "/jobs", "/sites", "/releases", "/fanouts", "/workers", "/audit"):
            assert secret not in client.get(path).text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert client.get(f"/api/jobs/{job_id}").json()["steps"][0]["exit_code"] == 3
    assert client.get("/jobs/nosuchjob").status_code == 404


def test_a_recovered_job_shows_the_recovery_path(client: TestClient, rt: Runtime) -> None:
    from jerp_jobs.catalog import CATALOG

    workflow = CATALOG["migrate"]
    plan = workflow.plan({})
    recovery = [name for name in plan if workflow.is_recovery(name)]
    assert recovery, plan
    job = rt.store.create("migrate", plan, site=SITES[0])
    for name in plan:
        step = rt.store.start_step(job.id, name, worker="w")
        rt.store.finish_step(job.id, step, "failed" if name == "migrate" else "success")
    rt.store.set_result(job.id, recovered={"restored": "db.sql.gz", "reason": "migrate: patch failed"})
    rt.store.set_state(job.id, "recovered")
    login(client, "bob")
    text = client.get(f"/jobs/{job.id}").text
    assert 'id="recovery"' in text and recovery[0] in text.split('id="recovery"')[1]
    assert "migrate: patch failed" in text


def test_the_jobs_list_filters_by_kind_state_site_and_time(client: TestClient, rt: Runtime) -> None:
    a = rt.store.create("backup", ["backup"], site=SITES[0]).id
    b = rt.store.create("migrate", ["migrate"], site=SITES[1]).id
    c = rt.store.create("backup", ["backup"], site=SITES[1]).id
    rt.store.set_state(c, "failed")
    old = rt.store.create("backup", ["backup"], site=SITES[0]).id
    rt.redis.zadd("jerp:jobs", {old: time.time() - 3 * 86400})
    login(client, "bob")

    def listed(query: str) -> set[str]:
        page = client.get("/jobs" + query)
        assert page.status_code == 200
        return set(re.findall(r'href="/jobs/([0-9a-f]{12})" class="mono"', page.text))

    assert listed("") == {a, b, c, old}
    assert listed("?kind=backup") == {a, c, old}
    assert listed("?state=failed") == {c}
    assert listed(f"?site={SITES[1]}") == {b, c}
    assert listed(f"?site={SITES[1]}&kind=backup&state=failed") == {c}
    assert listed("?window=24h") == {a, b, c}
    assert "unknown state" in client.get("/jobs?state=bogus").text


def test_the_sites_page_shows_backups_against_the_rpo_drills_migrates_and_marks(client: TestClient,
                                                                                 rt: Runtime) -> None:
    now = time.time()
    manifest = {"timestamp": "20261201_010000", "artifacts": [{"size": 10}]}
    rt.redis.zadd(f"jerp:backups:{SITES[0]}", {json.dumps(manifest): now - 3600})
    rt.redis.zadd(f"jerp:backups:{SITES[1]}", {json.dumps({**manifest, "timestamp": "x"}): now - 40 * 3600})
    rt.redis.hset("jerp:drills", SITES[0], json.dumps({"job_id": "d1", "at": now - 7200, "passed": False}))
    migrate = rt.store.create("migrate", ["migrate"], site=SITES[1])
    rt.store.set_state(migrate.id, "succeeded")
    rt.sites.mark_attention(SITES[1], job_id="m1", reason="restore failed")
    login(client, "bob")
    page = client.get("/sites").text
    one = page.split(f'id="site-{SITES[0]}"')[1].split("</tr>")[0]
    two = page.split(f'id="site-{SITES[1]}"')[1].split("</tr>")[0]
    assert "1h00m ago" in one and "stale" not in one  # local-only: the local backup counts
    assert "40h00m ago" in two and "stale" in two
    assert "s-failed" in one and "/jobs/d1" in one  # the drill failed
    assert f"/jobs/{migrate.id}" in two and "restore failed" in two
    assert "erpnext" in page  # the bench's apps
    assert "Clear mark" not in page  # a read-only user has no action buttons


def test_the_sites_page_shows_each_sites_point_in_time_base_and_the_current_rpo(rt: Runtime) -> None:
    now = time.time()
    settings = rt.settings.model_copy(update={"s3_bucket": "backups"})
    with_pitr = recording(build_runtime(settings, client=rt.redis, executor=rt.executor))
    base = {"server": "db", "database": "_a", "dumped_at": now - 5 * 3600,
            "coordinates": {"file": "binlog.000007", "position": 4}}
    copy = {"timestamp": "20261201_010000", "verified": True, "artifacts": [{"size": 10}]}
    rt.redis.zadd(f"jerp:offsite:{SITES[0]}", {json.dumps({**copy, "pitr": base}): now - 5 * 3600})
    rt.redis.zadd(f"jerp:offsite:{SITES[1]}", {json.dumps(copy): now - 3600})  # a copy without a base
    rt.redis.sadd("jerp:backup-sites", SITES[0], SITES[1])
    rt.redis.set("jerp:pitr:shipped", json.dumps({"at": now - 100, "shipped": [], "oldest": "binlog.000001",
                                                  "newest": {"name": "binlog.000042", "closed_at": now - 180}}))
    with TestClient(dashboard_app.create_app(with_pitr, celery_app=None), base_url=BASE,
                    follow_redirects=False) as client:
        login(client, "bob")
        page = client.get("/sites").text
    one = page.split(f'id="site-{SITES[0]}"')[1].split("</tr>")[0]
    two = page.split(f'id="site-{SITES[1]}"')[1].split("</tr>")[0]
    assert "Point in time" in page and "binary logs shipped every 5 min" in page
    assert "RPO 3m00s" in one and "base 5h00m ago" in one
    assert "no base" in two and "RPO" not in two


def test_in_a_fleet_the_sites_page_lists_the_site_to_bench_map_with_each_sites_bench(rt: Runtime,
                                                                                   tmp_path: Path) -> None:
    """The control plane sees no bench's sites folder: the sites come from each bench's listing."""
    from jerp_jobs import placement

    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text("".join(f'[[bench]]\nname = "{name}"\nrole = "production"\ncompose_project = "p-{name}"\n'
                                  for name in ("east", "west")))
    settings = rt.settings.model_copy(update={"fleet_file": fleet_file, "sites_dir": None, "bench_dir": None})
    control = recording(build_runtime(settings, client=rt.redis, executor=FakeExecutor()))
    placement.record_listing(rt.redis, "east", ["a.example.com", "both.example.com"])
    placement.record_listing(rt.redis, "west", ["b.example.com", "both.example.com"])
    with TestClient(dashboard_app.create_app(control, celery_app=None), base_url=BASE,
                    follow_redirects=False) as client:
        login(client, "bob")
        page = client.get("/sites").text

    def row(site: str) -> str:
        return page.split(f'id="site-{site}"')[1].split("</tr>")[0]

    assert "could not be asked" not in page and "<th>Bench</th>" in page
    assert 'data-label="Bench">east<' in row("a.example.com") and "s-ok" in row("a.example.com")
    assert 'data-label="Bench">west<' in row("b.example.com")
    assert "east and west" in row("both.example.com") and "on two benches" in row("both.example.com")
    assert SITES[0] not in page  # the control plane's own sites folder is no bench of the fleet


def test_the_releases_and_fanouts_pages(client: TestClient, rt: Runtime) -> None:
    release = rt.store.create("release", ["deploy", "migrate-all"], params={"tag": "v1.2.3", "source": "operator"})
    rt.redis.zadd("jerp:releases", {release.id: release.created_at})
    rt.store.set_result(release.id, tag="v1.2.3", previous_tag="v1.2.2", rollback_reason="smoke failed on a site")
    rt.store.set_state(release.id, "rolled-back")
    fan = rt.store.create("migrate-all", ["discover", "sites"])
    rt.store.set_result(fan.id, sites={SITES[0]: {"state": "succeeded", "job_id": "c1"},
                                       SITES[1]: {"state": "running", "job_id": "c2"}})
    login(client, "bob")
    releases = client.get("/releases").text
    assert "v1.2.3" in releases and "v1.2.2" in releases and "smoke failed on a site" in releases
    assert "rolled-back" in releases
    fanouts = client.get("/fanouts").text
    assert fan.id in fanouts and "1 / 2" in fanouts
    job = client.get(f"/jobs/{fan.id}").text
    assert 'id="fanout-sites"' in job and "/jobs/c2" in job and "1 / 2 done" in job


# -- the live stream -------------------------------------------------------------------------


def _events(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    event = None
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event:
            yield event, json.loads(line[6:])
            event = None


def test_the_event_stream_follows_a_running_job_to_its_end(client: TestClient, rt: Runtime) -> None:
    job = rt.store.create("backup", ["backup", "upload-offsite"], site=SITES[0])
    step = rt.store.start_step(job.id, "backup", worker="w1")
    rt.store.set_state(job.id, "running")
    login(client, "bob")
    assert 'data-events="/jobs/' in client.get(f"/jobs/{job.id}").text

    rt.store.append_output(job.id, "backup", [("command", "bench --site x backup"), ("output", "dumping tabNote")])

    def advance() -> None:
        time.sleep(0.5)
        rt.store.finish_step(job.id, step, "success", output="Backup Summary done")
        time.sleep(0.5)
        rt.store.set_state(job.id, "succeeded")

    worker = threading.Thread(target=advance)
    worker.start()
    seen = []
    with client.stream("GET", f"/jobs/{job.id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for event, data in _events(stream.iter_lines()):
            seen.append((event, data.get("state")))
            if event == "update":
                assert 'id="step-backup"' in data["html"]
                if not seen[:-1]:  # the first: the step runs, its live output shown
                    assert "$ bench --site x backup" in data["html"] and "dumping tabNote" in data["html"]
            if event == "end":
                break
    worker.join()
    updates = [state for event, state in seen if event == "update"]
    assert updates[0] == "running" and updates[-1] == "succeeded" and len(updates) >= 3
    assert seen[-1][0] == "end"


# -- 10,000 job records ----------------------------------------------------------------------


def test_ten_thousand_jobs_are_listed_a_page_at_a_time(client: TestClient, rt: Runtime) -> None:
    from benchmarks.dashboard import seed

    ids = seed(rt, 10_000)
    login(client, "bob")
    first = client.get("/jobs")
    shown = re.findall(r'href="/jobs/([0-9a-f]{12})" class="mono"', first.text)
    assert len(shown) == 50 and shown[0] == ids[-1]
    older = re.search(r'href="(/jobs\?before=[^"]+)" id="older"', first.text).group(1).replace("&amp;", "&")
    second = re.findall(r'href="/jobs/([0-9a-f]{12})" class="mono"', client.get(older).text)
    assert second == list(reversed(ids))[50:100]
    rare = client.get("/jobs?kind=drill").text  # one in 100 seeded jobs is a drill
    assert len(re.findall(r'class="mono"', rare)) == 50
    assert client.get(f"/jobs/{ids[0]}").status_code == 200


def test_metrics_and_healthz_answer_without_a_session(client: TestClient, rt: Runtime) -> None:
    rt.store.create("backup", ["backup"], site=SITES[0])
    answer = client.get("/metrics")
    assert answer.status_code == 200 and "jerp_" in answer.text


def test_the_workers_page_shows_queue_depths_and_beat(client: TestClient, rt: Runtime) -> None:
    from jerp_jobs.celery import SITE_QUEUE

    rt.redis.lpush(SITE_QUEUE, json.dumps({"headers": {"jerp_sent_at": time.time() - 120}}))
    login(client, "bob")
    page = client.get("/workers").text
    queues = page.split('id="queues"')[1].split("</table>")[0]
    assert SITE_QUEUE in queues and ">1<" in queues and "2m0" in queues
    assert "no Beat holds the schedule lock" in page
