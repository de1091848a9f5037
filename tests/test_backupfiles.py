"""Backup files opened by descriptor, staging copies, and manifests that do not rest on Redis
alone (signed with JERP_MANIFEST_KEY, or cross-checked with their copy beside the files)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from jerp_jobs.backupfiles import UnsafeBackupFile, check_archive, digest, open_backup_file, stage
from jerp_jobs.errors import CommandFailed
from jerp_jobs.manifests import ManifestAltered, seal, signature, trusted_manifest, write_side
from jerp_jobs.offsite import ChecksumMismatch
from tests.test_offsite import MiB, SITE, TS, client, make_backup, make_store, transfer_config  # noqa: F401

A, B = "a.example.com", "b.example.com"
KEY = b"k" * 32


def _dump(root: Path, site: str, name: str, text: bytes = b"CREATE TABLE `tabNote`;\n") -> str:
    folder = root / site / "private" / "backups"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(gzip.compress(text))
    return f"{site}/private/backups/{name}"


def test_a_plain_file_of_the_sites_folder_opens_and_hashes_by_descriptor(tmp_path: Path) -> None:
    rel = _dump(tmp_path, A, "20260101_000000-a-database.sql.gz")
    with open_backup_file(tmp_path, rel, sites=(A,), what="db") as opened:
        size, sha = digest(opened.fd)
        check_archive(opened.fd, "db", rel)
    data = (tmp_path / rel).read_bytes()
    assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("attack", ["file-symlink", "folder-symlink", "site-symlink", "hardlink", "other-site", "hidden"])
def test_links_and_other_sites_files_are_refused(tmp_path: Path, attack: str) -> None:
    theirs = _dump(tmp_path, B, "20260101_000000-b-database.sql.gz")
    ours = tmp_path / A / "private" / "backups"
    ours.mkdir(parents=True)
    name = "20260101_000000-a-database.sql.gz"
    rel = f"{A}/private/backups/{name}"
    if attack == "file-symlink":
        (ours / name).symlink_to(tmp_path / theirs)
        needle = "is a symbolic link"
    elif attack == "folder-symlink":
        ours.rmdir()
        ours.symlink_to(tmp_path / B / "private" / "backups")
        rel, needle = f"{A}/private/backups/{Path(theirs).name}", "backups is a symbolic link"
    elif attack == "site-symlink":
        (tmp_path / A / "private" / "backups").rmdir()
        (tmp_path / A / "private").rmdir()
        (tmp_path / A).rmdir()
        (tmp_path / A).symlink_to(tmp_path / B)
        rel, needle = f"{A}/private/backups/{Path(theirs).name}", f"{A} is a symbolic link"
    elif attack == "hardlink":
        os.link(tmp_path / theirs, ours / name)
        needle = "2 hard links"
    elif attack == "other-site":
        rel, needle = theirs, "not a file of the backup folder"
    else:
        (ours / ".hidden-database.sql.gz").write_bytes(b"x")
        rel, needle = f"{A}/private/backups/.hidden-database.sql.gz", "hidden file"
    with pytest.raises(UnsafeBackupFile, match=needle):
        open_backup_file(tmp_path, rel, sites=(A,), what="db")


def test_the_staging_copy_holds_the_descriptors_bytes_even_if_the_name_is_swapped(tmp_path: Path) -> None:
    rel = _dump(tmp_path, A, "20260101_000000-a-database.sql.gz", b"ours\n" * 1000)
    theirs = _dump(tmp_path, B, "20260101_000000-b-database.sql.gz", b"theirs\n")
    original = (tmp_path / rel).read_bytes()
    with open_backup_file(tmp_path, rel, sites=(A,), what="db") as opened:
        (tmp_path / rel).unlink()
        (tmp_path / rel).symlink_to(tmp_path / theirs)  # swapped after the open
        copy = stage(opened, "job1")
    try:
        staged = tmp_path / copy.rel
        assert staged.read_bytes() == original and copy.sha256 == hashlib.sha256(original).hexdigest()
        assert staged.name.startswith(".jerp-restore-job1-") and copy.in_place()
        assert oct(staged.stat().st_mode & 0o777) == "0o600"
        staged.unlink()
        staged.symlink_to(tmp_path / theirs)
        assert not copy.in_place()  # a swap of the staging name is noticed
    finally:
        copy.remove()
    assert not (tmp_path / copy.rel).exists()


@pytest.mark.parametrize(("kind", "data"), [("db", b""), ("db", b"not gzip"), ("public_files", b"not a tar")])
def test_damaged_archives_are_named(tmp_path: Path, kind: str, data: bytes) -> None:
    folder = tmp_path / A / "private" / "backups"
    folder.mkdir(parents=True)
    name = "x.sql.gz" if kind == "db" else "x.tar"
    (folder / name).write_bytes(data if data else b"")
    if kind == "db" and data == b"":
        (folder / name).write_bytes(gzip.compress(b"x" * 10000)[:40])  # truncated stream
    with open_backup_file(tmp_path, f"{A}/private/backups/{name}", sites=(A,), what=kind) as opened:
        with pytest.raises(CommandFailed, match="is damaged"):
            check_archive(opened.fd, kind, name)


def _manifest(rel: str, sha: str) -> dict[str, Any]:
    return {"site": A, "timestamp": "20260101_000000", "job_id": "j1",
            "artifacts": [{"kind": "database", "path": rel, "size": 1, "sha256": sha}]}


def test_without_a_key_redis_and_the_copy_beside_the_files_must_agree(tmp_path: Path) -> None:
    rel = _dump(tmp_path, A, "20260101_000000-a-database.sql.gz")
    good = _manifest(rel, "a" * 64)
    assert trusted_manifest([good], tmp_path, A, rel, None)[0] is None  # one copy alone: not trusted
    write_side(tmp_path, A, good)
    assert trusted_manifest([good], tmp_path, A, rel, None)[0] == good
    edited = _manifest(rel, "b" * 64)
    with pytest.raises(ManifestAltered, match="differs from its copy beside the files"):
        trusted_manifest([edited], tmp_path, A, rel, None)


def test_with_a_key_every_copy_must_carry_a_valid_signature(tmp_path: Path) -> None:
    rel = _dump(tmp_path, A, "20260101_000000-a-database.sql.gz")
    signed = seal(_manifest(rel, "a" * 64), KEY)
    assert signature(signed, KEY) is True and signature(_manifest(rel, "a" * 64), KEY) is None
    assert trusted_manifest([signed], tmp_path, A, rel, KEY)[0] == signed  # Redis alone, signed: enough
    forged = json.loads(json.dumps(signed))
    forged["artifacts"][0]["sha256"] = "b" * 64
    with pytest.raises(ManifestAltered, match="does not verify"):
        trusted_manifest([forged], tmp_path, A, rel, KEY)
    with pytest.raises(ManifestAltered, match="carries no signature"):
        trusted_manifest([_manifest(rel, "a" * 64)], tmp_path, A, rel, KEY)


def test_offsite_manifest_is_signed_and_an_edited_one_is_refused(
    client: Any, s3_bucket: str, transfer_config: Any, tmp_path: Path
) -> None:
    sites = tmp_path / "sites"
    local = make_backup(sites, big=MiB)
    store = make_store(client, s3_bucket, transfer_config, manifest_key=KEY)
    offsite = store.upload_backup(local, sites)
    assert signature(offsite, KEY) is True
    key = f"backups/{SITE}/2025/03/14/{TS}/manifest.json"
    body = json.loads(client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    body["artifacts"][0]["sha256"] = "0" * 64
    client.put_object(Bucket=s3_bucket, Key=key, Body=json.dumps(body).encode())
    with pytest.raises(ChecksumMismatch, match="does not verify"):
        store.download_backup(SITE, TS, tmp_path / "restore")
    del body["hmac"]
    client.put_object(Bucket=s3_bucket, Key=key, Body=json.dumps(body).encode())
    with pytest.raises(ChecksumMismatch, match="carries no signature"):
        store.download_backup(SITE, TS, tmp_path / "restore", require_signature=True)
    assert not (tmp_path / "restore").exists() or not any((tmp_path / "restore").iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_a_root_worker_leaves_its_files_to_the_bench_user(tmp_path: Path) -> None:
    """The copy of a manifest beside the files, and what an off-site fetch downloads, belong to
    the owner of the site's folder (the bench's user), so Frappe can rewrite and remove them."""
    import pwd

    from jerp_jobs.backupfiles import give_to_owner

    nobody = pwd.getpwnam("nobody")
    rel = _dump(tmp_path, A, "20260101_000000-a-database.sql.gz")
    for folder in (tmp_path / A, tmp_path / A / "private", tmp_path / A / "private" / "backups"):
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    side = tmp_path / write_side(tmp_path, A, _manifest(rel, "a" * 64))
    assert (side.stat().st_uid, side.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)
    downloaded = tmp_path / A / "private" / "backups" / "fetched.sql.gz"
    downloaded.write_bytes(b"x")
    assert downloaded.stat().st_uid == 0
    give_to_owner(downloaded, tmp_path / A)
    assert downloaded.stat().st_uid == nobody.pw_uid
    elsewhere = tmp_path / "root-owned"
    elsewhere.mkdir()
    link = tmp_path / A / "link"
    link.symlink_to(elsewhere)
    give_to_owner(link, tmp_path / A)  # the link itself, never what it points to
    assert elsewhere.stat().st_uid == 0 and link.lstat().st_uid == nobody.pw_uid
