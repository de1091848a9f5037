"""Notifications to people, through Apprise: one event, a title and a body, to every configured URL.

``JERP_NOTIFY_URLS`` holds one or more Apprise URLs (``json://``, ``form://``, ``mailto://``,
``slack://``, ``tgram://`` ...) separated by commas, spaces or newlines. The URLs carry tokens,
so they are secrets: they never reach a log line, a job record or a notification.

Sending is best effort and bounded, because it happens inside workers that have real work to do:

- :meth:`Notifier.send` never raises. A target that cannot be reached is logged as
  ``notify.failed`` with the event (``notification=``), the target's position in the list and its scheme — never
  its URL — and the job goes on.
- Each target is sent to in its own thread. Apprise bounds every HTTP request by its connect
  and read timeouts (4 s each by default; ``?cto=`` and ``?rto=`` on a URL change them), does
  not retry unless the URL asks (``?retry=``), and a fresh Apprise object per message means no
  throttling sleep carried over from an earlier message. On top of that ``send`` waits at most
  ``deadline`` seconds for all targets together, then returns; a target still talking is left
  to finish in its (daemon) thread.
- Titles and bodies pass through the same redaction as the logs (the settings' secrets, the
  notification URLs themselves, secret options and URL passwords), so no secret is sent.

The event names the notification type: ``*.failed`` and ``*.rolled-back`` are failures,
``*.started`` information, ``*.done`` success, ``*.attention`` a warning. Events in use:
``release.started``, ``release.done``, ``release.rolled-back``, ``release.failed``,
``backup.failed`` and ``site.attention`` (:func:`backup_failed`, :func:`site_attention`).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from jerp_jobs.log import Redactor, get_logger, redactor

if TYPE_CHECKING:
    from jerp_jobs.jobs import Job
    from jerp_jobs.settings import Settings

log = get_logger(__name__)

#: seconds ``send`` waits for all targets together before it gives up on the slow ones
DEFAULT_DEADLINE = 15.0

#: Apprise notification types, by the last part of the event name
_TYPES: dict[str, str] = {
    "failed": "failure",
    "rolled-back": "failure",
    "started": "info",
    "done": "success",
    "attention": "warning",
}

#: a comma followed by the start of the next URL separates two URLs; other commas belong to a URL
#: (``mailto://...?to=a@x,b@x``)
_SEPARATOR = re.compile(r"\s+|,(?=\s*[A-Za-z][A-Za-z0-9+.-]*://)")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class Message(NamedTuple):
    """One notification: ``rt.notify(*message)``."""

    event: str
    title: str
    body: str


def parse_urls(raw: str | None) -> list[str]:
    """The URLs of a ``JERP_NOTIFY_URLS`` value, in order, without blanks or repeats."""
    urls: list[str] = []
    for piece in _SEPARATOR.split(raw or ""):
        url = piece.strip().strip(",").strip()
        if url and url not in urls:
            urls.append(url)
    return urls


def notify_type(event: str) -> str:
    """The Apprise notification type of an event: failure, info, success or warning."""
    return _TYPES.get(event.rpartition(".")[2], "info")


def scheme_of(url: str) -> str:
    """What may be said of a URL in a log line: its scheme only."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else "?"


@dataclass
class _Outcome:
    ok: bool = False
    reason: str = "no answer before the deadline"


class Notifier:
    """Sends events to Apprise URLs; with no URL it does nothing.

    ``urls``: Apprise URLs (invalid ones are logged by position and scheme and left out).
    ``secrets``: values that must never be sent (the settings' secrets); the URLs are added.
    ``deadline``: seconds one ``send`` may take in all.
    """

    def __init__(self, urls: Sequence[str], *, secrets: Iterable[str] = (), deadline: float = DEFAULT_DEADLINE) -> None:
        self.deadline = deadline
        #: (position in the configured list, URL): positions name targets in log lines
        self._targets = _usable(list(urls))
        self._redactor = Redactor([*secrets, *urls])

    @classmethod
    def from_settings(cls, settings: Settings) -> Notifier:
        """The notifier of ``JERP_NOTIFY_URLS`` (none set: a notifier that does nothing)."""
        value = settings.notify_urls
        urls = parse_urls(settings.secret("notify_urls")) if value is not None and value.get_secret_value() else []
        if urls:
            redactor.add(urls)  # should Apprise's own log lines ever echo one
        return cls(urls, secrets=settings.secret_values())

    @property
    def targets(self) -> int:
        """How many URLs this notifier sends to."""
        return len(self._targets)

    def send(self, event: str, title: str, body: str) -> None:
        """Send to every URL at once; wait at most ``deadline`` s; log what failed; never raise."""
        if not self._targets:
            return
        try:
            self._send(event, self._clean(title), self._clean(body))
        except Exception as exc:  # noqa: BLE001 - a notification must never break the work it reports on
            try:
                log.warning("notify.failed", notification=event, targets=len(self._targets), reason=type(exc).__name__)
            except Exception:  # noqa: BLE001, S110 - not even a broken log may escape
                pass

    def _clean(self, text: str) -> str:
        return redactor.text(self._redactor.text(str(text)))

    def _send(self, event: str, title: str, body: str) -> None:
        kind = notify_type(event)
        outcomes = [_Outcome() for _ in self._targets]
        threads = [
            threading.Thread(target=_deliver, args=(url, title, body, kind, outcome), name=f"notify-{n}", daemon=True)
            for (n, url), outcome in zip(self._targets, outcomes)
        ]
        for thread in threads:
            thread.start()
        end = time.monotonic() + self.deadline
        for thread in threads:
            thread.join(max(0.0, end - time.monotonic()))
        delivered = 0
        for (n, url), outcome in zip(self._targets, outcomes):
            if outcome.ok:
                delivered += 1
            else:
                log.warning("notify.failed", notification=event, target=n, scheme=scheme_of(url), reason=outcome.reason)
        if delivered:
            log.info("notify.sent", notification=event, targets=delivered, type=kind)


def _apprise(url: str) -> Any:
    """A fresh Apprise object holding one URL (None when Apprise does not accept the URL)."""
    import apprise

    asset = apprise.AppriseAsset(app_id="jerp-jobs", app_desc="jerp-jobs", async_mode=False, storage_mode="memory")
    client = apprise.Apprise(asset=asset)
    return client if client.add(url) else None


def _usable(urls: list[str]) -> list[tuple[int, str]]:
    """The URLs Apprise accepts, with their position (from 1); the others are logged and left out."""
    if not urls:
        return []
    usable: list[tuple[int, str]] = []
    for n, url in enumerate(urls, start=1):
        try:
            ok = _apprise(url) is not None
        except Exception:  # noqa: BLE001 - a bad URL is reported, not raised
            ok = False
        if ok:
            usable.append((n, url))
        else:
            log.warning("notify.invalid_url", target=n, scheme=scheme_of(url))
    return usable


def _deliver(url: str, title: str, body: str, kind: str, outcome: _Outcome) -> None:
    """Send to one URL (in its own thread); the outcome says what happened, never with the URL."""
    try:
        import apprise

        client = _apprise(url)
        if client is None:
            outcome.reason = "not a URL Apprise accepts"
            return
        sent = client.notify(body=body, title=title, notify_type=kind, body_format=apprise.NotifyFormat.TEXT)
        outcome.ok = bool(sent)
        if not outcome.ok:
            outcome.reason = "the service could not be reached or refused the notification"
    except Exception as exc:  # noqa: BLE001 - reported by the caller
        outcome.reason = f"error: {type(exc).__name__}"


# -- the events this project sends (release events are built by the release workflow) ----------


def backup_failed(job: Job) -> Message:
    """A backup (of one site) or backup-all job that ended in a state other than succeeded."""
    subject = f"Backup of {job.site}" if job.site else job.kind
    lines = [f"Job {job.id} ({job.kind}) ended {job.state}: {job.error or 'no error recorded'}"]
    counts = job.result.get("counts") if isinstance(job.result, dict) else None
    if counts:
        lines.append("Sites: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    lines.append(f"Details: jerpctl status {job.id}")
    return Message("backup.failed", f"{subject} {job.state}", "\n".join(lines))


def site_attention(site: str, *, job_id: str, reason: str) -> Message:
    """A site was marked as needing attention: automation leaves it alone until it is cleared."""
    body = (
        f"{reason}\n"
        f"Job: {job_id} (jerpctl status {job_id})\n"
        f"Automation leaves the site alone until it is repaired and cleared: jerpctl site clear-attention {site}"
    )
    return Message("site.attention", f"{site} needs attention", body)
