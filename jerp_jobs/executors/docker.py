"""Run commands inside a compose service's container through the Docker Engine API.

The container is found by its compose labels (``com.docker.compose.project`` and
``com.docker.compose.service``; for a Portainer stack the project is the stack name) every
time a command runs, so a redeployed stack is picked up. The command runs through ``docker
exec`` with no TTY, as ``user`` in ``workdir``; stdin is not attached, except when ``stdin``
bytes are given: the exec is then created with ``AttachStdin``, started on the raw (hijacked)
connection, the bytes written and the connection's write side shut, which Docker turns into
end of file on the command's stdin (how bench's password prompts get their answers without
any argv or environment carrying them).

Timeouts. An exec cannot be killed through the Docker API, and abandoning the stream leaves
the command running. So each argv is wrapped as::

    /bin/sh -c 'exec "$@" 2>&1' sh timeout --kill-after=<grace>s --signal=TERM <timeout>s ARGV...

(the shell only merges stderr into stdout, keeping the order of the lines, and replaces
itself with ``timeout``; ARGV stays a list, never shell text).

coreutils ``timeout`` puts itself and the command in a process group of their own and
signals that group: SIGTERM at the timeout, SIGKILL ``kill_grace`` seconds later. It exits
124 after a timeout (137 when the KILL was needed); those codes count as a timeout only when
the command ran at least its timeout, so an OOM kill (also 137) is not taken for one. **The
container must therefore have ``/bin/sh`` and coreutils ``timeout``** (frappe's images, Debian
based, do; busybox ``timeout`` is not enough).
On top of that, the stream is read in a background thread against a client-side deadline of
``timeout + kill_grace + api_margin`` seconds, so an API that stops answering cannot block the
caller forever.

``timeout`` signals only its own process group: a process that left it (``setsid``, a
daemonising bench) survives it and keeps the fence. So after a timeout (either one), when
``holders_of`` names the fence file, a second exec kills, inside the container, every process
of ``user`` holding that file open (found through ``/proc/*/fd``): SIGTERM, then SIGKILL after
``kill_grace``.

The Docker API calls used: containers list, exec create, exec start, exec inspect, and
container inspect after a failed command. A socket proxy that allows these is enough.

Over TLS (a bench on another Docker host, ``tcp://`` with client certificates:
:func:`bench_client_factory`) the stream is read from the TLS connection itself, so output
that arrived is never held back behind the next record. A TLS connection cannot be
half-closed from Python, so stdin cannot end with the connection's write side there: the
command then reads its stdin through ``head -c <length>``, which ends it after the bytes given
(``/bin/sh -c 'n=$1; shift; head -c "$n" | "$@" 2>&1' sh <length> timeout ... ARGV``, argv
still a list).
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from jerp_jobs.errors import (
    CommandTimeout,
    ContainerNotFound,
    ContainerNotRunning,
    ExecutorError,
    ExecutorUnavailable,
)
from jerp_jobs.executors._argv import (
    check_argv,
    check_holders_of,
    check_stdin,
    check_timeout,
    describe_argv,
    format_seconds,
)
from jerp_jobs.executors.base import CommandResult, OutputCallback, OutputTail

if TYPE_CHECKING:
    import docker

    from jerp_jobs.fleet import Bench

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"

#: Exit codes of coreutils ``timeout`` when it had to stop the command.
TIMEOUT_EXIT_CODES = (124, 128 + 9)

#: Without a TTY, Docker reads stdout and stderr from two pipes and their order is lost; so
#: stderr is sent into stdout inside the container. argv goes as positional parameters, never
#: into the script text.
_MERGE_STDERR = ("/bin/sh", "-c", 'exec "$@" 2>&1', "sh")
#: The same, for a connection that cannot be half-closed (TLS): stdin is the first "$1" bytes
#: the client sends, then end of file; "$1" is a number the executor gives, never text.
_BOUNDED_STDIN = ("/bin/sh", "-c", 'n=$1; shift; head -c "$n" | "$@" 2>&1', "sh")
#: docker's stream frames: 1 byte stream, 3 bytes padding, 4 bytes length (big-endian)
_FRAME_HEADER = 8

_WRAPPER_FAILED = re.compile(r"^timeout: (failed to run command|invalid|unrecognized option)")
_RUNTIME_FAILED = re.compile(r"OCI runtime exec failed|unable to find user|no matching entries")
_NO_TIMEOUT = re.compile(r"exec: timeout: not found|\"timeout\": executable file not found|^sh: \d+: timeout: not found")
#: Kills, inside the container, every process holding the file "$1" open: TERM, then KILL
#: after "$2" seconds. The file is compared by device and inode (``stat -L``), paths stay
#: positional parameters.
_KILL_HOLDERS = (
    "/bin/sh", "-c",
    'target=$(stat -L -c %d:%i -- "$1" 2>/dev/null) || exit 0\n'
    'holders() { for fd in /proc/[0-9]*/fd/*; do\n'
    '  [ "$(stat -L -c %d:%i -- "$fd" 2>/dev/null)" = "$target" ] || continue\n'
    '  pid=${fd#/proc/}; echo "${pid%%/*}"; done | sort -u; }\n'
    'pids=$(holders); [ -n "$pids" ] || exit 0\n'
    'kill -TERM $pids 2>/dev/null; sleep "$2"\n'
    'pids=$(holders); [ -n "$pids" ] && kill -KILL $pids 2>/dev/null\n'
    'exit 0\n',
    "kill-holders",
)
_EXIT_POLL_S = 0.05
_EXIT_WAIT_S = 5.0
_STOP_SETTLE_S = 1.0


def _default_client() -> docker.DockerClient:
    import docker

    return docker.from_env()


def bench_client_factory(bench: Bench, *, timeout: int = 60) -> Callable[[], docker.DockerClient]:
    """What builds the Docker client of a bench of the fleet: ``docker.from_env()`` for a local
    bench; for a ``tcp://`` bench a client speaking TLS with the bench's client certificate and
    key, verifying the server's certificate (and its host name) against the bench's CA."""
    if bench.is_local:
        return _default_client
    tls_files = bench.tls
    if tls_files is None:
        raise ValueError(f"bench {bench.name!r} reaches Docker at {bench.docker} but has no TLS certificates")

    def make() -> docker.DockerClient:
        import docker
        from docker.tls import TLSConfig

        tls = TLSConfig(client_cert=(str(tls_files.cert), str(tls_files.key)), ca_cert=str(tls_files.ca),
                        verify=True)
        client = docker.DockerClient.__new__(docker.DockerClient)
        client.api = _pinned_ca_client()(base_url=bench.docker, tls=tls, timeout=timeout)
        return client

    return make


def _pinned_ca_client() -> type:
    """docker-py's API client whose only trust is the CA it was given: requests would otherwise
    verify against ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` when one is set in the
    environment, in place of the bench's CA."""
    from docker.api.client import APIClient

    class PinnedCAClient(APIClient):  # type: ignore[misc]
        def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any,
                                       cert: Any) -> dict[str, Any]:
            merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
            merged["verify"] = self.verify
            return merged

    return PinnedCAClient


def bench_executor(bench: Bench, **kwargs: Any) -> DockerExecutor:
    """A DockerExecutor for the backend service of ``bench``, through its Docker API."""
    kwargs.setdefault("client_factory", bench_client_factory(bench))
    return DockerExecutor(project=bench.compose_project, service=bench.backend_service, **kwargs)


def _is_tls(api: Any) -> bool:
    """Whether the client talks to Docker over TLS (docker-py turns tcp:// with TLS into https://)."""
    return str(getattr(api, "base_url", "")).startswith("https://")


def _api_errors() -> tuple[type[BaseException], ...]:
    import docker.errors
    import requests.exceptions

    return (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


class DockerExecutor:
    """Execs argv lists in the running container of ``service`` in compose ``project``.

    ``client_factory`` builds the ``docker.DockerClient`` (default: ``docker.from_env()``,
    which honours ``DOCKER_HOST``); it is called on first use and the client is kept. ``env``
    holds variables set for every command. ``kill_grace`` is the time between SIGTERM and
    SIGKILL after a timeout; ``api_margin`` is how much longer than that the caller waits for
    the Docker API to report the end of the command before giving up on it.
    """

    def __init__(
        self,
        *,
        project: str,
        service: str = "backend",
        user: str = "frappe",
        workdir: str = "/home/frappe/frappe-bench",
        client_factory: Callable[[], docker.DockerClient] | None = None,
        env: Mapping[str, str] | None = None,
        kill_grace: float = 5.0,
        api_margin: float = 10.0,
    ) -> None:
        if not project:
            raise ValueError("project must be a non-empty compose project name")
        if not service:
            raise ValueError("service must be a non-empty compose service name")
        self.project = project
        self.service = service
        self.user = user
        self.workdir = workdir
        self.env = dict(env) if env is not None else {}
        self.kill_grace = check_timeout(kill_grace)
        self.api_margin = check_timeout(api_margin)
        self._client_factory = client_factory or _default_client
        self._client: Any = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DockerExecutor(project={self.project!r}, service={self.service!r})"

    @property
    def _where(self) -> str:
        return f"service {self.service!r} of compose project {self.project!r}"

    # -- the Docker client -------------------------------------------------------------

    def _api(self) -> Any:
        """The low-level API client, created on first use."""
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = self._client_factory()
                except _api_errors() as exc:
                    raise ExecutorUnavailable(
                        f"cannot reach the Docker API: {_reason(exc)}", service=self.service
                    ) from exc
            return getattr(self._client, "api", self._client)

    def _unavailable(self, exc: BaseException, doing: str) -> ExecutorUnavailable:
        base_url = getattr(getattr(self._client, "api", self._client), "base_url", "?")
        return ExecutorUnavailable(
            f"Docker API at {base_url} failed while {doing}: {_reason(exc)}",
            project=self.project,
            service=self.service,
        )

    # -- finding the container ---------------------------------------------------------

    def find_container(self) -> dict[str, Any]:
        """The running container of the service, as the containers list reports it.

        Raises ContainerNotFound when the service has no container at all, and
        ContainerNotRunning when none runs (naming the status; a restarting one means a crash
        loop). With several running (a scaled service), the lowest container number wins.
        """
        api = self._api()
        filters = {"label": [f"{PROJECT_LABEL}={self.project}", f"{SERVICE_LABEL}={self.service}"]}
        try:
            containers = api.containers(all=True, filters=filters)
        except _api_errors() as exc:
            raise self._unavailable(exc, f"listing the containers of {self._where}") from exc
        if not containers:
            raise ContainerNotFound(
                f"no container for service {self.service!r} of compose project "
                f"{self.project!r} — is the stack up?",
                project=self.project,
                service=self.service,
            )
        containers.sort(key=compose_order)
        running = [c for c in containers if c.get("State") == "running"]
        if running:
            return running[0]
        restarting = [c for c in containers if c.get("State") == "restarting"]
        raise self._not_running(restarting[0] if restarting else containers[0])

    def _not_running(self, container: Mapping[str, Any], *, during: str = "") -> ContainerNotRunning:
        name = _name(container)
        state = container.get("State") or "unknown"
        status = container.get("Status") or state
        if state == "restarting":
            message = (
                f"the container {name} of {self._where} is restarting: it keeps exiting and "
                f"Docker keeps restarting it (crash loop?); see `docker logs {name}`"
            )
        else:
            message = f"the container {name} of {self._where} is {state} ({status}), not running"
        if during:
            message = f"{message} — it stopped {during}"
        return ContainerNotRunning(
            message, project=self.project, service=self.service, container=name, status=state
        )

    def _current_state(self, container: Mapping[str, Any]) -> dict[str, Any] | None:
        """Inspect the container again: its list-style summary, or None when it is gone."""
        import docker.errors

        api = self._api()
        try:
            info = api.inspect_container(container["Id"])
        except docker.errors.NotFound:
            return None
        except _api_errors() as exc:
            raise self._unavailable(exc, f"inspecting the container {_name(container)}") from exc
        state = info.get("State") or {}
        return {
            "Id": info.get("Id"),
            "Names": [info.get("Name", "")],
            "State": state.get("Status"),
            "Status": f"{state.get('Status')}, exit code {state.get('ExitCode')}",
        }

    def _gone_or_stopped(
        self, container: Mapping[str, Any], doing: str, *, settle: float = 0.0
    ) -> ExecutorError | None:
        """An error if the container is no longer running, else None.

        ``settle`` is how long to keep looking while it still shows as running: the exec of a
        container being stopped can end before Docker records the container's own exit.
        """
        current = self._current_state(container)
        give_up = time.monotonic() + settle
        while current is not None and current.get("State") == "running":
            if time.monotonic() >= give_up:
                return None
            time.sleep(_EXIT_POLL_S)
            current = self._current_state(container)
        if current is None:
            return ContainerNotRunning(
                f"the container {_name(container)} of {self._where} disappeared {doing}",
                project=self.project,
                service=self.service,
                container=_name(container),
                status="removed",
            )
        if current.get("State") != "running":
            return self._not_running(current, during=doing)
        return None

    # -- running -----------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        on_output: OutputCallback | None = None,
        stdin: bytes | None = None,
        holders_of: str | None = None,
    ) -> CommandResult:
        import docker.errors

        args = check_argv(argv)
        timeout = check_timeout(timeout)
        stdin = check_stdin(stdin)
        holders_of = check_holders_of(holders_of)
        container = self.find_container()
        api = self._api()
        name = _name(container)
        shown = describe_argv(args)
        bounded = stdin is not None and _is_tls(api)
        wrapped = [
            *((*_BOUNDED_STDIN, str(len(stdin or b""))) if bounded else _MERGE_STDERR),
            "timeout",
            f"--kill-after={_duration(self.kill_grace)}",
            "--signal=TERM",
            _duration(timeout),
            *args,
        ]

        for pause in (*EXEC_CREATE_RETRIES_S, None):
            try:
                exec_id = api.exec_create(
                    container["Id"],
                    cmd=wrapped,
                    user=self.user,
                    workdir=self.workdir,
                    stdin=stdin is not None,
                    tty=False,
                    environment=self.env or None,
                )["Id"]
                break
            except docker.errors.APIError as exc:
                stopped = self._gone_or_stopped(container, f"before {shown} could start")
                if stopped is not None:
                    raise stopped from exc
                if pause is None or exc.is_client_error():  # a refusal (4xx) stays one
                    raise self._unavailable(exc, f"creating an exec in {name}") from exc
            except _api_errors() as exc:
                if pause is None:
                    raise self._unavailable(exc, f"creating an exec in {name}") from exc
            # nothing ran: an exec that could not be created never starts, so asking again is safe
            time.sleep(pause)

        started = time.monotonic()
        deadline = started + timeout + self.kill_grace + self.api_margin
        tail = OutputTail(on_output)
        reader = _ExecStream(api, exec_id, stdin=stdin)
        try:
            for chunk in reader.chunks(deadline):
                tail.feed(chunk)
        except _Deadline:
            tail.close()
            self._kill_holders(container, holders_of)
            raise CommandTimeout(
                f"{shown} ran past its timeout of {format_seconds(timeout)} in {name}, and the "
                f"Docker API did not report its end within a further "
                f"{format_seconds(self.kill_grace + self.api_margin)}; `timeout` in the "
                f"container was set to kill it",
                timeout=timeout,
                output_tail=tail.text(),
            ) from None
        except _api_errors() as exc:
            tail.close()
            stopped = self._gone_or_stopped(
                container, f"while running {shown}", settle=_STOP_SETTLE_S
            )
            if stopped is not None:
                raise stopped from exc
            raise self._unavailable(exc, f"running {shown} in {name}") from exc
        finally:
            reader.cancel()
        tail.close()

        exit_code, started_process = self._exit_code(api, exec_id, container, shown, deadline)
        duration = time.monotonic() - started
        timed_out = exit_code in TIMEOUT_EXIT_CODES and duration >= timeout
        if exit_code != 0:
            settle = _STOP_SETTLE_S if exit_code >= 128 and not timed_out else 0.0
            stopped = self._gone_or_stopped(container, f"while running {shown}", settle=settle)
            if stopped is not None:
                raise stopped
        if timed_out:
            self._kill_holders(container, holders_of)
            raise CommandTimeout(
                f"{shown} ran past its timeout of {format_seconds(timeout)} in {name} and was killed",
                timeout=timeout,
                output_tail=tail.text(),
            )
        if exit_code in (125, 126, 127):
            self._check_started(tail.text(), args, name)
            if not started_process:
                last = (tail.text().strip().splitlines() or ["no output"])[-1].strip()
                raise ExecutorUnavailable(
                    f"Docker could not start {args[0]!r} as user {self.user!r} in {name} (exit code "
                    f"{exit_code}, no process was started): {last}",
                    program=args[0],
                    container=name,
                )
        return CommandResult(argv=args, exit_code=exit_code, duration_s=duration, output=tail.text())

    def _kill_holders(self, container: Mapping[str, Any], holders_of: str | None) -> None:
        """Kill what outlived ``timeout``'s group kill and still holds the fence (best effort:
        a failure here leaves the timeout to be reported, and the fence to the next wait)."""
        if holders_of is None:
            return
        api = self._api()
        try:
            exec_id = api.exec_create(
                container["Id"],
                cmd=[*_KILL_HOLDERS, holders_of, f"{self.kill_grace:g}"],
                user=self.user,
                workdir=self.workdir,
                stdin=False,
                tty=False,
            )["Id"]
            reader = _ExecStream(api, exec_id)
            try:
                for _ in reader.chunks(time.monotonic() + self.kill_grace + self.api_margin):
                    pass
            finally:
                reader.cancel()
        except (_Deadline, *_api_errors()):
            pass

    def _exit_code(
        self, api: Any, exec_id: str, container: Mapping[str, Any], shown: str, deadline: float
    ) -> tuple[int, bool]:
        """The exit code of a finished exec (it can lag the end of the stream a little), and
        whether a process was started at all (Docker reports ``Pid`` 0 for an exec it could not
        start: an unknown user, a missing program)."""
        import docker.errors

        give_up = min(deadline, time.monotonic() + _EXIT_WAIT_S)
        while True:
            try:
                info = api.exec_inspect(exec_id)
            except docker.errors.NotFound as exc:
                stopped = self._gone_or_stopped(container, f"while running {shown}")
                raise (stopped or self._unavailable(exc, "reading the exit code")) from exc
            except _api_errors() as exc:
                raise self._unavailable(exc, f"reading the exit code of {shown}") from exc
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"]), bool(info.get("Pid"))
            if time.monotonic() >= give_up:
                stopped = self._gone_or_stopped(container, f"while running {shown}")
                if stopped is not None:
                    raise stopped
                raise ExecutorUnavailable(
                    f"the output of {shown} ended but Docker still reports it running "
                    f"(exec {exec_id[:12]} in {_name(container)})",
                    project=self.project,
                    service=self.service,
                )
            time.sleep(_EXIT_POLL_S)

    def _check_started(self, output: str, args: tuple[str, ...], name: str) -> None:
        """Raise ExecutorUnavailable when the command never started (not when it failed)."""
        lines = output.splitlines()[-5:]
        for line in lines:
            if _NO_TIMEOUT.search(line):
                raise ExecutorUnavailable(
                    f"cannot run commands in {name}: the container needs coreutils `timeout` "
                    f"on its PATH: {line.strip()}",
                    program="timeout",
                    container=name,
                )
            if _RUNTIME_FAILED.search(line):
                raise ExecutorUnavailable(
                    f"Docker could not start {args[0]!r} in {name}: {line.strip()}",
                    program=args[0],
                    container=name,
                )
            if _WRAPPER_FAILED.match(line):
                raise ExecutorUnavailable(
                    f"cannot run {args[0]!r} in {name}: {line.strip()}",
                    program=args[0],
                    container=name,
                )


class _Deadline(Exception):
    pass


class _ExecStream:
    """Starts an exec and reads its stream in a daemon thread; the caller waits with a deadline."""

    _END = object()

    def __init__(self, api: Any, exec_id: str, *, stdin: bytes | None = None) -> None:
        self._api = api
        self._exec_id = exec_id
        self._stdin = stdin
        self._queue: queue.Queue[Any] = queue.Queue()
        self._stream: Any = None
        self._cancelled = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._read, name=f"docker-exec-{exec_id[:12]}", daemon=True
        )
        self._thread.start()

    def _read(self) -> None:
        try:
            if self._stdin is not None or _is_tls(self._api):
                self._read_attached()
                return
            stream = self._api.exec_start(self._exec_id, stream=True, tty=False)
            with self._lock:
                self._stream = stream
                cancelled = self._cancelled
            if cancelled:
                _close(stream)
                return
            for chunk in stream:
                self._queue.put(chunk)
            self._queue.put(self._END)
        except BaseException as exc:  # handed to the waiting caller
            self._queue.put(exc)

    def _read_attached(self) -> None:
        """Start the exec on the raw connection, send stdin and half-close it, read the frames."""
        import socket as pysocket

        from docker.utils.socket import frames_iter

        conn = self._api.exec_start(self._exec_id, socket=True, tty=False)
        raw = getattr(conn, "_sock", conn)  # a SocketIO over TCP or a Unix socket; the TLS socket itself
        tls = _is_tls(self._api)
        with self._lock:
            self._stream = conn
            cancelled = self._cancelled
        if cancelled:
            _close(conn)
            return
        if self._stdin is not None:
            raw.sendall(self._stdin)
            if not tls:  # over TLS the command's stdin ends after its length (_BOUNDED_STDIN)
                raw.shutdown(pysocket.SHUT_WR)
        if tls:
            raw.settimeout(None)  # a quiet command is not a dead connection: the caller has the deadline
            frames = _tls_frames(raw)
        else:
            frames = (data for _, data in frames_iter(conn, tty=False))
        for data in frames:
            self._queue.put(data)
        self._queue.put(self._END)

    def chunks(self, deadline: float) -> Iterator[bytes]:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Deadline
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                raise _Deadline from None
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            stream = self._stream
        if stream is not None:
            _close(stream)


def _tls_frames(sock: Any) -> Iterator[bytes]:
    """The payloads of docker's stream frames, read from a TLS socket with blocking reads.

    (docker-py polls the socket before each read, which waits for the network even when the TLS
    layer already holds the bytes: output would come one record late.)"""
    while True:
        header = _recv_exactly(sock, _FRAME_HEADER, at_start=True)
        if header is None:
            return
        length = int.from_bytes(header[4:8], "big")
        if length:
            data = _recv_exactly(sock, length, at_start=False)
            assert data is not None
            yield data


def _recv_exactly(sock: Any, n: int, *, at_start: bool) -> bytes | None:
    """``n`` bytes; None at a clean end of the stream before the first (``at_start``)."""
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            if at_start and not data:
                return None
            raise ConnectionError(f"the Docker API ended the stream inside a frame ({len(data)} of {n} bytes)")
        data += chunk
    return bytes(data)


def _close(stream: Any) -> None:
    try:
        stream.close()
    except Exception:
        pass


def compose_order(container: Mapping[str, Any]) -> tuple[int, str]:
    """Sort key of a compose service's containers (as listed by the Docker API): by number, then name."""
    labels = container.get("Labels") or {}
    try:
        number = int(labels.get(NUMBER_LABEL, ""))
    except ValueError:
        number = 1 << 30
    return number, _name(container)


def _name(container: Mapping[str, Any]) -> str:
    names = container.get("Names") or []
    if names:
        return str(names[0]).lstrip("/")
    return str(container.get("Id", "?"))[:12]


def _duration(seconds: float) -> str:
    return f"{max(seconds, 0.001):.3f}s"


#: pauses before creating an exec again when the Docker API failed to (a daemon or proxy busy
#: for a moment, as when a worker container restarts beside it)
EXEC_CREATE_RETRIES_S = (0.5, 1.0, 2.0)


def _reason(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    text = str(explanation or exc).strip()
    return text or type(exc).__name__
