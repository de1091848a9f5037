"""Backup files read and written by the worker through the sites folder, safely.

A restore reads only regular files that resolve inside the site's own backup folder
(``<sites>/<site>/private/backups``): every folder on the way is opened without following
symbolic links, the file itself is opened once (``O_NOFOLLOW``) and judged by its descriptor
(a regular file with one link, on the folder's device, owned by the bench user or by the
worker), and its bytes are hashed and checked from that same descriptor. A symlink or a hard
link to another site's dump is refused, wherever it sits in the path.

Before bench reads a file, its verified bytes are copied from the descriptor into a staging
file private to the job (``.jerp-restore-<job>-<token>-<name>``, in the same folder, created
exclusively), hashed while copied; bench is handed that path, and the staging file is removed
afterwards. Swapping the operator's file after the check changes nothing bench reads.

Backups run into a folder of their own per attempt (``<site>/private/.jerp-backup-attempts/
<job>-<what>-<token>``) and their files are moved into the backup folder only once bench
has finished: the partial files of a failed or killed attempt never sit among the backups,
and the next backup of the site removes whatever an earlier attempt left there.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import secrets
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jerp_jobs.errors import CommandFailed, ConfigError, InvalidInput
from jerp_jobs.sites import sites_dir

BACKUPS = ("private", "backups")
ATTEMPTS = ("private", ".jerp-backup-attempts")
STAGE_PREFIX = ".jerp-restore-"
CHUNK = 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeBackupFile(InvalidInput):
    """A backup file that is not a plain file of the site's own backup folder."""


def sites_root(settings: Any) -> Path | None:
    """The sites folder as the worker sees it, or None when it is not configured or not there."""
    try:
        root = sites_dir(settings)
    except ConfigError:
        return None
    return root if root.is_dir() else None


def require_sites_root(settings: Any, why: str) -> Path:
    root = sites_dir(settings)
    if not root.is_dir():
        raise ConfigError("JERP_SITES_DIR", f"names {root}, which is not a folder; {why}")
    return root


def split_backup_path(rel: str, sites: tuple[str, ...]) -> tuple[str, str]:
    """``<site>/private/backups/<name>`` -> (site, name); the site must be one of ``sites``."""
    parts = rel.split("/")
    if len(parts) != 4 or tuple(parts[1:3]) != BACKUPS or parts[0] not in sites or parts[3] in ("", ".", ".."):
        raise UnsafeBackupFile(f"{rel} is not a file of the backup folder of {' or '.join(sites)}")
    return parts[0], parts[3]


def open_dir(root: Path, parts: tuple[str, ...], *, what: str) -> int:
    """A descriptor of ``root/parts...``, no component followed if it is a symbolic link."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    walked = []
    try:
        for part in parts:
            walked.append(part)
            shown = "/".join(walked)
            try:
                info = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                raise UnsafeBackupFile(f"{what}: the folder {shown} does not exist") from None
            if stat.S_ISLNK(info.st_mode):
                raise UnsafeBackupFile(f"{what}: {shown} is a symbolic link; backup files are read only from "
                                       "the site's own folder, never through a link")
            if not stat.S_ISDIR(info.st_mode):
                raise UnsafeBackupFile(f"{what}: {shown} is not a folder")
            try:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise UnsafeBackupFile(f"{what}: cannot open the folder {shown}: {exc.strerror}") from None
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class OpenedFile:
    """A backup file opened once; every check and read goes through ``fd``."""

    rel: str
    name: str
    fd: int
    folder_fd: int
    info: os.stat_result
    folder: os.stat_result

    def close(self) -> None:
        for fd in (self.fd, self.folder_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> OpenedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_backup_file(root: Path, rel: str, *, sites: tuple[str, ...], what: str, staged: bool = False) -> OpenedFile:
    """Open ``rel`` (relative to the sites folder) for reading, refusing anything but a regular
    file of one of ``sites``' own backup folders, with a single link, on the folder's device."""
    site, name = split_backup_path(rel, sites)
    if name.startswith(".") and not (staged and name.startswith(STAGE_PREFIX)):
        raise UnsafeBackupFile(f"{what}: {rel} is a hidden file, not a backup")
    folder_fd = open_dir(root, (site, *BACKUPS), what=what)
    fd = -1
    try:
        folder = os.fstat(folder_fd)
        try:
            seen = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise UnsafeBackupFile(f"{what}: {rel} does not exist") from None
        if stat.S_ISLNK(seen.st_mode):
            raise UnsafeBackupFile(f"{what}: {rel} is a symbolic link; a restore reads only regular files of "
                                   f"{site}/private/backups, never a link (it could name another site's backup)")
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeBackupFile(f"{what}: {rel} became a symbolic link while being opened") from None
            raise UnsafeBackupFile(f"{what}: cannot open {rel}: {exc.strerror}") from None
        info = os.fstat(fd)
        _judge(info, folder, rel, what)
        return OpenedFile(rel=rel, name=name, fd=fd, folder_fd=folder_fd, info=info, folder=folder)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        os.close(folder_fd)
        raise


def _judge(info: os.stat_result, folder: os.stat_result, rel: str, what: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeBackupFile(f"{what}: {rel} is not a regular file")
    if info.st_nlink != 1:
        raise UnsafeBackupFile(
            f"{what}: {rel} has {info.st_nlink} hard links; a backup file has exactly one name, and a second "
            "one may be another site's backup: copy the file instead of linking it"
        )
    if info.st_dev != folder.st_dev:
        raise UnsafeBackupFile(f"{what}: {rel} is on another device than its folder")
    if info.st_uid not in (folder.st_uid, os.geteuid()):
        raise UnsafeBackupFile(
            f"{what}: {rel} is owned by uid {info.st_uid}, not by the bench user (uid {folder.st_uid}, the owner "
            "of the backup folder)"
        )


def check_backup_path(root: Path, rel: str, *, site: str, what: str) -> None:
    """The enqueue-time check: ``rel`` opens as a plain file of the site's backup folder."""
    open_backup_file(root, rel, sites=(site,), what=what).close()


def digest(fd: int) -> tuple[int, str]:
    """Size and SHA-256 of the whole file behind ``fd`` (read with pread: the offset is untouched)."""
    sha = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, CHUNK, offset):
        sha.update(chunk)
        offset += len(chunk)
    return offset, sha.hexdigest()


def check_archive(fd: int, kind: str, rel: str) -> None:
    """The dump must be a complete gzip stream, a files archive a readable tar (read via ``fd``)."""
    reader = os.fdopen(os.dup(fd), "rb")
    try:
        reader.seek(0)
        if kind == "db":
            if reader.read(2) != b"\x1f\x8b":
                raise _damaged(kind, rel, "not a gzip stream")
            reader.seek(0)
            with gzip.GzipFile(fileobj=reader, mode="rb") as stream:
                while stream.read(CHUNK):
                    pass
        else:
            with tarfile.open(fileobj=reader, mode="r:*") as archive:
                for _ in archive:
                    pass
    except CommandFailed:
        raise
    except (EOFError, OSError, zlib.error, tarfile.TarError) as exc:
        raise _damaged(kind, rel, str(exc) or type(exc).__name__) from None
    finally:
        reader.close()


def _damaged(kind: str, rel: str, why: str) -> CommandFailed:
    text = "not a complete gzip stream" if kind == "db" else "not a readable tar"
    return CommandFailed(f"{kind.replace('_', ' ')}: {rel} is damaged ({text}: {why})", exit_code=1)


@dataclass
class StagedFile:
    """A private copy of a verified backup file, for bench to read."""

    rel: str
    name: str
    fd: int
    folder_fd: int
    size: int
    sha256: str

    def in_place(self) -> bool:
        """The staging name still refers to the copy that was written (nobody swapped it)."""
        try:
            seen = os.stat(self.name, dir_fd=self.folder_fd, follow_symlinks=False)
        except OSError:
            return False
        mine = os.fstat(self.fd)
        return (seen.st_dev, seen.st_ino) == (mine.st_dev, mine.st_ino) and stat.S_ISREG(seen.st_mode)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.name, dir_fd=self.folder_fd)
        for fd in (self.fd, self.folder_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def stage(opened: OpenedFile, job_id: str) -> StagedFile:
    """Copy the opened file's bytes, from its descriptor, into a new staging file beside it."""
    name = f"{STAGE_PREFIX}{job_id}-{secrets.token_hex(4)}-{opened.name}"[:255]
    folder_fd = os.dup(opened.folder_fd)
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=folder_fd)
    except BaseException:
        os.close(folder_fd)
        raise
    staged = StagedFile(rel=opened.rel.rsplit("/", 1)[0] + "/" + name, name=name, fd=fd, folder_fd=folder_fd,
                        size=0, sha256="")
    try:
        _readable_by_bench(fd, opened.folder)
        sha = hashlib.sha256()
        offset = 0
        while chunk := os.pread(opened.fd, CHUNK, offset):
            sha.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
            offset += len(chunk)
        os.fsync(fd)
        staged.size, staged.sha256 = offset, sha.hexdigest()
    except BaseException:
        staged.remove()
        raise
    return staged


def _readable_by_bench(fd: int, folder: os.stat_result) -> None:
    """The bench user (the backup folder's owner) must read what the worker writes: when the
    worker is that user, mode 0600 is enough; as root, the file is given to that user."""
    euid = os.geteuid()
    if euid == folder.st_uid:
        return
    if euid == 0:
        os.fchown(fd, folder.st_uid, folder.st_gid)
    else:
        os.fchmod(fd, 0o644)


def give_to_owner(path: Path | str, folder: Path | str) -> None:
    """A file a worker running as root wrote into the bench belongs to the owner of ``folder``
    (the bench's user), never to root: Frappe, as that user, must be able to open, rewrite and
    remove what the platform leaves in its folders. A link is never followed."""
    if os.geteuid() != 0:
        return
    owner = os.stat(folder)
    if owner.st_uid != 0:
        os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)


def remove_staged(root: Path, site: str, job_id: str) -> list[str]:
    """Remove the staging files (and what bench unpacked from them) an earlier attempt of this
    job left behind."""
    removed = []
    prefix = f"{STAGE_PREFIX}{job_id}-"
    folder_fd = open_dir(root, (site, *BACKUPS), what=f"restore of {site}")
    try:
        for name in os.listdir(folder_fd):
            if name.startswith(prefix):
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=folder_fd)
                    removed.append(name)
    finally:
        os.close(folder_fd)
    return removed


# -- backup attempts -------------------------------------------------------------------------


def attempt_folder(root: Path, site: str, job_id: str, what: str) -> tuple[str, list[str]]:
    """Make a new attempt folder for a backup of ``site`` (relative path, from the sites folder)
    and remove those of earlier attempts; returns the new one and the names removed."""
    private = open_dir(root, (site, "private"), what=f"backup of {site}")
    try:
        owner = os.fstat(private)
        try:
            os.mkdir(ATTEMPTS[1], 0o700, dir_fd=private)
            if os.geteuid() == 0 and owner.st_uid != 0:
                os.chown(ATTEMPTS[1], owner.st_uid, owner.st_gid, dir_fd=private, follow_symlinks=False)
        except FileExistsError:
            pass
        removed = sweep_attempts(root, site)
        name = f"{job_id}-{what}-{secrets.token_hex(4)}"
        attempts = open_dir(root, (site, *ATTEMPTS), what=f"backup of {site}")
        try:
            os.mkdir(name, 0o700, dir_fd=attempts)
            if os.geteuid() == 0 and owner.st_uid != 0:
                os.chown(name, owner.st_uid, owner.st_gid, dir_fd=attempts, follow_symlinks=False)
        finally:
            os.close(attempts)
    finally:
        os.close(private)
    return f"{site}/{'/'.join(ATTEMPTS)}/{name}", removed


def sweep_attempts(root: Path, site: str, *, keep: str | None = None) -> list[str]:
    """Remove every attempt folder of the site but ``keep`` (a job owns its site: any other
    attempt folder belongs to an attempt that failed or was killed)."""
    folder = root / site / ATTEMPTS[0] / ATTEMPTS[1]
    if folder.is_symlink() or not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if entry.name == keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    return removed


def names_taken(root: Path, site: str, names: list[str]) -> list[str]:
    """Those of ``names`` that already exist in the site's backup folder (bench names a set by
    the second it started: a second backup in the same second gets the same names)."""
    backups = open_dir(root, (site, *BACKUPS), what=f"backup of {site}")
    taken = []
    try:
        for name in names:
            try:
                os.stat(name, dir_fd=backups, follow_symlinks=False)
            except FileNotFoundError:
                continue
            taken.append(name)
    finally:
        os.close(backups)
    return taken


def move_into_backups(root: Path, site: str, attempt_rel: str, names: list[str]) -> None:
    """Move the finished files of an attempt into the site's backup folder (never replacing one)."""
    attempt = open_dir(root, tuple(attempt_rel.split("/")), what=f"backup of {site}")
    backups = open_dir(root, (site, *BACKUPS), what=f"backup of {site}")
    try:
        for name in names:
            info = os.stat(name, dir_fd=attempt, follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode):
                raise UnsafeBackupFile(f"backup of {site}: {attempt_rel}/{name} is not a regular file")
            try:
                os.stat(name, dir_fd=backups, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                raise CommandFailed(f"backup of {site}: {site}/private/backups/{name} already exists; not replacing it",
                                    exit_code=1)
            os.rename(name, name, src_dir_fd=attempt, dst_dir_fd=backups)
    finally:
        os.close(attempt)
        os.close(backups)


def free_space(path: Path) -> tuple[int, int]:
    """Bytes available to unprivileged writers, and the size, of the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
