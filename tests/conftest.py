"""Shared fixtures: the real services started by tests/services/up.sh, and fast fakes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
import redis

from tests.fake_executor import FakeExecutor
from jerp_jobs.bootstrap import build_runtime
from jerp_jobs.runtime import Runtime
from jerp_jobs.settings import Settings, load_settings

pytest_plugins = ["tests.docker_backend", "tests.e2e_support", "tests.s3_server"]

ROOT = Path(__file__).resolve().parent.parent
#: State of the services tests/services/up.sh started for this checkout (ports, pids, password).
RUN_DIR = Path(os.environ.get("JERP_SERVICES_DIR") or ROOT / "tests" / ".run")


def _service_port(name: str, variable: str) -> int:
    """The port of this checkout's service: the variable when set, else the one up.sh recorded
    (0 when the services were never started: the fixtures then fail with how to start them)."""
    if os.environ.get(variable):
        return int(os.environ[variable])
    try:
        return int((RUN_DIR / f"{name}.port").read_text().strip())
    except (OSError, ValueError):
        return 0


REDIS_PORT = _service_port("redis", "JERP_TEST_REDIS_PORT")
MARIADB_PORT = _service_port("mariadb", "JERP_TEST_MARIADB_PORT")
#: Redis database for tests that need the real server (workers, locks); flushed per test.
REDIS_DB = 5


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real Redis server (tests/services/up.sh); fails, never skips, when it is down."""
    url = f"redis://127.0.0.1:{REDIS_PORT}/{REDIS_DB}"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"the test Redis at {url} is not running ({exc}): run tests/services/up.sh")
    return url


@pytest.fixture
def real_redis(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the real Redis, on a database emptied before and after the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def mariadb_root_password() -> str:
    path = RUN_DIR / "mariadb-root-password"
    if not path.exists():
        pytest.fail("the test MariaDB is not set up: run tests/services/up.sh")
    return path.read_text().strip()


@pytest.fixture
def fake_redis() -> redis.Redis:
    """fakeredis with Lua, for fast unit tests of store and lock logic."""
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


@pytest.fixture
def settings() -> Settings:
    return load_settings(
        _env_file=None,
        broker_url="redis://127.0.0.1:1/0",
        executor="local",
        bench_dir=Path("/nonexistent-bench"),
        lock_ttl=5,
    )


@pytest.fixture
def fake_executor() -> FakeExecutor:
    return FakeExecutor()


@pytest.fixture
def fake_runtime(settings: Settings, fake_redis: redis.Redis, fake_executor: FakeExecutor) -> Runtime:
    """A runtime on fakeredis with a scripted executor; published steps, parent
    notifications and notifications to people are recorded in ``rt.dispatched`` / ``rt.notified``
    / ``rt.notifications`` instead of sent."""
    return recording(build_runtime(settings, client=fake_redis, executor=fake_executor))


def recording(rt: Runtime) -> Runtime:
    """``rt`` with published steps, parent notifications and notifications to people recorded
    in ``rt.dispatched`` / ``rt.notified`` / ``rt.notifications`` instead of sent."""
    rt.dispatched = []  # type: ignore[attr-defined]
    rt.notified = []  # type: ignore[attr-defined]
    rt.dispatch = lambda job_id, step: rt.dispatched.append((job_id, step))  # type: ignore[attr-defined]
    rt.notify_parent = lambda parent, child: rt.notified.append((parent, child))  # type: ignore[attr-defined]
    rt.notifications = []  # type: ignore[attr-defined]
    rt.notify = lambda event, title, body: rt.notifications.append((event, title, body))  # type: ignore[attr-defined]
    return rt
