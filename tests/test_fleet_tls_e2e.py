"""A bench reached over TCP with TLS client certificates, against the real Docker Engine.

The certificates are made with the ``openssl`` command line, as docs/fleet.md tells an operator
to: a CA, the proxy's server certificate (for 127.0.0.1) and a client certificate signed by it,
and a second CA with a client certificate of its own. The socket proxy runs as its own process
(``python -m jerp_jobs.socket_proxy`` with the TLS options) on a free loopback port in front of
the Docker socket; the bench is declared in a fleet file and reached through
:func:`jerp_jobs.executors.docker.bench_executor`, as a worker of that bench would.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from jerp_jobs.errors import ExecutorUnavailable
from jerp_jobs.executors.docker import bench_client_factory, bench_executor
from jerp_jobs.fleet import Bench, read_fleet_file
from tests.fleet_stacks import Proxy, make_ca, make_cert
from tests.naming import BACKEND_IMAGE, unique_name
from tests.private_redis import free_port

if TYPE_CHECKING:
    from docker.models.containers import Container

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
PROXY_START_S = 30.0


@dataclass
class Certs:
    folder: Path

    def __getitem__(self, name: str) -> Path:
        return self.folder / name


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA with the proxy's certificate and a client's; another CA with a client of its own."""
    folder = tmp_path_factory.mktemp("certs")
    make_ca(folder, "ca")
    make_cert(folder, "ca", "server", usage="serverAuth", alt_names="IP:127.0.0.1,DNS:localhost")
    make_cert(folder, "ca", "client", usage="clientAuth")
    make_ca(folder, "other-ca")
    make_cert(folder, "other-ca", "stranger", usage="clientAuth")
    return Certs(folder)


@pytest.fixture
def tls_proxy(certs: Certs, tmp_path: Path) -> Iterator[Callable[[str], Proxy]]:
    """Starts ``python -m jerp_jobs.socket_proxy`` with TLS on a free loopback port, allowing exec
    in the backend of compose project ``project``; stops it after the test."""
    started: list[Proxy] = []

    def start(project: str) -> Proxy:
        port = free_port()
        log = tmp_path / f"proxy-{port}.log"
        env = {**os.environ, "JERP_PROXY_TLS_CERT": str(certs["server-cert.pem"]),
               "JERP_PROXY_TLS_KEY": str(certs["server-key.pem"])}
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "jerp_jobs.socket_proxy", "--listen", f"127.0.0.1:{port}",
                 "--upstream", "/var/run/docker.sock", "--tls-client-ca", str(certs["ca.pem"]),
                 "--container-labels", f"com.docker.compose.project={project},com.docker.compose.service=backend"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        proxy = Proxy(port, process, log)
        started.append(proxy)
        deadline = time.monotonic() + PROXY_START_S
        while True:
            assert process.poll() is None, f"the proxy exited: {proxy.output()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proxy
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the proxy does not listen on {port}: {proxy.output()}")
                time.sleep(0.05)

    yield start
    for proxy in started:
        proxy.process.terminate()
        try:
            proxy.process.wait(10)
        except subprocess.TimeoutExpired:
            proxy.process.kill()
            proxy.process.wait()


def wait_for_log(proxy: Proxy, text: str, *, limit: float = 30.0) -> None:
    """Wait until the proxy's log holds ``text`` (it writes a refusal after closing the connection)."""
    deadline = time.monotonic() + limit
    while text not in proxy.output():
        if time.monotonic() > deadline:
            pytest.fail(f"the proxy never logged {text!r}: {proxy.output()}")
        time.sleep(0.05)


def fleet_bench(tmp_path: Path, certs: Certs, port: int, project: str, *, cert: str = "client") -> Bench:
    """The bench as a fleet file declares it: Docker at the proxy, with the client's certificate."""
    path = tmp_path / "fleet.toml"
    path.write_text(f"""
[[bench]]
name = "remote"
role = "production"
docker = "tcp://127.0.0.1:{port}"
compose_project = "{project}"

[bench.tls]
ca = "{certs['ca.pem']}"
cert = "{certs[cert + '-cert.pem']}"
key = "{certs[cert + '-key.pem']}"
""")
    return read_fleet_file(path).get("remote")


@pytest.fixture
def remote(backend_container: Callable[..., Container], tls_proxy: Callable[[str], Proxy], certs: Certs,
           tmp_path: Path) -> tuple[Bench, Proxy, Container, Container]:
    """A bench's backend, another project's container on the same host, the TLS proxy, the bench."""
    project = unique_name("fleet")
    (tmp_path / "bench" / "sites").mkdir(parents=True)
    backend = backend_container(tmp_path / "bench", project=project)
    other = backend_container(tmp_path / "bench", project=f"{project}-other")
    proxy = tls_proxy(project)
    return fleet_bench(tmp_path, certs, proxy.port, project), proxy, backend, other


def test_the_executor_runs_commands_in_the_benchs_backend_over_tls(remote, monkeypatch: pytest.MonkeyPatch) -> None:
    # a CA bundle in the environment (requests reads it) does not replace the bench's CA
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ssl.get_default_verify_paths().openssl_cafile)
    bench, _, backend, _ = remote
    executor = bench_executor(bench, kill_grace=1.0)

    lines: list[str] = []
    result = executor.run(["sh", "-c", "id -un; seq 1 20000; echo to-stderr >&2; exit 7"], timeout=60,
                          on_output=lines.append)
    assert result.exit_code == 7
    assert lines == ["frappe", *map(str, range(1, 20001)), "to-stderr"]  # every line, in order
    assert result.output.splitlines()[-2:] == ["20000", "to-stderr"]
    assert executor.find_container()["Id"] == backend.id
    # stdin (answers to bench's prompts) ends after its bytes, though TLS cannot be half-closed
    fed = executor.run(["sh", "-c", 'read a; read b; echo "$b/$a"; cat; echo end'], timeout=60, stdin=b"one\ntwo\n")
    assert (fed.exit_code, fed.output) == (0, "two/one\nend")
    empty = executor.run(["sh", "-c", "cat; echo done"], timeout=60, stdin=b"")
    assert (empty.exit_code, empty.output) == (0, "done")


def test_output_arrives_while_the_command_runs_over_tls(remote, tmp_path: Path) -> None:
    bench, _, _, _ = remote
    executor = bench_executor(bench, kill_grace=1.0)
    script = (
        "echo first; "
        "i=0; while [ ! -e sites/tls-marker ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; "
        "if [ -e sites/tls-marker ]; then echo 'marker seen'; else echo 'marker missing'; fi"
    )
    seen: list[str] = []

    def on_output(line: str) -> None:
        seen.append(line)
        if line == "first":
            (tmp_path / "bench" / "sites" / "tls-marker").touch()

    result = executor.run(["sh", "-c", script], timeout=60, on_output=on_output)
    assert seen == ["first", "marker seen"] and result.exit_code == 0


def _client(bench: Bench):
    return bench_client_factory(bench)()


def test_the_allowlist_still_applies_over_tls(remote, request) -> None:
    import docker

    bench, _, backend, other = remote
    client = _client(bench)
    request.addfinalizer(client.close)

    assert client.ping()
    for call in (client.images.list, lambda: client.containers.create(BACKEND_IMAGE, ["true"]),
                 lambda: client.api.exec_create(other.id, ["true"]),
                 lambda: client.api.inspect_container(other.id),
                 lambda: client.api.exec_create(backend.id, ["true"], privileged=True),
                 lambda: client.api.exec_create(backend.id, ["true"], user="root")):
        with pytest.raises(docker.errors.APIError) as refused:
            call()
        assert refused.value.status_code == 403


def _tls_client_context(certs: Certs, cert: str | None, *, tls12: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs["ca.pem"]))
    if cert is not None:
        context.load_cert_chain(str(certs[f"{cert}-cert.pem"]), str(certs[f"{cert}-key.pem"]))
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def _ping(context: ssl.SSLContext, port: int) -> bytes:
    """``GET /_ping`` over TLS: what comes back (SSLError/ConnectionError when refused)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
            answer = b""
            while chunk := tls.recv(4096):
                answer += chunk
            return answer


@pytest.mark.parametrize("cert", [None, "stranger"], ids=["no-certificate", "another-ca"])
def test_a_client_without_a_certificate_of_the_ca_is_refused_in_the_handshake(remote, certs: Certs,
                                                                              cert: str | None) -> None:
    import docker

    bench, proxy, _, _ = remote
    assert _ping(_tls_client_context(certs, "client"), proxy.port).startswith(b"HTTP/1.1 200")

    # TLS 1.2: the handshake itself fails
    with pytest.raises(ssl.SSLError):
        _ping(_tls_client_context(certs, cert, tls12=True), proxy.port)
    # TLS 1.3: the client's side of the handshake ends before the server checks the client's
    # certificate; the server's refusal (an alert, a closed connection) is all that comes back
    try:
        answer = _ping(_tls_client_context(certs, cert), proxy.port)
    except (ssl.SSLError, ConnectionError):
        answer = b""
    assert answer == b""
    wait_for_log(proxy, "refuse a TLS client from 127.0.0.1:")

    # the executor of a bench holding such a certificate cannot reach Docker
    if cert is None:
        import requests
        from docker.tls import TLSConfig

        from jerp_jobs.executors.docker import _pinned_ca_client

        api = _pinned_ca_client()(base_url=bench.docker, tls=TLSConfig(ca_cert=str(certs["ca.pem"]), verify=True),
                                  version="1.41", timeout=10)
        with pytest.raises((docker.errors.DockerException, requests.exceptions.RequestException)) as refused:
            api.ping()
        assert "CERTIFICATE_VERIFY_FAILED" not in str(refused.value)  # the client trusts the proxy: it is refused
        api.close()
    else:
        stranger = fleet_bench(proxy.log.parent, certs, proxy.port, bench.compose_project, cert="stranger")
        with pytest.raises(ExecutorUnavailable, match="Docker API"):
            bench_executor(stranger).run(["true"], timeout=30)


def test_plain_http_to_the_tls_port_gets_no_answer(remote) -> None:
    _, proxy, _, _ = remote
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
        raw.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
        answer = b""
        try:
            while chunk := raw.recv(4096):
                answer += chunk
        except ConnectionError:
            pass
    assert b"OK" not in answer and not answer.startswith(b"HTTP/1.1 200")


def test_the_proxy_does_not_start_with_a_key_that_is_not_its_certificates(certs: Certs) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jerp_jobs.socket_proxy", "--listen", "127.0.0.1:0",
         "--tls-cert", str(certs["server-cert.pem"]), "--tls-key", str(certs["client-key.pem"]),
         "--tls-client-ca", str(certs["ca.pem"])],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "server-cert.pem" in result.stderr and "client-key.pem" in result.stderr
