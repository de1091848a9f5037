"""jerpctl's live view, in a pseudo-terminal (pexpect), against a real worker, Redis and the
stand-in bench: ``--wait`` shows a running command's output while the step still runs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pexpect
import pytest
import redis

from jerp_jobs.jobs import JobStore
from tests.standin.layout import write_faults
from tests.workers import VENV_BIN, WorkerProcess

pytestmark = pytest.mark.services


def test_wait_streams_bench_output_while_the_step_runs(
    env: dict[str, str], worker: WorkerProcess, site: str, bench_dir: Path, real_redis: redis.Redis
) -> None:
    write_faults(bench_dir, {"delay": {"migrate": 4.0}})  # bench migrate prints, then works 4 s
    child = pexpect.spawn(str(VENV_BIN / "jerpctl"), ["enqueue", "migrate", site, "--wait"],
                          env={**os.environ, **env}, encoding="utf-8", timeout=120, dimensions=(40, 160))
    try:
        child.expect(r"([0-9a-f]{12})\r\n")
        job_id = child.match.group(1)
        child.expect(r"\$ \S*bench --site " + re.escape(site) + " migrate")
        child.expect(r"\| Migrating " + re.escape(site))
        # seen live: the migrate step has not ended yet
        assert JobStore(real_redis).get(job_id).step("migrate").state == "running"
        child.expect(f"job {job_id} .*succeeded")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    record = JobStore(real_redis).get(job_id)
    assert record.state == "succeeded", json.dumps(record.to_dict())[:2000]
