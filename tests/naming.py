"""Names of what the test suite makes on the Docker Engine, private to this checkout.

Two checkouts may test at the same time on one machine. Each names its images, containers,
networks, volumes and compose projects with its own id and labels them ``jerp-test=<id>``, so
that a rebuild, a prune or a clean-up of one never touches the other's:

    images      jerp-test-<id>/<name>:<tag>   (tests/images/build.sh builds them)
    label       jerp-test=<id>                 (images, containers and networks the tests make)
    the rest    jt<id>-<purpose>-<random>      (compose projects, hence their containers,
                                                networks and volumes; containers; networks)

The id is the first 8 hex digits of the SHA-256 of the checkout's real path (symlinks resolved:
``pwd -P`` in the shell), or the value of JERP_TEST_ID (1 to 16 characters of a-z and 0-9).
tests/images/naming.sh computes the same id for the shell scripts; tests/test_naming.py checks
that the two agree.

    python -m tests.naming      prints JERP_TEST_ID=<id> and the image variables, shell style
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ID_VARIABLE = "JERP_TEST_ID"
LABEL_KEY = "jerp-test"

_ID = re.compile(r"[a-z0-9]{1,16}")
#: What compose accepts as a project name (and Docker as a container or network name).
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


def checkout_id(root: Path | str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The id of the checkout at ``root`` (default: this one): ``environ[JERP_TEST_ID]`` when set,
    else the first 8 hex digits of the SHA-256 of the root's real path.

    Raises ValueError naming the variable when JERP_TEST_ID is not 1 to 16 of a-z and 0-9.
    """
    environ = os.environ if environ is None else environ
    given = environ.get(ID_VARIABLE, "")
    if given:
        if not _ID.fullmatch(given):
            raise ValueError(f"{ID_VARIABLE}={given!r}: use 1 to 16 characters of a-z and 0-9")
        return given
    real = Path(root if root is not None else ROOT).resolve()
    return hashlib.sha256(str(real).encode()).hexdigest()[:8]


TEST_ID = checkout_id()
#: The repository prefix of this checkout's images.
IMAGE_PREFIX = f"{LABEL_KEY}-{TEST_ID}"
#: ``key=value`` for ``--label`` and ``--filter label=...``.
LABEL = f"{LABEL_KEY}={TEST_ID}"
#: The label as a mapping, for docker-py's ``labels=``.
LABELS = {LABEL_KEY: TEST_ID}
#: How every container, network and compose project name of this checkout starts.
NAME_PREFIX = f"jt{TEST_ID}-"


def image_repo(name: str) -> str:
    """``jerp-test-<id>/<name>``: a repository of this checkout."""
    return f"{IMAGE_PREFIX}/{name}"


BASE_IMAGE = f"{image_repo('debian-base')}:bookworm"
BACKEND_REPO = image_repo("standin-backend")
BACKEND_IMAGE = f"{BACKEND_REPO}:latest"
PYTHON_IMAGE = f"{image_repo('python-base')}:bookworm"
REDIS_IMAGE = f"{image_repo('redis')}:bookworm"
MARIADB_IMAGE = f"{image_repo('mariadb')}:bookworm"
JOBS_IMAGE = f"{image_repo('jobs')}:latest"

#: The images tests/images/build.sh builds, in its order, by the variable that names each to
#: the compose files (compose.jobs.yml reads JERP_JOBS_IMAGE and JERP_REDIS_IMAGE,
#: tests/compose/platform.yml the JERP_TEST_* ones).
IMAGE_VARIABLES = {
    "JERP_TEST_BASE_IMAGE": BASE_IMAGE,
    "JERP_TEST_BACKEND_IMAGE": BACKEND_IMAGE,
    "JERP_TEST_PYTHON_IMAGE": PYTHON_IMAGE,
    "JERP_REDIS_IMAGE": REDIS_IMAGE,
    "JERP_TEST_MARIADB_IMAGE": MARIADB_IMAGE,
    "JERP_JOBS_IMAGE": JOBS_IMAGE,
}


def unique_name(purpose: str) -> str:
    """``jt<id>-<purpose>-<8 random hex digits>``: a fresh compose project, container or network
    name of this checkout. ``purpose`` is lowercase letters, digits, ``-`` and ``_``."""
    name = f"{NAME_PREFIX}{purpose}-{secrets.token_hex(4)}"
    if not _NAME.fullmatch(name):
        raise ValueError(f"purpose {purpose!r}: use lowercase letters, digits, '-' and '_'")
    return name


def is_ours(name: str) -> bool:
    """Whether a container, network or project name is one of this checkout's."""
    return name.lstrip("/").startswith(NAME_PREFIX)


def main(argv: list[str]) -> int:
    if argv:
        print("usage: python -m tests.naming", file=sys.stderr)
        return 2
    print(f"{ID_VARIABLE}={TEST_ID}")
    for variable, image in IMAGE_VARIABLES.items():
        print(f"{variable}={image}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
