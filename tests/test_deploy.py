"""The deployment, proven on this machine's Docker Engine: the compose files pass `config` with
.env.example's values; the jobs stack (compose.jobs.yml and its test override) comes up healthy
beside a platform made of compose.yml's database and the stand-in backend; the worker reaches
Docker only through the socket proxy; jerpctl in the worker container provisions, backs up,
migrates and restores a site in the backend container, and a job survives its worker
container being stopped in the middle of a step."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import naming
from tests.deploy_support import (
    IMAGES,
    ROOT,
    Compose,
    chown_to_frappe,
    compose_command,
    require_images,
    write_env_file,
)
from tests.standin.layout import create_bench, read_calls, read_violations, site_config, write_faults
from tests.workers import wait_for

pytestmark = pytest.mark.docker

PLATFORM_SERVICES = ["db", "backend"]
JOBS_SERVICES = ["jobs-redis", "docker-proxy", "jobs-worker", "jobs-control", "jobs-beat", "jobs-webhook"]
# build-assets is skipped with the Docker executor: the assets come from the image (JERP_BUILD_ASSETS=auto)
NORMAL_MIGRATE = ["maintenance-on", "scheduler-pause", "wait-ready", "backup", "migrate", "clear-cache",
                  "scheduler-resume", "maintenance-off"]


# -- the compose files, rendered with .env.example ----------------------------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Both files as `config` renders them in a folder where .env is a copy of .env.example."""
    import yaml

    folder = tmp_path_factory.mktemp("config")
    for name in ("compose.yml", "compose.jobs.yml"):
        shutil.copy(ROOT / name, folder / name)
    shutil.copy(ROOT / ".env.example", folder / ".env")
    result = {}
    for name in ("compose.yml", "compose.jobs.yml"):
        done = subprocess.run([*compose_command(), "-f", name, "config"], cwd=folder, capture_output=True,
                              text=True, env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, timeout=120)
        assert done.returncode == 0, f"{name}: {done.stderr}"
        result[name] = yaml.safe_load(done.stdout)
    return result


def test_platform_stack_has_the_runbooks_services_volumes_and_network(rendered):
    config = rendered["compose.yml"]
    services = config["services"]

    assert {"db", "redis-cache", "redis-queue", "redis-socketio", "configurator", "backend", "scheduler",
            "queue-default", "queue-long", "queue-short", "websocket", "frontend"} <= set(services)
    assert {"db-data", "frappe-sites", "frappe-logs"} <= set(config["volumes"])
    assert "frappe-assets" not in config["volumes"], "the images link sites/assets to their own assets"
    assert config["networks"]["proxy"]["external"] is True
    assert services["backend"]["image"] == "registry.example.com/erpnext-custom:15-prod"
    assert "proxy" in services["frontend"]["networks"]
    for name, service in services.items():
        assert "ports" not in service, f"{name} publishes a port"
        if name != "configurator":
            assert "healthcheck" in service, f"{name} has no healthcheck"


def test_jobs_stack_reaches_docker_only_through_the_proxy(rendered):
    config = rendered["compose.jobs.yml"]
    services = config["services"]

    assert {"jobs-redis", "jobs-worker", "jobs-control", "jobs-beat", "jobs-flower", "jobs-webhook",
            "docker-proxy"} <= set(services)
    assert services["jobs-flower"]["profiles"] == ["flower"]
    dashboard = services["jobs-dashboard"]
    assert dashboard["profiles"] == ["dashboard"] and set(dashboard["networks"]) == {"default"}
    assert dashboard["volumes"] == ["platform-sites:/home/frappe/frappe-bench/sites:ro"]
    assert dashboard["command"] == ["dashboard"] and dashboard["expose"] == ["8000"]
    socket_mounts = {name for name, s in services.items() for v in s.get("volumes", []) if "docker.sock" in str(v)}
    assert socket_mounts == {"docker-proxy"}
    assert services["jobs-worker"]["environment"]["DOCKER_HOST"] == "tcp://docker-proxy:2375"
    assert config["networks"]["docker-api"]["internal"] is True
    assert set(services["docker-proxy"]["networks"]) == {"docker-api"}
    holders = {name for name, s in services.items() if "docker-api" in s.get("networks", {})}
    assert holders == {"docker-proxy", "jobs-worker"}
    redis_args = services["jobs-redis"]["command"]
    assert "--appendonly" in redis_args and "noeviction" in redis_args
    assert any(v.startswith("platform-sites:") for v in services["jobs-worker"]["volumes"])
    assert config["volumes"]["platform-sites"]["external"] is True
    for name, service in services.items():
        assert "ports" not in service, f"{name} publishes a port"
        if name != "jobs-redis":
            assert service.get("read_only") is True and service.get("cap_drop") == ["ALL"], name


def test_every_variable_of_the_compose_files_is_in_env_example():
    example = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example, re.MULTILINE))
    for name in ("compose.yml", "compose.jobs.yml"):
        used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / name).read_text()))
        assert used - listed == set(), f"{name} uses variables .env.example does not list"


# -- the stacks, running --------------------------------------------------------------------


@dataclass
class Deployment:
    platform: Compose
    jobs: Compose
    bench: Path
    root_password: str

    def jerpctl(self, *args: str, service: str = "jobs-worker", timeout: float = 300) -> tuple[int, dict]:
        done = self.jobs.exec(service, "jerpctl", "--json", *args, timeout=timeout)
        try:
            return done.returncode, json.loads(done.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"jerpctl {args}: rc={done.returncode}\n{done.stdout}\n{done.stderr}\n"
                                 f"{self.jobs.logs()}") from None

    def run_job(self, *args: str) -> tuple[int, dict]:
        return self.jerpctl("enqueue", *args, "--wait")

    def sql(self, query: str, database: str | None = None) -> list[list[str]]:
        argv = ["mariadb", "-uroot", "-N", "-B", "-e", query, *([database] if database else [])]
        done = self.platform.exec("db", *argv, env={"MYSQL_PWD": self.root_password})
        assert done.returncode == 0, done.stderr
        return [line.split("\t") for line in done.stdout.splitlines()]

    def notes(self, database: str) -> tuple[int, str]:
        rows = self.sql("SELECT name, title, content FROM `tabNote` ORDER BY name", database)
        return len(rows), hashlib.sha256(json.dumps(rows).encode()).hexdigest()

    def add_notes(self, database: str, count: int, prefix: str) -> None:
        values = ",".join(f"('{prefix}-{i}', 'customer {i}', 'content {i}')" for i in range(count))
        self.sql(f"INSERT INTO `tabNote` (name, title, content) VALUES {values}", database)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The platform and jobs stacks, up under unique names; removed with their volumes after."""
    require_images()
    root = tmp_path_factory.mktemp("deploy")
    name = naming.unique_name("e2e")
    network = f"{name}-proxy"
    bench = create_bench(root / "bench", db_host="db", db_port=3306)
    chown_to_frappe(bench / "sites")
    root_password = secrets.token_hex(12)
    write_env_file(root / "jobs.env", {
        "JERP_BROKER_URL": "redis://jobs-redis:6379/0",
        "JERP_EXECUTOR": "docker",
        "JERP_COMPOSE_PROJECT": name,
        "JERP_INSTALL_APPS": "erpnext",
        "JERP_LOCK_TTL": "6",
        "JERP_RESUME_INTERVAL": "5",
        "JERP_WORKER_CONCURRENCY": "2",
        "MARIADB_ROOT_PASSWORD": root_password,
        "FRAPPE_ADMIN_PASSWORD": secrets.token_hex(12),
    })
    variables = write_env_file(root / "compose.env", {
        **IMAGES,
        "REGISTRY_URL": "registry.invalid",
        "REGISTRY_IMAGE_NAME": "unused",
        "MARIADB_ROOT_PASSWORD": root_password,
        "JERP_TEST_SITES_DIR": str(bench / "sites"),
        "JERP_ENV_FILE": str(root / "jobs.env"),
        "JERP_SITES_VOLUME": f"{name}_frappe-sites",
        "JERP_COMPOSE_PROJECT": name,
        "PROXY_NETWORK": network,
        "COMPOSE_PROFILES": "webhook",
    })
    platform = Compose(name, [ROOT / "tests/compose/platform.yml"], variables)
    jobs = Compose(f"{name}-jobs", [ROOT / "compose.jobs.yml", ROOT / "tests/compose/jobs.yml"], variables)
    subprocess.run(["docker", "network", "create", "--label", naming.LABEL, network], check=True,
                   capture_output=True)
    try:
        platform.up()
        platform.wait_healthy(PLATFORM_SERVICES)
        jobs.up()
        yield Deployment(platform, jobs, bench, root_password)
    finally:
        jobs.down()
        platform.down()
        subprocess.run(["docker", "network", "rm", network], capture_output=True)


def test_every_service_becomes_healthy(deployed: Deployment):
    deployed.jobs.wait_healthy(JOBS_SERVICES)
    deployed.platform.wait_healthy(PLATFORM_SERVICES)

    beat = subprocess.run(["docker", "inspect", "-f", "{{json .State.Health.Log}}",
                           deployed.jobs.container("jobs-beat")], capture_output=True, text=True).stdout
    assert "Beat holds jerp:redbeat::lock" in beat


def test_the_platform_database_writes_row_binary_logs_for_point_in_time_recovery(deployed: Deployment):
    deployed.platform.wait_healthy(["db"])
    [[log_bin, binlog_format, server_id, expire]] = deployed.sql(
        "SELECT @@log_bin, @@binlog_format, @@server_id, @@binlog_expire_logs_seconds")
    assert (log_bin, binlog_format, server_id, expire) == ("1", "ROW", "1", "86400")
    assert deployed.sql("SHOW BINARY LOGS")[0][0].startswith("binlog.")


PROBE = textwrap.dedent("""
    import json, os, docker
    client = docker.from_env()
    result = {"socket": os.path.exists("/var/run/docker.sock"), "docker_host": os.environ["DOCKER_HOST"],
              "listed": [c["Labels"].get("com.docker.compose.service") for c in client.api.containers()]}
    calls = {
        "images": lambda: client.images.list(),
        "create": lambda: client.api.create_container(os.environ["JOBS_IMAGE"], ["true"]),
        "exec_in_db": lambda: client.api.exec_create(os.environ["DB_CONTAINER"], ["true"]),
        "inspect_db": lambda: client.api.inspect_container(os.environ["DB_CONTAINER"]),
        "privileged": lambda: client.api.exec_create(os.environ["BACKEND_CONTAINER"], ["true"], privileged=True),
    }
    for name, call in calls.items():
        try:
            call()
            result[name] = "allowed"
        except docker.errors.APIError as exc:
            result[name] = exc.status_code
    print(json.dumps(result))
""")


def test_the_worker_reaches_docker_only_through_the_socket_proxy(deployed: Deployment):
    env = {"DB_CONTAINER": deployed.platform.container("db"),
           "BACKEND_CONTAINER": deployed.platform.container("backend"), "JOBS_IMAGE": naming.JOBS_IMAGE}

    done = deployed.jobs.exec("jobs-worker", "python", "-c", PROBE, env=env)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["socket"] is False and result["docker_host"] == "tcp://docker-proxy:2375"
    assert {"backend", "db", "jobs-worker"} <= set(result["listed"])
    assert {k: result[k] for k in ("images", "create", "exec_in_db", "inspect_db", "privileged")} == dict.fromkeys(
        ("images", "create", "exec_in_db", "inspect_db", "privileged"), 403)
    # The control worker is not on the proxy's network at all.
    reach = deployed.jobs.exec("jobs-control", "python", "-c",
                               "import socket; socket.create_connection(('docker-proxy', 2375), timeout=3)")
    assert reach.returncode != 0


def _steps(job: dict) -> dict[str, dict]:
    return {s["name"]: s for s in job["steps"]}


def test_provision_backup_migrate_restore_and_a_worker_stopped_mid_step(deployed: Deployment):
    d = deployed
    site = f"deploy{uuid.uuid4().hex[:6]}.example.com"

    rc, job = d.run_job("provision", site)
    assert rc == 0, (job.get("error"), d.jobs.logs())
    assert _steps(job)["install-app:erpnext"]["state"] == "success"
    database = site_config(d.bench, site)["db_name"]
    assert d.sql("SHOW DATABASES LIKE '" + database.replace("_", "\\_") + "'") == [[database]]
    d.add_notes(database, 25, "note")

    rc, backup = d.run_job("backup", site)
    assert rc == 0, backup.get("error")
    dump = next(a for a in backup["result"]["backup"]["artifacts"] if a["kind"] == "database")
    assert (d.bench / "sites" / dump["path"]).stat().st_size == dump["size"]
    before = d.notes(database)

    rc, migrated = d.run_job("migrate", site)
    assert rc == 0, migrated.get("error")
    assert [s["name"] for s in migrated["steps"] if s["state"] == "success"] == NORMAL_MIGRATE

    d.add_notes(database, 3, "later")
    rc, restored = d.run_job("restore", site, "--db", dump["path"])
    assert rc == 0, restored.get("error")
    assert d.notes(database) == before  # the backup's rows, and only those

    # A worker container stopped while bench runs: Beat's resumer hands the step to the
    # restarted worker, whose attempt waits for the orphaned bench process to end. The waits are
    # generous: the hand-over waits for the lost lock's TTL, and a loaded 2-core machine is slow.
    write_faults(d.bench, {"delay": {"migrate": 40}})  # a window wide enough to see it running under load
    rc, queued = d.jerpctl("enqueue", "migrate", site, service="jobs-control")
    assert rc == 0, queued
    job_id = queued["job_id"]
    marker = d.bench / "sites" / site / ".standin-active"
    wait_for(lambda: _steps(d.jerpctl("status", job_id, service="jobs-control")[1])["migrate"]["state"] == "running"
          and marker.exists() and "migrate" in marker.read_text(), timeout=240, what="migrate to run")
    d.jobs.run("stop", "-t", "1", "jobs-worker")
    write_faults(d.bench, {})  # the orphaned run keeps its delay; the next attempt has none
    assert _steps(d.jerpctl("status", job_id, service="jobs-control")[1])["migrate"]["state"] == "running"
    d.jobs.run("start", "jobs-worker")

    job = wait_for(lambda: (j := d.jerpctl("status", job_id, service="jobs-control")[1])["state"] not in
                ("queued", "running") and j, timeout=420, what="the migrate job to end")
    assert job["state"] == "succeeded", (job.get("error"), d.jobs.logs())
    assert [s["name"] for s in job["steps"] if s["state"] == "success"] == NORMAL_MIGRATE
    assert _steps(job)["migrate"]["attempts"] == 2
    assert read_violations(d.bench) == []
    runs = sorted((c["start"], c["end"]) for c in read_calls(d.bench)
                  if c["command"] == "migrate" and c["site"] == site)
    assert runs[-2][1] <= runs[-1][0]  # the retry started after the orphan ended
    assert d.notes(database) == before
    d.jobs.wait_healthy(["jobs-worker"])
