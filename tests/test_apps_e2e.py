"""install-app and uninstall-app on one site, end to end: a worker on the real Redis, the stand-in
bench on the real MariaDB. Installed, idempotent, refused by bench (dependency) without harm,
a half-done uninstall restored from the pre-change backup, bad requests refused at enqueue."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.e2e_support import (  # noqa: F401 - fixtures
    bench_dir,
    env,
    jerpctl,
    make_site,
    run_job,
    site_config,
    site_db,
    sql,
    worker,
)
from tests.standin.layout import DEFAULT_APP_VERSION, set_app_version, write_faults
from tests.workers import WorkerProcess

pytestmark = pytest.mark.services


def _apps(root_password: str, bench_dir: Path, site: str) -> list[str]:
    rows = sql(root_password, "SELECT `defvalue` FROM `tabDefaultValue` WHERE `parent`='__global' "
               "AND `defkey`='installed_apps'", site_db(bench_dir, site))
    return json.loads(rows[0][0])


def _steps(job: dict) -> dict[str, str]:
    return {s["name"]: s["state"] for s in job["steps"]}


@pytest.fixture
def app_bench(bench_dir: Path) -> Path:
    """The bench with a third app, nfse-pr, that requires erpnext (as its hooks' required_apps would)."""
    set_app_version(bench_dir, "nfse-pr", DEFAULT_APP_VERSION)
    with (bench_dir / "sites" / "apps.txt").open("a") as apps_txt:
        apps_txt.write("nfse-pr\n")
    config_path = bench_dir / "sites" / "common_site_config.json"
    config = json.loads(config_path.read_text())
    config["standin_required_apps"] = {"nfse-pr": ["erpnext"]}
    config_path.write_text(json.dumps(config))
    return bench_dir


def test_install_then_uninstall_an_app_with_every_guard(
    env: dict[str, str], worker: WorkerProcess, app_bench: Path, make_site: Callable[..., str],
    mariadb_root_password: str, real_redis: redis.Redis,
) -> None:
    site = make_site("ap")
    assert _apps(mariadb_root_password, app_bench, site) == ["frappe"]

    rc, job = run_job(env, "install-app", site, "erpnext")
    assert rc == 0 and job["state"] == "succeeded", job.get("error")
    assert _steps(job)["install-app"] == "success" and _steps(job)["restore-pre-change"] == "skipped"
    assert job["result"]["pre_change_backup"]["site"] == site
    assert _apps(mariadb_root_password, app_bench, site) == ["frappe", "erpnext"]
    assert not site_config(app_bench, site).get("maintenance_mode")

    rc, job = run_job(env, "install-app", site, "erpnext")  # again: nothing to do
    assert rc == 0 and _steps(job)["install-app"] == "skipped", job
    assert job["result"]["app_change"] == {"app": "erpnext", "action": "install", "changed": False}

    rc, job = run_job(env, "install-app", site, "nfse-pr")
    assert rc == 0, job.get("error")

    # bench refuses (exit 0) to remove an app another installed app requires: the job says so,
    # restores nothing, and leaves the site online and unmarked
    rc, job = run_job(env, "uninstall-app", site, "erpnext")
    assert rc == 1 and job["state"] == "failed", job
    assert "is a dependency of nfse-pr" in job["error"] and "nothing was removed" in job["error"]
    steps = _steps(job)
    assert steps["restore-pre-change"] == "skipped" and steps["abort-maintenance-off"] == "success", steps
    assert _apps(mariadb_root_password, app_bench, site) == ["frappe", "erpnext", "nfse-pr"]
    assert not site_config(app_bench, site).get("maintenance_mode")
    assert real_redis.get(f"jerp:attention:{site}") is None

    # an uninstall that stops half-way is undone from the pre-change backup
    write_faults(app_bench, {"fail": {"uninstall-app": [site]}})
    rc, job = run_job(env, "uninstall-app", site, "nfse-pr")
    write_faults(app_bench, {})
    assert job["state"] == "recovered", job
    assert _steps(job)["restore-pre-change"] == "success" and "uninstall-app" in job["result"]["recovered"]["reason"]
    assert _apps(mariadb_root_password, app_bench, site) == ["frappe", "erpnext", "nfse-pr"]
    assert not site_config(app_bench, site).get("maintenance_mode")

    rc, job = run_job(env, "uninstall-app", site, "nfse-pr")
    assert rc == 0 and job["state"] == "succeeded", job.get("error")
    assert _apps(mariadb_root_password, app_bench, site) == ["frappe", "erpnext"]
    rc, job = run_job(env, "uninstall-app", site, "nfse-pr")  # again: nothing to do
    assert rc == 0 and _steps(job)["uninstall-app"] == "skipped", job


@pytest.mark.parametrize(("command", "app", "message"), [
    ("install-app", "hrms", "not in this bench"),
    ("uninstall-app", "frappe", "frappe cannot be uninstalled"),
    ("install-app", "Bad App", "invalid app name"),
])
def test_bad_app_requests_are_refused_at_enqueue(
    env: dict[str, str], app_bench: Path, make_site: Callable[..., str], real_redis: redis.Redis,
    command: str, app: str, message: str,
) -> None:
    site = make_site("ar")
    done = jerpctl(env, "enqueue", command, site, app)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert not list(real_redis.scan_iter("jerp:job:*"))


def test_install_app_all_canary_budget_and_a_failed_site_restored(
    env: dict[str, str], worker: WorkerProcess, app_bench: Path, make_site: Callable[..., str],
    mariadb_root_password: str, real_redis: redis.Redis,
) -> None:
    canary, has_it, breaks, plain = (make_site(p) for p in ("ia", "ib", "ic", "id"))
    rc, job = run_job(env, "install-app", has_it, "erpnext")
    assert rc == 0, job.get("error")

    # a canary that fails stops the fan-out before any other site is touched
    write_faults(app_bench, {"fail": {"install-app": [canary]}})
    rc, job = run_job(env, "install-app-all", "erpnext", "--canary", canary)
    write_faults(app_bench, {})
    assert rc == 1 and job["state"] == "failed", job
    states = {s: e["state"] for s, e in job["result"]["sites"].items()}
    assert states == {canary: "recovered", has_it: "not-started", breaks: "not-started", plain: "not-started"}
    for site in (canary, breaks, plain):
        assert _apps(mariadb_root_password, app_bench, site) == ["frappe"]

    # the canary passes; one site's install fails and is restored; within the budget the rest go on
    write_faults(app_bench, {"fail": {"install-app": [breaks]}})
    rc, job = run_job(env, "install-app-all", "erpnext", "--canary", canary, "--budget", "1")
    write_faults(app_bench, {})
    assert rc == 1 and job["state"] == "failed", job
    entries = job["result"]["sites"]
    assert {s: e["state"] for s, e in entries.items()} == {
        canary: "succeeded", has_it: "succeeded", breaks: "recovered", plain: "succeeded"}
    assert breaks in job["error"] and job["result"]["site_count"] == 4
    for site in (canary, has_it, plain):
        assert _apps(mariadb_root_password, app_bench, site) == ["frappe", "erpnext"]
        assert not site_config(app_bench, site).get("maintenance_mode")
    assert _apps(mariadb_root_password, app_bench, breaks) == ["frappe"]
    assert not site_config(app_bench, breaks).get("maintenance_mode")
    skipped = json.loads(jerpctl(env, "--json", "status", entries[has_it]["job_id"]).stdout)
    assert _steps(skipped)["install-app"] == "skipped"
    assert not list(real_redis.scan_iter("jerp:attention:*"))


def test_install_app_all_refuses_an_app_the_bench_lacks(
    env: dict[str, str], app_bench: Path, make_site: Callable[..., str], real_redis: redis.Redis,
) -> None:
    make_site("iz")
    done = jerpctl(env, "enqueue", "install-app-all", "hrms")
    assert done.returncode == 2 and "not in this bench" in done.stderr, done.stdout + done.stderr
    assert not list(real_redis.scan_iter("jerp:job:*"))


def _real_stdout(fixture: str, command_suffix: str) -> tuple[int, list[str]]:
    """Exit code and stdout lines of one command of a real-bench capture (tests/fixtures/realbench)."""
    text = (Path(__file__).parent / "fixtures" / "realbench" / fixture).read_text()
    block = next(b for b in text.split("\n$ ")[0:] if b.splitlines()[0].rstrip().endswith(command_suffix))
    code = int(block.split("# exit code: ")[1].split("\n")[0])
    stdout = block.split("----- stdout")[1].split("\n", 1)[1].split("----- stderr")[0]
    return code, stdout.splitlines()


@pytest.mark.parametrize("app", ["nosuchapp", "frappe"])
def test_stand_in_uninstall_refusals_match_the_real_bench(app: str, app_bench: Path, make_site: Callable[..., str]) -> None:
    from tests.e2e_support import run_bench

    site = make_site("rf")
    real_code, real_lines = _real_stdout("uninstall-app-refused.txt", f"uninstall-app {app} --yes --no-backup")
    done = run_bench(app_bench, "--site", site, "uninstall-app", app, "--yes", "--no-backup", check=False)
    assert (done.returncode, done.stdout.splitlines()) == (real_code, real_lines), done.stdout + done.stderr


def test_uninstalling_an_app_the_bench_no_longer_has_is_refused_without_a_restore(
    env: dict[str, str], worker: WorkerProcess, app_bench: Path, make_site: Callable[..., str],
    mariadb_root_password: str,
) -> None:
    site = make_site("ng")
    rc, job = run_job(env, "install-app", site, "erpnext")
    assert rc == 0, job.get("error")
    apps_txt = app_bench / "sites" / "apps.txt"
    apps_txt.write_text("".join(f"{a}\n" for a in apps_txt.read_text().split() if a != "erpnext"))
    rc, job = run_job(env, "uninstall-app", site, "erpnext")
    assert rc == 1 and "not in this bench" in job["error"], job
    steps = _steps(job)
    assert steps["restore-pre-change"] == "skipped" and steps["abort-maintenance-off"] == "success", steps
    assert _apps(mariadb_root_password, app_bench, site) == ["frappe", "erpnext"]
    assert not site_config(app_bench, site).get("maintenance_mode")
