"""One honest command limit, on real subprocesses: ``StepContext.run`` through a LocalExecutor
and the real ``flock`` fence. The fence wait counts inside the limit, and a timeout kills the
command's process group and every process still holding the fence, a daemonised one included."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from jerp_jobs.errors import CommandFailed, CommandTimeout
from jerp_jobs.executors import LocalExecutor
from jerp_jobs.workflow import FENCE_BUSY, StepContext, fence_path, fence_wait

SITE = "acme.example.com"
LIMIT = 3.0


def context(bench: Path, *, limit: float = LIMIT) -> StepContext:
    runtime = SimpleNamespace(settings=SimpleNamespace(command_timeout=limit),
                              executor=LocalExecutor(bench, kill_grace=1.0, linger=0.5))
    return StepContext(runtime=runtime, job=SimpleNamespace(site=SITE), step="migrate")  # type: ignore[arg-type]


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    (tmp_path / "sites").mkdir()
    return tmp_path


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_for(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def test_a_hung_command_is_killed_at_its_limit_not_twice_it(bench: Path) -> None:
    ctx = context(bench)
    began = time.monotonic()
    with pytest.raises(CommandTimeout):
        ctx.run([sys.executable, "-c", "import time; time.sleep(300)"])
    took = time.monotonic() - began
    # killed at the limit (plus the kill grace), never at twice the limit
    assert LIMIT <= took < 2 * LIMIT, took


def test_the_fence_wait_counts_inside_the_limit(bench: Path) -> None:
    holder = os.open(bench / fence_path(SITE), os.O_RDONLY | os.O_CREAT, 0o644)
    import fcntl

    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        began = time.monotonic()
        with pytest.raises(CommandFailed, match="fence stayed busy") as failed:
            context(bench).run(["true"])
        took = time.monotonic() - began
    finally:
        os.close(holder)
    assert failed.value.exit_code == FENCE_BUSY
    assert fence_wait(LIMIT) <= took < LIMIT + 1.0, took


DAEMONISING_BENCH = textwrap.dedent(
    """
    import os, sys, time
    pidfile = sys.argv[1]
    if os.fork() == 0:
        os.setsid()                       # a session (and group) of its own: out of reach of killpg
        if os.fork() == 0:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)         # detached from the output pipe; the fence fd stays open
            with open(pidfile + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(pidfile + ".tmp", pidfile)
            while True:
                time.sleep(1)
        os._exit(0)
    print("migrating", flush=True)
    time.sleep(300)                       # the bench itself hangs too
    """
)


def test_a_daemonised_holder_of_the_fence_is_killed_and_the_next_command_gets_it(bench: Path) -> None:
    pidfile = bench / "daemon.pid"
    ctx = context(bench)
    daemon = 0
    try:
        with pytest.raises(CommandTimeout):
            ctx.run([sys.executable, "-c", DAEMONISING_BENCH, str(pidfile)])
        daemon = int(wait_for(pidfile))
        deadline = time.monotonic() + 5
        while alive(daemon) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(daemon), "the daemonised process survived the timeout"
        # the recovery's command gets the fence at once (no busy fence, no wait)
        began = time.monotonic()
        result = context(bench).run(["echo", "recovered"])
        assert result.ok and result.output == "recovered"
        assert time.monotonic() - began < fence_wait(LIMIT)
    finally:
        if daemon and alive(daemon):
            os.kill(daemon, signal.SIGKILL)
