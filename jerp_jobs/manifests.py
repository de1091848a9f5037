"""Backup manifests whose integrity does not rest on Redis alone.

A manifest (what a backup made: every artifact's path, size and SHA-256) is kept twice: in
the site's backup index in Redis, and as ``<timestamp>-jerp-manifest.json`` beside the files
in the site's backup folder. With ``JERP_MANIFEST_KEY`` set, every manifest also carries
``hmac``: HMAC-SHA256, with that worker-side key, of the manifest's canonical JSON (sorted
keys, no ``hmac``); the off-site ``manifest.json`` carries one too.

A manifest is trusted for a restore when:

- the key is set: every copy found (Redis, the file beside the dump) carries a valid HMAC.
  A copy with a wrong or missing HMAC is refused as altered (a backup recorded before the key
  was set is restored only on request, ``--unverified``);
- no key is set: the Redis copy and the copy beside the files agree. One copy alone cannot be
  confirmed. An edit of Redis alone is caught; one of Redis and of the backup folder together
  is caught only with the key.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from jerp_jobs import bench
from jerp_jobs.backupfiles import BACKUPS, UnsafeBackupFile, open_dir
from jerp_jobs.errors import CommandFailed

SIDE_SUFFIX = "-jerp-manifest.json"
HMAC_PREFIX = "hmac-sha256:"
_MAX_SIDE = 1024 * 1024


class ManifestAltered(CommandFailed):
    """A manifest whose copies disagree or whose signature does not verify."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=1)


def manifest_key(settings: Any) -> bytes | None:
    value = getattr(settings, "manifest_key", None)
    text = value.get_secret_value() if value is not None else ""
    return text.encode() if text else None


def canonical(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "hmac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def seal(manifest: dict[str, Any], key: bytes | None) -> dict[str, Any]:
    """The manifest with its ``hmac`` (none without a key)."""
    out = {k: v for k, v in manifest.items() if k != "hmac"}
    if key:
        out["hmac"] = HMAC_PREFIX + hmac.new(key, canonical(out), hashlib.sha256).hexdigest()
    return out


def signature(manifest: dict[str, Any], key: bytes) -> bool | None:
    """True: valid; False: present and wrong; None: the manifest carries none."""
    given = manifest.get("hmac")
    if not given:
        return None
    want = HMAC_PREFIX + hmac.new(key, canonical(manifest), hashlib.sha256).hexdigest()
    return hmac.compare_digest(str(given), want)


def side_name(timestamp: str) -> str:
    return f"{timestamp}{SIDE_SUFFIX}"


def write_side(root: Path, site: str, manifest: dict[str, Any]) -> str:
    """Write the copy beside the files (temporary name, then renamed); returns its path."""
    folder = open_dir(root, (site, *BACKUPS), what=f"manifest of {site}")
    name = side_name(manifest["timestamp"])
    tmp = f".{name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=folder)
        try:
            owner = os.fstat(folder)
            if os.geteuid() == 0 and owner.st_uid != 0:  # the bench's user owns what lies in its folders
                os.fchown(fd, owner.st_uid, owner.st_gid)
            os.write(fd, json.dumps(manifest, sort_keys=True, indent=1).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)
        raise
    finally:
        os.close(folder)
    return f"{site}/private/backups/{name}"


def read_side(root: Path, site: str, timestamp: str) -> dict[str, Any] | None:
    """The copy beside the files, or None; a link or anything odd in its place is refused."""
    name = side_name(timestamp)
    try:
        folder = open_dir(root, (site, *BACKUPS), what=f"manifest of {site}")
    except UnsafeBackupFile:
        return None
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ManifestAltered(f"the manifest {site}/private/backups/{name} cannot be opened safely "
                                  f"({exc.strerror}); is it a symbolic link?") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_size > _MAX_SIDE:
                raise ManifestAltered(f"the manifest {site}/private/backups/{name} is not a plain file")
            raw = os.read(fd, _MAX_SIDE + 1)
        finally:
            os.close(fd)
    finally:
        os.close(folder)
    try:
        data = json.loads(raw)
    except ValueError:
        raise ManifestAltered(f"the manifest {site}/private/backups/{name} is not valid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("artifacts"), list):
        raise ManifestAltered(f"the manifest {site}/private/backups/{name} is not a backup manifest")
    return data


def artifact(manifest: dict[str, Any], rel: str) -> dict[str, Any] | None:
    return next((a for a in manifest.get("artifacts", []) if isinstance(a, dict) and a.get("path") == rel), None)


def trusted_manifest(
    redis_copies: list[dict[str, Any]], root: Path, site: str, rel: str, key: bytes | None
) -> tuple[dict[str, Any] | None, str]:
    """The manifest that vouches for ``rel``, or None with the reason none does.

    ``redis_copies``: the manifests of the site's Redis index that list ``rel``, newest first.
    Raises :class:`ManifestAltered` when a copy was edited.
    """
    name = rel.rsplit("/", 1)[-1]
    stamp = bench.stamp_of(name)
    side = read_side(root, site, stamp) if stamp else None
    if side is not None and artifact(side, rel) is None:
        side = None
    copies = [("the backup index in Redis", c) for c in redis_copies]
    if side is not None:
        copies.append((f"{site}/private/backups/{side_name(stamp or '')}", side))
    if not copies:
        return None, f"no manifest lists {rel}"
    if key:
        for where, copy in copies:
            valid = signature(copy, key)
            if valid is not True:
                state = "carries no signature" if valid is None else "has a signature that does not verify"
                raise ManifestAltered(
                    f"the manifest of {rel} in {where} {state} (JERP_MANIFEST_KEY): it was altered, or written "
                    "without the key; refusing to trust it"
                )
        return copies[0][1], "signed manifest"
    if side is None:
        return None, (f"only the backup index in Redis lists {rel}; its copy beside the files "
                      f"({side_name(stamp) if stamp else 'none for this file name'}) is missing, and without "
                      "JERP_MANIFEST_KEY one copy alone is not trusted")
    if not redis_copies:
        return None, (f"only {site}/private/backups/{side_name(stamp or '')} lists {rel}; the backup index in "
                      "Redis has no copy, and without JERP_MANIFEST_KEY one copy alone is not trusted")
    ours = artifact(redis_copies[0], rel)
    theirs = artifact(side, rel)
    if ours != theirs or canonical(redis_copies[0]) != canonical(side):
        raise ManifestAltered(
            f"the manifest of {rel} in the backup index in Redis differs from its copy beside the files "
            f"({site}/private/backups/{side_name(stamp or '')}): one of them was altered; refusing to trust it"
        )
    return redis_copies[0], "manifest (Redis and the copy beside the files agree)"


def confirm_recorded(manifest: dict[str, Any], root: Path, key: bytes | None) -> None:
    """A manifest read from a job record is the one the backup wrote: signed (with the key),
    or equal to its copy beside the files (without)."""
    site, stamp = manifest.get("site"), manifest.get("timestamp")
    if key:
        if signature(manifest, key) is not True:
            raise ManifestAltered(f"the recorded manifest of the backup {site} {stamp} does not carry a valid "
                                  "signature (JERP_MANIFEST_KEY); refusing to use it")
        return
    side = read_side(root, str(site), str(stamp))
    if side is None or canonical(side) != canonical(manifest):
        raise ManifestAltered(f"the recorded manifest of the backup {site} {stamp} differs from its copy beside "
                              f"the files ({site}/private/backups/{side_name(str(stamp))}); refusing to use it")
