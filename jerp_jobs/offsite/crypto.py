"""Streams for off-site copies: hashing readers and writers, and age encryption.

Everything here works on streams in fixed-size pieces, so memory stays bounded whatever the
size of a backup. age (through pyrage) is the format an operator can open with the standard
``age`` CLI: ``age -d -i identity.txt file.age > file``.

- :class:`DigestingReader` hashes what is read through it (the whole stream, and each
  ``part_size`` block, as S3 does for a multipart object) and runs a check at end of stream.
- :class:`EncryptingStream` is the age ciphertext of a plain stream, produced by a background
  thread through an OS pipe, read like a non-seekable file.
- :func:`decrypt_file` decrypts one file into another and returns the plain size and SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from jerp_jobs.errors import ConfigError
from jerp_jobs.offsite import DecryptionFailed, OffsiteError

RECIPIENTS_VARIABLE = "JERP_BACKUP_AGE_RECIPIENTS"
IDENTITY_VARIABLE = "JERP_BACKUP_AGE_IDENTITY_FILE"
_BLOCK = 1024 * 1024


def parse_recipients(values: Iterable[str]) -> list[tuple[str, Any]]:
    """``(public key, pyrage recipient)`` for each age (``age1…``) or SSH public key."""
    import pyrage

    parsed = []
    for value in values:
        text = value.strip()
        try:
            if text.startswith("age1"):
                recipient = pyrage.x25519.Recipient.from_str(text)
            elif text.startswith("ssh-"):
                recipient = pyrage.ssh.Recipient.from_str(text)
            else:
                raise ValueError("neither an age1… nor an ssh- public key")
        except (ValueError, pyrage.RecipientError) as exc:
            raise ConfigError(RECIPIENTS_VARIABLE, f"holds an invalid recipient {text!r}: {exc}") from exc
        parsed.append((text, recipient))
    return parsed


def load_identities(path: Path) -> list[Any]:
    """The age identities of an identity file (``AGE-SECRET-KEY-1…`` lines, or an SSH key).

    Errors name the file and the line number, never its content.
    """
    import pyrage

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(IDENTITY_VARIABLE, f"cannot be read ({path}: {exc.strerror})") from exc
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            return [pyrage.ssh.Identity.from_buffer(data)]
        except pyrage.IdentityError as exc:
            raise ConfigError(IDENTITY_VARIABLE, f"holds an unusable SSH key ({path}: {exc})") from exc
    identities = []
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError as exc:
            raise ConfigError(IDENTITY_VARIABLE, f"has an invalid identity on line {number} of {path}") from exc
    if not identities:
        raise ConfigError(IDENTITY_VARIABLE, f"holds no AGE-SECRET-KEY-1 identity ({path})")
    return identities


class DigestingReader:
    """A non-seekable reader that hashes everything read through it.

    ``read(n)`` returns exactly ``n`` bytes unless the stream ends (s3transfer sizes parts by
    what one read returns). At the end of the stream ``on_eof(self)`` runs once; an exception it
    raises reaches the caller of ``read`` (and so aborts an upload before it completes).
    """

    def __init__(
        self,
        raw: Any,
        *,
        part_size: int | None = None,
        on_eof: Callable[[DigestingReader], None] | None = None,
    ) -> None:
        self._raw = raw
        self._part_size = part_size
        self._on_eof = on_eof
        self._whole = hashlib.sha256()
        self._part = hashlib.sha256()
        self._part_filled = 0
        self.part_digests: list[bytes] = []
        self.size = 0
        self.eof = False
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int | None = -1) -> bytes:
        if self.eof:
            return b""
        chunks: list[bytes] = []
        wanted = -1 if size is None or size < 0 else size
        got = 0
        while wanted < 0 or got < wanted:
            data = self._raw.read(_BLOCK if wanted < 0 else wanted - got)
            if not data:
                self._finish()
                break
            self._feed(data)
            chunks.append(data)
            got += len(data)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @property
    def sha256(self) -> str:
        return self._whole.hexdigest()

    @property
    def sha256_b64(self) -> str:
        """The SHA-256 of the whole stream, base64 (S3's form for a single-part object)."""
        return base64.b64encode(self._whole.digest()).decode()

    @property
    def composite_b64(self) -> str:
        """base64(sha256(d1 || … || dN)) of the raw part digests (S3's multipart checksum)."""
        return base64.b64encode(hashlib.sha256(b"".join(self.part_digests)).digest()).decode()

    def _feed(self, data: bytes) -> None:
        self._whole.update(data)
        self.size += len(data)
        if not self._part_size:
            return
        view = memoryview(data)
        while view:
            take = min(len(view), self._part_size - self._part_filled)
            self._part.update(view[:take])
            self._part_filled += take
            view = view[take:]
            if self._part_filled == self._part_size:
                self._close_part()

    def _close_part(self) -> None:
        self.part_digests.append(self._part.digest())
        self._part = hashlib.sha256()
        self._part_filled = 0

    def _finish(self) -> None:
        self.eof = True
        if self._part_size and self._part_filled:
            self._close_part()
        if self._on_eof is not None:
            try:
                self._on_eof(self)
            except BaseException as exc:
                self.error = exc
                raise


class HashingWriter:
    """Writes through to ``raw`` while counting and hashing the bytes."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        self._raw.write(data)
        return len(data)

    def flush(self) -> None:
        self._raw.flush()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class EncryptingStream:
    """The age ciphertext of ``plain`` for ``recipients``, read like a non-seekable file.

    A background thread runs the encryption into an OS pipe; this end reads the pipe, so only
    the pipe buffer sits between the two. At the end of the stream the thread's failure, if
    any, is raised from ``read`` — a ciphertext cut short never looks complete. ``close()``
    stops the thread (its next write fails) and waits for it.
    """

    def __init__(self, plain: Any, recipients: list[Any]) -> None:
        import pyrage

        self._plain = plain
        read_fd, write_fd = os.pipe()
        _widen(write_fd)
        self._out = os.fdopen(read_fd, "rb")
        self._in = os.fdopen(write_fd, "wb")
        self._error: BaseException | None = None
        self._done = False
        self._thread = threading.Thread(
            target=self._run, args=(pyrage, recipients), name="age-encrypt", daemon=True
        )
        self._thread.start()

    def _run(self, pyrage: Any, recipients: list[Any]) -> None:
        try:
            pyrage.encrypt_io(self._plain, self._in, recipients)
            self._in.flush()
        except BaseException as exc:  # reported to the reader at end of stream
            self._error = exc
        finally:
            try:
                self._in.close()
            except OSError:
                pass

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int | None = -1) -> bytes:
        if self._done:
            return b""
        data = self._out.read(-1 if size is None else size)
        if size is None or size < 0 or len(data) < size:
            self._done = True
            self._thread.join()
            if self._error is not None:
                raise self._failure()
        return data

    def _failure(self) -> BaseException:
        # A check that failed inside the plain reader (a checksum mismatch) is the real cause.
        cause = getattr(self._plain, "error", None)
        if isinstance(cause, BaseException):
            return cause
        return OffsiteError(f"age encryption failed: {self._error}")

    def close(self) -> None:
        try:
            self._out.close()
        finally:
            self._thread.join()

    def __enter__(self) -> EncryptingStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def decrypt_file(src: Path, dst: Path, identities: list[Any], *, what: str) -> tuple[int, str]:
    """Decrypt the age file ``src`` into ``dst`` (streamed); return the plain size and SHA-256.

    ``what`` names the object in the error (``s3://bucket/key``).
    """
    import pyrage

    with open(src, "rb") as reader, open(dst, "wb") as raw:
        writer = HashingWriter(raw)
        try:
            pyrage.decrypt_io(reader, writer, identities)
        except (pyrage.DecryptError, OSError, ValueError) as exc:
            raise DecryptionFailed(f"could not decrypt {what}: {exc}") from exc
    return writer.size, writer.sha256


def file_sha256(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


#: pipe buffer of the encryption (Linux's default 64 KiB makes the two threads take turns too often)
PIPE_BUFFER = 1024 * 1024


def _widen(fd: int) -> None:
    """Give the pipe a 1 MiB buffer where the kernel allows it (F_SETPIPE_SZ); else keep its own."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BUFFER)
    except (ImportError, OSError):
        pass
