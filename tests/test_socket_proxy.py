"""The Docker socket proxy (jerp_jobs.socket_proxy): its allowlist and HTTP handling against a
scripted Docker API on a Unix socket, then docker-py and the Docker executor through it
against the real Docker Engine."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from jerp_jobs.socket_proxy import RULES, SocketProxy, _rule, parse_labels

BACKEND_ID = "b" * 64
DB_ID = "d" * 64
BACKEND_LABELS = {"com.docker.compose.project": "jerp", "com.docker.compose.service": "backend"}


class LoopThread:
    """An asyncio loop in a daemon thread, for servers the tests talk to with blocking sockets."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        async def finish() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(finish())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class FakeDocker:
    """A Docker API on a Unix socket that records each request and answers from a script."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.containers = {
            "backend": {"Id": BACKEND_ID, "Config": {"Labels": BACKEND_LABELS}},
            "db": {"Id": DB_ID, "Config": {"Labels": {"com.docker.compose.service": "db"}}},
        }

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        method, target = head.split(b" ")[:2]
        path = target.decode().split("?")[0]
        if path.endswith("/start"):
            await self._upgrade(reader, writer)
        elif path.endswith("/chunked"):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n")
        elif path.startswith("/containers/") and path.endswith("/json") and path != "/containers/json":
            ref = path.split("/")[2]
            info = next((c for name, c in self.containers.items() if ref in (name, c["Id"])), None)
            if info is None:
                self._json(writer, 404, {"message": f"No such container: {ref}"})
            else:
                self._json(writer, 200, info)
        elif path.endswith("/exec"):
            self._json(writer, 201, {"Id": "e" * 64})
        else:
            self._json(writer, 200, [{"Id": BACKEND_ID}], extra=b"Keep-Alive: timeout=5\r\n")
        await writer.drain()
        writer.close()

    @staticmethod
    def _json(writer: asyncio.StreamWriter, status: int, data: object, extra: bytes = b"") -> None:
        body = json.dumps(data).encode()
        writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
                     % (status, len(body), extra, body))

    @staticmethod
    async def _upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
                     b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        await writer.drain()
        data = await reader.read(100)
        writer.write(b"echo:" + data)
        await writer.drain()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture
def fake_docker(loop_thread: LoopThread, tmp_path: Path) -> Iterator[tuple[FakeDocker, str]]:
    fake = FakeDocker()
    path = str(tmp_path / "docker.sock")
    server = loop_thread.run(asyncio.start_unix_server(fake.handle, path))
    yield fake, path
    loop_thread.loop.call_soon_threadsafe(server.close)


@contextmanager
def running_proxy(loop_thread: LoopThread, upstream: str, labels: dict[str, str] | None = None,
                  rules=RULES) -> Iterator[int]:
    server = loop_thread.run(SocketProxy(upstream, container_labels=labels, rules=rules).start("127.0.0.1", 0))
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        loop_thread.loop.call_soon_threadsafe(server.close)
        loop_thread.run(server.wait_closed())


@pytest.fixture
def proxy(loop_thread: LoopThread, fake_docker: tuple[FakeDocker, str]) -> Iterator[int]:
    with running_proxy(loop_thread, fake_docker[1], BACKEND_LABELS) as port:
        yield port


def exchange(port: int, raw: bytes, *, then: bytes = b"") -> bytes:
    """Send raw bytes, read until the proxy closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        if then:
            sock.sendall(then)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def raw_request(method: str, target: str, body: bytes = b"", headers: str = "") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    return f"{method} {target} HTTP/1.1\r\nHost: docker\r\n{headers}{length}\r\n".encode() + body


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def message_of(response: bytes) -> str:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])["message"]


# -- the allowlist --------------------------------------------------------------------


@pytest.mark.parametrize("method, target", [
    ("GET", "/_ping"), ("HEAD", "/_ping"), ("GET", "/version"), ("GET", "/v1.41/version"),
    ("GET", "/v1.41/containers/json?all=1&filters=%7B%22label%22%3A%5B%5D%7D"),
    ("GET", "/v1.44/exec/abc123/json"),
])
def test_allowed_calls_are_forwarded_with_connection_close(proxy, fake_docker, method, target):
    fake, _ = fake_docker

    response = exchange(proxy, raw_request(method, target, headers="Connection: keep-alive\r\n"))

    assert status_of(response) == 200
    head = response.split(b"\r\n\r\n")[0].lower()
    assert b"connection: close" in head and b"keep-alive" not in head
    [sent] = fake.requests
    assert sent.startswith(f"{method} {target} HTTP/1.1\r\n".encode())
    assert b"Connection: close\r\n" in sent and b"keep-alive" not in sent.lower()


@pytest.mark.parametrize("method, target", [
    ("GET", "/images/json"), ("GET", "/v1.41/images/json"), ("POST", "/v1.41/containers/create"),
    ("DELETE", "/v1.41/containers/backend"), ("POST", "/containers/backend/start"),
    ("POST", "/containers/backend/kill"), ("POST", "/containers/backend/stop"),
    ("GET", "/containers/backend/logs"), ("PUT", "/containers/backend/archive"),
    ("POST", "/containers/backend/attach"), ("POST", "/exec/abc/resize"), ("POST", "/build"),
    ("GET", "/volumes"), ("GET", "/networks"), ("GET", "/secrets"), ("POST", "/swarm/init"),
    ("POST", "/v1.41/_ping"), ("get", "/_ping"), ("GET", "/containers/../images/json"),
    ("GET", "/containers/%2e%2e/json"), ("GET", "/v1.41//containers/json"), ("GET", "/v1.41/containers/json/"),
    ("GET", "/containers/json/../../images/json"), ("GET", "/vx/containers/json"), ("GET", "/_ping/../images"),
])
def test_everything_else_is_refused_without_reaching_docker(proxy, fake_docker, method, target):
    fake, _ = fake_docker

    response = exchange(proxy, raw_request(method, target))

    assert status_of(response) == 403
    assert "not allowed" in message_of(response)
    assert fake.requests == []


def test_a_second_request_on_the_connection_is_never_forwarded(proxy, fake_docker):
    fake, _ = fake_docker

    response = exchange(proxy, raw_request("GET", "/_ping") + raw_request("POST", "/containers/create", b"{}"))

    assert status_of(response) == 200
    assert len(fake.requests) == 1 and b"/containers/create" not in fake.requests[0]


def test_a_request_hidden_in_a_body_stays_in_the_body(proxy, fake_docker):
    fake, _ = fake_docker
    hidden = b"POST /containers/create HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"

    exchange(proxy, raw_request("POST", f"/exec/{'e' * 64}/start", hidden,
                                headers="Connection: Upgrade, Content-Length\r\nUpgrade: tcp\r\n"), then=b"x")

    [sent] = fake.requests
    assert f"Content-Length: {len(hidden)}\r\n".encode() in sent and sent.endswith(hidden)


@pytest.mark.parametrize("raw, status", [
    (b"GET http://docker/containers/json HTTP/1.1\r\n\r\n", 400),
    (b"GET /_ping HTTP/2.0\r\n\r\n", 400),
    (b"GET /_ping HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
    (b"GET /_ping HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
    (b"GET /_ping HTTP/1.1\r\nX: a\nY: b\r\n\r\n", 400),
    (b"POST /containers/backend/exec HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
    (b"POST /containers/backend/exec HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 501),
    (b"POST /containers/backend/exec HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
    (b"GET /_ping HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"POST /containers/backend/exec HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", 417),
])
def test_malformed_or_ambiguous_requests_are_refused(proxy, fake_docker, raw, status):
    fake, _ = fake_docker

    assert status_of(exchange(proxy, raw)) == status
    assert fake.requests == []


# -- exec and inspect: only in the labelled containers, never privileged ---------------


def test_exec_in_the_labelled_container_is_forwarded_by_its_full_id(proxy, fake_docker):
    fake, _ = fake_docker
    body = json.dumps({"Cmd": ["bench", "migrate"], "User": "frappe"}).encode()

    response = exchange(proxy, raw_request("POST", "/v1.41/containers/backend/exec", body))

    assert status_of(response) == 201
    inspect, create = fake.requests
    assert inspect.startswith(b"GET /containers/backend/json ")
    assert create.startswith(f"POST /v1.41/containers/{BACKEND_ID}/exec HTTP/1.1".encode())
    assert create.endswith(body)


@pytest.mark.parametrize("target", ["/containers/db/exec", f"/v1.41/containers/{DB_ID}/exec"])
def test_exec_in_another_container_is_refused(proxy, fake_docker, target):
    fake, _ = fake_docker

    response = exchange(proxy, raw_request("POST", target, b'{"Cmd": ["sh"]}'))

    assert status_of(response) == 403 and "labels" in message_of(response)
    assert all(b"/exec" not in r.split(b"\r\n")[0] for r in fake.requests)


def test_inspect_is_limited_to_the_labelled_containers(proxy, fake_docker):
    assert status_of(exchange(proxy, raw_request("GET", "/v1.41/containers/backend/json"))) == 200
    assert status_of(exchange(proxy, raw_request("GET", "/v1.41/containers/db/json"))) == 403
    missing = exchange(proxy, raw_request("GET", "/v1.41/containers/gone/json"))
    assert status_of(missing) == 404 and "No such container" in message_of(missing)


@pytest.mark.parametrize("body, status", [
    (b'{"Cmd": ["sh"], "Privileged": true}', 403), (b'{"privileged": true}', 403),
    (b'{"PRIVILEGED": 1}', 403), (b"not json", 400), (b"[1]", 400),
])
def test_privileged_or_malformed_exec_configurations_are_refused(loop_thread, fake_docker, body, status):
    fake, upstream = fake_docker
    with running_proxy(loop_thread, upstream) as port:  # no label restriction
        response = exchange(port, raw_request("POST", "/containers/backend/exec", body))

    assert status_of(response) == status
    assert fake.requests == []


# -- responses --------------------------------------------------------------------------


def test_exec_start_upgrades_to_a_tunnel_both_ways(loop_thread, fake_docker):
    fake, upstream = fake_docker
    with running_proxy(loop_thread, upstream) as port:
        response = exchange(port, raw_request("POST", f"/v1.41/exec/{'e' * 64}/start", b'{"Tty": false}',
                                          headers="Connection: Upgrade\r\nUpgrade: tcp\r\n"), then=b"stdin!")

    head, _, stream = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert stream == b"echo:stdin!"
    assert b"Connection: Upgrade\r\nUpgrade: tcp\r\n" in fake.requests[0]


def test_an_upgrade_is_only_asked_for_exec_start(proxy, fake_docker):
    fake, _ = fake_docker

    exchange(proxy, raw_request("GET", "/_ping", headers="Connection: Upgrade\r\nUpgrade: tcp\r\n"))

    assert b"upgrade" not in fake.requests[0].lower().replace(b"connection: close", b"")


def test_chunked_answers_are_relayed_intact(loop_thread, fake_docker):
    _, upstream = fake_docker
    with running_proxy(loop_thread, upstream, rules=(*RULES, _rule("test", "GET", "/chunked"))) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/chunked")
        answer = conn.getresponse()
        assert answer.read() == b"hello, world"
        assert answer.getheader("Connection") == "close"
        conn.close()


def test_an_unreachable_docker_socket_is_a_502(loop_thread, tmp_path):
    with running_proxy(loop_thread, str(tmp_path / "missing.sock")) as port:
        response = exchange(port, raw_request("GET", "/_ping"))

    assert status_of(response) == 502 and "Docker socket" in message_of(response)


def test_container_labels_are_parsed_from_key_value_pairs():
    assert parse_labels("a=1, b.c=x=y ,") == {"a": "1", "b.c": "x=y"}
    assert parse_labels("") == {}
    with pytest.raises(ValueError):
        parse_labels("novalue")


# -- through the real Docker Engine -------------------------------------------------------


@pytest.fixture
def engine_proxy(loop_thread: LoopThread) -> Callable[..., int]:
    servers = []

    def start(labels: dict[str, str] | None = None) -> int:
        server = loop_thread.run(SocketProxy("/var/run/docker.sock", container_labels=labels).start("127.0.0.1", 0))
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        loop_thread.loop.call_soon_threadsafe(server.close)


@pytest.mark.docker
def test_docker_py_and_the_executor_work_through_the_proxy(backend_container, tmp_path, engine_proxy, request):
    import docker

    from jerp_jobs.executors import DockerExecutor

    project = f"jerptest-{uuid.uuid4().hex[:8]}"
    (tmp_path / "bench" / "sites").mkdir(parents=True)
    backend = backend_container(tmp_path / "bench", project=project)
    other = backend_container(tmp_path / "bench", project=f"{project}-other")
    port = engine_proxy({"com.docker.compose.project": project, "com.docker.compose.service": "backend"})
    client = docker.DockerClient(base_url=f"tcp://127.0.0.1:{port}", timeout=30)
    request.addfinalizer(client.close)

    assert client.ping()
    listed = [c["Id"] for c in client.api.containers()]  # the list itself, as the executor reads it
    assert backend.id in listed and other.id in listed
    executor = DockerExecutor(project=project, client_factory=lambda: client)
    result = executor.run(["sh", "-c", "seq 1 20000; echo to-stderr >&2; exit 7"], timeout=30)
    assert result.exit_code == 7
    assert result.output.splitlines()[-2:] == ["20000", "to-stderr"]
    assert executor.run(["id", "-un"], timeout=30).output.strip() == "frappe"

    with pytest.raises(docker.errors.APIError) as refused:
        client.images.list()
    assert refused.value.status_code == 403
    with pytest.raises(docker.errors.APIError) as refused:
        client.containers.create("jerp-test/standin-backend:latest", ["true"])
    assert refused.value.status_code == 403
    with pytest.raises(docker.errors.APIError) as refused:
        client.api.exec_create(other.id, ["true"])
    assert refused.value.status_code == 403
    with pytest.raises(docker.errors.APIError) as refused:
        client.api.inspect_container(other.id)  # its environment may hold secrets
    assert refused.value.status_code == 403
    with pytest.raises(docker.errors.APIError) as refused:
        client.api.exec_create(backend.id, ["true"], privileged=True)
    assert refused.value.status_code == 403
