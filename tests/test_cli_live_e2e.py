"""jerpctl's live view, in a pseudo-terminal (pexpect), against a real worker, Redis and the
stand-in bench: ``--wait`` shows a running command's output while the step still runs."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest
import redis

from jerp_jobs.jobs import JobStore
from tests.e2e_support import jerpctl
from tests.standin.layout import write_faults
from tests.workers import VENV_BIN, WorkerProcess

pytestmark = pytest.mark.services


def wait_in_terminal(env: dict[str, str], args: list[str], watch: Callable[[pexpect.spawn, str], None]) -> str:
    """``jerpctl ARGS`` in a pseudo-terminal: its job id read, ``watch(child, job_id)`` while
    it runs, then its success line and exit 0; returns the job id."""
    child = pexpect.spawn(str(VENV_BIN / "jerpctl"), args, env={**os.environ, **env}, encoding="utf-8",
                          timeout=180, dimensions=(40, 200))
    try:
        child.expect(r"([0-9a-f]{12})\r\n")
        job_id = child.match.group(1)
        watch(child, job_id)
        child.expect(f"job {job_id} .*succeeded")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    return job_id


def test_wait_streams_bench_output_while_the_step_runs(
    env: dict[str, str], worker: WorkerProcess, site: str, bench_dir: Path, real_redis: redis.Redis
) -> None:
    write_faults(bench_dir, {"delay": {"migrate": 4.0}})  # bench migrate prints, then works 4 s

    def watch(child: pexpect.spawn, job_id: str) -> None:
        child.expect(r"\$ \S*bench --site " + re.escape(site) + " migrate")
        child.expect(r"\| Migrating " + re.escape(site))
        # seen live: the migrate step has not ended yet
        assert JobStore(real_redis).get(job_id).step("migrate").state == "running"

    job_id = wait_in_terminal(env, ["enqueue", "migrate", site, "--wait"], watch)
    record = JobStore(real_redis).get(job_id)
    assert record.state == "succeeded", json.dumps(record.to_dict())[:2000]


def test_wait_on_a_fan_out_shows_counts_running_sites_and_an_eta_from_the_last_run(
    env: dict[str, str], worker: WorkerProcess, make_site: Callable[..., str], bench_dir: Path,
    real_redis: redis.Redis,
) -> None:
    sites = sorted(make_site("fan") for _ in range(3))
    first = jerpctl(env, "--json", "enqueue", "migrate-all", "--no-build", "--concurrency", "1", "--wait")
    assert first.returncode == 0, first.stderr[-3000:]
    write_faults(bench_dir, {"delay": {"migrate": 1.5}})  # the second run: long enough to watch

    def watch(child: pexpect.spawn, job_id: str) -> None:
        # a line of counts while children run: one running at a time (concurrency 1), named,
        # with the time left from the earlier run of the same kind
        child.expect(r"sites (\d)/3 done, (\d) failed, 1 running, (\d) queued — running: (\S+)"
                     r"(?: \.\.\.)? — (ETA [^\r\n]+)")
        done, failed, queued, running, eta = child.match.groups()
        assert int(done) + int(queued) + 1 == 3 and failed == "0", child.match.group(0)
        assert running.rstrip(",") in sites and eta.startswith("ETA "), child.match.group(0)
        # the bench output of the running child streams under its site's name
        child.expect(r"(\S+\.example\.com) \| Migrating \1")

    job_id = wait_in_terminal(env, ["enqueue", "migrate-all", "--no-build", "--concurrency", "1", "--wait"], watch)
    record = JobStore(real_redis).get(job_id)
    assert record.state == "succeeded" and set(record.result["sites"]) == set(sites), \
        json.dumps(record.to_dict())[:2000]
