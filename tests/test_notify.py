"""Notifications through Apprise: real deliveries to a loopback HTTP server, failures that never
raise nor leak a URL, redaction, and the events the workflows send."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from structlog.testing import capture_logs

from jerp_jobs import runner
from jerp_jobs.enqueue import create_job
from jerp_jobs.notify import Notifier, backup_failed, notify_type, parse_urls, site_attention
from jerp_jobs.runtime import Runtime
from jerp_jobs.settings import Settings, load_settings
from jerp_jobs.workflow import StepContext

SITE = "acme.example.com"
TOKEN = "fake-token-7Hq2xWv9"


@dataclass
class Receiver:
    """What the loopback server received: one dict per request (path, content type, fields)."""

    port: int
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: requests to a path under /slow/ wait for this before they are answered
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, scheme: str, path: str) -> str:
        return f"{scheme}://127.0.0.1:{self.port}/{path}"

    def paths(self) -> list[str]:
        return sorted(r["path"] for r in self.requests)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A threaded HTTP server on loopback that records every POST (JSON or form) and answers 200."""
    box: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            kind = self.headers.get("Content-Type", "")
            fields = json.loads(raw) if "json" in kind else dict(parse_qsl(raw))
            rec = box["r"]
            if self.path.startswith("/slow/"):
                rec.release.wait(30)
            rec.requests.append({"path": self.path, "content_type": kind, **fields})
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    box["r"] = rec = Receiver(port=server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    rec.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _settings(**values: Any) -> Settings:
    return load_settings(_env_file=None, broker_url="redis://127.0.0.1:1/0", executor="local",
                         bench_dir=Path("/nonexistent-bench"), **values)


# -- delivery ----------------------------------------------------------------------------------


def test_json_url_receives_title_body_and_failure_type(receiver: Receiver) -> None:
    Notifier([receiver.url("json", "hooks/ops")]).send("backup.failed", "Backup of a.example.com failed", "job j1")
    [got] = receiver.requests
    assert got["path"] == "/hooks/ops" and got["content_type"].startswith("application/json")
    assert (got["title"], got["message"], got["type"]) == ("Backup of a.example.com failed", "job j1", "failure")


def test_every_url_receives_the_notification_and_the_count_is_logged(receiver: Receiver) -> None:
    notifier = Notifier([receiver.url("json", "one"), receiver.url("form", "two")])
    with capture_logs() as logs:
        notifier.send("release.done", "Release v15.2 done", "all sites migrated")
    assert receiver.paths() == ["/one", "/two"]
    form = next(r for r in receiver.requests if r["path"] == "/two")
    assert form["content_type"].startswith("application/x-www-form-urlencoded")
    assert (form["title"], form["message"], form["type"]) == ("Release v15.2 done", "all sites migrated", "success")
    sent = [e for e in logs if e["event"] == "notify.sent"]
    assert sent == [{"event": "notify.sent", "notification": "release.done", "targets": 2, "type": "success",
                     "log_level": "info"}]


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param("release.failed", "failure", id="failed-is-failure"),
        pytest.param("release.rolled-back", "failure", id="rolled-back-is-failure"),
        pytest.param("backup.failed", "failure", id="backup-failed-is-failure"),
        pytest.param("release.started", "info", id="started-is-info"),
        pytest.param("release.done", "success", id="done-is-success"),
        pytest.param("site.attention", "warning", id="attention-is-warning"),
        pytest.param("something.else", "info", id="unknown-is-info"),
    ],
)
def test_notification_type_follows_the_event(event: str, expected: str) -> None:
    assert notify_type(event) == expected


def test_attention_event_arrives_as_a_warning(receiver: Receiver) -> None:
    Notifier([receiver.url("json", "ops")]).send(*site_attention(SITE, job_id="j7", reason="restore failed"))
    [got] = receiver.requests
    assert got["type"] == "warning" and got["title"] == f"{SITE} needs attention"
    assert "restore failed" in got["message"] and "j7" in got["message"]


# -- failures: never raised, never a URL in a log line -------------------------------------------


def test_unreachable_url_is_logged_without_its_url_and_the_others_still_receive(
    receiver: Receiver, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    secret_url = f"json://bot:{TOKEN}@127.0.0.1:{closed_port}/hooks/{TOKEN}?cto=2&rto=2"
    notifier = Notifier([secret_url, receiver.url("json", "ok")])
    caplog.set_level(logging.INFO)
    with capture_logs() as logs:
        assert notifier.send("backup.failed", "Backup of a.example.com failed", "job j1") is None
    failed = [e for e in logs if e["event"] == "notify.failed"]
    assert len(failed) == 1
    assert (failed[0]["notification"], failed[0]["target"], failed[0]["scheme"]) == ("backup.failed", 1, "json")
    assert [e["targets"] for e in logs if e["event"] == "notify.sent"] == [1]
    assert receiver.paths() == ["/ok"]
    assert TOKEN not in repr(logs) and TOKEN not in caplog.text


def test_a_target_that_does_not_answer_in_time_does_not_hold_the_sender(receiver: Receiver) -> None:
    notifier = Notifier([receiver.url("json", "slow/hook"), receiver.url("json", "fast")], deadline=3.0)
    with capture_logs() as logs:
        notifier.send("release.started", "Release v15.3 started", "canary first")
    receiver.release.set()
    failed = [e for e in logs if e["event"] == "notify.failed"]
    assert [(e["target"], e["reason"]) for e in failed] == [(1, "no answer before the deadline")]
    assert "/fast" in receiver.paths()


def test_a_url_apprise_does_not_accept_is_left_out_and_logged_by_position() -> None:
    with capture_logs() as logs:
        notifier = Notifier([f"nosuchservice://{TOKEN}@example.invalid/x", "json://127.0.0.1:9/x"])
    assert notifier.targets == 1
    assert [(e["event"], e["target"], e["scheme"]) for e in logs] == [("notify.invalid_url", 1, "nosuchservice")]
    assert TOKEN not in repr(logs)


def test_a_notifier_without_urls_does_nothing() -> None:
    with capture_logs() as logs:
        notifier = Notifier.from_settings(_settings())
        notifier.send("backup.failed", "title", "body")
    assert notifier.targets == 0 and logs == []


# -- redaction -----------------------------------------------------------------------------------


def test_secrets_in_title_and_body_never_reach_the_notification(receiver: Receiver) -> None:
    root_pw = "Zq9-root-Secret!"
    url = receiver.url("json", f"hooks/{TOKEN}")
    notifier = Notifier.from_settings(_settings(mariadb_root_password=root_pw, notify_urls=url))
    assert notifier.targets == 1
    notifier.send(
        "release.failed",
        f"failed with {root_pw}",
        f"bench restore x.sql.gz --db-root-password {root_pw}\nposted to {url}\nmysql://root:pw1234@db/x",
    )
    [got] = receiver.requests
    text = json.dumps(got)
    assert root_pw not in text and TOKEN not in got["message"] and "pw1234" not in text
    assert got["title"] == "failed with ***"


# -- the URL list --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(None, [], id="unset"),
        pytest.param("  \n ", [], id="blank"),
        pytest.param("json://h/a", ["json://h/a"], id="one"),
        pytest.param("json://h/a,form://h/b", ["json://h/a", "form://h/b"], id="comma"),
        pytest.param("json://h/a, form://h/b ,", ["json://h/a", "form://h/b"], id="comma-and-spaces"),
        pytest.param("json://h/a form://h/b", ["json://h/a", "form://h/b"], id="space"),
        pytest.param("json://h/a\n\nform://h/b\n", ["json://h/a", "form://h/b"], id="newlines"),
        pytest.param(
            "mailto://u:p@mail.example.com?to=a@example.com,b@example.com,json://h/a",
            ["mailto://u:p@mail.example.com?to=a@example.com,b@example.com", "json://h/a"],
            id="comma-inside-a-url-stays",
        ),
        pytest.param("json://h/a json://h/a", ["json://h/a"], id="repeat-once"),
    ],
)
def test_notify_urls_are_split_on_commas_spaces_and_newlines(raw: str | None, expected: list[str]) -> None:
    assert parse_urls(raw) == expected


def test_settings_urls_all_receive(receiver: Receiver) -> None:
    urls = f"{receiver.url('json', 'a')},\n{receiver.url('form', 'b')} {receiver.url('json', 'c')}"
    notifier = Notifier.from_settings(_settings(notify_urls=urls))
    notifier.send("release.started", "t", "b")
    assert notifier.targets == 3 and receiver.paths() == ["/a", "/b", "/c"]


# -- wiring: the events the workflows send -------------------------------------------------------


def _fenced(*prefix: str):  # type: ignore[no-untyped-def]
    def match(argv: tuple[str, ...]) -> bool:
        return argv[0] == "flock" and argv[6 : 6 + len(prefix)] == prefix

    return match


def test_a_failed_backup_sends_one_backup_failed(fake_runtime: Runtime) -> None:
    fake_runtime.executor.on(_fenced("bench"), exit_code=1, output=["Backup failed for Site acme.example.com"])
    job = create_job(fake_runtime, "backup", site=SITE)
    result = runner.run_step(fake_runtime, job.id, "backup", worker="w1")
    assert result.detail == "failed"
    [(event, title, body)] = fake_runtime.notifications  # type: ignore[attr-defined]
    assert event == "backup.failed" and title == f"Backup of {SITE} failed"
    assert job.id in body and "exited 1" in body


def test_a_backup_started_by_backup_all_leaves_the_notification_to_its_parent(fake_runtime: Runtime) -> None:
    fake_runtime.executor.on(_fenced("bench"), exit_code=1, output=["Backup failed"])
    parent = create_job(fake_runtime, "backup-all")
    child = create_job(fake_runtime, "backup", site=SITE, parent=parent.id)
    runner.run_step(fake_runtime, child.id, "backup", worker="w1")
    assert fake_runtime.store.get(child.id).state == "failed"
    assert fake_runtime.notifications == []  # type: ignore[attr-defined]


def test_a_failed_backup_all_sends_backup_failed_naming_backup_all(fake_runtime: Runtime, tmp_path) -> None:
    from tests.site_folders import count_output, is_count, use_sites_dir

    (tmp_path / "sites").mkdir()  # a bench without sites
    use_sites_dir(fake_runtime, tmp_path / "sites")
    fake_runtime.executor.on(is_count, output=count_output(0))
    job = create_job(fake_runtime, "backup-all")
    runner.run_step(fake_runtime, job.id, "discover", worker="w1")
    assert fake_runtime.store.get(job.id).state == "failed"
    [(event, title, body)] = fake_runtime.notifications  # type: ignore[attr-defined]
    assert (event, title) == ("backup.failed", "backup-all failed")
    assert job.id in body and "no site" in body


def test_a_successful_backup_sends_nothing(fake_runtime: Runtime) -> None:
    job = create_job(fake_runtime, "backup", site=SITE)
    fake_runtime.store.set_state(job.id, "running")
    runner.finish_job(fake_runtime, job.id, "succeeded")
    assert fake_runtime.notifications == []  # type: ignore[attr-defined]


def test_backup_failed_message_counts_the_sites_of_a_backup_all(fake_runtime: Runtime) -> None:
    job = create_job(fake_runtime, "backup-all")
    fake_runtime.store.set_result(job.id, counts={"failed": 2, "succeeded": 10})
    fake_runtime.store.set_state(job.id, "failed", error="failed sites: a, b")
    event, title, body = backup_failed(fake_runtime.store.get(job.id))
    assert (event, title) == ("backup.failed", "backup-all failed")
    assert "failed sites: a, b" in body and "2 failed, 10 succeeded" in body


def test_marking_a_site_for_attention_sends_site_attention(fake_runtime: Runtime) -> None:
    from jerp_jobs.operations.common import mark_attention

    job = create_job(fake_runtime, "migrate", site=SITE)
    record = fake_runtime.store.start_step(job.id, "migrate", worker="w1")
    fake_runtime.store.finish_step(job.id, record, "failed", error="patch failed")
    mark_attention(StepContext(runtime=fake_runtime, job=fake_runtime.store.get(job.id), step="mark-attention"))
    assert fake_runtime.sites.attention(SITE) is not None
    [(event, title, body)] = fake_runtime.notifications  # type: ignore[attr-defined]
    assert (event, title) == ("site.attention", f"{SITE} needs attention")
    assert "steps migrate failed" in body and job.id in body


def test_the_reaper_marking_a_site_sends_site_attention(fake_runtime: Runtime) -> None:
    import time

    from jerp_jobs.resume import reap_stuck

    job = create_job(fake_runtime, "migrate", site=SITE)
    fake_runtime.store.set_state(job.id, "running")
    fake_runtime.redis.hset(f"jerp:job:{job.id}", "created_at", repr(time.time() - 25 * 3600))
    assert reap_stuck(fake_runtime) == [job.id]
    attention = [n for n in fake_runtime.notifications if n[0] == "site.attention"]  # type: ignore[attr-defined]
    [(_, title, body)] = attention
    assert title == f"{SITE} needs attention" and "reaped" in body and job.id in body
