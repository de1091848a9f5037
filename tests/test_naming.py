"""Docker names private to the checkout (tests/naming.py, tests/images/naming.sh, build.sh):
the shell and Python agree on the id, nothing in the tree names a shared image or project,
and ``build.sh clean`` removes this checkout's things and nothing of another's."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from tests import naming

ROOT = naming.ROOT
NAMING_SH = ROOT / "tests" / "images" / "naming.sh"
BUILD_SH = ROOT / "tests" / "images" / "build.sh"
#: The compose project name grammar (and what Docker takes as a container or network name).
COMPOSE_PROJECT = re.compile(r"[a-z0-9][a-z0-9_-]*")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != naming.ID_VARIABLE}
    env.update(extra)
    return env


def shell_id(root: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    argv = ["bash", "-c", '. "$1" && jerp_test_id "${@:2}"', "naming", str(NAMING_SH)]
    if root is not None:
        argv.append(str(root))
    return subprocess.run(argv, capture_output=True, text=True, env=_env(**env), cwd="/", timeout=30)


def test_shell_and_python_ids_agree_for_this_checkout() -> None:
    done = shell_id()

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == naming.checkout_id(environ={})
    assert re.fullmatch(r"[0-9a-f]{8}", done.stdout.strip())


def test_ids_agree_through_a_symlink_and_differ_between_checkouts(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "one")

    ids = {name: naming.checkout_id(tmp_path / name, environ={}) for name in ("one", "two", "link")}
    shell = {name: shell_id(tmp_path / name).stdout.strip() for name in ("one", "two", "link")}

    assert shell == ids
    assert ids["link"] == ids["one"] != ids["two"]


def test_the_id_variable_wins_and_is_checked() -> None:
    assert naming.checkout_id(environ={naming.ID_VARIABLE: "ci42"}) == "ci42"
    assert shell_id(JERP_TEST_ID="ci42").stdout.strip() == "ci42"

    for bad in ("CI42", "ci-42", "a" * 17, "x/y"):
        with pytest.raises(ValueError, match=naming.ID_VARIABLE):
            naming.checkout_id(environ={naming.ID_VARIABLE: bad})
        done = shell_id(JERP_TEST_ID=bad)
        assert done.returncode != 0 and naming.ID_VARIABLE in done.stderr and not done.stdout


@pytest.mark.parametrize("test_id", [None, "ci42"], ids=["from-the-path", "from-the-variable"])
def test_build_sh_builds_the_images_the_tests_use(test_id: str | None) -> None:
    extra = {naming.ID_VARIABLE: test_id} if test_id else {}
    shell = subprocess.run([str(BUILD_SH), "names"], capture_output=True, text=True, env=_env(**extra), timeout=30)
    python = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "tests.naming"], cwd=ROOT,
                            capture_output=True, text=True, env=_env(**extra), timeout=30)

    assert shell.returncode == 0 and python.returncode == 0, (shell.stderr, python.stderr)
    assert shell.stdout == python.stdout
    lines = dict(line.split("=", 1) for line in shell.stdout.splitlines())
    wanted_id = test_id or naming.TEST_ID
    assert lines.pop(naming.ID_VARIABLE) == wanted_id
    assert lines and all(image.startswith(f"jerp-test-{wanted_id}/") for image in lines.values())


def test_names_are_the_checkouts_and_valid_compose_project_names() -> None:
    names = {naming.unique_name("e2e") for _ in range(20)}

    assert len(names) == 20
    for name in names:
        assert name.startswith(f"jt{naming.TEST_ID}-e2e-") and naming.is_ours(name)
        assert COMPOSE_PROJECT.fullmatch(name)
    assert not naming.is_ours(f"jt{'0' * 8}-e2e-1234")
    for bad in ("E2E", "e2e proxy", "a/b"):
        with pytest.raises(ValueError, match="purpose"):
            naming.unique_name(bad)


#: Shared names the suite used before every name became the checkout's.
SHARED = re.compile("|".join([
    r"jerp-test/",                 # image repositories
    r"jerp-test=1\b",              # the shared label
    r"\bjerptest-", r"\bjerpe2e", r"\bjerprel", r"\bjerpdeploy",  # projects and containers
]))


def _tree_files() -> list[Path]:
    roots = [ROOT / "tests", ROOT / "benchmarks", ROOT / "workers"]
    skip = {".run", "__pycache__", ".pytest_cache"}
    files = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not skip & set(path.relative_to(ROOT).parts) and path != Path(__file__):
                if path.suffix in (".py", ".yml", ".yaml", ".sh", ".Containerfile", ".md") \
                        or path.name in ("Containerfile", "build.sh") or os.access(path, os.X_OK):
                    files.append(path)
    return files


def test_no_test_benchmark_or_compose_file_names_a_shared_image_or_project() -> None:
    files = _tree_files()
    assert ROOT / "tests" / "compose" / "platform.yml" in files and ROOT / "tests" / "images" / "build.sh" in files
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in files
             for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
             if SHARED.search(line)]

    assert found == []


def test_images_come_from_variables_in_the_compose_files_and_containerfiles() -> None:
    for compose_file in sorted((ROOT / "tests" / "compose").glob("*.yml")):
        for line in compose_file.read_text().splitlines():
            if line.strip().startswith("image:"):
                assert line.split(":", 1)[1].strip().startswith("${"), f"{compose_file.name}: {line.strip()}"
    for containerfile in sorted((ROOT / "tests" / "images").glob("*.Containerfile")):
        args = [line for line in containerfile.read_text().splitlines() if line.startswith("ARG BASE_IMAGE")]
        assert args == ["ARG BASE_IMAGE"], f"{containerfile.name}: {args} (build.sh passes this checkout's base)"


def _docker(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *argv], capture_output=True, text=True, check=check, timeout=120)


def _exists(kind: str, name: str) -> bool:
    return _docker(kind, "inspect", name, check=False).returncode == 0


@pytest.mark.docker
def test_clean_removes_this_checkouts_things_only(docker_client: object) -> None:
    """Two made-up checkout ids, each with an image, a container, a network and a volume:
    ``build.sh clean`` under one id removes its four things and leaves the other's."""
    ids = {who: f"t{secrets.token_hex(5)}" for who in ("mine", "other")}
    made: dict[str, dict[str, str]] = {}
    try:
        for who, test_id in ids.items():
            image = f"jerp-test-{test_id}/probe:1"
            subprocess.run(["docker", "build", "-q", "--label", f"jerp-test={test_id}", "-t", image, "-"],
                           input=f"FROM {naming.BACKEND_IMAGE}\n", capture_output=True, text=True,
                           env={**os.environ, "DOCKER_BUILDKIT": "0"}, check=True, timeout=120)
            made[who] = {"image": image}
            made[who]["container"] = f"jt{test_id}-probe-1"
            _docker("create", "--name", made[who]["container"], image, "true")
            made[who]["network"] = f"jt{test_id}-net"
            _docker("network", "create", made[who]["network"])
            made[who]["volume"] = f"jt{test_id}-data"
            _docker("volume", "create", made[who]["volume"])
        # an unnamed container of the checkout's image carries its label
        unnamed = _docker("create", made["mine"]["image"], "true").stdout.strip()

        done = subprocess.run([str(BUILD_SH), "clean"], capture_output=True, text=True,
                              env=_env(JERP_TEST_ID=ids["mine"]), timeout=300)

        assert done.returncode == 0, done.stderr
        kinds = ("image", "container", "network", "volume")
        assert {kind: _exists(kind, name) for kind, name in made["mine"].items()} == dict.fromkeys(kinds, False)
        assert not _exists("container", unnamed)
        assert {kind: _exists(kind, name) for kind, name in made["other"].items()} == dict.fromkeys(kinds, True)
        assert _exists("image", naming.BACKEND_IMAGE)
    finally:
        for things in made.values():
            _docker("rm", "-f", things.get("container", "-"), check=False)
            _docker("network", "rm", things.get("network", "-"), check=False)
            _docker("volume", "rm", things.get("volume", "-"), check=False)
            _docker("image", "rm", things["image"], check=False)
