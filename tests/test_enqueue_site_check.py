"""A request for a site the bench does not have is refused before any job exists (jerpctl exit
2): read from the sites folder when it is visible, else asked where bench runs — through the
executor, the real Docker Engine included — and let through when nothing can tell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from jerp_jobs.cli import EXIT_USAGE, Ctx, cli
from jerp_jobs.enqueue import create_job, submit
from jerp_jobs.errors import ExecutorUnavailable, InvalidInput
from jerp_jobs.bootstrap import build_runtime
from jerp_jobs.runtime import Runtime
from jerp_jobs.settings import load_settings
from jerp_jobs.sites import has_site_folder, site_in_bench
from tests.conftest import recording
from tests.fake_executor import FakeExecutor
from tests.site_folders import make_site_folders

if TYPE_CHECKING:
    from docker.models.containers import Container

SITE = "acme.example.com"


def _is_test_f(argv: Any) -> bool:
    return list(argv[:2]) == ["test", "-f"]


def _job_keys(rt: Runtime) -> list[bytes]:
    return [k for k in rt.redis.scan_iter("jerp:job:*")]


def _with(rt: Runtime, **values: Any) -> Runtime:
    rt.settings = rt.settings.model_copy(update=values)
    return rt


def _remote_runtime(fake_redis: Any, executor: Any) -> Runtime:
    """A runtime whose sites folder is not visible here: only the executor can tell."""
    settings = load_settings(_env_file=None, broker_url="redis://127.0.0.1:1/0", executor="docker",
                             compose_project="nosuch", lock_ttl=5)
    return recording(build_runtime(settings, client=fake_redis, executor=executor))


def test_the_site_folder_rule_is_the_listing_rule(tmp_path: Path) -> None:
    make_site_folders(tmp_path, [SITE])
    (tmp_path / "linked.example.com").symlink_to(tmp_path / SITE)
    (tmp_path / "empty.example.com").mkdir()
    assert has_site_folder(tmp_path, SITE)
    assert not has_site_folder(tmp_path, "linked.example.com")  # a link is never a site
    assert not has_site_folder(tmp_path, "empty.example.com")  # no site_config.json
    assert not has_site_folder(tmp_path, "other.example.com")


@pytest.mark.parametrize("kind,params", [("migrate", {}), ("backup", {}), ("clear-cache", {}),
                                          ("install-app", {"app": "hrms"}), ("restore", {"from_offsite": True})])
def test_a_request_for_a_missing_site_is_refused_before_the_job_exists(
    fake_runtime: Runtime, tmp_path: Path, kind: str, params: dict[str, Any]
) -> None:
    sites = tmp_path / "sites"
    make_site_folders(sites, ["other.example.com"])
    (sites / "apps.txt").write_text("frappe\nerpnext\nhrms\n")
    _with(fake_runtime, sites_dir=sites, s3_bucket="backups")
    with pytest.raises(InvalidInput, match=f"site {SITE} does not exist in the bench .*{kind} not enqueued"):
        submit(fake_runtime, kind, site=SITE, params=params)
    assert _job_keys(fake_runtime) == [] and fake_runtime.dispatched == []


def test_kinds_that_make_the_site_and_child_jobs_are_not_checked(fake_runtime: Runtime, tmp_path: Path) -> None:
    (tmp_path / "sites").mkdir()
    _with(fake_runtime, sites_dir=tmp_path / "sites", s3_bucket="backups")
    assert submit(fake_runtime, "provision", site=SITE).state == "queued"
    restore = submit(fake_runtime, "restore", site="new.example.com", params={"from_offsite": True, "create": True})
    assert restore.kind == "restore"
    # the engine's own path (a fan-out's child, a test driving steps): the step finds out itself
    assert create_job(fake_runtime, "migrate", site="gone.example.com").state == "queued"


def test_bad_parameters_are_named_before_the_site_is_looked_for(fake_runtime: Runtime, tmp_path: Path) -> None:
    (tmp_path / "sites").mkdir()
    _with(fake_runtime, sites_dir=tmp_path / "sites", s3_bucket="backups")
    with pytest.raises(InvalidInput, match="takes no backup file"):
        submit(fake_runtime, "restore", site=SITE, params={"from_offsite": True, "db": "x.sql.gz"})


def test_the_executor_answers_when_the_folder_is_not_visible(fake_redis: Any) -> None:
    executor = FakeExecutor()
    executor.on(lambda argv: _is_test_f(argv) and SITE in argv[2], exit_code=0)
    executor.on(_is_test_f, exit_code=1)
    rt = _remote_runtime(fake_redis, executor)
    with pytest.raises(InvalidInput, match="site missing.example.com does not exist in the bench"):
        submit(rt, "migrate", site="missing.example.com")
    assert _job_keys(rt) == []
    assert submit(rt, "migrate", site=SITE).state == "queued"
    assert [list(argv) for argv in executor.argvs][-2:] == [
        ["test", "-f", "sites/missing.example.com/site_config.json"], ["test", "-f", f"sites/{SITE}/site_config.json"]]


def test_when_nothing_can_tell_the_request_goes_on(fake_redis: Any) -> None:
    executor = FakeExecutor()
    executor.on(_is_test_f, raises=ExecutorUnavailable("the Docker API cannot be reached"))
    rt = _remote_runtime(fake_redis, executor)
    assert site_in_bench(rt.settings, executor, SITE, timeout=5) is None
    assert submit(rt, "migrate", site=SITE).state == "queued"
    odd = FakeExecutor()
    odd.on(_is_test_f, exit_code=126)  # neither yes nor no
    assert site_in_bench(rt.settings, odd, SITE, timeout=5) is None


def test_jerpctl_exits_2_naming_the_missing_site(fake_runtime: Runtime, tmp_path: Path) -> None:
    from click.testing import CliRunner

    (tmp_path / "sites").mkdir()
    _with(fake_runtime, sites_dir=tmp_path / "sites")
    result = CliRunner().invoke(cli, ["enqueue", "migrate", SITE], obj=Ctx(rt=fake_runtime))
    assert result.exit_code == EXIT_USAGE, result.output
    assert f"site {SITE} does not exist in the bench" in result.output
    assert _job_keys(fake_runtime) == []
    make_site_folders(tmp_path / "sites", [SITE])
    result = CliRunner().invoke(cli, ["--json", "enqueue", "migrate", SITE], obj=Ctx(rt=fake_runtime))
    assert result.exit_code == 0 and json.loads(result.output)["site"] == SITE


@pytest.mark.docker
def test_through_the_docker_executor_the_bench_container_answers(
    backend_container: Any, tmp_path: Path, fake_redis: Any
) -> None:
    from jerp_jobs.executors import DockerExecutor

    bench = tmp_path / "bench"
    make_site_folders(bench / "sites", [SITE])
    container: Container = backend_container(bench)
    executor = DockerExecutor(project=container.labels["com.docker.compose.project"])
    rt = _remote_runtime(fake_redis, executor)
    assert site_in_bench(rt.settings, executor, SITE, timeout=30) is True
    with pytest.raises(InvalidInput, match="site missing.example.com does not exist in the bench"):
        submit(rt, "backup", site="missing.example.com")
    assert _job_keys(rt) == []
    assert submit(rt, "backup", site=SITE).site == SITE
