"""A small Redis client for the read commands of ``jerpctl``: RESP2 over one socket, stdlib only.

``jerpctl jobs``, ``backups`` and ``sites`` read a few keys and exit; importing redis-py costs
them more than all their reading. :func:`connect` gives them a :class:`Client` for the URLs it
speaks — ``redis://`` and ``rediss://`` (TLS through :mod:`ssl`, the certificate and host name
checked as redis-py checks them), with a user and password (AUTH) and a database (SELECT) —
and redis-py's client for any other form (``unix://``, query parameters), so every broker URL
the settings accept is served.

The :class:`Client` answers like redis-py's (``decode_responses`` off: values as bytes, HGETALL
as a dict, SCAN as a cursor and keys), so the stores take either: single commands, pipelines
(one write, then every reply), Lua scripts (EVALSHA, EVAL when the server does not hold the
script yet). A refused connection raises :class:`ConnectionFailed` naming host:port, never
the password; an error reply raises :class:`ReplyError` with the server's message.
:func:`errors` gives the exception classes to catch whichever client is in use.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

DEFAULT_CONNECT_TIMEOUT_S = 5.0


class RedisFailure(Exception):
    """Anything that went wrong talking to Redis through :class:`Client`."""


class ConnectionFailed(RedisFailure):
    """The server could not be reached, or the connection broke."""


class ProtocolError(ConnectionFailed):
    """The server answered something that is not RESP2."""


class ReplyError(RedisFailure):
    """The server answered a command with an error reply. Its message is the exception's, as
    redis-py gives it: without the generic codes (``ERR``, ``NOAUTH``, ``WRONGPASS``...), which
    are kept in :attr:`code`; other codes (``WRONGTYPE``) stay in the message."""

    def __init__(self, message: str = "", code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class NoScript(ReplyError):
    """EVALSHA of a script the server does not hold."""


def errors() -> tuple[type[BaseException], ...]:
    """The exceptions a Redis client of this process may raise: :class:`RedisFailure`, and
    redis-py's ``RedisError`` when redis-py is loaded (without importing it otherwise)."""
    loaded = sys.modules.get("redis")
    redis_error = getattr(loaded, "RedisError", None) if loaded is not None else None
    return (RedisFailure, redis_error) if redis_error is not None else (RedisFailure,)


def connect(url: str, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> Any:
    """A client of the Redis at ``url``: a :class:`Client` when the URL is one it speaks,
    else redis-py's (imported only then). Nothing is sent before the first command."""
    options = parse_url(url)
    if options is None:
        import redis

        return redis.Redis.from_url(url, socket_connect_timeout=connect_timeout, health_check_interval=30)
    return Client(**options, connect_timeout=connect_timeout)


def parse_url(url: str) -> dict[str, Any] | None:
    """The connection options of a ``redis://`` or ``rediss://`` URL, read as redis-py reads
    them (host lower-cased, default localhost:6379, database 0, user and password
    percent-decoded); None for any other form (another scheme, query parameters), which is
    left to redis-py."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss") or not url.lower().startswith(scheme + "://") or parts.query:
        return None
    db = 0
    if parts.path:
        try:
            db = int(unquote(parts.path).replace("/", ""))
        except ValueError:
            db = 0
    return {
        "host": unquote(parts.hostname) if parts.hostname else "localhost",
        "port": port if port is not None else 6379,
        "db": db,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "tls": scheme == "rediss",
    }


def _pack(args: Sequence[Any]) -> bytes:
    """One command in RESP2: an array of bulk strings (str as UTF-8, numbers as their text)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, (bytes, bytearray, memoryview)):
            data = bytes(arg)
        elif isinstance(arg, bool):
            raise TypeError("a bool is not a Redis argument: pass 0/1 or a string")
        elif isinstance(arg, (int, float)):
            data = repr(arg).encode()
        else:
            raise TypeError(f"a {type(arg).__name__} is not a Redis argument")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


#: the error codes redis-py takes off an error reply's message
_CODES = frozenset({"ERR", "OOM", "WRONGPASS", "EXECABORT", "LOADING", "NOSCRIPT", "READONLY", "NOAUTH", "NOPERM",
                    "ASK", "TRYAGAIN", "MOVED", "CLUSTERDOWN", "CROSSSLOT", "MASTERDOWN"})


def _reply_error(text: str) -> ReplyError:
    code = text.split(" ", 1)[0]
    if code not in _CODES:
        return ReplyError(text)
    return (NoScript if code == "NOSCRIPT" else ReplyError)(text[len(code) + 1:], code)


class _Pending:
    """A reply read from a pipeline that is an error: raised when the pipeline's replies are given."""

    def __init__(self, error: ReplyError) -> None:
        self.error = error


# How a command's raw reply becomes what redis-py gives for it (decode_responses off).
def _pairs(reply: Any) -> dict[Any, Any]:
    return dict(zip(reply[0::2], reply[1::2])) if reply else {}


def _scan(reply: Any) -> tuple[int, list[bytes]]:
    return int(reply[0]), reply[1]


def _ok(reply: Any) -> bool:
    return reply in (b"OK", b"PONG")


_CALLBACKS: dict[str, Any] = {
    "HGETALL": _pairs,
    "SCAN": _scan,
    "PING": _ok,
    "SELECT": _ok,
    "AUTH": _ok,
    "SISMEMBER": bool,
}


class _Commands:
    """The commands the read paths use, as redis-py's client names and answers them; on a
    :class:`Client` each runs at once, on a :class:`Pipeline` each is queued."""

    def execute_command(self, *args: Any) -> Any:  # pragma: no cover - defined by both subclasses
        raise NotImplementedError

    def ping(self) -> Any:
        return self.execute_command("PING")

    def get(self, key: Any) -> Any:
        return self.execute_command("GET", key)

    def mget(self, keys: Any, *more: Any) -> Any:
        names = [keys] if isinstance(keys, (str, bytes)) else list(keys)
        return self.execute_command("MGET", *names, *more)

    def exists(self, *keys: Any) -> Any:
        return self.execute_command("EXISTS", *keys)

    def hget(self, key: Any, field: Any) -> Any:
        return self.execute_command("HGET", key, field)

    def hgetall(self, key: Any) -> Any:
        return self.execute_command("HGETALL", key)

    def hmget(self, key: Any, fields: Any, *more: Any) -> Any:
        names = [fields] if isinstance(fields, (str, bytes)) else list(fields)
        return self.execute_command("HMGET", key, *names, *more)

    def zrevrange(self, key: Any, start: int, end: int) -> Any:
        return self.execute_command("ZREVRANGE", key, start, end)

    def zrem(self, key: Any, *members: Any) -> Any:
        return self.execute_command("ZREM", key, *members)

    def zcard(self, key: Any) -> Any:
        return self.execute_command("ZCARD", key)

    def sismember(self, key: Any, member: Any) -> Any:
        return self.execute_command("SISMEMBER", key, member)

    def smembers(self, key: Any) -> Any:
        return self.execute_command("SMEMBERS", key)

    def sadd(self, key: Any, *members: Any) -> Any:
        return self.execute_command("SADD", key, *members)

    def scan(self, cursor: int = 0, match: Any = None, count: int | None = None) -> Any:
        args: list[Any] = ["SCAN", cursor]
        if match is not None:
            args += ["MATCH", match]
        if count is not None:
            args += ["COUNT", count]
        return self.execute_command(*args)

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Any:
        return self.execute_command("EVAL", script, numkeys, *keys_and_args)


class Client(_Commands):
    """One connection to one Redis server, opened at the first command (AUTH and SELECT then),
    for a short-lived process: no pool, no retry, no reconnection."""

    def __init__(self, host: str = "localhost", port: int = 6379, db: int = 0, *, username: str | None = None,
                 password: str | None = None, tls: bool = False,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.tls, self.connect_timeout = username, tls, connect_timeout
        self._password = password
        self._sock: socket.socket | None = None
        self._file: Any = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/{self.db}>"

    # -- the connection ------------------------------------------------------------------------

    def _open(self) -> None:
        where = f"{self.host}:{self.port}"
        last: OSError | None = None
        try:
            host: str | bytes = self.host.encode() if self.host.isascii() else self.host  # str: the IDNA codec
            addresses = socket.getaddrinfo(host, self.port, 0, socket.SOCK_STREAM)
        except OSError as exc:
            raise ConnectionFailed(_connect_message(where, exc)) from None
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(self.connect_timeout)
                sock.connect(address)
                if self.tls:
                    sock = self._wrap(sock)
                sock.settimeout(None)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            self._sock, self._file = sock, sock.makefile("rb")
            break
        else:
            raise ConnectionFailed(_connect_message(where, last or OSError("no address"))) from None
        try:
            if self._password is not None:
                auth = ("AUTH", self.username, self._password) if self.username else ("AUTH", self._password)
                self._call(auth)
            if self.db:
                self._call(("SELECT", self.db))
        except BaseException:
            self.close()
            raise

    def _wrap(self, sock: socket.socket) -> socket.socket:
        import ssl

        context = ssl.create_default_context()  # the certificate and the host name checked
        return context.wrap_socket(sock, server_hostname=self.host)

    def close(self) -> None:
        """Close the connection (the next command opens another)."""
        file, sock, self._file, self._sock = self._file, self._sock, None, None
        for thing in (file, sock):
            if thing is not None:
                try:
                    thing.close()
                except OSError:
                    pass

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            self._open()
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except OSError as exc:
            self.close()
            raise ConnectionFailed(f"Error while writing to {self.host}:{self.port}: {exc}") from None

    def _call(self, args: Sequence[Any]) -> Any:
        self._send(_pack(args))
        reply = self._read()
        if isinstance(reply, _Pending):
            raise reply.error
        return reply

    # -- replies -------------------------------------------------------------------------------

    def _line(self) -> bytes:
        try:
            line = self._file.readline()
        except OSError as exc:
            self.close()
            raise ConnectionFailed(f"Error while reading from {self.host}:{self.port}: {exc}") from None
        if not line.endswith(b"\r\n"):
            self.close()
            raise ConnectionFailed(f"Connection closed by server ({self.host}:{self.port}).")
        return line[:-2]

    def _exactly(self, size: int) -> bytes:
        try:
            data = self._file.read(size + 2)
        except OSError as exc:
            self.close()
            raise ConnectionFailed(f"Error while reading from {self.host}:{self.port}: {exc}") from None
        if len(data) != size + 2:
            self.close()
            raise ConnectionFailed(f"Connection closed by server ({self.host}:{self.port}).")
        return data[:-2]

    def _read(self, nested: bool = False) -> Any:
        """One reply: bytes, int, None, a list (nested as it comes), or a :class:`_Pending` for
        an error reply (inside an array, as a script's reply may carry one, the
        :class:`ReplyError` itself, as redis-py gives it)."""
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"$", b"*", b":"):
            try:
                number = int(rest)
            except ValueError:
                self.close()
                raise ProtocolError(f"unexpected reply from {self.host}:{self.port}: {line[:40]!r}") from None
            if kind == b"$":
                return None if number < 0 else self._exactly(number)
            if kind == b"*":
                return None if number < 0 else [self._read(True) for _ in range(number)]
            return number
        if kind == b"+":
            return rest
        if kind == b"-":
            error = _reply_error(rest.decode("utf-8", "replace"))
            return error if nested else _Pending(error)
        self.close()
        raise ProtocolError(f"unexpected reply from {self.host}:{self.port}: {line[:40]!r}")

    # -- commands ------------------------------------------------------------------------------

    def execute_command(self, *args: Any) -> Any:
        reply = self._call(args)
        callback = _CALLBACKS.get(str(args[0]).upper())
        return callback(reply) if callback else reply

    def pipeline(self, transaction: bool = False) -> Pipeline:
        """Commands queued, then sent in one write by :meth:`Pipeline.execute` (no MULTI: this
        client is for reads)."""
        if transaction:
            raise ValueError("the light Redis client has no transactions: use redis-py for writes that need one")
        return Pipeline(self)

    def register_script(self, script: str) -> Script:
        return Script(self, script)

    def scan_iter(self, match: Any = None, count: int | None = None) -> Iterator[bytes]:
        cursor = None
        while cursor != 0:
            cursor, keys = self.scan(cursor or 0, match=match, count=count)
            yield from keys

    def _replies(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write; their replies, errors as :class:`_Pending`."""
        if not commands:
            return []
        self._send(b"".join(_pack(args) for args in commands))
        return [self._read() for _ in commands]


class Pipeline(_Commands):
    """Commands queued on a :class:`Client` (``client.pipeline(transaction=False)``)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._queue: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> Pipeline:
        self._queue.append(args)
        return self

    def __len__(self) -> int:
        return len(self._queue)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue = []

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Every queued command's reply, in order, as the client would give it; the first error
        reply is raised (with ``raise_on_error``) once every reply is read. A script the server
        does not hold yet is sent again with EVAL."""
        queue, self._queue = self._queue, []
        replies = self._client._replies(queue)
        missing = [i for i, reply in enumerate(replies)
                   if isinstance(reply, _Pending) and isinstance(reply.error, NoScript) and queue[i][0] == "EVALSHA"
                   and queue[i][1] in _SCRIPTS]
        if missing:
            again = self._client._replies([("EVAL", _SCRIPTS[queue[i][1]], *queue[i][2:]) for i in missing])
            for i, reply in zip(missing, again):
                replies[i] = reply
        out = []
        for args, reply in zip(queue, replies):
            if isinstance(reply, _Pending):
                if raise_on_error:
                    raise reply.error
                out.append(reply.error)
                continue
            callback = _CALLBACKS.get(str(args[0]).upper())
            out.append(callback(reply) if callback else reply)
        return out


#: script text by SHA1, for the EVAL that follows a NOSCRIPT in a pipeline
_SCRIPTS: dict[str, str] = {}


class Script:
    """A Lua script, run by its SHA1 (EVALSHA), sent whole (EVAL) when the server lacks it.
    The SHA1 is computed at the first call."""

    def __init__(self, client: Client, script: str) -> None:
        self._client = client
        self.script = script
        self._sha: str | None = None

    @property
    def sha(self) -> str:
        if self._sha is None:
            import hashlib

            self._sha = hashlib.sha1(self.script.encode()).hexdigest()
            _SCRIPTS[self._sha] = self.script
        return self._sha

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = (), client: Any = None) -> Any:
        target = self._client if client is None else client
        if isinstance(target, Pipeline):
            return target.evalsha(self.sha, len(keys), *keys, *args)
        try:
            return target.evalsha(self.sha, len(keys), *keys, *args)
        except NoScript:
            return target.eval(self.script, len(keys), *keys, *args)


def _connect_message(where: str, exc: OSError) -> str:
    """As redis-py says it (``Error 111 connecting to host:6379. Connection refused.``)."""
    if isinstance(exc, TimeoutError) or isinstance(exc, socket.timeout):
        return f"Timeout connecting to {where}."
    if exc.errno is not None and exc.strerror:
        return f"Error {exc.errno} connecting to {where}. {exc.strerror}."
    return f"Error connecting to {where}: {exc}."
