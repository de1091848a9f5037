"""The Docker socket proxy (jerp_jobs.socket_proxy): its allowlist and HTTP handling against a
scripted Docker API on a Unix socket, then docker-py and the Docker executor through it
against the real Docker Engine."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from jerp_jobs.socket_proxy import RULES, SocketProxy, _rule, parse_labels
from tests.naming import BACKEND_IMAGE, unique_name

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


def created_exec(port: int, container: str = "backend") -> str:
    """Create an exec through the proxy (as the bench user) and return its id."""
    body = json.dumps({"Cmd": ["true"], "User": "frappe"}).encode()
    response = exchange(port, raw_request("POST", f"/v1.41/containers/{container}/exec", body))
    assert status_of(response) == 201, response
    return json.loads(response.split(b"\r\n\r\n", 1)[1])["Id"]


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
    exec_id = created_exec(proxy)
    fake.requests.clear()

    exchange(proxy, raw_request("POST", f"/exec/{exec_id}/start", hidden,
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

    response = exchange(proxy, raw_request("POST", target, b'{"Cmd": ["sh"], "User": "frappe"}'))

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
        exec_id = created_exec(port)
        response = exchange(port, raw_request("POST", f"/v1.41/exec/{exec_id}/start", b'{"Tty": false}',
                                          headers="Connection: Upgrade\r\nUpgrade: tcp\r\n"), then=b"stdin!")

    head, _, stream = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert stream == b"echo:stdin!"
    assert b"Connection: Upgrade\r\nUpgrade: tcp\r\n" in fake.requests[-1]


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


# -- deploying (--allow-deploy): what DockerDeployer calls, for the platform's containers only ---

FRONTEND_ID = "f" * 64
PLATFORM = {"com.docker.compose.project": "jerp"}
CREATE_BODY = {
    "Image": "reg.example.com/erp:r2", "Env": ["A=1"],
    "Labels": {"com.docker.compose.project": "jerp", "com.docker.compose.service": "frontend"},
    "HostConfig": {
        "Binds": ["jerp_frappe-sites:/home/frappe/frappe-bench/sites:rw", f"{'a' * 64}:/scratch"],
        "NetworkMode": "jerp_default", "Privileged": False, "CapAdd": None, "Devices": [], "PidMode": "",
        "IpcMode": "private", "SecurityOpt": None, "RestartPolicy": {"Name": "unless-stopped"},
        "Mounts": [{"Type": "tmpfs", "Target": "/tmp"}, {"Type": "volume", "Source": "jerp_logs", "Target": "/l"}],
        "MaskedPaths": ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                        "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
        "ReadonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    },
    "NetworkingConfig": {"EndpointsConfig": {"jerp_default": {"Aliases": ["frontend"]}}},
}


class DeployingDocker(FakeDocker):
    """FakeDocker answering the deploy calls too (create 201, start/stop/rename/remove 204)."""

    def __init__(self) -> None:
        super().__init__()
        self.containers["frontend"] = {"Id": FRONTEND_ID, "Config": {"Labels": {
            **PLATFORM, "com.docker.compose.service": "frontend"}}}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        method, target = head.split(b" ")[:2]
        path = target.decode().split("?")[0]
        if path.endswith("/containers/create"):
            self._json(writer, 201, {"Id": "n" * 64, "Warnings": []})
        elif method == b"DELETE" or path.rsplit("/", 1)[1] in ("start", "stop", "rename"):
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif path.startswith("/containers/") and path.endswith("/json"):
            ref = path.split("/")[2]
            info = next((c for name, c in self.containers.items() if ref in (name, c["Id"])), None)
            self._json(writer, 200 if info else 404, info or {"message": f"No such container: {ref}"})
        else:
            self._json(writer, 200, {"Id": "sha256:" + "1" * 64})
        await writer.drain()
        writer.close()


@pytest.fixture
def deploying_docker(loop_thread: LoopThread, tmp_path: Path) -> Iterator[tuple[DeployingDocker, str]]:
    fake = DeployingDocker()
    path = str(tmp_path / "docker-deploying.sock")
    server = loop_thread.run(asyncio.start_unix_server(fake.handle, path))
    yield fake, path
    loop_thread.loop.call_soon_threadsafe(server.close)


@pytest.fixture
def deploy_proxy(loop_thread: LoopThread, deploying_docker: tuple[DeployingDocker, str]) -> Iterator[int]:
    """The proxy as the jobs stack runs it for deploying: exec limited to the backend, deploy
    calls to the containers of compose project ``jerp`` (the default deploy labels)."""
    proxy = SocketProxy(deploying_docker[1], container_labels=BACKEND_LABELS, allow_deploy=True,
                        deploy_networks=["proxy"])
    assert proxy.deploy_labels == PLATFORM
    server = loop_thread.run(proxy.start("127.0.0.1", 0))
    yield server.sockets[0].getsockname()[1]
    loop_thread.loop.call_soon_threadsafe(server.close)


def create_request(body: object, target: str = "/v1.41/containers/create?name=jerp_frontend_1_next") -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return raw_request("POST", target, data, headers="Content-Type: application/json\r\n")


def with_host(**settings: object) -> dict[str, object]:
    return {**CREATE_BODY, "HostConfig": {**CREATE_BODY["HostConfig"], **settings}}


def test_deploy_calls_stay_refused_without_the_option(proxy, fake_docker):
    fake, _ = fake_docker
    for raw in (create_request(CREATE_BODY), raw_request("POST", "/containers/backend/stop"),
                raw_request("GET", "/v1.41/images/reg.example.com/erp:r2/json"),
                raw_request("POST", "/networks/jerp_default/connect", b'{"Container": "backend"}')):
        assert status_of(exchange(proxy, raw)) == 403
    assert fake.requests == []


def test_a_labelled_container_that_stays_off_the_host_is_created(deploy_proxy, deploying_docker):
    fake, _ = deploying_docker
    raw = create_request(CREATE_BODY)

    response = exchange(deploy_proxy, raw)

    assert status_of(response) == 201
    [sent] = fake.requests
    assert sent.startswith(b"POST /v1.41/containers/create?name=jerp_frontend_1_next HTTP/1.1\r\n")
    assert sent.endswith(raw.split(b"\r\n\r\n", 1)[1])


LONG_S = "\u017f"
KELVIN = "\u212a"


@pytest.mark.parametrize("body, status, words", [
    pytest.param({**CREATE_BODY, "Labels": {"com.docker.compose.service": "frontend"}}, 403, "labels", id="no-labels"),
    pytest.param({**CREATE_BODY, "Labels": {"com.docker.compose.project": "other"}}, 403, "labels",
                 id="other-project"),
    pytest.param(with_host(Privileged=True), 403, "privileged", id="privileged"),
    pytest.param({**CREATE_BODY, "Privileged": True}, 403, "top level", id="privileged-at-the-top-level"),
    pytest.param({**CREATE_BODY, "hostconfig": {"privileged": True}, "HostConfig": None}, 400, "given 2 times",
                 id="hostconfig-twice"),
    pytest.param({**CREATE_BODY, "HostConfig": {"privileged": 1}}, 403, "privileged", id="lower-case"),
    pytest.param(b'{"Labels": {"com.docker.compose.project": "jerp"}, "HostConfig": '
                 b'{"Privileged": false, "PRIVILEGED": true}}', 400, "given 2 times", id="two-spellings"),
    pytest.param(with_host(CapAdd=["SYS_ADMIN"]), 403, "CapAdd", id="cap-add"),
    pytest.param(with_host(Capabilities=["CAP_SYS_ADMIN"]), 403, "Capabilities", id="capabilities"),
    pytest.param(with_host(Devices=[{"PathOnHost": "/dev/sda"}]), 403, "Devices", id="devices"),
    pytest.param(with_host(DeviceCgroupRules=["a *:* rwm"]), 403, "DeviceCgroupRules", id="device-rules"),
    pytest.param(with_host(PidMode="host"), 403, "PidMode", id="pid-host"),
    pytest.param(with_host(IpcMode="host"), 403, "IpcMode", id="ipc-host"),
    pytest.param(with_host(NetworkMode="host"), 403, "NetworkMode", id="network-host"),
    pytest.param(with_host(NetworkMode="container:docker-proxy"), 403, "NetworkMode", id="network-container"),
    pytest.param(with_host(UsernsMode="host"), 403, "UsernsMode", id="userns-host"),
    pytest.param(with_host(UTSMode="host"), 403, "UTSMode", id="uts-host"),
    pytest.param(with_host(SecurityOpt=["seccomp=unconfined"]), 403, "security option", id="seccomp"),
    pytest.param(with_host(SecurityOpt=["apparmor=unconfined"]), 403, "security option", id="apparmor"),
    pytest.param(with_host(SecurityOpt=["label=disable"]), 403, "security option", id="selinux"),
    pytest.param(with_host(Binds=["/:/host"]), 403, "not a named volume", id="bind-root"),
    pytest.param(with_host(Binds=["/var/run/docker.sock:/var/run/docker.sock"]), 403, "not a named volume",
                 id="bind-docker-socket"),
    pytest.param(with_host(Binds=["./here:/x"]), 403, "not a named volume", id="bind-relative"),
    pytest.param(with_host(Binds=["jobs_redis-data:/x"]), 403, "of the platform", id="another-stacks-volume"),
    pytest.param({**CREATE_BODY, "Binds": ["/etc:/host-etc"]}, 403, "top level", id="binds-at-the-top-level"),
    pytest.param({**CREATE_BODY, "HostConfig": {f"Bind{LONG_S}": ["/:/host"]}}, 403, "named volume",
                 id="binds-spelled-with-long-s"),
    pytest.param({**CREATE_BODY, "HostConfig": {f"Networ{KELVIN}Mode": "host"}}, 403, "NetworkMode",
                 id="network-mode-spelled-with-kelvin"),
    pytest.param(with_host(Mounts=[{"Type": "bind", "Source": "/", "Target": "/host"}]), 403, "mounts",
                 id="mount-bind"),
    pytest.param(with_host(Mounts=[{"Type": "volume", "Source": "jerp_x", "Target": "/x", "VolumeOptions": {
        "DriverConfig": {"Name": "local", "Options": {"type": "none", "o": "bind", "device": "/"}}}}]), 403,
        "driver options", id="volume-binding-a-host-path"),
    pytest.param(with_host(VolumesFrom=["docker-proxy"]), 403, "VolumesFrom", id="volumes-from"),
    pytest.param(with_host(VolumeDriver="evil"), 403, "volume driver", id="volume-driver"),
    pytest.param(with_host(Runtime="sysbox"), 403, "runtime", id="runtime"),
    pytest.param(with_host(CgroupParent="/"), 403, "CgroupParent", id="cgroup-parent"),
    pytest.param(with_host(MaskedPaths=[]), 403, "MaskedPaths", id="unmasked-proc"),
    pytest.param(with_host(ReadonlyPaths=["/proc/sys"]), 403, "ReadonlyPaths", id="writable-sysrq-trigger"),
    pytest.param({**CREATE_BODY, "NetworkingConfig": {"EndpointsConfig": {"host": {}}}}, 403, "host network",
                 id="endpoint-host"),
    pytest.param(b"not json", 400, "not JSON", id="not-json"),
    pytest.param(b"[]", 400, "not a JSON object", id="not-an-object"),
])
def test_a_create_that_is_not_the_platforms_or_reaches_the_host_is_refused(deploy_proxy, deploying_docker, body,
                                                                           status, words):
    fake, _ = deploying_docker

    response = exchange(deploy_proxy, create_request(body))

    assert status_of(response) == status
    assert words.lower() in message_of(response).lower()
    assert fake.requests == []


@pytest.mark.parametrize("method, target, forwarded", [
    ("POST", "/v1.41/containers/frontend/stop?t=10", f"POST /v1.41/containers/{FRONTEND_ID}/stop?t=10 "),
    ("POST", "/containers/frontend/start", f"POST /containers/{FRONTEND_ID}/start "),
    ("POST", "/v1.41/containers/frontend/rename?name=jerp_frontend_1_old",
     f"POST /v1.41/containers/{FRONTEND_ID}/rename?name=jerp_frontend_1_old "),
    ("DELETE", "/v1.41/containers/frontend?v=False&link=False&force=True",
     f"DELETE /v1.41/containers/{FRONTEND_ID}?v=False&link=False&force=True "),
    ("GET", "/v1.41/containers/frontend/json", f"GET /v1.41/containers/{FRONTEND_ID}/json "),
])
def test_lifecycle_calls_on_a_platform_container_are_forwarded_by_its_full_id(deploy_proxy, deploying_docker,
                                                                             method, target, forwarded):
    fake, _ = deploying_docker

    response = exchange(deploy_proxy, raw_request(method, target))

    assert status_of(response) in (200, 204)
    inspect, sent = fake.requests
    assert inspect.startswith(b"GET /containers/frontend/json ")
    assert sent.startswith(forwarded.encode())


@pytest.mark.parametrize("method, target", [
    ("POST", "/v1.41/containers/db/stop"), ("POST", "/containers/db/start"), ("DELETE", f"/containers/{DB_ID}"),
    ("POST", "/containers/db/rename?name=x"), ("GET", "/v1.41/containers/db/json"),
])
def test_lifecycle_calls_on_other_containers_are_refused(deploy_proxy, deploying_docker, method, target):
    fake, _ = deploying_docker

    response = exchange(deploy_proxy, raw_request(method, target))

    assert status_of(response) == 403 and "labels" in message_of(response)
    [inspect] = fake.requests  # only the proxy's own look at the labels
    assert inspect.startswith(b"GET /containers/")


def test_exec_stays_limited_to_the_backend_when_deploying(deploy_proxy, deploying_docker):
    response = exchange(deploy_proxy, raw_request("POST", "/containers/frontend/exec", b'{"Cmd": ["sh"]}'))
    assert status_of(response) == 403


def test_a_start_with_a_body_is_refused(deploy_proxy, deploying_docker):
    fake, _ = deploying_docker
    body = json.dumps({"Privileged": True, "Binds": ["/:/host"]}).encode()  # API < 1.24 would read this

    response = exchange(deploy_proxy, raw_request("POST", "/v1.23/containers/frontend/start", body))

    assert status_of(response) == 400 and fake.requests == []


def test_a_network_connect_names_the_container_by_its_full_id(deploy_proxy, deploying_docker):
    fake, _ = deploying_docker
    body = json.dumps({"Container": "frontend", "EndpointConfig": {"Aliases": ["frontend"]}}).encode()

    assert status_of(exchange(deploy_proxy, raw_request("POST", "/v1.41/networks/proxy/connect", body))) == 200

    inspect, sent = fake.requests
    assert inspect.startswith(b"GET /containers/frontend/json ")
    assert sent.startswith(b"POST /v1.41/networks/proxy/connect HTTP/1.1\r\n")
    assert json.loads(sent.split(b"\r\n\r\n", 1)[1]) == {"EndpointConfig": {"Aliases": ["frontend"]},
                                                          "Container": FRONTEND_ID}
    refused = exchange(deploy_proxy, raw_request("POST", "/networks/proxy/connect", b'{"Container": "db"}'))
    assert status_of(refused) == 403


@pytest.mark.parametrize("target, status", [
    ("/v1.41/images/reg.example.com:5000/team/erp:r2/json", 200),
    ("/images/sha256:" + "1" * 64 + "/json", 200),
    ("/images/json", 403),
    ("/images/a/../../containers/json", 403),
    ("/images/a/../b/json", 403),
    ("/images/a//b/json", 403),
    ("/images/erp:r2/history", 403),
])
def test_image_inspection_is_read_only(deploy_proxy, deploying_docker, target, status):
    assert status_of(exchange(deploy_proxy, raw_request("GET", target))) == status


def test_deploying_needs_labels(tmp_path, monkeypatch):
    from jerp_jobs.socket_proxy import default_deploy_labels, main

    with pytest.raises(ValueError):
        SocketProxy(str(tmp_path / "docker.sock"), allow_deploy=True)
    assert default_deploy_labels({"a": "1"}) == {"a": "1"}
    assert SocketProxy("x", container_labels=BACKEND_LABELS, deploy_labels={"b": "2"}).deploy_labels == {"b": "2"}
    for name in ("JERP_PROXY_CONTAINER_LABELS", "JERP_PROXY_DEPLOY_LABELS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JERP_PROXY_ALLOW_DEPLOY", "1")
    with pytest.raises(SystemExit):
        main([])


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

    project = unique_name("proxy")
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
    # stdin (answers to bench's password prompts) crosses the proxy's tunnel, then end of file
    fed = executor.run(["sh", "-c", "read a; read b; echo \"$b/$a\"; cat"], timeout=30, stdin=b"one\ntwo\n")
    assert (fed.exit_code, fed.output) == (0, "two/one")

    with pytest.raises(docker.errors.APIError) as refused:
        client.images.list()
    assert refused.value.status_code == 403
    with pytest.raises(docker.errors.APIError) as refused:
        client.containers.create(BACKEND_IMAGE, ["true"])
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
