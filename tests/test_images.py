"""The stand-in backend image (tests/images/build.sh) behaves like frappe_docker's backend."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests import naming
from tests.conftest import MARIADB_PORT, RUN_DIR

pytest_plugins = ["tests.docker_backend"]

pytestmark = pytest.mark.docker

BENCH_PATH = "/home/frappe/frappe-bench"
SITES_PATH = f"{BENCH_PATH}/sites"
FRAPPE_UID = 1000
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


@pytest.fixture
def bench_dir(tmp_path: Path) -> Path:
    """A bench folder laid out like frappe_docker's sites volume, pointing at the test MariaDB."""
    sites = tmp_path / "bench" / "sites"
    sites.mkdir(parents=True)
    (sites / "apps.txt").write_text("frappe\nerpnext\n")
    (sites / "common_site_config.json").write_text(
        json.dumps({"db_host": "127.0.0.1", "db_port": MARIADB_PORT})
    )
    return sites.parent


def _run(container, argv: list[str], **kwargs) -> tuple[int, str]:
    result = container.exec_run(argv, user="frappe", **kwargs)
    return result.exit_code, result.output.decode().strip()


def test_exec_runs_as_frappe_uid_and_gid_1000(backend_container, bench_dir):
    container = backend_container(bench_dir)

    assert _run(container, ["id", "-u"]) == (0, str(FRAPPE_UID))
    assert _run(container, ["id", "-g"]) == (0, str(FRAPPE_UID))


def test_default_workdir_is_the_bench_folder(backend_container, bench_dir):
    container = backend_container(bench_dir)

    assert _run(container, ["pwd"]) == (0, BENCH_PATH)
    assert _run(container, ["test", "-d", f"{BENCH_PATH}/apps/frappe"])[0] == 0
    assert _run(container, ["test", "-d", f"{BENCH_PATH}/apps/erpnext"])[0] == 0


def test_bench_is_an_executable_on_the_path(backend_container, bench_dir):
    container = backend_container(bench_dir)

    assert _run(container, ["sh", "-c", "command -v bench"]) == (0, "/usr/local/bin/bench")
    assert _run(container, ["test", "-x", "/usr/local/bin/bench"])[0] == 0
    code, out = _run(container, ["python3", "-c", "import sys; print(sys.version_info >= (3, 11))"])
    assert (code, out) == (0, "True")


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["mariadb", "--version"], id="mariadb"),
        pytest.param(["mariadb-dump", "--version"], id="mariadb-dump"),
        pytest.param(["gzip", "--version"], id="gzip"),
        pytest.param(["tar", "--version"], id="tar"),
    ],
)
def test_database_and_archive_tools_are_installed(backend_container, bench_dir, argv):
    container = backend_container(bench_dir)

    code, out = _run(container, argv)

    assert code == 0, out


def test_sites_folder_is_the_hosts_and_writable_by_frappe(backend_container, bench_dir):
    container = backend_container(bench_dir)

    assert _run(container, ["cat", f"{SITES_PATH}/apps.txt"]) == (0, "frappe\nerpnext")
    assert _run(container, ["sh", "-c", f"echo ok > {SITES_PATH}/written-inside"])[0] == 0

    written = bench_dir / "sites" / "written-inside"
    assert written.read_text() == "ok\n"
    assert written.stat().st_uid == FRAPPE_UID


def test_compose_labels_find_the_container(backend_container, bench_dir, docker_client):
    project = naming.unique_name("labels")
    container = backend_container(bench_dir, project=project, service="backend")

    found = docker_client.containers.list(
        filters={
            "label": [f"{PROJECT_LABEL}={project}", f"{SERVICE_LABEL}=backend"],
            "status": "running",
        }
    )

    assert [c.id for c in found] == [container.id]


def test_env_reaches_exec_processes(backend_container, bench_dir):
    container = backend_container(bench_dir, env={"JERP_PROBE": "42"})

    assert _run(container, ["sh", "-c", "echo $JERP_PROBE"]) == (0, "42")


@pytest.mark.services
def test_host_network_reaches_the_test_mariadb(backend_container, bench_dir):
    password_file = RUN_DIR / "mariadb-root-password"
    if not password_file.exists():
        pytest.fail("the test MariaDB is not set up: run tests/services/up.sh", pytrace=False)
    container = backend_container(bench_dir)

    code, out = _run(
        container,
        ["mariadb", "-h", "127.0.0.1", "-P", str(MARIADB_PORT), "-uroot", "-N", "-e", "SELECT 1"],
        environment={"MYSQL_PWD": password_file.read_text().strip()},
    )

    assert (code, out) == (0, "1")


def test_backend_containers_on_the_host_network_run_side_by_side(backend_container, bench_dir):
    """Each serves its web side on a port of its own: another test's (or checkout's) backend
    never finds the port taken and exits."""
    first = backend_container(bench_dir)
    second = backend_container(bench_dir)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for container in (first, second):
            container.reload()
            assert container.status == "running", container.logs(tail=20).decode(errors="replace")
        time.sleep(0.5)
