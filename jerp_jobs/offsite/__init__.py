"""Off-site copies of site backups in S3 (or an S3-compatible store).

Frappe deletes local backups after about a day; the copy made here is the backup that
counts. :class:`~jerp_jobs.offsite.s3.OffsiteStore` uploads the artifacts of a local backup
manifest (optionally encrypted with age), verifies every object from S3, then writes
``manifest.json`` last: its presence marks a complete, verified backup.

Importing this package is cheap: boto3 and pyrage are imported only when a store is used.

    JerpError
    └── OffsiteError           an S3 call failed, or a backup is unusable (names bucket/key)
        ├── BackupNotFound     no manifest for that site and timestamp
        ├── ChecksumMismatch   bytes differ from what the manifest promises
        └── DecryptionFailed   age could not decrypt an artifact
"""

from __future__ import annotations

from typing import Any

from jerp_jobs.errors import JerpError, TransientError


class OffsiteError(JerpError):
    """An off-site operation failed; the message names the bucket and key, never credentials."""

    def __init__(self, message: str, *, bucket: str | None = None, key: str | None = None, **fields: object) -> None:
        super().__init__(message, bucket=bucket, key=key, **fields)
        self.bucket = bucket
        self.key = key


class OffsiteUnavailable(OffsiteError, TransientError):
    """S3 could not be reached or answered with a server error: worth trying again later."""


class BackupNotFound(OffsiteError):
    pass


class ChecksumMismatch(OffsiteError):
    def __init__(
        self,
        message: str,
        *,
        bucket: str | None = None,
        key: str | None = None,
        expected: object = None,
        actual: object = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message, bucket=bucket, key=key, expected=expected, actual=actual, path=path)
        self.expected = expected
        self.actual = actual
        self.path = path


class DecryptionFailed(OffsiteError):
    pass


def offsite_stamp(manifest: dict[str, Any]) -> str:
    """The ``YYYYMMDD_HHMMSS`` in UTC that names a backup off-site (its S3 folder) and orders it
    in time: ``utc_timestamp``. A manifest written before that field existed has only
    ``timestamp``, bench's stamp, which was then taken to be UTC."""
    return str(manifest.get("utc_timestamp") or manifest["timestamp"])


__all__ = ["offsite_stamp", "BackupNotFound", "ChecksumMismatch", "DecryptionFailed", "OffsiteError"]
