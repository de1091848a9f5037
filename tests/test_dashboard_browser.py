"""The dashboard as a person uses it: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by Selenium, against the dashboard served by uvicorn on a free port,
a real Celery worker, the real Redis and the stand-in bench on the real MariaDB.

Logs in, watches a migrate-all progress live (the page is updated by server-sent events, never
reloaded), opens the output of a site's failed migrate, cancels a running job and clears an
attention mark. Screenshots go to ``tests/.artifacts/dashboard/`` (``JERP_TEST_ARTIFACTS``
overrides ``tests/.artifacts``; ignored by git), named after the moment they show.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from jerp_jobs.dashboard.auth import hash_password
from jerp_jobs.sitestate import SiteState
from tests.e2e_support import jerpctl
from tests.standin.layout import write_faults
from tests.workers import VENV_BIN, WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("JERP_TEST_ARTIFACTS") or ROOT / "tests" / ".artifacts") / "dashboard"
PASSWORD = "operator-browser-pw"
WAIT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dashboard(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """The dashboard under uvicorn on a free loopback port; its base URL."""
    port = _free_port()
    dash_env = {**os.environ, **env, "JERP_DASHBOARD_SECRET": "browser-test-secret-0123456789abcdef",
                "JERP_DASHBOARD_USERS": f"olga:operator:{hash_password(PASSWORD)}", "JERP_DASHBOARD_POLL_S": "0.3"}
    log = open(tmp_path / "dashboard.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(VENV_BIN / "uvicorn"), "jerp_jobs.dashboard:app", "--host", "127.0.0.1",
                             "--port", str(port)], env=dash_env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the dashboard did not start:\n{(tmp_path / 'dashboard.log').read_text()[-3000:]}")
        time.sleep(0.2)
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def browser() -> Iterator[object]:
    """Headless Chromium through chromedriver; fails (never skips) when they are not installed."""
    from selenium import webdriver

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("chromium and chromedriver are needed: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1000", "--lang=en-US"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _shot(driver: object, name: str, *, full: bool = True) -> Path:
    path = ARTIFACTS / f"{name}.png"
    if full:  # the whole page, not only the window
        height = driver.execute_script("return document.documentElement.scrollHeight")  # type: ignore[attr-defined]
        width = driver.get_window_size()["width"]  # type: ignore[attr-defined]
        driver.set_window_size(width, min(max(height + 120, 600), 4000))  # type: ignore[attr-defined]
    driver.save_screenshot(str(path))  # type: ignore[attr-defined]
    assert path.stat().st_size > 1000
    return path


def _until(driver: object, check: Callable[[object], object], what: str, timeout: float = WAIT_S) -> object:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    try:  # the live part is replaced as the job changes: an element read may go stale meanwhile
        return WebDriverWait(driver, timeout, poll_frequency=0.2,
                             ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(check)
    except Exception as exc:  # noqa: BLE001 - a timeout with what was awaited and the page as it was
        raise AssertionError(f"waited {timeout}s for {what}; page:\n"
                             f"{driver.find_element('tag name', 'main').text[:3000]}") from exc  # type: ignore[attr-defined]


def _enqueue(env: dict[str, str], *args: str) -> str:
    done = jerpctl(env, "enqueue", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_an_operator_follows_and_acts_in_the_browser(
    env: dict[str, str], worker: WorkerProcess, dashboard: str, browser: object, make_site: Callable[..., str],
    bench_dir: Path, real_redis: redis.Redis,
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    sites = sorted(make_site("br") for _ in range(3))
    failing = sites[2]
    write_faults(bench_dir, {"delay": {"migrate": 2}, "fail": {"migrate": [failing]}})

    # log in (the login page first: every page sends an anonymous visitor there)
    driver.get(dashboard + "/sites")  # type: ignore[attr-defined]
    assert "/login" in driver.current_url  # type: ignore[attr-defined]
    driver.find_element(By.ID, "username").send_keys("olga")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "password").send_keys("wrong-password")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "login").click()  # type: ignore[attr-defined]
    # the click submits the form; the answer is a new page, loaded after click() has returned
    _until(driver, lambda d: d.find_elements(By.ID, "login-error"), "the login page's answer to a wrong password")
    assert "wrong password" in driver.find_element(By.ID, "login-error").text  # type: ignore[attr-defined]
    driver.find_element(By.ID, "username").send_keys("olga")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "password").send_keys(PASSWORD)  # type: ignore[attr-defined]
    _shot(driver, "01-login", full=False)
    driver.find_element(By.ID, "login").click()  # type: ignore[attr-defined]
    _until(driver, lambda d: d.current_url.endswith("/sites"), "the sites page after login")

    # a migrate-all, watched live: the page is never reloaded, the stream updates it
    job_id = _enqueue(env, "migrate-all", "--concurrency", "1", "--budget", "1")
    driver.get(f"{dashboard}/jobs/{job_id}")  # type: ignore[attr-defined]
    live = driver.find_element(By.ID, "live")  # type: ignore[attr-defined]
    assert live.get_attribute("data-events"), "a running job's page follows its events"
    driver.execute_script("window.__sameDocument = 'yes';")  # type: ignore[attr-defined]
    _until(driver, lambda d: d.find_elements(By.ID, "fanout-sites")
           and "running" in d.find_element(By.ID, "fanout-sites").text, "a site running in the fan-out")
    _shot(driver, "02-migrate-all-running")
    _until(driver, lambda d: d.find_element(By.ID, "live").get_attribute("data-ended") == "1",
           "the migrate-all to end")
    assert driver.execute_script("return window.__sameDocument;") == "yes"  # type: ignore[attr-defined]
    assert int(driver.find_element(By.ID, "live").get_attribute("data-updates")) >= 3  # type: ignore[attr-defined]
    table = driver.find_element(By.ID, "fanout-sites").text  # type: ignore[attr-defined]
    assert all(site in table for site in sites) and "recovered" in table and "succeeded" in table
    assert driver.find_element(By.ID, "job-state").text == "failed"  # type: ignore[attr-defined]
    _shot(driver, "03-migrate-all-ended")

    # the failed site's job, and the output of its failed migrate
    row = [r for r in driver.find_elements(By.CSS_SELECTOR, "#fanout-sites tbody tr") if failing in r.text][0]  # type: ignore[attr-defined]
    row.find_element(By.TAG_NAME, "a").click()
    _until(driver, lambda d: d.find_elements(By.ID, "step-migrate"), "the failed site's job page")
    step = driver.find_element(By.ID, "step-migrate")  # type: ignore[attr-defined]
    assert "failed" in step.text
    output = step.find_element(By.TAG_NAME, "pre")
    assert output.is_displayed() and output.text.strip(), "the failed step's output is shown, open"
    assert driver.find_element(By.ID, "recovery").text.startswith("path taken")  # type: ignore[attr-defined]
    _shot(driver, "04-failed-migrate-output")

    # cancel a running job: confirmation, then the job ends cancelled on the page, live
    slow = make_site("bs")
    write_faults(bench_dir, {"delay": {"migrate": 6}})
    running = _enqueue(env, "migrate", slow)
    driver.get(f"{dashboard}/jobs/{running}")  # type: ignore[attr-defined]
    # the button is inside the live part, which the stream may replace as it is clicked: retried
    _until(driver, lambda d: d.find_element(By.ID, "cancel").click() or True, "the cancel button")
    _until(driver, lambda d: d.find_elements(By.ID, "what"), "the confirmation page")
    assert running in driver.find_element(By.ID, "what").text  # type: ignore[attr-defined]
    _shot(driver, "05-cancel-confirm", full=False)
    driver.find_element(By.ID, "confirm").click()  # type: ignore[attr-defined]
    _until(driver, lambda d: d.find_elements(By.ID, "done") and "cancel-requested" in d.find_element(By.ID, "done").text,
           "the cancel to be acknowledged")
    _until(driver, lambda d: d.find_element(By.ID, "job-state").text == "cancelled", "the job to end cancelled")
    _shot(driver, "06-job-cancelled")
    entries = [e for e in real_redis.xrange("jerp:audit") if e[1].get(b"action") == b"job.cancel-requested"]
    assert entries and entries[-1][1][b"actor"] == b"dashboard olga (password)"

    # clear an attention mark
    SiteState(real_redis, ttl_s=3600).mark_attention(sites[0], job_id=job_id, reason="restore failed: disk full")
    driver.get(dashboard + "/sites")  # type: ignore[attr-defined]
    assert "restore failed: disk full" in driver.find_element(By.ID, f"site-{sites[0]}").text  # type: ignore[attr-defined]
    _shot(driver, "07-sites-attention")
    driver.set_window_size(390, 844)  # type: ignore[attr-defined]
    _shot(driver, "08-sites-phone")
    driver.set_window_size(1280, 1000)  # type: ignore[attr-defined]
    driver.find_element(By.ID, f"clear-{sites[0]}").click()  # type: ignore[attr-defined]
    driver.find_element(By.ID, "confirm").click()  # type: ignore[attr-defined]
    _until(driver, lambda d: d.find_elements(By.ID, "done"), "the mark to be cleared")
    assert "cleared" in driver.find_element(By.ID, "done").text  # type: ignore[attr-defined]
    assert "needs attention" not in driver.find_element(By.ID, f"site-{sites[0]}").text  # type: ignore[attr-defined]
    assert real_redis.get(f"jerp:attention:{sites[0]}") is None
    _shot(driver, "09-sites-cleared")

    # the jobs list, filtered
    driver.get(dashboard + "/jobs?state=recovered")  # type: ignore[attr-defined]
    assert failing in driver.find_element(By.ID, "jobs").text  # type: ignore[attr-defined]
    _shot(driver, "10-jobs-recovered")

    # workers and queues: the worker of this test answers the broadcast
    driver.get(dashboard + "/workers")  # type: ignore[attr-defined]
    assert f"{worker.name}@" in driver.find_element(By.ID, "workers").text  # type: ignore[attr-defined]
    assert "jerp.site" in driver.find_element(By.ID, "queues").text  # type: ignore[attr-defined]
    _shot(driver, "11-workers")
