"""The shipped alert rules and Grafana dashboard: valid for promtool, unit-tested with
``promtool test rules`` (Debian's prometheus package), and using only metrics /metrics exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from jerp_jobs.metrics import exported_series

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "jerp-jobs.json"
#: PromQL words that look like metric names but are not
_NAME = re.compile(r"\bjerp_[a-z_]+\b")


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus (tests/services/packages.sh installs it)"
    return found


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    done = subprocess.run([_promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                          timeout=60, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_unit_tests_fail_on_a_broken_rule(tmp_path: Path) -> None:
    """The rule tests can fail: the same tests against rules with a wrong threshold."""
    broken = RULES.read_text().replace("jerp_queue_oldest_age_seconds > 900", "jerp_queue_oldest_age_seconds > 9000")
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / "alerts_test.yml")
    done = subprocess.run([_promtool(), "test", "rules", "alerts_test.yml"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode != 0 and "JerpQueueWaitingTooLong" in done.stdout + done.stderr


def _rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def _dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_metric_used_is_exported(source: str) -> None:
    expressions = _rule_expressions() if source == "rules" else _dashboard_expressions()
    assert expressions
    used = {name for expr in expressions for name in _NAME.findall(expr)}
    assert used and used <= exported_series(), sorted(used - exported_series())


def test_the_rules_cover_what_operators_must_hear_about() -> None:
    names = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    assert {"JerpBackupOlderThanRPO", "JerpRestoreDrillFailed", "JerpJobsFailing", "JerpNoWorkerAlive",
            "JerpBeatSilent", "JerpQueueWaitingTooLong"} <= names
