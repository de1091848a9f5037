"""Logging: secrets never reach a log line, in any field, in any form."""

from __future__ import annotations

import json
import subprocess
import sys

from jerp_jobs import bench
from jerp_jobs.log import MASK, Redactor

ROOT_PW = "Zq9-root-Secret!"
ADMIN_PW = "adm1n-Pa55word"


def test_logged_new_site_argv_shows_no_password() -> None:
    redactor = Redactor([ROOT_PW, ADMIN_PW])
    call = bench.new_site(
        "acme.example.com", db_root_password=ROOT_PW, admin_password=ADMIN_PW, db_name="_acme", install_apps=["erpnext"]
    )
    event = redactor(None, "info", {"event": "command.start", "argv": call.argv, "call": repr(call)})
    line = json.dumps(event)
    assert ROOT_PW not in line and ADMIN_PW not in line
    assert event["argv"][:3] == ["bench", "new-site", "acme.example.com"]
    masked = redactor(None, "info", {"event": "command.start", "argv": ["bench", "--db-root-password", ROOT_PW]})
    assert masked["argv"][-1] == MASK


def test_value_after_a_secret_option_is_masked_even_when_unknown() -> None:
    redactor = Redactor()
    assert redactor.argv(["bench", "restore", "x.sql.gz", "--db-root-password", "unknown-pw"])[-1] == MASK
    assert redactor.argv(["--admin-password=unknown-pw"]) == [f"--admin-password={MASK}"]
    text = redactor.text("ran: bench --site a.com restore --mariadb-root-password hunter22 done")
    assert "hunter22" not in text and "done" in text


def test_secrets_are_masked_inside_nested_fields_and_exceptions() -> None:
    redactor = Redactor([ROOT_PW])
    event = redactor(
        None,
        "error",
        {
            "event": f"failed with {ROOT_PW}",
            "context": {"output": [f"line {ROOT_PW}", 3]},
            "exc": RuntimeError(f"auth {ROOT_PW}"),
        },
    )
    assert ROOT_PW not in json.dumps(event, default=str)
    assert event["context"]["output"][1] == 3


def test_password_in_a_url_is_masked() -> None:
    assert Redactor().text("broker redis://:s3cretpw@redis:6379/0 down") == f"broker redis://:{MASK}@redis:6379/0 down"


def test_configured_logging_redacts_structlog_and_stdlib_lines() -> None:
    """A process configured as the workers are: JSON lines, no secret in either kind of line."""
    code = f"""
import logging, structlog
from jerp_jobs import log
log.configure(secrets=[{ROOT_PW!r}], json=True)
structlog.contextvars.bind_contextvars(job_id="j1", site="acme.example.com")
log.get_logger("t").info("command.start", argv=["bench", "--db-root-password", {ROOT_PW!r}])
logging.getLogger("celery").warning("celery says %s", {ROOT_PW!r})
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2
    assert ROOT_PW not in out
    assert lines[0]["job_id"] == "j1" and lines[0]["argv"] == ["bench", "--db-root-password", MASK]
    assert lines[1]["event"] == f"celery says {MASK}"


def test_logging_configured_on_first_use_imports_structlog_only_when_a_line_is_logged() -> None:
    """jerpctl's read commands: the secrets go to the redactor at once, structlog (configured as
    asked) only with the first line logged."""
    code = f"""
import sys
from jerp_jobs import log
log.configure(secrets=[{ROOT_PW!r}], json=True, on_first_use=True)
logger = log.get_logger("t")
print("structlog" in sys.modules, file=sys.stdout)
logger.warning("job.partial_record", detail="pw {ROOT_PW}")
print("structlog" in sys.modules, file=sys.stdout)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]
    [line] = [json.loads(line) for line in done.stderr.splitlines()]
    assert line["event"] == "job.partial_record" and line["detail"] == f"pw {MASK}" and line["level"] == "warning"


def test_a_value_is_redacted_once_and_passed_on_untouched_afterwards() -> None:
    redactor = Redactor([ROOT_PW])
    argv = redactor.argv(["bench", "--db-root-password", ROOT_PW, f"x{ROOT_PW}"])
    assert argv == ["bench", "--db-root-password", MASK, f"x{MASK}"]
    assert redactor.value(argv) is argv
    text = redactor.text(f"ran with {ROOT_PW}")
    assert redactor.text(text) is text
    event = redactor(None, "info", {"event": "command.end", "argv": argv, "exit_code": 0})
    assert event["argv"] is argv and event["exit_code"] == 0
