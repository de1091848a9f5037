"""compose.yml against the images it runs (docs/frappe_docker.md), read as YAML: fast, no Docker.

The supported frappe_docker images keep their built assets at <bench>/assets and their entrypoint
replaces sites/assets with a link to them at every start, so a volume mounted at sites/assets
makes each container of the image exit. These tests fail when a service of the image (or the
stand-in backend of the deployment test) mounts anything there, when the pipeline does not build
from the pinned frappe_docker commit, or when the configurator stops writing what the images read.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH = "/home/frappe/frappe-bench"
SITES = f"{BENCH}/sites"
SITES_ASSETS = f"{SITES}/assets"
IMAGE_ASSETS = f"{BENCH}/assets"

#: The services of compose.yml that run the platform's ERPNext image.
IMAGE_SERVICES = {"configurator", "backend", "scheduler", "queue-default", "queue-long", "queue-short",
                  "websocket", "frontend"}

PINNED_REF = re.compile(r"^\$\{\{ vars\.FRAPPE_DOCKER_REF \|\| '([0-9a-f]{40})' \}\}$")


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def mount_targets(service: dict[str, Any]) -> list[str]:
    """Where each entry of the service's ``volumes`` is mounted, normalised: short syntax
    (``TARGET``, ``SOURCE:TARGET``, ``SOURCE:TARGET:MODE``) or long syntax (``target:``)."""
    targets = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            target = entry.get("target")
        else:
            parts = str(entry).split(":")
            target = parts[0] if len(parts) == 1 else parts[1]
        if not target:
            raise ValueError(f"a volume entry without a target: {entry!r}")
        targets.append(posixpath.normpath(target))
    return targets


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + "/")


def assets_mounts(compose: dict[str, Any], uses_image: Callable[[str, dict[str, Any]], bool]) -> list[str]:
    """One line per mount over the assets of a service for which ``uses_image`` is true: at or
    under sites/assets (the entrypoint cannot replace it), or at or under <bench>/assets (the
    image's assets frozen in a volume)."""
    found = []
    for name, service in (compose.get("services") or {}).items():
        if not uses_image(name, service):
            continue
        for target in mount_targets(service):
            if _within(target, SITES_ASSETS) or _within(target, IMAGE_ASSETS):
                found.append(f"{name}: {target}")
    return found


def platform_image(compose: dict[str, Any]) -> str:
    return compose["x-erpnext-image"]["image"]


def services_of_image(compose: dict[str, Any]) -> set[str]:
    image = platform_image(compose)
    return {name for name, service in compose["services"].items() if service.get("image") == image}


@pytest.fixture(scope="module")
def platform() -> dict[str, Any]:
    return load(ROOT / "compose.yml")


def test_compose_knows_which_services_run_the_platform_image(platform):
    # The assets check below covers exactly these: a service added on the image, or moved off
    # it, must be looked at again.
    assert services_of_image(platform) == IMAGE_SERVICES


def test_no_service_of_the_platform_image_mounts_a_volume_over_the_assets(platform):
    image = platform_image(platform)
    found = assets_mounts(platform, lambda _name, service: service.get("image") == image)
    assert found == [], f"the image's entrypoint replaces sites/assets with a link: {found}"
    assert "frappe-assets" not in (platform.get("volumes") or {})


def test_every_service_of_the_image_shares_the_sites_volume(platform):
    # The link sites/assets -> <bench>/assets lives in the sites volume; every container of the
    # image finds its own image's assets behind it.
    for name in IMAGE_SERVICES:
        assert f"frappe-sites:{SITES}" in platform["services"][name]["volumes"], name


def test_the_configurator_writes_what_the_images_read_and_skips_their_entrypoint(platform):
    configurator = platform["services"]["configurator"]
    assert configurator["entrypoint"] == ["bash", "-c"]
    script = configurator["command"][0]
    for key in ("db_host", "db_port", "redis_cache", "redis_queue", "redis_socketio", "socketio_port",
                "chromium_path"):
        assert re.search(rf"bench set-config -gp? {key} ", script), key
    assert "ls -1 apps > sites/apps.txt" in script


def test_the_deployment_test_mounts_nothing_over_the_stand_in_backends_assets():
    # The stand-in backend behaves like the image (tests/images/standin-entrypoint.sh): a volume
    # there would make the deployment test's backend exit.
    compose = load(ROOT / "tests/compose/platform.yml")
    assert "backend" in compose["services"]
    assert assets_mounts(compose, lambda name, _service: name == "backend") == []


@pytest.mark.parametrize(("volumes", "expected"), [
    (["frappe-assets:/home/frappe/frappe-bench/sites/assets"], ["svc: /home/frappe/frappe-bench/sites/assets"]),
    (["assets:/home/frappe/frappe-bench/sites/assets/:rw"], ["svc: /home/frappe/frappe-bench/sites/assets"]),
    (["/home/frappe/frappe-bench/sites/assets"], ["svc: /home/frappe/frappe-bench/sites/assets"]),
    (["./custom:/home/frappe/frappe-bench/sites/assets/custom:ro"],
     ["svc: /home/frappe/frappe-bench/sites/assets/custom"]),
    ([{"type": "volume", "source": "a", "target": "/home/frappe/frappe-bench/sites/assets"}],
     ["svc: /home/frappe/frappe-bench/sites/assets"]),
    (["a:/home/frappe/frappe-bench/assets"], ["svc: /home/frappe/frappe-bench/assets"]),
    (["s:/home/frappe/frappe-bench/sites", "l:/home/frappe/frappe-bench/logs",
      "x:/home/frappe/frappe-bench/sites/assets-old", {"type": "tmpfs", "target": "/tmp"}], []),
])
def test_the_check_finds_assets_mounts_in_every_compose_form(volumes: list, expected: list[str]):
    compose = {"services": {"svc": {"image": "img", "volumes": volumes}, "db": {"image": "other", "volumes": volumes}}}
    assert assets_mounts(compose, lambda _name, service: service["image"] == "img") == expected


def _frappe_docker_checkout(steps: Iterable[dict[str, Any]]) -> dict[str, Any]:
    matches = [step for step in steps if (step.get("with") or {}).get("repository") == "frappe/frappe_docker"]
    assert len(matches) == 1, "exactly one checkout of frappe/frappe_docker"
    return matches[0]


def test_the_pipeline_builds_from_the_pinned_frappe_docker_commit():
    workflow = load(ROOT / ".github/workflows/build-image.yml")
    checkout = _frappe_docker_checkout(workflow["jobs"]["build"]["steps"])
    match = PINNED_REF.match(checkout["with"]["ref"])
    assert match, f"FRAPPE_DOCKER_REF must default to a full commit id, not {checkout['with']['ref']!r}"
    commit = match.group(1)
    # The commit is the one docs/frappe_docker.md and the README name as supported.
    assert commit in (ROOT / "docs/frappe_docker.md").read_text()
    assert commit in (ROOT / "README.md").read_text()


def test_the_stand_in_backend_image_links_its_assets_like_the_supported_images():
    containerfile = (ROOT / "tests/images/standin-backend.Containerfile").read_text()
    assert 'ENTRYPOINT ["/usr/local/bin/standin-entrypoint"]' in containerfile
    assert "COPY tests/images/standin-entrypoint.sh /usr/local/bin/standin-entrypoint" in containerfile
    assert f"{BENCH}/assets" in containerfile
    assert f"{SITES}/assets" not in containerfile, "the image's sites/ holds no assets"
    script = (ROOT / "tests/images/standin-entrypoint.sh").read_text()
    assert "set -euo pipefail" in script and 'exec "$@"' in script
