"""Lay out a bench folder for the stand-in ``bench`` and read what the stand-in records.

The folder follows the layout the project relies on::

    <bench>/apps/<app>/<app>/__init__.py       one app per folder (holds ``__version__``)
    <bench>/sites/apps.txt                     installable apps, one per line
    <bench>/sites/common_site_config.json      {"db_host", "db_port", "redis_cache"?}
    <bench>/sites/<site>/...                   created by ``bench new-site``

The stand-in itself is ``BENCH_SCRIPT``; run it with the bench folder (or its ``sites/``) as the
working directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

BENCH_SCRIPT: Path = Path(__file__).resolve().with_name("bench")

FAULTS_FILE = ".standin-faults.json"
CALLS_FILE = ".standin-calls.jsonl"
VIOLATIONS_FILE = ".standin-violations"
ACTIVE_MARKER = ".standin-active"
DEFAULT_APP_VERSION = "15.0.0"

FAULT_KEYS = frozenset({"fail", "fail_after_phase", "delay", "hang", "exit_code"})


def create_bench(
    root: Path,
    *,
    db_host: str,
    db_port: int,
    apps: Sequence[str] = ("frappe", "erpnext"),
    redis_cache: str | None = None,
    time_zone: str | None = None,
    always_on_worker: bool = True,
    node_packages: bool = True,
) -> Path:
    """Create (or complete) a bench folder at ``root`` and return it.

    ``time_zone``: the System Settings time zone of sites that set none (Frappe's default is
    Asia/Kolkata; the stand-in reads this from ``standin_time_zone``). Run as root, the bench
    gets ``frappe_user`` (the current user), without which bench refuses root.
    ``always_on_worker``: a Frappe worker is always online and runs what migrate queues at once
    (without it, queued jobs wait for a ``bench worker``). ``node_packages``: frappe's node
    packages are installed, so ``bench build`` works offline (without them it fails, as Frappe's
    does with no network and no ``node_modules``).
    """
    root = Path(root)
    sites = root / "sites"
    (sites / "assets").mkdir(parents=True, exist_ok=True)
    for app in apps:
        set_app_version(root, app, DEFAULT_APP_VERSION)
    if node_packages:
        (root / "apps" / "frappe" / "node_modules").mkdir(parents=True, exist_ok=True)
    (sites / "apps.txt").write_text("".join(f"{app}\n" for app in apps))
    config: dict = {"db_host": db_host, "db_port": int(db_port)}
    if redis_cache:
        config["redis_cache"] = redis_cache
    if time_zone:
        config["standin_time_zone"] = time_zone
    if os.geteuid() == 0:
        import pwd

        config["frappe_user"] = pwd.getpwuid(0).pw_name
    if always_on_worker:
        config["standin_always_on_worker"] = True
    _write_json(sites / "common_site_config.json", config)
    return root


def set_time_zone(bench: Path, site: str, zone: str) -> None:
    """Set a site's System Settings time zone, through the stand-in as Frappe would."""
    import subprocess

    subprocess.run([str(BENCH_SCRIPT), "--site", site, "execute", "frappe.db.set_single_value", "--args",
                    json.dumps(["System Settings", "time_zone", zone])], cwd=bench, check=True, capture_output=True)


def set_app_version(bench: Path, app: str, version: str) -> None:
    """Put ``app`` in the bench (its folder) at ``version``, as an image update would."""
    package = Path(bench) / "apps" / app / app
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(f'__version__ = "{version}"\n')


def write_faults(bench: Path, faults: Mapping) -> None:
    """Write the failure-injection file the stand-in reads at every run.

    Keys (all optional):
      ``fail``             {command: [site, ...] or "*"}: the command fails for those sites
      ``fail_after_phase`` {command: n}: migrate fails after n phases were committed (default 1)
      ``delay``            {command: seconds} or {command: {site: seconds}}: sleep inside the command
      ``hang``             [command, ...] or {command: [site, ...]}: sleep until killed
      ``exit_code``        {command: code}: exit status of an injected failure (default 1)
    An empty mapping removes all faults.
    """
    unknown = set(faults) - FAULT_KEYS
    if unknown:
        raise ValueError(f"unknown fault keys: {sorted(unknown)}")
    path = Path(bench) / "sites" / FAULTS_FILE
    if not faults:
        path.unlink(missing_ok=True)
        return
    _write_json(path, dict(faults))


def read_calls(bench: Path) -> list[dict]:
    """One dict per finished run: argv (passwords as ``***``), site, command, pid, start, end, exit_code."""
    path = Path(bench) / "sites" / CALLS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_violations(bench: Path) -> list[str]:
    """Lines naming two runs that acted on the same site at the same time."""
    path = Path(bench) / "sites" / VIOLATIONS_FILE
    if not path.is_file():
        return []
    return [line for line in path.read_text().splitlines() if line.strip()]


def site_config(bench: Path, site: str) -> dict:
    return json.loads((Path(bench) / "sites" / site / "site_config.json").read_text())


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)
