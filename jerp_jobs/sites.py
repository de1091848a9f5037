"""Site names: validated as lowercase DNS names before anything is built from them.

A site name ends up in argv lists, folder paths, database names and Redis keys, so the rule
is strict: lowercase letters, digits and hyphens in dot-separated labels of 1-63 characters,
no label starting or ending with a hyphen, at most 253 characters in all. A few names that are
valid DNS names mean something else to bench or to its sites folder (``all`` selects every
site) and are refused too. Each refusal names the rule that was broken.

:func:`list_site_folders` reads the sites of a bench from its sites folder itself: every site,
however many, with no command output (and so no output tail) in between.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jerp_jobs.errors import CommandFailed, ConfigError, InvalidInput, InvalidSiteName, JerpError, OutputParseError

MAX_NAME = 253
MAX_LABEL = 63

#: Valid DNS names that bench or its sites folder give another meaning.
RESERVED = frozenset({"all", "assets", "apps.txt", "apps.json", "currentsite.txt", "locks", "logs", "archived"})

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
#: a whole name every label of which is acceptable: the quick yes of validate_site_name (a name
#: it does not match goes through the checks one by one, which say what is wrong)
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


#: Apps of every Frappe/ERPNext bench: never a site name, whatever apps.txt says.
APP_NAMES = frozenset({"frappe", "erpnext"})


def bench_app_names(sites_dir: Path | str | None) -> set[str]:
    """The apps of the bench: ``apps.txt`` of its sites folder when visible, and always
    :data:`APP_NAMES`. An unreadable apps.txt adds nothing."""
    names = set(APP_NAMES)
    if sites_dir is not None:
        try:
            text = (Path(sites_dir) / "apps.txt").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
        names |= {line.strip() for line in text.splitlines() if line.strip()}
    return names


def refuse_app_name(name: str, apps: set[str] | frozenset[str]) -> str:
    """A site may not be named like an app of the bench: bench resolves ``bench <app> ...`` and
    the app's module before the site, and ``new-site`` refuses such a name itself, late."""
    if name in apps:
        raise InvalidSiteName(name, f"{name!r} is the name of an app of the bench (frappe, erpnext or one in "
                                    "sites/apps.txt); a site cannot be named like an app")
    return name


def validate_site_name(name: object) -> str:
    """Return ``name`` if it is an acceptable site name, else raise InvalidSiteName."""
    if not isinstance(name, str):
        raise InvalidSiteName(repr(name), "a site name must be a string")
    if len(name) <= MAX_NAME and _NAME.fullmatch(name) and name not in RESERVED:
        return name
    if not name:
        raise InvalidSiteName(name, "a site name may not be empty")
    if len(name) > MAX_NAME:
        raise InvalidSiteName(name, f"a DNS name has at most {MAX_NAME} characters")
    if name != name.lower():
        raise InvalidSiteName(name, "a site name must be lowercase")
    for label in name.split("."):
        _check_label(name, label)
    if name in RESERVED:
        raise InvalidSiteName(name, f"{name!r} is reserved by bench (it is not a customer site)")
    return name


def _check_label(name: str, label: str) -> None:
    if not label:
        raise InvalidSiteName(name, "empty label: no leading, trailing or doubled dots")
    if len(label) > MAX_LABEL:
        raise InvalidSiteName(name, f"each dot-separated label has at most {MAX_LABEL} characters")
    bad = sorted({ch for ch in label if not (ch.isascii() and (ch.isalnum() or ch == "-"))})
    if bad:
        shown = "".join(bad)
        raise InvalidSiteName(name, f"only letters a-z, digits and '-' are allowed (found {shown!r})")
    if label.startswith("-") or label.endswith("-"):
        raise InvalidSiteName(name, "a label may not start or end with '-'")
    if not _LABEL.fullmatch(label):  # pragma: no cover - the checks above cover every case
        raise InvalidSiteName(name, "not a DNS label")


def is_valid_site_name(name: object) -> bool:
    try:
        validate_site_name(name)
    except InvalidSiteName:
        return False
    return True


def db_name_for(site: str) -> str:
    """The database name jerp-jobs gives a new site: readable, unique per site, <= 64 chars.

    MariaDB names allow letters, digits and ``_``; the site's dots and hyphens become ``_``,
    and a short hash of the full name keeps two sites that map to the same text apart.
    """
    import hashlib

    site = validate_site_name(site)
    digest = hashlib.sha256(site.encode()).hexdigest()[:8]
    stem = re.sub(r"[^a-z0-9]", "_", site)[:48]
    return f"_{stem}_{digest}"


# -- the sites of a bench, read from its sites folder -----------------------------------------

#: the file whose presence makes a folder of ``sites/`` a site (as bench decides)
SITE_CONFIG = "site_config.json"


@dataclass(frozen=True)
class SiteListing:
    """What a sites folder holds: the sites, and what was left out with the reason.

    ``candidates`` counts every folder with a regular ``site_config.json`` file, valid name or
    not: the number a ``find sites -mindepth 2 -maxdepth 2 -name site_config.json -type f`` in the
    bench counts too.
    """

    folder: str
    sites: tuple[str, ...]
    ignored: tuple[str, ...]
    candidates: int


def list_site_folders(folder: Path | str) -> SiteListing:
    """Every site of a sites folder, read from the folder itself (no command, no output tail).

    A site is a real folder (not a symbolic link) directly under ``folder`` that holds a regular
    ``site_config.json`` file (not a link). Folders whose name is not an acceptable site name are
    reported in ``ignored`` with the rule they break, never used; so are linked folders and
    linked or odd ``site_config.json`` files. A missing or unreadable folder raises
    :class:`~jerp_jobs.errors.InvalidInput` naming it: an empty list is never a guess.
    """
    root = Path(folder)
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        raise InvalidInput(f"the sites folder {str(root)!r} does not exist") from None
    except NotADirectoryError:
        raise InvalidInput(f"the sites folder {str(root)!r} is not a folder") from None
    except OSError as exc:
        raise InvalidInput(f"the sites folder {str(root)!r} cannot be read: {exc.strerror or exc}") from None
    sites: list[str] = []
    ignored: list[str] = []
    candidates = 0
    for entry in entries:
        name = entry.name
        try:
            mode = os.lstat(os.path.join(entry.path, SITE_CONFIG)).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue  # not a site folder (a file of sites/, assets, a folder without config)
        except OSError as exc:
            ignored.append(f"{name!r}: {SITE_CONFIG} cannot be read ({exc.strerror or exc})")
            continue
        if entry.is_symlink():
            ignored.append(f"{name!r}: a symbolic link, not a site folder")
            continue
        if not stat.S_ISREG(mode):
            ignored.append(f"{name!r}: its {SITE_CONFIG} is not a regular file")
            continue
        candidates += 1
        try:
            sites.append(validate_site_name(name))
        except InvalidSiteName as exc:
            ignored.append(f"{name!r}: {exc.rule}")
    return SiteListing(folder=str(root), sites=tuple(sorted(sites)), ignored=tuple(sorted(ignored)),
                       candidates=candidates)


def has_site_folder(folder: Path | str, site: str) -> bool:
    """Whether ``folder`` holds ``site`` by the rule of :func:`list_site_folders`: a real folder
    (not a link) with a regular ``site_config.json`` (not a link). One site, no listing."""
    path = Path(folder) / validate_site_name(site)
    try:
        if path.is_symlink():
            return False
        return stat.S_ISREG(os.lstat(path / SITE_CONFIG).st_mode)
    except OSError:
        return False


def site_config_test(site: str) -> list[str]:
    """``test -f sites/<site>/site_config.json``: run where bench runs, exit 0 when the site
    exists (as bench decides), 1 when it does not."""
    return ["test", "-f", f"sites/{validate_site_name(site)}/{SITE_CONFIG}"]


def site_in_bench(settings: Any, executor: Any, site: str, *, timeout: float) -> bool | None:
    """Whether the bench has ``site``: read from the sites folder when it is visible here, else
    asked in the bench container (Docker executor: ``test -f sites/<site>/site_config.json``, as
    bench decides). None when neither can tell (no folder, the container cannot be reached or
    answers neither yes nor no)."""
    site = validate_site_name(site)
    try:
        folder = sites_dir(settings)
    except ConfigError:
        folder = None
    if folder is not None and folder.is_dir():
        return has_site_folder(folder, site)
    if executor is None or settings.executor != "docker":
        return None  # the local executor's bench is this folder: without it nothing can tell
    try:
        result = executor.run(site_config_test(site), timeout=timeout)
    except JerpError:
        return None
    return {0: True, 1: False}.get(result.exit_code)


def sites_dir(settings: Any) -> Path:
    """The bench's sites folder as the worker sees it: ``JERP_SITES_DIR``, or for the local
    executor ``JERP_BENCH_DIR/sites``; ConfigError when neither says."""
    if settings.sites_dir is not None:
        return Path(settings.sites_dir)
    if settings.executor == "local" and settings.bench_dir is not None:
        return Path(settings.bench_dir) / "sites"
    raise ConfigError(
        "JERP_SITES_DIR",
        "is not set; the worker needs the platform's sites volume mounted to copy backups off-site",
    )


#: Counts the bench's site folders in one line of output (one "." per ``site_config.json``), so
#: that no output tail can cut it; the same rule as :func:`jerp_jobs.sites.list_site_folders`
#: (``-P``: linked folders are not entered, linked files are not regular files).
BENCH_SITE_COUNT = ("find", "-P", "sites", "-mindepth", "2", "-maxdepth", "2", "-name", SITE_CONFIG,
                    "-type", "f", "-printf", ".")
#: how long the bench's count may take
COUNT_TIMEOUT_S = 300
#: listings taken again while the bench's count changes under them (a site being created)
DISCOVERY_ATTEMPTS = 3


def sites_folder(settings: Any) -> Path:
    """The platform's sites folder as the worker sees it (``JERP_SITES_DIR``; for the local
    executor, ``JERP_BENCH_DIR/sites``)."""
    try:
        return sites_dir(settings)
    except ConfigError:
        raise ConfigError(
            "JERP_SITES_DIR",
            "is not set; site discovery reads the platform's sites folder: mount the sites volume in the "
            "worker and point JERP_SITES_DIR at it",
        ) from None


def count_bench_sites(executor: Any) -> int:
    """How many site folders the bench itself sees, counted where bench runs (one line of output)."""
    result = executor.run(list(BENCH_SITE_COUNT), timeout=COUNT_TIMEOUT_S)
    text = result.output.strip()
    if not result.ok:
        raise CommandFailed(f"counting the bench's sites failed (exit {result.exit_code}): {text[-500:]}",
                            exit_code=result.exit_code, output_tail=result.output)
    if text.strip("."):
        raise OutputParseError(f"counting the bench's sites printed more than a count: {text[-500:]!r}")
    return len(text)


def find_sites(settings: Any, executor: Any, *, meanwhile: Callable[[SiteListing], object] | None = None) -> SiteListing:
    """Every site of the bench, read from the sites folder and checked against the bench's count.

    The list comes from the folder itself (:func:`jerp_jobs.sites.list_site_folders`), never from
    a command's output. The bench counts its site folders in its own view, through the executor;
    when the two numbers differ — the worker sees another folder, an old copy, a folder only
    partly mounted — nothing is guessed: a :class:`JerpError` names both numbers. A count that
    changes between two looks (a site created meanwhile) makes the listing be taken again.
    The first count runs while the folder is listed (the bench counts in a process of its own);
    when the two agree — the usual case — that one count is all, and when they do not the
    count is taken again after the listing. ``meanwhile``, when given, is called with that first
    listing while the bench is still counting (the caller's own reads of those sites); when the
    listing returned is another one, the caller reads that one again.
    """
    folder = sites_folder(settings)
    seen: list[tuple[int, int, int]] = []
    for attempt in range(DISCOVERY_ATTEMPTS):
        if attempt == 0:
            before, listing = _count_while_listing(executor, folder, meanwhile)
            if before == listing.candidates:
                return listing
        else:
            before = count_bench_sites(executor)
            listing = list_site_folders(folder)
        after = count_bench_sites(executor)
        seen.append((before, listing.candidates, after))
        if before == after == listing.candidates:
            return listing
        if before == after:
            raise JerpError(
                f"site discovery disagrees: the sites folder {str(folder)!r} lists {listing.candidates} "
                f"site folders but the bench counts {after}; refusing to work on a partial list of sites "
                "(is JERP_SITES_DIR the platform's sites volume?)",
                listed=listing.candidates, counted=after, folder=str(folder),
            )
    shown = "; ".join(f"bench {b} -> {a}, folder {n}" for b, n, a in seen)
    raise JerpError(
        f"site discovery disagrees: the bench's sites kept changing while they were listed "
        f"({DISCOVERY_ATTEMPTS} attempts: {shown}); try again when no site is being created or dropped",
        listed=seen[-1][1], counted=seen[-1][2], folder=str(folder),
    )


def _count_while_listing(executor: Any, folder: Path,
                         meanwhile: Callable[[SiteListing], object] | None) -> tuple[int, SiteListing]:
    """The bench's count (in a thread: the executor waits for its process) and the folder's
    listing, taken at the same time, and ``meanwhile`` called with the listing before the count
    is waited for. An error of the count is raised first, as when the count ran before the
    listing."""
    import threading

    outcome: dict[str, Any] = {}

    def count() -> None:
        try:
            outcome["count"] = count_bench_sites(executor)
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=count, name="bench-site-count", daemon=True)
    thread.start()
    try:
        listing = list_site_folders(folder)
        if meanwhile is not None:
            meanwhile(listing)
    finally:
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
    return outcome["count"], listing
