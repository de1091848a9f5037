"""The stand-in backend image starts like the supported frappe_docker images (docs/frappe_docker.md):
its entrypoint replaces sites/assets with a link to the assets of the image, and a volume mounted
at sites/assets makes the container exit before its command runs — so a compose file that mounts
one fails the deployment test as it would fail in production.

Needs the Docker Engine and the stand-in backend image (tests/images/build.sh); the image is
tests.docker_backend's, or the one named by JERP_TEST_BACKEND_IMAGE.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import docker_backend

pytestmark = pytest.mark.docker

IMAGE_ASSETS = f"{docker_backend.BENCH_PATH}/assets"
SITES_ASSETS = f"{docker_backend.SITES_PATH}/assets"
_EXIT_TIMEOUT = 30.0


def backend_image() -> str:
    return os.environ.get("JERP_TEST_BACKEND_IMAGE") or docker_backend.BACKEND_IMAGE


@pytest.fixture
def engine() -> Iterator[Any]:
    """A Docker client; every container and volume made through ``engine.made`` is removed after."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
        client.images.get(backend_image())
    except docker.errors.ImageNotFound:
        pytest.fail(f"the image {backend_image()} is missing: run tests/images/build.sh", pytrace=False)
    except docker.errors.DockerException as exc:
        pytest.fail(f"the Docker Engine is not reachable ({exc}); these tests need it", pytrace=False)
    client.made = []
    yield client
    for thing in reversed(client.made):
        try:
            thing.remove(force=True)
        except docker.errors.NotFound:
            pass
    client.close()


def sites_folder(tmp_path: Path) -> Path:
    """A sites folder as an upgraded deployment's volume holds it: an ``assets`` folder left over
    (the mount point of the former assets volume, or assets copied from an older image)."""
    sites = tmp_path / "sites"
    (sites / "assets" / "frappe").mkdir(parents=True)
    (sites / "assets" / "frappe" / "stale.js").write_text("/* an older image's assets */\n")
    (sites / "common_site_config.json").write_text("{}\n")
    for item in [sites, *sites.rglob("*")]:
        if os.geteuid() == 0:
            os.chown(item, docker_backend.FRAPPE_UID, docker_backend.FRAPPE_GID)
        else:
            item.chmod(0o777 if item.is_dir() else 0o666)
    return sites


def wait_exited(container: Any) -> dict[str, Any]:
    deadline = time.monotonic() + _EXIT_TIMEOUT
    while True:
        container.reload()
        if container.status in ("exited", "dead"):
            return container.attrs["State"]
        if time.monotonic() > deadline:
            pytest.fail(f"the container is still {container.status} after {_EXIT_TIMEOUT:.0f} s:\n"
                        f"{container.logs(tail=20).decode(errors='replace')}", pytrace=False)
        time.sleep(0.2)


def test_the_backend_links_sites_assets_to_the_assets_of_its_image(engine, tmp_path: Path):
    sites = sites_folder(tmp_path)
    container = engine.containers.run(
        backend_image(), ["bash", "-c", "cat sites/assets/assets.json && sleep 60"], detach=True,
        network_mode="none", labels={"jerp-test-purpose": "assets"},
        volumes={str(sites): {"bind": docker_backend.SITES_PATH, "mode": "rw"}})
    engine.made.append(container)

    link = sites / "assets"
    deadline = time.monotonic() + _EXIT_TIMEOUT
    while not link.is_symlink() and time.monotonic() < deadline:
        container.reload()
        assert container.status in ("created", "running"), container.logs().decode(errors="replace")
        time.sleep(0.1)
    # In the sites volume, the leftover folder is gone and a link to the image's assets replaces it.
    assert link.is_symlink(), f"sites/assets is still {'a folder' if link.is_dir() else 'missing'}"
    assert os.readlink(link) == IMAGE_ASSETS
    # The command then runs, and reads the image's own assets through the link.
    found = container.exec_run(["cat", f"{SITES_ASSETS}/assets.json"], user="frappe")
    assert found.exit_code == 0 and found.output.strip() == b"{}", found.output
    stale = container.exec_run(["test", "-e", f"{SITES_ASSETS}/frappe/stale.js"], user="frappe")
    assert stale.exit_code != 0, "an older image's assets are still served"


def test_a_volume_mounted_at_sites_assets_makes_the_backend_exit(engine, tmp_path: Path):
    sites = sites_folder(tmp_path)
    (sites / "assets" / "frappe" / "stale.js").unlink()
    volume = engine.volumes.create(f"jerp-assets-{secrets.token_hex(4)}", labels={"jerp-test-purpose": "assets"})
    engine.made.append(volume)
    # The former frappe-assets volume, holding a file of an earlier image.
    filler = engine.containers.run(
        backend_image(), ["echo '/* old */' > /v/old.js && chown -R 1000:1000 /v"],
        entrypoint=["sh", "-c"], user="root", detach=True, network_mode="none",
        volumes={volume.name: {"bind": "/v", "mode": "rw"}})
    engine.made.append(filler)
    assert wait_exited(filler)["ExitCode"] == 0, filler.logs().decode(errors="replace")

    ran = f"{docker_backend.SITES_PATH}/command-ran"
    container = engine.containers.run(
        backend_image(), ["touch", ran], detach=True, network_mode="none",
        labels={"jerp-test-purpose": "assets"},
        volumes={str(sites): {"bind": docker_backend.SITES_PATH, "mode": "rw"},
                 volume.name: {"bind": SITES_ASSETS, "mode": "rw"}})
    engine.made.append(container)

    state = wait_exited(container)
    logs = container.logs().decode(errors="replace")
    assert state["ExitCode"] == 1, logs
    assert "Device or resource busy" in logs and SITES_ASSETS in logs, logs
    assert not (sites / "command-ran").exists(), "the command ran although sites/assets is a mount"
    # As with the real entrypoint, rm emptied the volume before failing on its mount point.
    lister = engine.containers.run(
        backend_image(), ["ls -A /v"], entrypoint=["sh", "-c"], detach=True, network_mode="none",
        volumes={volume.name: {"bind": "/v", "mode": "ro"}})
    engine.made.append(lister)
    assert wait_exited(lister)["ExitCode"] == 0
    assert lister.logs().decode().strip() == ""
