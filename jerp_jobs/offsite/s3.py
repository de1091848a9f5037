"""OffsiteStore: verified off-site copies of site backups in S3.

Layout, one folder per backup::

    <prefix>/<site>/<YYYY>/<MM>/<DD>/<timestamp>/<file name>[.age]
    <prefix>/<site>/<YYYY>/<MM>/<DD>/<timestamp>/manifest.json

``<timestamp>`` and the date folders are UTC: the backup's ``utc_timestamp``
(:func:`jerp_jobs.offsite.offsite_stamp`), whatever the site's time zone; the file names keep
bench's own names, stamped in the site's local time.

``manifest.json`` is written last, once every artifact is verified, and deleted first: a
backup without it is incomplete and is never listed.

Uploads stream from disk through s3transfer (classic client, multipart above the threshold)
as a non-seekable stream, so memory stays bounded by the in-memory parts of the transfer
config, and every byte sent passes through a :class:`~jerp_jobs.offsite.crypto.DigestingReader`:

- the local file's SHA-256 is re-checked against the local manifest at the end of the stream;
  a mismatch raises inside the transfer, which aborts it before it completes;
- the stored bytes (the ciphertext when encrypted) are hashed whole and per part.

Verification (sound against real S3 and moto): every object is uploaded with
``ChecksumAlgorithm=SHA256`` — botocore sends the SHA-256 of each part, S3 rejects a part whose
bytes do not match it, and reports ``ChecksumSHA256`` for the object: the plain SHA-256 for a
single-part object, or for a multipart object the composite ``base64(sha256(d1 || … || dN))-N``
of the raw part digests. After the upload ``head_object(ChecksumMode="ENABLED")`` must report the
size we streamed and exactly the checksum computed locally from the same bytes and part
boundaries (parts are ``multipart_chunksize`` long, the part size s3transfer uses for a stream of
unknown size), and the part count must match. moto reports the composite value without the
``-N`` suffix; the part count then comes from the multipart ETag (``"<hex>-N"``). A store that
reports no SHA-256 checksum fails the upload: it cannot be verified. A failed upload removes
what it wrote (and aborts its multipart uploads). Downloads recompute the stored SHA-256 before
decrypting and the plain SHA-256 after.

boto3 is imported lazily; credentials come from the standard AWS_* environment (or an instance
role) and are never passed around, logged or put into errors.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import re
import secrets
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from jerp_jobs.errors import ConfigError, InvalidInput, JerpError
from jerp_jobs.log import Redactor, get_logger
from jerp_jobs.manifests import canonical, manifest_key, seal, signature
from jerp_jobs.offsite import BackupNotFound, ChecksumMismatch, OffsiteError, OffsiteUnavailable, offsite_stamp
from jerp_jobs.offsite.crypto import (
    IDENTITY_VARIABLE,
    DigestingReader,
    EncryptingStream,
    decrypt_file,
    file_sha256,
    load_identities,
    parse_recipients,
)
from jerp_jobs.sites import validate_site_name

log = get_logger(__name__)

MiB = 1024 * 1024
MANIFEST_NAME = "manifest.json"
#: ``<prefix>/<site>/legal-hold.json``: the site was offboarded; its final backup is kept until ``until``
LEGAL_HOLD_NAME = "legal-hold.json"
#: what :meth:`OffsiteStore._read_json` answers for an object that does not exist
MISSING = object()
MANIFEST_FORMAT = 1
_PART_BUDGET = 9_000  # S3 allows 10,000 parts; keep room for the ciphertext-size estimate
_TIMESTAMP = re.compile(r"(\d{4})(\d{2})(\d{2})_\d{6}")
_MANIFEST_KEY = re.compile(r"\d{4}/\d{2}/\d{2}/(\d{8}_\d{6})/manifest\.json")
_URL_USERINFO = Redactor()


def default_transfer_config() -> Any:
    """8 MiB parts, 4 threads, at most 4 parts in memory: about 40 MiB per upload."""
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(
        multipart_threshold=8 * MiB,
        multipart_chunksize=8 * MiB,
        max_concurrency=4,
        preferred_transfer_client="classic",
    )
    config.max_in_memory_upload_chunks = 4  # not a constructor argument of boto3's TransferConfig
    return config


def make_client(*, endpoint_url: str | None = None, region: str | None = None) -> Any:
    """An S3 client; credentials are found by boto3 itself (AWS_* environment, profile, role)."""
    import boto3
    from botocore.config import Config

    # The body is not hashed again for SigV4: every part carries its signed ChecksumSHA256
    # (the store's own digest of the bytes it sends), which S3 checks.
    s3_options: dict[str, Any] = {"payload_signing_enabled": False}
    if endpoint_url:
        s3_options["addressing_style"] = "path"
    config = Config(retries={"mode": "standard", "max_attempts": 5}, s3=s3_options)
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


class OffsiteStore:
    """Upload, verify, list, download and delete off-site copies of site backups."""

    def __init__(
        self,
        client: Any,
        *,
        bucket: str,
        prefix: str,
        sse: str | None = None,
        kms_key_id: str | None = None,
        age_recipients: Iterable[str] = (),
        transfer_config: Any = None,
        identity_file: Path | None = None,
        manifest_key: bytes | None = None,
    ) -> None:
        if sse not in (None, "AES256", "aws:kms"):
            raise ConfigError("JERP_S3_SSE", f"must be AES256 or aws:kms, not {sse!r}")
        if kms_key_id and sse != "aws:kms":
            raise ConfigError("JERP_S3_KMS_KEY_ID", "is set but JERP_S3_SSE is not aws:kms")
        if not bucket:
            raise ConfigError("JERP_S3_BUCKET", "is not set; off-site backups need a bucket")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.sse = sse
        self.kms_key_id = kms_key_id
        self._recipients = parse_recipients(age_recipients)
        self.transfer_config = transfer_config if transfer_config is not None else default_transfer_config()
        self.identity_file = identity_file
        #: HMAC key of manifest.json (``jerp_jobs.manifests``); None: manifests are not signed
        self.manifest_key = manifest_key
        #: the readers of the uploads in progress, by key: their part digests go with UploadPart
        self._sending: dict[str, DigestingReader] = {}
        client.meta.events.register("provide-client-params.s3.UploadPart", self._supply_part_digest)

    def _supply_part_digest(self, params: dict[str, Any], **_: Any) -> None:
        """UploadPart carries the SHA-256 the store computed of the part as it read it (S3
        checks the bytes against it), so botocore does not hash the part a second time. A part
        whose digest is not complete yet is left to botocore."""
        reader = self._sending.get(params.get("Key", ""))
        number = params.get("PartNumber")
        if reader is not None and isinstance(number, int) and 0 < number <= len(reader.part_digests):
            params["ChecksumSHA256"] = base64.b64encode(reader.part_digests[number - 1]).decode()

    @classmethod
    def from_settings(cls, settings: Any, *, client: Any = None, transfer_config: Any = None) -> OffsiteStore:
        if not settings.s3_bucket:
            raise ConfigError("JERP_S3_BUCKET", "is not set; off-site backups need a bucket")
        if client is None:
            client = make_client(endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)
        return cls(
            client,
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            sse=settings.s3_sse,
            kms_key_id=settings.s3_kms_key_id,
            age_recipients=settings.backup_age_recipients,
            transfer_config=transfer_config,
            identity_file=settings.backup_age_identity_file,
            manifest_key=manifest_key(settings),
        )

    @property
    def encrypted(self) -> bool:
        return bool(self._recipients)

    @property
    def recipients(self) -> list[str]:
        """The public keys every new upload is encrypted to."""
        return [public for public, _ in self._recipients]

    # Keys

    def backup_prefix(self, site: str, timestamp: str) -> str:
        """``<prefix>/<site>/<YYYY>/<MM>/<DD>/<timestamp>`` (no trailing slash)."""
        site = validate_site_name(site)
        match = _TIMESTAMP.fullmatch(str(timestamp))
        if not match:
            raise InvalidInput(f"invalid backup timestamp {timestamp!r}: expected YYYYMMDD_HHMMSS")
        year, month, day = match.groups()
        return self._join(site, year, month, day, timestamp)

    def _site_prefix(self, site: str) -> str:
        return self._join(validate_site_name(site)) + "/"

    def _join(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def _url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # Upload

    def upload_backup(self, manifest: dict[str, Any], sites_dir: Path) -> dict[str, Any]:
        """Upload and verify every artifact of a local backup manifest, then its manifest.json.

        Returns the off-site manifest (``verified: true``). A backup already complete off-site
        with the same content is returned as is; one with different content is refused.
        """
        site, timestamp = manifest["site"], offsite_stamp(manifest)
        base = self.backup_prefix(site, timestamp)
        names = [_artifact_name(a["path"]) for a in manifest["artifacts"]]
        if len(set(names)) != len(names):
            raise InvalidInput(f"the backup {site} {timestamp} lists two artifacts with the same file name")
        existing = self._read_manifest(f"{base}/{MANIFEST_NAME}")
        if existing is not None:
            if _same_content(existing, manifest):
                log.info("offsite.already_uploaded", bucket=self.bucket, key=f"{base}/{MANIFEST_NAME}")
                return existing
            raise OffsiteError(
                f"{self._url(base + '/' + MANIFEST_NAME)} already holds a different backup of {site} at {timestamp}",
                bucket=self.bucket,
                key=f"{base}/{MANIFEST_NAME}",
            )
        attempted: list[str] = []
        entries = []
        try:
            for artifact, name in zip(manifest["artifacts"], names):
                key = f"{base}/{name}" + (".age" if self.encrypted else "")
                attempted.append(key)
                entries.append(self._upload_artifact(artifact, name, key, Path(sites_dir)))
            offsite = seal(self._offsite_manifest(manifest, entries), self.manifest_key)
            attempted.insert(0, f"{base}/{MANIFEST_NAME}")
            self._put_manifest(f"{base}/{MANIFEST_NAME}", offsite)
        except BaseException:
            self._discard(attempted)
            raise
        log.info("offsite.uploaded", bucket=self.bucket, key=f"{base}/{MANIFEST_NAME}", artifacts=len(entries))
        return offsite

    def _upload_artifact(self, artifact: dict[str, Any], name: str, key: str, sites_dir: Path) -> dict[str, Any]:
        path = sites_dir / artifact["path"]
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise OffsiteError(
                f"cannot read the local backup file {path}: {exc.strerror}", bucket=self.bucket, key=key
            ) from exc
        if size != artifact["size"]:
            raise ChecksumMismatch(
                f"the local backup file {path} has {size} bytes, its manifest says {artifact['size']}; "
                f"not uploading it to {self._url(key)}",
                bucket=self.bucket, key=key, expected=artifact["size"], actual=size, path=str(path),
            )
        stored_estimate = _age_size_bound(size, len(self._recipients)) if self.encrypted else size
        config, part_size = self._transfer_for(stored_estimate)

        def check_plain(reader: DigestingReader) -> None:
            if reader.size != artifact["size"] or reader.sha256 != artifact["sha256"]:
                raise ChecksumMismatch(
                    f"the local backup file {path} changed: read {reader.size} bytes with SHA-256 "
                    f"{reader.sha256}, its manifest says {artifact['size']} bytes, {artifact['sha256']}; "
                    f"upload to {self._url(key)} aborted",
                    bucket=self.bucket, key=key, expected=artifact["sha256"], actual=reader.sha256, path=str(path),
                )

        extra = self._extra_args()
        with open(path, "rb") as handle:
            source: Any = None
            if self.encrypted:
                plain = DigestingReader(handle, on_eof=check_plain)
                source = EncryptingStream(plain, [r for _, r in self._recipients])
                stored = DigestingReader(source, part_size=part_size)
            else:  # the same bytes: one reader hashes them whole and per part
                stored = plain = DigestingReader(handle, part_size=part_size, on_eof=check_plain)
            self._sending[key] = stored
            try:
                with self._translate("upload", key):
                    self.client.upload_fileobj(stored, self.bucket, key, ExtraArgs=extra, Config=config)
            finally:
                self._sending.pop(key, None)
                if source is not None:
                    source.close()
        if not (plain.eof and stored.eof):
            raise OffsiteError(f"the upload of {self._url(key)} ended before its source did", bucket=self.bucket, key=key)
        parts = self._verify_object(key, stored.size, stored)
        log.info("offsite.artifact_verified", bucket=self.bucket, key=key, size=stored.size, parts=parts)
        return {
            "kind": artifact["kind"],
            "name": name,
            "key": key,
            "size": artifact["size"],
            "sha256": artifact["sha256"],
            "stored_size": stored.size,
            "stored_sha256": stored.sha256,
            "stored_parts": parts,
        }

    def _offsite_manifest(self, manifest: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
        offsite: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "site": manifest["site"],
            "timestamp": manifest["timestamp"],
            "taken_at": manifest.get("taken_at"),
            "uploaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "job_id": manifest.get("job_id"),
            "with_files": manifest.get("with_files"),
            "encrypted": self.encrypted,
            "recipients": self.recipients,
            "sse": self.sse,
            "artifacts": entries,
            "verified": True,
        }
        for optional in ("apps", "apps_source", "stats", "time_zone", "utc_timestamp", "taken_at_utc",
                         "taken_at_local", "finished_at_utc", "pitr"):
            if optional in manifest:
                offsite[optional] = manifest[optional]
        return offsite

    def _put_manifest(self, key: str, offsite: dict[str, Any]) -> None:
        body = json.dumps(offsite, indent=2, sort_keys=True).encode()
        args = self._extra_args()
        with self._translate("upload", key):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json", **args)
        sent = DigestingReader(io.BytesIO(body))
        sent.read()
        self._verify_object(key, len(body), sent)

    def _extra_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"ChecksumAlgorithm": "SHA256"}
        if self.sse:
            args["ServerSideEncryption"] = self.sse
        if self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args

    def _transfer_for(self, stored_size: int) -> tuple[Any, int]:
        """The transfer config for an object of about ``stored_size`` bytes, and its part size."""
        from s3transfer.utils import ChunksizeAdjuster

        base = self.transfer_config
        chunk = base.multipart_chunksize
        needed = -(-stored_size // _PART_BUDGET)
        if needed > chunk:
            chunk = -(-needed // MiB) * MiB
        part_size = ChunksizeAdjuster().adjust_chunksize(chunk, None)
        if part_size == base.multipart_chunksize:
            return base, part_size
        config = copy.copy(base)
        config.multipart_chunksize = part_size
        return config, part_size

    def _verify_object(self, key: str, size: int, sent: DigestingReader) -> int:
        """head_object must report ``size`` and the SHA-256 checksum of the bytes ``sent``.

        Returns the number of parts S3 reports (1 for a single-part object).
        """
        with self._translate("verify", key):
            head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        if head.get("ContentLength") != size:
            raise ChecksumMismatch(
                f"{self._url(key)} holds {head.get('ContentLength')} bytes after upload, {size} were sent",
                bucket=self.bucket, key=key, expected=size, actual=head.get("ContentLength"),
            )
        reported = head.get("ChecksumSHA256")
        if not reported:
            raise OffsiteError(
                f"S3 reports no SHA-256 checksum for {self._url(key)}: the upload cannot be verified "
                "(the store must support additional checksums)",
                bucket=self.bucket, key=key,
            )
        value, parts = _parse_checksum(reported, head)
        if parts is None:
            expected = sent.sha256_b64
            matches = value == expected
        else:
            expected = f"{sent.composite_b64}-{len(sent.part_digests)}"
            matches = f"{value}-{parts}" == expected
        if not matches:
            raise ChecksumMismatch(
                f"{self._url(key)} has SHA-256 checksum {reported} in S3, the bytes sent give {expected}",
                bucket=self.bucket, key=key, expected=expected, actual=reported,
            )
        if self.sse and head.get("ServerSideEncryption") != self.sse:
            raise OffsiteError(
                f"{self._url(key)} is stored with server-side encryption "
                f"{head.get('ServerSideEncryption')!r}, {self.sse!r} was requested",
                bucket=self.bucket, key=key,
            )
        return parts or 1

    def _discard(self, keys: list[str]) -> None:
        """Best effort: remove the objects and open multipart uploads of a failed upload."""
        if not keys:
            return
        try:
            self._delete_keys(keys)
            self._abort_uploads(os.path.commonprefix(keys), set(keys))
        except JerpError as exc:
            log.warning("offsite.cleanup_failed", bucket=self.bucket, keys=keys, error=str(exc))

    # Read

    def sites(self) -> list[str]:
        """Every site with a folder under the prefix (also sites no longer in the bench); areas
        of the store that are no site (``_binlogs``: no site name starts with ``_``) are not listed."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        found = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix,
                                                                          Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                name = common["Prefix"][len(prefix):].rstrip("/")
                if not name.startswith("_"):
                    found.append(name)
        return sorted(found)

    def list_backups(self, site: str) -> list[dict[str, Any]]:
        """Manifests of the complete backups of ``site``, newest first."""
        return [self._load_manifest(key) for _, key in self._manifest_keys(site)]

    def latest(self, site: str) -> dict[str, Any] | None:
        """The newest complete backup of ``site``, or None."""
        keys = self._manifest_keys(site)
        return self._load_manifest(keys[0][1]) if keys else None

    def get_manifest(self, site: str, timestamp: str) -> dict[str, Any]:
        key = f"{self.backup_prefix(site, timestamp)}/{MANIFEST_NAME}"
        manifest = self._read_manifest(key)
        if manifest is None:
            raise BackupNotFound(
                f"no complete off-site backup of {site} at {timestamp} ({self._url(key)} does not exist)",
                bucket=self.bucket, key=key,
            )
        return manifest

    def _manifest_keys(self, site: str) -> list[tuple[str, str]]:
        root = self._site_prefix(site)
        found = []
        for key in self._keys_under(root):
            match = _MANIFEST_KEY.fullmatch(key[len(root):])
            if match:
                found.append((match[1], key))
        return sorted(found, reverse=True)

    def _load_manifest(self, key: str) -> dict[str, Any]:
        manifest = self._read_manifest(key)
        if manifest is None:
            raise BackupNotFound(f"{self._url(key)} disappeared while being read", bucket=self.bucket, key=key)
        return manifest

    def _read_json(self, key: str) -> Any:
        """The JSON value at ``key``, or :data:`MISSING` when there is no such object; OffsiteError
        when it is not JSON."""
        with self._translate("read", key, missing_ok=True) as missing:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        if missing:
            return MISSING
        try:
            return json.loads(body)
        except ValueError as exc:
            raise OffsiteError(f"{self._url(key)} is not valid JSON", bucket=self.bucket, key=key) from exc

    def _read_manifest(self, key: str) -> dict[str, Any] | None:
        manifest = self._read_json(key)
        if manifest is MISSING:
            return None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), list):
            raise OffsiteError(f"{self._url(key)} is not a backup manifest", bucket=self.bucket, key=key)
        return manifest

    # Download

    def download_backup(
        self,
        site: str,
        timestamp: str,
        dest_dir: Path,
        *,
        identity_file: Path | None = None,
        chosen: dict[str, Any] | None = None,
        require_signature: bool = False,
        kinds: Collection[str] | None = None,
    ) -> dict[str, Path]:
        """Download, verify and decrypt every artifact (of ``kinds``, when given); return
        ``{kind: path}`` in ``dest_dir``.

        Files keep their original names. They are written under temporary names and renamed
        only once all are verified; on any failure nothing new is left in ``dest_dir``.
        With a manifest key, a manifest.json whose HMAC does not verify is refused, and so is
        one without an HMAC when ``require_signature``. ``chosen``: the manifest the caller
        picked, which must still be the one in the bucket.
        """
        manifest = self.get_manifest(site, timestamp)
        base = self.backup_prefix(site, timestamp)
        manifest_url = self._url(f"{base}/{MANIFEST_NAME}")
        if chosen is not None and canonical(chosen) != canonical(manifest):
            raise OffsiteError(f"{manifest_url} changed while the backup was being chosen", bucket=self.bucket)
        if self.manifest_key:
            valid = signature(manifest, self.manifest_key)
            if valid is False or (valid is None and require_signature):
                state = "has a signature that does not verify" if valid is False else "carries no signature"
                raise ChecksumMismatch(
                    f"{manifest_url} {state} (JERP_MANIFEST_KEY): altered, or written without the key; "
                    "refusing to restore from it" + ("" if valid is False else " (restore it with --unverified)"),
                    bucket=self.bucket, key=f"{base}/{MANIFEST_NAME}",
                )
        if manifest.get("verified") is not True:
            raise OffsiteError(f"{manifest_url} is not marked verified", bucket=self.bucket)
        artifacts = manifest["artifacts"]
        for field in ("kind", "name"):
            if len({a.get(field) for a in artifacts}) != len(artifacts):
                raise OffsiteError(f"{manifest_url} lists an artifact {field} twice", bucket=self.bucket)
        identities = None
        if manifest.get("encrypted"):
            identity = identity_file or self.identity_file
            if identity is None:
                raise ConfigError(IDENTITY_VARIABLE, f"is not set; the backup of {site} at {timestamp} is encrypted")
            identities = load_identities(identity)
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(4)
        temporary: list[Path] = []
        ready: dict[str, tuple[Path, Path]] = {}
        try:
            for artifact in artifacts:
                if kinds is not None and artifact["kind"] not in kinds:
                    continue
                name = _safe_name(artifact["name"])
                key = artifact["key"]
                if not key.startswith(base + "/"):
                    raise OffsiteError(f"{manifest_url} names a key outside the backup: {key}", bucket=self.bucket)
                stored = dest_dir / f".{name}.{token}.download"
                temporary.append(stored)
                self._download_verified(key, stored, artifact)
                if identities is None:
                    plain = stored
                else:
                    plain = dest_dir / f".{name}.{token}.plain"
                    temporary.append(plain)
                    size, digest = decrypt_file(stored, plain, identities, what=self._url(key))
                    stored.unlink()
                    self._check(key, "decrypted", artifact["size"], artifact["sha256"], size, digest)
                ready[artifact["kind"]] = (plain, dest_dir / name)
            for tmp, final in ready.values():
                os.replace(tmp, final)
        except BaseException:
            for tmp in temporary:
                tmp.unlink(missing_ok=True)
            raise
        log.info("offsite.downloaded", bucket=self.bucket, key=base, artifacts=len(ready))
        return {kind: final for kind, (_, final) in ready.items()}

    def _download_verified(self, key: str, target: Path, artifact: dict[str, Any]) -> None:
        with self._translate("download", key):
            self.client.download_file(self.bucket, key, str(target), Config=self.transfer_config)
        size, digest = file_sha256(target)
        self._check(key, "downloaded", artifact["stored_size"], artifact["stored_sha256"], size, digest)

    def _check(self, key: str, what: str, size: int, sha256: str, got_size: int, got_sha256: str) -> None:
        if (got_size, got_sha256) != (size, sha256):
            raise ChecksumMismatch(
                f"checksum mismatch for {self._url(key)}: the {what} bytes ({got_size} bytes, SHA-256 "
                f"{got_sha256}) differ from the manifest ({size} bytes, {sha256})",
                bucket=self.bucket, key=key, expected=sha256, actual=got_sha256,
            )

    # Files beside the backups (binary logs for point-in-time recovery)

    def area(self, *parts: str) -> str:
        """A key prefix of this store outside every site's backups: ``<prefix>/_<name>/...``
        (no site name starts with ``_``)."""
        if not parts or not parts[0].startswith("_"):
            raise InvalidInput("an area of the store begins with '_' (site names never do)")
        for part in parts:
            _safe_name(part)
        return self._join(*parts)

    def put_file(self, path: Path, key: str, *, kind: str, size: int, sha256: str) -> dict[str, Any]:
        """Upload ``path`` (``size`` bytes, ``sha256``) to ``key``, encrypted as backups are,
        and read its digest back from the store; returns its entry (``stored_size``,
        ``stored_sha256`` and the plain ``size``/``sha256``) for :meth:`get_file`."""
        artifact = {"path": path.name, "kind": kind, "size": size, "sha256": sha256}
        entry = self._upload_artifact(artifact, path.name, key, path.parent)
        entry["encrypted"] = self.encrypted
        return entry

    def get_file(self, entry: dict[str, Any], dest: Path, *, identity_file: Path | None = None) -> Path:
        """Download ``entry`` (from :meth:`put_file`) to ``dest``, checked against the digest
        stored and, once decrypted, the plain one; ChecksumMismatch when either differs, and
        nothing is left at ``dest`` then."""
        key = entry["key"]
        stored = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.download")
        try:
            self._download_verified(key, stored, entry)
            if entry.get("encrypted"):
                identity = identity_file or self.identity_file
                if identity is None:
                    raise ConfigError(IDENTITY_VARIABLE, f"is not set; {self._url(key)} is encrypted")
                plain = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.plain")
                try:
                    size, digest = decrypt_file(stored, plain, load_identities(identity), what=self._url(key))
                    stored.unlink()
                    self._check(key, "decrypted", entry["size"], entry["sha256"], size, digest)
                    os.replace(plain, dest)  # only a checked file ever has the name
                finally:
                    plain.unlink(missing_ok=True)
            else:
                os.replace(stored, dest)
        except BaseException:
            stored.unlink(missing_ok=True)
            raise
        return dest

    def delete_file(self, entry: dict[str, Any]) -> None:
        """Delete the object of ``entry`` (from :meth:`put_file`)."""
        self._delete_keys([entry["key"]])

    def put_json(self, key: str, data: dict[str, Any]) -> None:
        """Write a JSON document (sealed with the manifest key when there is one), read back."""
        self._put_manifest(key, seal(data, self.manifest_key))

    def get_json(self, key: str) -> dict[str, Any] | None:
        """A JSON document written by :meth:`put_json`; None when there is none. With a manifest
        key, one whose signature does not verify is refused (ChecksumMismatch)."""
        data = self._read_json(key)
        if data is MISSING:
            return None
        if not isinstance(data, dict):
            raise OffsiteError(f"{self._url(key)} is not a JSON object", bucket=self.bucket, key=key)
        if self.manifest_key and signature(data, self.manifest_key) is False:
            raise ChecksumMismatch(f"{self._url(key)} has a signature that does not verify (JERP_MANIFEST_KEY): "
                                   "altered, or written with another key", bucket=self.bucket, key=key)
        return data

    # Legal hold (an offboarded site's final backup)

    def put_legal_hold(self, site: str, hold: dict[str, Any]) -> None:
        """Write (and read back) the site's legal hold: ``{"timestamp", "until", "job_id", ...}``."""
        key = self._join(validate_site_name(site), LEGAL_HOLD_NAME)
        body = json.dumps(seal(hold, self.manifest_key), indent=2, sort_keys=True).encode()
        with self._translate("upload", key):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json",
                                   **self._extra_args())
        sent = DigestingReader(io.BytesIO(body))
        sent.read()
        self._verify_object(key, len(body), sent)

    def get_legal_hold(self, site: str) -> dict[str, Any] | None:
        """The site's legal hold, or None. One that is not valid JSON, or whose signature does not
        match ``JERP_MANIFEST_KEY``, is an error: a hold is never ignored."""
        key = self._join(validate_site_name(site), LEGAL_HOLD_NAME)
        hold = self._read_json(key)
        if hold is MISSING:
            return None
        if not isinstance(hold, dict) or not hold.get("timestamp") or not isinstance(hold.get("until"), (int, float)):
            raise OffsiteError(f"{self._url(key)} is not a legal hold", bucket=self.bucket, key=key)
        if self.manifest_key is not None and signature(hold, self.manifest_key) is not True:
            raise OffsiteError(f"{self._url(key)}: its signature does not match JERP_MANIFEST_KEY",
                               bucket=self.bucket, key=key)
        return hold

    def delete_legal_hold(self, site: str) -> None:
        key = self._join(validate_site_name(site), LEGAL_HOLD_NAME)
        self._delete_keys([key])

    # Delete

    def delete_backup(self, site: str, timestamp: str) -> list[str]:
        """Delete every object of a backup, manifest.json first; return the keys deleted."""
        base = self.backup_prefix(site, timestamp)
        manifest_key = f"{base}/{MANIFEST_NAME}"
        keys = self._keys_under(base + "/")
        if manifest_key in keys:
            self._delete_keys([manifest_key])
        rest = [k for k in keys if k != manifest_key]
        self._delete_keys(rest)
        self._abort_uploads(base + "/")
        log.info("offsite.deleted", bucket=self.bucket, key=base, objects=len(keys))
        return ([manifest_key] if manifest_key in keys else []) + rest

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            with self._translate("delete", batch[0]):
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise OffsiteError(
                    f"could not delete {self._url(first.get('Key', '?'))}: {first.get('Code')} {first.get('Message')}",
                    bucket=self.bucket, key=first.get("Key"),
                )

    def _abort_uploads(self, prefix: str, only: set[str] | None = None) -> None:
        with self._translate("list uploads", prefix):
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for upload in page.get("Uploads", []):
                    if only is None or upload["Key"] in only:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )

    def _keys_under(self, prefix: str) -> list[str]:
        with self._translate("list", prefix):
            paginator = self.client.get_paginator("list_objects_v2")
            return [
                obj["Key"]
                for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
                for obj in page.get("Contents", [])
            ]

    # Errors

    @contextmanager
    def _translate(self, action: str, key: str, *, missing_ok: bool = False) -> Iterator[list[bool]]:
        """botocore/boto3 errors -> OffsiteError naming the bucket and key; 404 -> flag if allowed."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        missing: list[bool] = []
        try:
            yield missing
        except JerpError:
            raise
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "?"))
            if missing_ok and code in ("404", "NoSuchKey", "NotFound"):
                missing.append(True)
                return
            detail = _URL_USERINFO.text(str(error.get("Message") or ""))
            kind = OffsiteUnavailable if _transient(exc) else OffsiteError
            raise kind(
                f"S3 {action} of {self._url(key)} failed: {code} {detail}".rstrip(), bucket=self.bucket, key=key
            ) from exc
        except (BotoCoreError, Boto3Error) as exc:
            kind = OffsiteUnavailable if _transient(exc) else OffsiteError
            raise kind(
                f"S3 {action} of {self._url(key)} failed: {_URL_USERINFO.text(str(exc))}", bucket=self.bucket, key=key
            ) from exc


_TRANSIENT_CODES = frozenset({"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "503", "500"})


def _transient(exc: BaseException) -> bool:
    """True when the error (or one it wraps) says S3 was unreachable, timed out or failed on its side."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, HTTPClientError)):
            return True
        if isinstance(current, ClientError):
            status = current.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if status >= 500 or str(current.response.get("Error", {}).get("Code")) in _TRANSIENT_CODES:
                return True
        current = current.__cause__ or current.__context__
    return "Could not connect to the endpoint URL" in str(exc)


def _artifact_name(path: str) -> str:
    return _safe_name(PurePosixPath(path).name)


def _safe_name(name: str) -> str:
    if not name or name != PurePosixPath(name).name or name.startswith(".") or "\\" in name:
        raise InvalidInput(f"invalid backup file name {name!r}")
    return name


def _parse_checksum(reported: str, head: dict[str, Any]) -> tuple[str, int | None]:
    """``(base64 value, part count or None for a single-part object)`` from a head_object.

    S3 reports a multipart checksum as ``<b64>-<parts>``; some servers (moto) drop the suffix
    but keep the object multipart: then the part count comes from the multipart ETag
    (``"<hex>-<parts>"``), and ``ChecksumType: COMPOSITE`` without one is an error.
    """
    value, _, suffix = reported.partition("-")
    if suffix:
        return value, int(suffix) if suffix.isdigit() else -1
    etag_parts = str(head.get("ETag", "")).strip('"').partition("-")[2]
    if etag_parts.isdigit():
        return value, int(etag_parts)
    if head.get("ChecksumType") == "COMPOSITE":
        return value, -1
    return value, None


def _age_size_bound(size: int, recipients: int) -> int:
    """An upper bound of the age ciphertext size: header, then 16 bytes per 64 KiB chunk."""
    return size + (size // 65536 + 1) * 16 + 16 + 256 * (recipients + 1)


def _same_content(existing: dict[str, Any], local: dict[str, Any]) -> bool:
    if existing.get("verified") is not True:
        return False
    ours = {(a["kind"], a["sha256"]) for a in local["artifacts"]}
    theirs = {(a.get("kind"), a.get("sha256")) for a in existing["artifacts"]}
    return ours == theirs
