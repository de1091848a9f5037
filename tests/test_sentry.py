"""Sentry (JERP_SENTRY_DSN): off without a DSN; on, a task that raises is reported through the
Celery integration, and every event is scrubbed by the log redactor before it leaves. Each case
runs in its own interpreter (sentry-sdk patches Celery and logging process-wide), with a
transport stub that keeps the events: no network."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SECRET = "Sup3r-S3cret-pw"

SCRIPT = textwrap.dedent('''
    import json, logging, sys
    from sentry_sdk.transport import Transport
    from jerp_jobs import sentry
    from jerp_jobs.settings import load_settings

    events = []

    class Capture(Transport):
        def capture_envelope(self, envelope):
            for item in envelope.items:
                if item.payload.json is not None:
                    events.append(item.payload.json)

    settings = load_settings(_env_file=None, sentry_dsn=sys.argv[1] or None, mariadb_root_password=sys.argv[2])
    started = sentry.init(settings, transport=Capture)
    if not started:
        print(json.dumps({"started": False, "imported": "sentry_sdk.integrations.celery" in sys.modules}))
        sys.exit(0)

    from celery import Celery
    import celery.app.trace as trace

    app = Celery("t", set_as_current=False)

    @app.task(name="t.migrate")
    def migrate(site):
        raise RuntimeError("bench failed: bench --site " + site + " --db-root-password " + sys.argv[2])

    logging.getLogger("kombu").error("cannot reach redis://:%s@127.0.0.1:6379/0", sys.argv[2])
    tracer = trace.build_tracer(migrate.name, migrate, app=app)  # as a worker runs a task
    tracer("task-1", (), {"site": "acme.example.com"}, {"id": "task-1"})
    import sentry_sdk
    sentry_sdk.flush()
    print(json.dumps({"started": True, "events": events}))
''')


def _run(dsn: str) -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT, dsn, SECRET], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_without_a_dsn_sentry_is_off_and_not_imported() -> None:
    assert _run("") == {"started": False, "imported": False}


def test_a_failing_task_is_reported_with_every_secret_masked() -> None:
    found = _run("https://public@sentry.invalid/1")
    assert found["started"]
    events = found["events"]
    task = [e for e in events if e.get("exception")]
    assert task, events
    value = task[0]["exception"]["values"][-1]["value"]
    assert value == "bench failed: bench --site acme.example.com --db-root-password ***"
    assert task[0]["exception"]["values"][-1]["mechanism"]["type"] == "celery"
    assert task[0]["transaction"] == "t.migrate"
    logged = [e for e in events if e.get("logger") == "kombu"]
    assert logged and "redis://:***@127.0.0.1" in json.dumps(logged[0])
    assert SECRET not in json.dumps(events)
