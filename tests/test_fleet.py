"""The fleet file (jerp_jobs.fleet): what it declares, every refusal naming the file, the bench
and the field; the implicit bench of a single-host install; ``jerpctl benches``."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from jerp_jobs.celery import SITE_QUEUE
from jerp_jobs.cli import EXIT_JOB_FAILED, EXIT_OK, EXIT_USAGE, Ctx, cli
from jerp_jobs.errors import ConfigError, InvalidInput
from jerp_jobs.fleet import FleetError, load_fleet, read_fleet_file
from jerp_jobs.runtime import Runtime
from jerp_jobs.settings import load_settings


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    folder = tmp_path / "certs"
    folder.mkdir()
    for name in ("ca.pem", "client-cert.pem", "client-key.pem"):
        (folder / name).write_text("-----BEGIN PLACEHOLDER-----\n")
    return folder


TLS = """
[bench.tls]
ca = "certs/ca.pem"
cert = "certs/client-cert.pem"
key = "certs/client-key.pem"
"""

TWO_HOSTS = f"""
[[bench]]
name = "prod-a"
role = "production"
group = "eu"
docker = "tcp://Host-A.example.net:2376"
compose_project = "jerp"
sites_dir = "/mnt/prod-a/sites"
{TLS}
[[bench]]
name = "staging-b"
role = "staging"
docker = "tcp://10.0.0.2:2376"
compose_project = "jerp-staging"
backend_service = "bench"
{TLS}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(textwrap.dedent(text))
    return path


def refusal(tmp_path: Path, text: str) -> FleetError:
    path = write(tmp_path, text)
    with pytest.raises(FleetError) as caught:
        read_fleet_file(path)
    assert str(path) in str(caught.value) and str(caught.value).startswith("JERP_FLEET_FILE")
    return caught.value


def test_a_fleet_of_two_hosts_is_read_with_its_defaults(tmp_path: Path, certs: Path) -> None:
    fleet = read_fleet_file(write(tmp_path, TWO_HOSTS), default_project="jerp", default_service="backend")

    assert fleet.names == ["prod-a", "staging-b"]
    prod, staging = fleet.benches
    assert (prod.role, prod.group, prod.docker, prod.compose_project, prod.backend_service) == (
        "production", "eu", "tcp://host-a.example.net:2376", "jerp", "backend")
    assert prod.queue == "jerp.site.prod-a" and staging.queue == "jerp.site.staging-b"
    assert prod.tls is not None and prod.tls.ca == certs / "ca.pem" and prod.tls.key == certs / "client-key.pem"
    assert prod.sites_dir == Path("/mnt/prod-a/sites") and staging.sites_dir is None
    assert (staging.group, staging.backend_service) == ("default", "bench")
    assert prod.endpoint == "tcp://host-a.example.net:2376 (TLS)" and not prod.is_local
    assert fleet.with_role("staging") == [staging] and fleet.in_group("eu") == [prod]
    assert fleet.get("staging-b") is staging
    with pytest.raises(InvalidInput, match="no bench named 'nope'"):
        fleet.get("nope")


def test_a_local_bench_needs_no_certificates(tmp_path: Path) -> None:
    fleet = read_fleet_file(write(tmp_path, """
        [[bench]]
        name = "main"
        role = "production"
        sites_dir = "sites"
    """), default_project="stack")

    bench = fleet.get("main")
    assert (bench.docker, bench.is_local, bench.endpoint, bench.tls) == ("local", True, "local", None)
    assert bench.compose_project == "stack"
    assert bench.sites_dir == tmp_path / "sites"  # relative to the file's folder


@pytest.mark.parametrize(("text", "bench", "field", "words"), [
    ('colour = "blue"\n[[bench]]\nname = "a"\nrole = "production"', None, "colour", "unknown key"),
    ("", None, None, "declares no bench"),
    ("bench = 3", None, "bench", "array of tables"),
    ('[[bench]]\nname = "a"\nrole = "production"\ncolour = "blue"', "a", "colour", "unknown key"),
    ('[[bench]]\nrole = "production"', "#1", "name", "missing"),
    ('[[bench]]\nname = "Prod_A"\nrole = "production"', "Prod_A", "name", "not a bench name"),
    ('[[bench]]\nname = "-a"\nrole = "production"', "-a", "name", "not a bench name"),
    ('[[bench]]\nname = 7\nrole = "production"', "#1", "name", "must be a string"),
    ('[[bench]]\nname = "a"', "a", "role", "missing"),
    ('[[bench]]\nname = "a"\nrole = "prod"', "a", "role", "'prod' is not a role"),
    ('[[bench]]\nname = "a"\nrole = "production"\ngroup = "two words"', "a", "group", "not a group label"),
    ('[[bench]]\nname = "a"\nrole = "production"\ncompose_project = "My Stack"', "a", "compose_project",
     "not a compose project"),
    ('[[bench]]\nname = "a"\nrole = "production"\ndocker = "unix:///var/run/docker.sock"', "a", "docker",
     "neither 'local' nor tcp://"),
    ('[[bench]]\nname = "a"\nrole = "production"\ndocker = "tcp://host"', "a", "docker", "neither"),
    ('[[bench]]\nname = "a"\nrole = "production"\ndocker = "tcp://host:70000"', "a", "docker", "neither"),
    ('[[bench]]\nname = "a"\nrole = "production"\ndocker = "tcp://host:2376"', "a", "tls",
     "needs TLS client certificates"),
    ('[[bench]]\nname = "a"\nrole = "production"\ndocker = "tcp://host:2376"\n[bench.tls]\nca = "certs/ca.pem"\n'
     'cert = "certs/client-cert.pem"', "a", "tls.key", "missing"),
    ('[[bench]]\nname = "a"\nrole = "production"\ndocker = "tcp://host:2376"\n[bench.tls]\nca = "certs/ca.pem"\n'
     'cert = "certs/client-cert.pem"\nkey = "certs/gone.pem"', "a", "tls.key", "does not exist"),
    ('[[bench]]\nname = "a"\nrole = "production"\ndocker = "tcp://host:2376"\n[bench.tls]\nca = "certs"\n'
     'cert = "certs/client-cert.pem"\nkey = "certs/client-key.pem"', "a", "tls.ca", "is not a file"),
    ('[[bench]]\nname = "a"\nrole = "production"\ndocker = "tcp://host:2376"\n[bench.tls]\nca = "certs/ca.pem"\n'
     'cert = "certs/client-cert.pem"\nkey = "certs/client-key.pem"\npin = "x"', "a", "tls.pin", "unknown key"),
    ('[[bench]]\nname = "a"\nrole = "production"\n[bench.tls]\nca = "certs/ca.pem"', "a", "tls",
     "a local bench"),
    ('[[bench]]\nname = "a"\nrole = "production"\n[[bench]]\nname = "a"\nrole = "staging"\ncompose_project = "b"',
     "a", "name", "two benches have this name"),
    ('[[bench]]\nname = "a"\nrole = "production"\ndocker = "tcp://h.example:2376"\n' + TLS
     + '[[bench]]\nname = "b"\nrole = "staging"\ndocker = "tcp://H.example:2376"\n' + TLS,
     "b", "compose_project", "already bench 'a'"),
    ('[[bench]]\nname = "a"\nrole = "production"\n[[bench]]\nname = "b"\nrole = "staging"', "b",
     "compose_project", "already bench 'a'"),
    ('[[bench]]\nname = "a"\nrole = "staging"', None, "role", "no bench has role 'production'"),
    ('[[bench]]\nname = "a"\nrole = "production"\nsites_dir = ""', "a", "sites_dir", "empty"),
])
def test_every_problem_is_refused_naming_the_file_bench_and_field(tmp_path: Path, certs: Path, text: str,
                                                                 bench: str | None, field: str | None,
                                                                 words: str) -> None:
    error = refusal(tmp_path, text)

    assert (error.bench, error.field) == (bench, field)
    assert words in str(error)
    if bench is not None:
        assert f"bench {bench!r}" in str(error)
    if field is not None:
        assert f"field {field!r}" in str(error)
    assert isinstance(error, ConfigError) and error.variable == "JERP_FLEET_FILE"


def test_benches_in_two_projects_of_one_host_or_one_project_of_two_hosts_are_fine(tmp_path: Path, certs: Path) -> None:
    fleet = read_fleet_file(write(tmp_path, f"""
        [[bench]]
        name = "a"
        role = "production"
        [[bench]]
        name = "b"
        role = "staging"
        compose_project = "jerp-staging"
        [[bench]]
        name = "c"
        role = "production"
        docker = "tcp://other.example:2376"
        {TLS}
    """))
    assert [b.compose_project for b in fleet] == ["jerp", "jerp-staging", "jerp"]


@pytest.mark.parametrize(("content", "words"), [
    (None, "does not exist"),
    (b"[[bench]\nname=", "not valid TOML"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_an_unreadable_file_is_refused_naming_it(tmp_path: Path, content: bytes | None, words: str) -> None:
    path = tmp_path / "fleet.toml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(FleetError, match=words) as caught:
        read_fleet_file(path)
    assert str(path) in str(caught.value)


def test_without_a_fleet_file_the_fleet_is_this_hosts_bench(tmp_path: Path) -> None:
    settings = load_settings(_env_file=None, compose_project="stack", backend_service="bench",
                             sites_dir=tmp_path / "sites")

    fleet = load_fleet(settings)

    assert fleet.source is None and fleet.names == ["default"]
    bench = fleet.get("default")
    assert (bench.role, bench.group, bench.docker, bench.compose_project, bench.backend_service) == (
        "production", "default", "local", "stack", "bench")
    assert bench.queue == SITE_QUEUE  # the queue today's workers consume: nothing changes
    assert bench.sites_dir == tmp_path / "sites"
    local = load_settings(_env_file=None, executor="local", bench_dir=tmp_path / "bench")
    assert load_fleet(local).get("default").sites_dir == tmp_path / "bench" / "sites"
    assert load_fleet(load_settings(_env_file=None)).get("default").sites_dir is None


def test_the_setting_names_the_file(tmp_path: Path, certs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, TWO_HOSTS)
    monkeypatch.setenv("JERP_FLEET_FILE", str(path))
    settings = load_settings(_env_file=None)

    assert settings.fleet_file == path
    assert load_fleet(settings).names == ["prod-a", "staging-b"]


# -- the Docker client of a bench -----------------------------------------------------------


def test_a_local_bench_uses_the_environments_docker_and_a_tcp_bench_tls(tmp_path: Path, certs: Path) -> None:
    from jerp_jobs.executors import docker as docker_executor

    fleet = read_fleet_file(write(tmp_path, TWO_HOSTS + '\n[[bench]]\nname = "here"\nrole = "staging"\n'
                                  'compose_project = "here"\n'))
    assert docker_executor.bench_client_factory(fleet.get("here")) is docker_executor._default_client
    executor = docker_executor.bench_executor(fleet.get("staging-b"))
    assert (executor.project, executor.service) == ("jerp-staging", "bench")
    assert executor._client_factory is not docker_executor._default_client


# -- the socket proxy's TLS options --------------------------------------------------------


@pytest.mark.parametrize("given", [("c", "", ""), ("", "k", ""), ("c", "k", ""), ("", "", "ca")])
def test_the_proxy_wants_all_three_tls_options_or_none(given: tuple[str, str, str]) -> None:
    from jerp_jobs.socket_proxy import tls_from_options

    assert tls_from_options("", "", "") is None
    with pytest.raises(ValueError, match="not set"):
        tls_from_options(*given)


def test_the_proxy_names_a_certificate_it_cannot_use(tmp_path: Path, certs: Path) -> None:
    from jerp_jobs.socket_proxy import main

    with pytest.raises(SystemExit) as exited:
        main(["--tls-cert", str(certs / "client-cert.pem"), "--tls-key", str(certs / "client-key.pem"),
              "--tls-client-ca", str(certs / "ca.pem")])
    assert exited.value.code == 2


# -- jerpctl benches -----------------------------------------------------------------------


def _app(queues: dict[str, list[str]]) -> Any:
    """Celery's remote control as workers answer it: each worker consumes its queues."""
    inspect = SimpleNamespace(active=lambda: {name: [] for name in queues},
                              active_queues=lambda: {name: [{"name": q} for q in qs] for name, qs in queues.items()})
    return SimpleNamespace(control=SimpleNamespace(inspect=lambda timeout: inspect))


def _invoke(rt: Runtime, app: Any, *args: str):
    ctx = Ctx(rt=rt)
    ctx.celery_app = app  # type: ignore[attr-defined]
    return CliRunner().invoke(cli, list(args), obj=ctx, catch_exceptions=False)


def _with_settings(rt: Runtime, **overrides: Any) -> Runtime:
    rt.settings = rt.settings.model_copy(update=overrides)
    return rt


def test_benches_lists_each_bench_its_worker_and_its_sites(fake_runtime: Runtime, tmp_path: Path, certs: Path) -> None:
    sites = tmp_path / "prod-sites"
    for site in ("a.example.com", "b.example.com"):
        (sites / site).mkdir(parents=True)
        (sites / site / "site_config.json").write_text("{}")
    path = write(tmp_path, TWO_HOSTS.replace("/mnt/prod-a/sites", str(sites)))
    rt = _with_settings(fake_runtime, fleet_file=path)
    app = _app({"prod@a": ["jerp.site.prod-a", "jerp.control"], "other@c": ["jerp.site"]})

    result = _invoke(rt, app, "benches")

    assert result.exit_code == EXIT_JOB_FAILED, result.output  # staging-b has no worker
    lines = result.output.splitlines()
    assert lines[0] == f"FLEET FILE {path}"
    prod = next(line for line in lines if line.startswith("prod-a"))
    assert prod.split() == ["prod-a", "production", "eu", "tcp://host-a.example.net:2376", "(TLS)",
                            "jerp.site.prod-a", "alive", "2", "0"]
    staging = next(line for line in lines if line.startswith("staging-b"))
    assert staging.split()[-3:] == ["none", "-", "0"]
    assert "no worker consumes the queue of: staging-b" in result.output

    data = json.loads(_invoke(rt, app, "--json", "benches").output)
    assert data["fleet_file"] == str(path)
    rows = {row["name"]: row for row in data["benches"]}
    assert rows["prod-a"]["workers"] == ["prod@a"] and rows["prod-a"]["worker_alive"] is True
    assert rows["prod-a"]["sites"] == 2 and rows["staging-b"]["sites"] is None
    assert rows["staging-b"]["worker_alive"] is False and rows["staging-b"]["queue"] == "jerp.site.staging-b"
    assert rows["prod-a"]["tls"]["ca"] == str(certs / "ca.pem")

    both = _app({"prod@a": ["jerp.site.prod-a"], "staging@b": ["jerp.site.staging-b"]})
    assert _invoke(rt, both, "benches").exit_code == EXIT_OK


def test_benches_without_a_fleet_file_shows_this_hosts_bench(fake_runtime: Runtime) -> None:
    result = _invoke(fake_runtime, _app({"site@host": [SITE_QUEUE, "jerp.control"]}), "benches")

    assert result.exit_code == EXIT_OK, result.output
    assert "JERP_FLEET_FILE unset" in result.output
    row = next(line for line in result.output.splitlines() if line.startswith("default"))
    assert row.split() == ["default", "production", "default", "local", SITE_QUEUE, "alive", "-", "0"]


def test_a_bad_fleet_file_is_a_usage_error_naming_it(fake_runtime: Runtime, tmp_path: Path) -> None:
    path = write(tmp_path, '[[bench]]\nname = "a"\nrole = "prod"\n')
    rt = _with_settings(fake_runtime, fleet_file=path)

    result = _invoke(rt, _app({}), "benches")

    assert result.exit_code == EXIT_USAGE
    assert str(path) in result.output and "bench 'a'" in result.output and "'prod' is not a role" in result.output


def test_on_a_single_bench_every_job_is_on_it_whatever_the_map_holds(fake_runtime: Runtime) -> None:
    """One bench: a job is on it without reading its parent's record or the site-to-bench map
    (left from a former fleet file here: a conflict and a bench the fleet no longer has)."""
    from jerp_jobs import keys
    from jerp_jobs.enqueue import create_job

    rt = fake_runtime
    rt.redis.hset(keys.SITE_CONFLICT, "a.example.com", "east,west")
    rt.redis.hset(keys.SITE_BENCH, "b.example.com", "east")
    parent = create_job(rt, "backup-all", params={"sites": ["a.example.com", "b.example.com"]})
    child = create_job(rt, "backup", site="a.example.com", parent=parent.id)
    assert parent.bench == child.bench == "default"
    assert create_job(rt, "backup", site="b.example.com").bench == "default"
    assert create_job(rt, "backup", site="a.example.com", params={"bench": "default"}).bench == "default"
    with pytest.raises(InvalidInput, match="east"):
        create_job(rt, "backup", site="a.example.com", params={"bench": "east"})


def test_a_single_host_fanout_keeps_no_site_to_bench_map(tmp_path: Path, fake_redis: Any) -> None:
    """Without a fleet file nothing reads the map: discovering the sites writes none of it."""
    from jerp_jobs import runner
    from jerp_jobs.bootstrap import build_runtime
    from jerp_jobs.enqueue import create_job
    from jerp_jobs.sites import BENCH_SITE_COUNT
    from tests.conftest import recording
    from tests.fake_executor import FakeExecutor
    from tests.site_folders import make_site_folders

    make_site_folders(tmp_path / "sites", ["a.example.com", "b.example.com"])
    settings = load_settings(_env_file=None, broker_url="redis://127.0.0.1:1/0", executor="local", bench_dir=tmp_path)
    rt = recording(build_runtime(settings, client=fake_redis, executor=FakeExecutor().on(BENCH_SITE_COUNT,
                                                                                         output=[".."])))
    job = create_job(rt, "backup-all")
    assert runner.run_step(rt, job.id, "discover", worker="w1").outcome != "failed"
    assert rt.store.get(job.id).result["site_count"] == 2
    assert fake_redis.keys("jerp:fleet:*") == []
