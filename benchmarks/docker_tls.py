"""The Docker executor through the socket proxy: plain HTTP (one host) against TLS with client
certificates (a bench on another host), side by side in the same run.

Makes a throwaway CA and certificates with ``openssl`` (a temporary folder), starts a container
of the stand-in backend image with compose labels, and two socket proxies on loopback ports
(``python -m jerp_jobs.socket_proxy``, one with ``--tls-*``). Measures, for each:

- a short command (``true``): median and p95 wall time of ``DockerExecutor.run`` over ``--runs``
  runs (container lookup, exec create, start, inspect: each a new connection, so TLS pays a
  handshake per call);
- a long output: ``seq 1 N`` streamed back (seconds and lines per second).

    JERP_TEST_ID=<id> .venv/bin/python benchmarks/docker_tls.py [--runs 50] [--lines 200000] [--json]

The image is this checkout's stand-in backend (tests/naming.py, built by tests/images/build.sh);
the container and the proxies are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)


def make_certs(folder: Path) -> None:
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(folder, "req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "1", "-subj", "/CN=ca",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, usage, alt in (("server", "serverAuth", "subjectAltName=IP:127.0.0.1"), ("client", "clientAuth", "")):
        openssl(folder, "req", *ec, "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (folder / f"{name}.ext").write_text("\n".join(filter(None, [
            "basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature", f"extendedKeyUsage={usage}", alt])) + "\n")
        openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-out", f"{name}-cert.pem", "-days", "1", "-extfile", f"{name}.ext")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_proxy(port: int, project: str, tls: list[str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "jerp_jobs.socket_proxy", "--listen", f"127.0.0.1:{port}", *tls,
         "--container-labels", f"com.docker.compose.project={project},com.docker.compose.service=backend"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the proxy on port {port} did not start") from None
            time.sleep(0.05)


def measure(executor: Any, runs: int, lines: int) -> dict[str, float]:
    executor.run(["true"], timeout=60)  # the client and the API version, once
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        executor.run(["true"], timeout=60)
        times.append(time.perf_counter() - started)
    times.sort()
    count = 0

    def seen(_: str) -> None:
        nonlocal count
        count += 1

    started = time.perf_counter()
    executor.run(["seq", "1", str(lines)], timeout=600, on_output=seen)
    stream_s = time.perf_counter() - started
    assert count == lines, (count, lines)
    return {"true_median_ms": round(statistics.median(times) * 1000, 1),
            "true_p95_ms": round(times[int(len(times) * 0.95) - 1] * 1000, 1),
            "stream_s": round(stream_s, 2), "lines_per_s": round(lines / stream_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import docker

    from jerp_jobs.executors.docker import DockerExecutor, bench_executor
    from jerp_jobs.fleet import Bench, DockerTLS
    from tests.naming import BACKEND_IMAGE, LABELS, unique_name

    client = docker.from_env()
    project = unique_name("tlsbench")
    container = client.containers.run(BACKEND_IMAGE, detach=True, network_mode="host",
                                      name=f"{project}-backend-1",
                                      environment={"STANDIN_WEB_LISTEN": "127.0.0.1:0"},
                                      labels={**LABELS, "com.docker.compose.project": project,
                                              "com.docker.compose.service": "backend"})
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            certs = Path(tmp)
            make_certs(certs)
            plain_port, tls_port = free_port(), free_port()
            processes.append(start_proxy(plain_port, project, []))
            processes.append(start_proxy(tls_port, project, [
                "--tls-cert", str(certs / "server-cert.pem"), "--tls-key", str(certs / "server-key.pem"),
                "--tls-client-ca", str(certs / "ca.pem")]))
            plain = DockerExecutor(project=project, client_factory=lambda: docker.DockerClient(
                base_url=f"tcp://127.0.0.1:{plain_port}", timeout=60))
            bench = Bench(name="bench", role="production", group="default", docker=f"tcp://127.0.0.1:{tls_port}",
                          compose_project=project, backend_service="backend", queue="jerp.site.bench",
                          tls=DockerTLS(ca=certs / "ca.pem", cert=certs / "client-cert.pem",
                                        key=certs / "client-key.pem"))
            results = {"plain": measure(plain, args.runs, args.lines),
                       "tls": measure(bench_executor(bench), args.runs, args.lines)}
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        container.remove(force=True)
    info = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "runs": args.runs, "lines": args.lines, **results}
    if args.json:
        print(json.dumps(info, sort_keys=True))
        return
    print(f"{info['machine']}; {args.runs} runs of `true`, `seq 1 {args.lines}` streamed")
    print(f"{'':<8} {'true median':>12} {'true p95':>10} {'stream':>8} {'lines/s':>10}")
    for name, r in results.items():
        print(f"{name:<8} {r['true_median_ms']:>10} ms {r['true_p95_ms']:>7} ms {r['stream_s']:>6} s {r['lines_per_s']:>10}")


if __name__ == "__main__":
    main()
