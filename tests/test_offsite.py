"""Off-site backups against a real S3 protocol server (moto over HTTP on loopback), real files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jerp_jobs.errors import ConfigError, InvalidInput, InvalidSiteName
from jerp_jobs.offsite import BackupNotFound, ChecksumMismatch, DecryptionFailed, OffsiteError
from jerp_jobs.offsite.s3 import OffsiteStore
from jerp_jobs.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
SITE = "acme.example.com"
TS = "20250314_021500"


@pytest.fixture
def transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(
        multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=2, preferred_transfer_client="classic"
    )
    config.max_in_memory_upload_chunks = 2
    return config


@pytest.fixture
def client(s3_server: Any) -> Any:
    return s3_server.client()


@pytest.fixture
def identity() -> Any:
    import pyrage

    return pyrage.x25519.Identity.generate()


@pytest.fixture
def identity_file(tmp_path: Path, identity: Any) -> Path:
    path = tmp_path / "identity.txt"
    path.write_text(f"# created for a test\n# public key: {identity.to_public()}\n{identity}\n")
    path.chmod(0o600)
    return path


def make_store(client: Any, bucket: str, config: Any, **options: Any) -> OffsiteStore:
    return OffsiteStore(client, bucket=bucket, prefix="backups/", transfer_config=config, **options)


def write_file(path: Path, size: int) -> str:
    """A file of ``size`` random bytes, written in blocks; returns its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        left = size
        while left:
            block = os.urandom(min(left, MiB))
            handle.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def make_backup(sites_dir: Path, *, site: str = SITE, timestamp: str = TS, big: int = 12 * MiB + 4321, **extra: Any) -> dict[str, Any]:
    """Real files laid out as bench makes them, and the local manifest describing them."""
    files = [
        ("config", f"{timestamp}-acme-site_config_backup.json", 412),
        ("database", f"{timestamp}-acme-database.sql.gz", big),
        ("public_files", f"{timestamp}-acme-files.tar", 70_000),
        ("private_files", f"{timestamp}-acme-private-files.tar", 1),
    ]
    artifacts = []
    for kind, name, size in files:
        relative = f"{site}/private/backups/{name}"
        digest = write_file(sites_dir / relative, size)
        artifacts.append({"kind": kind, "path": relative, "size": size, "sha256": digest})
    return {
        "site": site,
        "timestamp": timestamp,
        "taken_at": "2025-03-14T02:15:00+00:00",
        "recorded_at": 1741918500.0,
        "job_id": "job-123",
        "with_files": True,
        "artifacts": artifacts,
        **extra,
    }


def bucket_keys(client: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def open_uploads(client: Any, bucket: str) -> list[dict[str, Any]]:
    return client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def assert_same_files(local: dict[str, Any], sites_dir: Path, got: dict[str, Path]) -> None:
    assert set(got) == {a["kind"] for a in local["artifacts"]}
    for artifact in local["artifacts"]:
        original = sites_dir / artifact["path"]
        assert got[artifact["kind"]].name == original.name
        assert hashlib.sha256(got[artifact["kind"]].read_bytes()).hexdigest() == artifact["sha256"]


def test_round_trip_plain_with_sse(client: Any, s3_bucket: str, transfer_config: Any, tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    local = make_backup(sites, apps=[{"name": "erpnext", "version": "15.1.0"}], stats={"tables": 812})
    store = make_store(client, s3_bucket, transfer_config, sse="AES256")

    offsite = store.upload_backup(local, sites)

    base = f"backups/{SITE}/2025/03/14/{TS}"
    names = [Path(a["path"]).name for a in local["artifacts"]]
    assert bucket_keys(client, s3_bucket) == sorted([f"{base}/{n}" for n in names] + [f"{base}/manifest.json"])
    assert offsite["verified"] is True and offsite["encrypted"] is False and offsite["recipients"] == []
    assert offsite["apps"] == local["apps"] and offsite["stats"] == local["stats"]
    assert {k: offsite[k] for k in ("site", "timestamp", "taken_at", "job_id")} == {
        "site": SITE, "timestamp": TS, "taken_at": local["taken_at"], "job_id": "job-123"
    }
    assert offsite["uploaded_at"]
    for entry, artifact in zip(offsite["artifacts"], local["artifacts"]):
        assert entry["kind"] == artifact["kind"]
        assert entry["name"] == Path(artifact["path"]).name
        assert entry["key"] == f"{base}/{entry['name']}"
        assert (entry["size"], entry["sha256"]) == (artifact["size"], artifact["sha256"])
        assert (entry["stored_size"], entry["stored_sha256"]) == (artifact["size"], artifact["sha256"])
        head = client.head_object(Bucket=s3_bucket, Key=entry["key"], ChecksumMode="ENABLED")
        assert head["ServerSideEncryption"] == "AES256"
        assert head["ContentLength"] == artifact["size"]
        assert head["ChecksumSHA256"]
    stored_manifest = json.loads(client.get_object(Bucket=s3_bucket, Key=f"{base}/manifest.json")["Body"].read())
    assert stored_manifest == offsite
    head = client.head_object(Bucket=s3_bucket, Key=f"{base}/manifest.json")
    assert head["ServerSideEncryption"] == "AES256"

    got = store.download_backup(SITE, TS, tmp_path / "restore")
    assert_same_files(local, sites, got)
    assert sorted(p.name for p in (tmp_path / "restore").iterdir()) == sorted(names)


def test_large_file_goes_multipart_with_a_verified_composite_checksum(
    client: Any, s3_bucket: str, transfer_config: Any, tmp_path: Path
) -> None:
    sites = tmp_path / "sites"
    local = make_backup(sites, big=12 * MiB + 4321)
    offsite = make_store(client, s3_bucket, transfer_config).upload_backup(local, sites)

    database = next(a for a in offsite["artifacts"] if a["kind"] == "database")
    config = next(a for a in offsite["artifacts"] if a["kind"] == "config")
    assert database["stored_parts"] == 3 and config["stored_parts"] == 1
    head = client.head_object(Bucket=s3_bucket, Key=database["key"], ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3")
    data = (sites / local["artifacts"][1]["path"]).read_bytes()
    parts = [hashlib.sha256(data[i : i + 5 * MiB]).digest() for i in range(0, len(data), 5 * MiB)]
    import base64

    composite = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
    assert head["ChecksumSHA256"].partition("-")[0] == composite


def test_round_trip_encrypted(
    client: Any, s3_bucket: str, transfer_config: Any, tmp_path: Path, identity: Any, identity_file: Path
) -> None:
    sites = tmp_path / "sites"
    local = make_backup(sites)
    recipient = str(identity.to_public())
    store = make_store(client, s3_bucket, transfer_config, age_recipients=[recipient], sse="AES256")

    offsite = store.upload_backup(local, sites)

    assert offsite["encrypted"] is True and offsite["recipients"] == [recipient]
    for entry, artifact in zip(offsite["artifacts"], local["artifacts"]):
        assert entry["key"].endswith(Path(artifact["path"]).name + ".age")
        body = client.get_object(Bucket=s3_bucket, Key=entry["key"])["Body"].read()
        assert body.startswith(b"age-encryption.org/v1\n")
        assert len(body) == entry["stored_size"] > artifact["size"]
        assert hashlib.sha256(body).hexdigest() == entry["stored_sha256"] != artifact["sha256"]
        assert entry["sha256"] == artifact["sha256"]
    database = next(a for a in offsite["artifacts"] if a["kind"] == "database")
    assert database["stored_parts"] == 3

    got = store.download_backup(SITE, TS, tmp_path / "restore", identity_file=identity_file)
    assert_same_files(local, sites, got)
    assert not [p for p in (tmp_path / "restore").iterdir() if p.name.startswith(".")]


def test_encrypted_download_needs_the_right_identity(
    client: Any, s3_bucket: str, transfer_config: Any, tmp_path: Path, identity: Any
) -> None:
    import pyrage

    sites = tmp_path / "sites"
    local = make_backup(sites, big=1000)
    store = make_store(client, s3_bucket, transfer_config, age_recipients=[str(identity.to_public())])
    store.upload_backup(local, sites)

    with pytest.raises(ConfigError, match="JERP_BACKUP_AGE_IDENTITY_FILE"):
        store.download_backup(SITE, TS, tmp_path / "none")
    other = tmp_path / "other.txt"
    other.write_text(f"{pyrage.x25519.Identity.generate()}\n")
    dest = tmp_path / "restore"
    with pytest.raises(DecryptionFailed, match=r"could not decrypt s3://.*\.age") as caught:
        store.download_backup(SITE, TS, dest, identity_file=other)
    assert "AGE-SECRET-KEY" not in str(caught.value)
    assert list(dest.iterdir()) == []


def test_operator_can_decrypt_with_the_age_cli(
    client: Any, s3_bucket: str, transfer_config: Any, tmp_path: Path, identity: Any, identity_file: Path
) -> None:
    assert shutil.which("age"), "the age CLI is missing (.ci/run installs it: apt-get install age)"
    sites = tmp_path / "sites"
    local = make_backup(sites, big=6 * MiB)
    store = make_store(client, s3_bucket, transfer_config, age_recipients=[str(identity.to_public())])
    offsite = store.upload_backup(local, sites)

    for entry in offsite["artifacts"]:
        encrypted = tmp_path / Path(entry["key"]).name
        client.download_file(s3_bucket, entry["key"], str(encrypted))
        plain = tmp_path / entry["name"]
        subprocess.run(["age", "-d", "-i", str(identity_file), "-o", str(plain), str(encrypted)], check=True)
        assert hashlib.sha256(plain.read_bytes()).hexdigest() == entry["sha256"]


def test_kms_server_side_encryption_is_requested(client: Any, s3_bucket: str, transfer_config: Any, tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    local = make_backup(sites, big=6 * MiB)
    key_id = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
    store = make_store(client, s3_bucket, transfer_config, sse="aws:kms", kms_key_id=key_id)
    offsite = store.upload_backup(local, sites)

    for entry in offsite["artifacts"]:
        head = client.head_object(Bucket=s3_bucket, Key=entry["key"])
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"] == key_id
    with pytest.raises(ConfigError, match="JERP_S3_KMS_KEY_ID"):
        make_store(client, s3_bucket, transfer_config, sse="AES256", kms_key_id=key_id)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "age"])
def test_tampered_object_is_refused_before_decrypting(
    client: Any,
    s3_bucket: str,
    transfer_config: Any,
    tmp_path: Path,
    identity: Any,
    identity_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    encrypted: bool,
) -> None:
    sites = tmp_path / "sites"
    local = make_backup(sites)
    recipients = [str(identity.to_public())] if encrypted else []
    store = make_store(client, s3_bucket, transfer_config, age_recipients=recipients)
    offsite = store.upload_backup(local, sites)
    target = next(a for a in offsite["artifacts"] if a["kind"] == "database")
    original = client.get_object(Bucket=s3_bucket, Key=target["key"])["Body"].read()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0x01
    client.put_object(Bucket=s3_bucket, Key=target["key"], Body=bytes(tampered))

    decrypted: list[str] = []
    if encrypted:
        from jerp_jobs.offsite import crypto

        def recording(src: Path, *args: Any, **kwargs: Any) -> Any:
            decrypted.append(src.name)
            return crypto.decrypt_file(src, *args, **kwargs)

        monkeypatch.setattr("jerp_jobs.offsite.s3.decrypt_file", recording)
    dest = tmp_path / "restore"
    with pytest.raises(ChecksumMismatch) as caught:
        store.download_backup(SITE, TS, dest, identity_file=identity_file)

    assert caught.value.key == target["key"] and caught.value.bucket == s3_bucket
    assert f"s3://{s3_bucket}/{target['key']}" in str(caught.value)
    assert "checksum mismatch" in str(caught.value)
    assert list(dest.iterdir()) == []
    assert not [name for name in decrypted if target["name"] in name]
    if encrypted:
        assert decrypted, "the artifacts before the tampered one are decrypted as usual"


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "age"])
@pytest.mark.parametrize("damage", ["truncated", "same-size"])
def test_changed_local_file_is_refused(
    client: Any, s3_bucket: str, transfer_config: Any, tmp_path: Path, identity: Any, encrypted: bool, damage: str
) -> None:
    sites = tmp_path / "sites"
    local = make_backup(sites)
    path = sites / local["artifacts"][1]["path"]
    if damage == "truncated":
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size - 1000)
    else:
        with open(path, "r+b") as handle:
            handle.seek(11 * MiB)
            byte = handle.read(1)
            handle.seek(11 * MiB)
            handle.write(bytes([byte[0] ^ 0xFF]))
    recipients = [str(identity.to_public())] if encrypted else []
    store = make_store(client, s3_bucket, transfer_config, age_recipients=recipients)

    with pytest.raises(ChecksumMismatch, match=str(path)) as caught:
        store.upload_backup(local, sites)

    assert caught.value.path == str(path)
    assert bucket_keys(client, s3_bucket) == []
    assert open_uploads(client, s3_bucket) == []
    with pytest.raises(BackupNotFound):
        store.get_manifest(SITE, TS)


class _Recording:
    """An S3 client proxy that records calls, and can alter head_object answers."""

    def __init__(self, client: Any, alter_head: Any = None) -> None:
        self._client = client
        self._alter_head = alter_head
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute) or name.startswith("_"):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            result = attribute(*args, **kwargs)
            if name == "head_object" and self._alter_head is not None:
                result = self._alter_head(kwargs["Key"], dict(result))
            return result

        return call


def test_unverifiable_upload_is_not_declared_done(client: Any, s3_bucket: str, transfer_config: Any, tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    local = make_backup(sites)

    def strip_checksum(key: str, head: dict[str, Any]) -> dict[str, Any]:
        head.pop("ChecksumSHA256", None)
        return head

    store = make_store(_Recording(client, strip_checksum), s3_bucket, transfer_config)
    with pytest.raises(OffsiteError, match="cannot be verified"):
        store.upload_backup(local, sites)
    assert bucket_keys(client, s3_bucket) == []

    def wrong_checksum(key: str, head: dict[str, Any]) -> dict[str, Any]:
        if "database" in key:
            head["ChecksumSHA256"] = "AAAA" + head["ChecksumSHA256"][4:]
        return head

    store = make_store(_Recording(client, wrong_checksum), s3_bucket, transfer_config)
    with pytest.raises(ChecksumMismatch, match="database"):
        store.upload_backup(local, sites)
    assert bucket_keys(client, s3_bucket) == []
    assert store.latest(SITE) is None


def test_list_latest_get_and_delete(client: Any, s3_bucket: str, transfer_config: Any, tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    recording = _Recording(client)
    store = make_store(recording, s3_bucket, transfer_config)
    stamps = ["20250101_010000", "20250315_230000", "20241231_235959"]
    for stamp in stamps:
        store.upload_backup(make_backup(sites, timestamp=stamp, big=2000), sites)
    other_site = make_backup(sites, site="other.example.com", timestamp="20260101_000000", big=10)
    store.upload_backup(other_site, sites)
    # An incomplete backup (artifacts, no manifest) is never listed.
    client.put_object(Bucket=s3_bucket, Key=f"backups/{SITE}/2026/02/02/20260202_000000/x.sql.gz", Body=b"x")

    listed = store.list_backups(SITE)
    assert [m["timestamp"] for m in listed] == sorted(stamps, reverse=True)
    assert all(m["site"] == SITE and m["verified"] for m in listed)
    assert store.latest(SITE)["timestamp"] == "20250315_230000"
    assert store.latest("nothing.example.com") is None
    assert store.list_backups("nothing.example.com") == []
    assert store.get_manifest(SITE, "20250101_010000") == listed[1]

    recording.calls.clear()
    deleted = store.delete_backup(SITE, "20250315_230000")
    base = f"backups/{SITE}/2025/03/15/20250315_230000"
    assert deleted[0] == f"{base}/manifest.json" and len(deleted) == 5
    deletes = [kwargs["Delete"]["Objects"] for name, kwargs in recording.calls if name == "delete_objects"]
    assert deletes[0] == [{"Key": f"{base}/manifest.json"}]
    assert not [k for k in bucket_keys(client, s3_bucket) if k.startswith(base)]
    assert [m["timestamp"] for m in store.list_backups(SITE)] == ["20250101_010000", "20241231_235959"]
    with pytest.raises(BackupNotFound, match=f"{base}/manifest.json"):
        store.get_manifest(SITE, "20250315_230000")
    assert store.delete_backup(SITE, "20250315_230000") == []
    assert store.latest("other.example.com")["timestamp"] == "20260101_000000"


def test_reupload_is_idempotent_and_never_overwrites(client: Any, s3_bucket: str, transfer_config: Any, tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    local = make_backup(sites, big=5000)
    store = make_store(client, s3_bucket, transfer_config)
    first = store.upload_backup(local, sites)
    assert store.upload_backup(local, sites) == first

    different = make_backup(tmp_path / "other-sites", big=5000)
    with pytest.raises(OffsiteError, match="already holds a different backup"):
        store.upload_backup(different, tmp_path / "other-sites")
    assert store.get_manifest(SITE, TS) == first


def test_invalid_names_are_refused(client: Any, s3_bucket: str, transfer_config: Any, tmp_path: Path) -> None:
    store = make_store(client, s3_bucket, transfer_config)
    with pytest.raises(InvalidSiteName):
        store.list_backups("../etc")
    with pytest.raises(InvalidInput, match="timestamp"):
        store.get_manifest(SITE, "2025-03-14")

    sites = tmp_path / "sites"
    offsite = store.upload_backup(make_backup(sites, big=100), sites)
    offsite["artifacts"][0]["name"] = "../../escape.json"
    key = f"backups/{SITE}/2025/03/14/{TS}/manifest.json"
    client.put_object(Bucket=s3_bucket, Key=key, Body=json.dumps(offsite).encode())
    dest = tmp_path / "restore"
    with pytest.raises(InvalidInput, match="escape"):
        store.download_backup(SITE, TS, dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "escape.json").exists()


def test_from_settings_takes_credentials_from_the_environment(
    s3_server: Any, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, identity: Any
) -> None:
    secret = "Sup3r-Secret-Key-Never-Shown"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    settings = load_settings(
        _env_file=None,
        s3_bucket=s3_bucket,
        s3_prefix="/jerp/",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_region="us-east-1",
        s3_sse="AES256",
        backup_age_recipients=f"{identity.to_public()}",
    )
    store = OffsiteStore.from_settings(settings)
    assert store.prefix == "jerp" and store.encrypted and store.sse == "AES256"
    sites = tmp_path / "sites"
    offsite = store.upload_backup(make_backup(sites, big=100), sites)
    assert offsite["artifacts"][0]["key"].startswith(f"jerp/{SITE}/2025/03/14/{TS}/")

    missing = OffsiteStore.from_settings(settings.model_copy(update={"s3_bucket": "no-such-bucket-here"}))
    with pytest.raises(OffsiteError) as caught:
        missing.list_backups(SITE)
    text = f"{caught.value} {caught.value.fields!r} {caught.value.__cause__}"
    assert "s3://no-such-bucket-here/" in str(caught.value)
    assert secret not in text

    with pytest.raises(ConfigError, match="JERP_S3_BUCKET"):
        OffsiteStore.from_settings(settings.model_copy(update={"s3_bucket": None}))
    with pytest.raises(ConfigError, match="JERP_BACKUP_AGE_RECIPIENTS"):
        OffsiteStore.from_settings(settings.model_copy(update={"backup_age_recipients": ["age1nope"]}))


def test_importing_the_package_stays_light() -> None:
    code = (
        "import sys, jerp_jobs.offsite, jerp_jobs.offsite.s3, jerp_jobs.offsite.crypto\n"
        "print(sorted(m for m in ('boto3', 'botocore', 's3transfer', 'pyrage') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


_MEMORY_PROBE = """
import json, sys
from pathlib import Path
import boto3
from boto3.s3.transfer import TransferConfig
from jerp_jobs.offsite.s3 import OffsiteStore

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

endpoint, bucket, sites, recipients, warm, big = sys.argv[1:7]
client = boto3.session.Session().client(
    "s3", endpoint_url=endpoint, region_name="us-east-1",
    aws_access_key_id="testing", aws_secret_access_key="testing",
)
config = TransferConfig(
    multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20, max_concurrency=2,
    preferred_transfer_client="classic",
)
config.max_in_memory_upload_chunks = 2
store = OffsiteStore(client, bucket=bucket, prefix="mem", transfer_config=config,
                     age_recipients=json.loads(recipients))
store.upload_backup(json.loads(warm), Path(sites))
with open("/proc/self/clear_refs", "w") as reset:
    reset.write("5")
before = status("VmRSS")
store.upload_backup(json.loads(big), Path(sites))
print(json.dumps({"before": before, "peak": status("VmHWM")}))
"""


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "age"])
def test_upload_memory_stays_bounded(
    s3_server: Any, s3_bucket: str, tmp_path: Path, identity: Any, encrypted: bool
) -> None:
    """Peak RSS of a process uploading a 96 MiB file with 5 MiB parts stays far below 96 MiB.

    The upload runs in a child process, so the in-process S3 server's memory is not counted.
    """
    sites = tmp_path / "sites"
    size = 96 * MiB
    warm = make_backup(sites, timestamp="20250101_000000", big=6 * MiB)
    big = make_backup(sites, timestamp="20250102_000000", big=size)
    recipients = [str(identity.to_public())] if encrypted else []
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, s3_server.endpoint_url, s3_bucket, str(sites),
         json.dumps(recipients), json.dumps(warm), json.dumps(big)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    growth = measured["peak"] - measured["before"]
    assert growth < 40 * MiB, f"peak RSS grew by {growth / MiB:.1f} MiB for a {size // MiB} MiB file"
    store_client = s3_server.client()
    head = store_client.head_object(Bucket=s3_bucket, Key=f"mem/{SITE}/2025/01/02/20250102_000000/manifest.json")
    assert head["ContentLength"] > 0


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _s3_client_as_deployed(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    from jerp_jobs.offsite.s3 import make_client
    from tests.s3_server import ACCESS_KEY, REGION, SECRET_KEY

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    return make_client(endpoint_url=s3_server.endpoint_url, region=REGION)


def test_each_part_carries_the_stores_own_digest_and_the_body_is_not_hashed_for_signing(
    s3_server: Any, s3_bucket: str, transfer_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    client = _s3_client_as_deployed(s3_server, monkeypatch)
    sent: list[tuple[str | None, str | None]] = []

    def record(request: Any, **_: Any) -> None:
        if "partNumber=" in request.url:
            sent.append(tuple(_text(request.headers.get(name)) for name in ("x-amz-checksum-sha256",
                                                                             "X-Amz-Content-SHA256")))

    client.meta.events.register("before-send.s3.UploadPart", record)
    sites = tmp_path / "sites"
    local = make_backup(sites, big=12 * MiB + 4321)
    make_store(client, s3_bucket, transfer_config).upload_backup(local, sites)

    data = (sites / local["artifacts"][1]["path"]).read_bytes()
    digests = [base64.b64encode(hashlib.sha256(data[i : i + 5 * MiB]).digest()).decode()
               for i in range(0, len(data), 5 * MiB)]
    assert sorted(checksum for checksum, _ in sent) == sorted(digests)
    assert {signed for _, signed in sent} == {"UNSIGNED-PAYLOAD"}

