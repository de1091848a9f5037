"""Sites folders for discovery tests: many site folders made fast, and a runtime that reads them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from jerp_jobs.runtime import Runtime


def site_names(n: int, prefix: str = "s") -> list[str]:
    return [f"{prefix}{i:05d}.example.com" for i in range(n)]


def make_site_folders(sites_dir: Path, names: Iterable[str], *, maintenance: Iterable[str] = ()) -> list[str]:
    """A folder with a site_config.json for every name (no database: enough to be discovered)."""
    in_maintenance = set(maintenance)
    made = []
    for name in names:
        folder = sites_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        config = {"db_name": "_" + name.replace(".", "_")[:40]}
        if name in in_maintenance:
            config["maintenance_mode"] = 1
        (folder / "site_config.json").write_text(json.dumps(config))
        made.append(name)
    return made


def use_sites_dir(rt: Runtime, sites_dir: Path) -> Runtime:
    """Point the runtime's settings at ``sites_dir`` (JERP_SITES_DIR)."""
    rt.settings = rt.settings.model_copy(update={"sites_dir": sites_dir})
    return rt


def is_count(argv: tuple[str, ...]) -> bool:
    """Matches the bench's one-line count of its sites (a ``find ... -printf .``, run unfenced)."""
    return argv[0] == "find" and "-printf" in argv


def count_output(n: int) -> list[str]:
    """What the bench's count prints for ``n`` site folders: one line of ``n`` dots."""
    return ["." * n] if n else []
