"""A fleet of stand-in platform stacks on this machine's Docker Engine, each a "host" of its own.

Each stack (:class:`Stack`) is what one Docker host of a fleet holds:

- its own compose project (``jt<id>-stack-<bench>-<random>``, tests/naming.py) and its own
  Docker network ``<project>_default``;
- its own MariaDB (``<project>-db-1``, the test MariaDB image) with a root password of its own,
  published on a free loopback port so the test can read the data;
- its own stand-in backend (``<project>-backend-1``, compose labels of the ``backend`` service):
  the stand-in bench inside, its sites on the volume ``<project>_sites`` (a folder of the test
  bound as a local volume, as tests/compose/platform.yml does, so the test and the bench's worker
  read the files the bench writes);
- its own socket proxy (``python -m jerp_jobs.socket_proxy``) on its own loopback port, with TLS:
  its own server certificate, client certificates of the fleet's CA required, exec allowed only
  in this stack's backend.

The fleet (:class:`StackFleet`) has one CA, a client certificate per bench, a fleet file
declaring every bench as ``tcp://127.0.0.1:<proxy port>`` with TLS, its ``sites_dir`` and an
env file of its own credentials (``MARIADB_ROOT_PASSWORD`` of its MariaDB, its own
``FRAPPE_ADMIN_PASSWORD``), one worker per bench (``JERP_BENCH``, ``JERP_EXECUTOR=docker``) and
one control worker (no ``JERP_BENCH``: the control queue), all on the real Redis of
tests/services/up.sh (database :data:`tests.conftest.REDIS_DB`, emptied before and after).

Everything made is removed at the end, also when building the fleet fails half way: workers,
proxies, containers (with their anonymous volumes), the sites volumes and the networks.

Use :func:`fleet_stacks` (a module-scoped fixture: import it into the test module) or build one
with :func:`build_fleet` inside a ``with`` block. Scenarios act on it through
:meth:`StackFleet.jerpctl` / :meth:`StackFleet.run_job` (jerpctl as the control plane runs it),
:meth:`StackFleet.start_worker` / :meth:`StackFleet.kill_worker` / :meth:`StackFleet.restart_worker`,
:meth:`StackFleet.write_env_file` (a bench's credentials, with ``extra`` variables such as its
Portainer webhook or frontend URL), :meth:`StackFleet.runtime` (the control plane's runtime in
the test process), and per stack :meth:`Stack.new_site`, :meth:`Stack.has_site`,
:meth:`Stack.backup_files`, :meth:`Stack.sql` / :meth:`Stack.databases` / :meth:`Stack.fingerprint` (its own MariaDB),
:meth:`Stack.bench` (the bench inside its backend), :meth:`Stack.redeploy` (the backend
recreated from another image, as a stack redeploy does) and :attr:`Stack.web_url` (its web
server, for smoke checks).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from tests import naming
from tests.conftest import REDIS_DB
from tests.docker_backend import BENCH_PATH, PROJECT_LABEL, SERVICE_LABEL, SITES_PATH, _make_writable_by_frappe
from tests.standin.layout import create_bench
from tests.workers import VENV_BIN, WorkerProcess, wait_for

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

ROOT = Path(__file__).resolve().parent.parent
PROXY_START_S = 30.0
DB_START_S = 90.0
#: the benches of the default fleet: name -> role (prod-c is the optional second production bench)
DEFAULT_BENCHES: dict[str, str] = {"prod-a": "production", "staging-b": "staging"}
THREE_BENCHES: dict[str, str] = {**DEFAULT_BENCHES, "prod-c": "production"}
CONTROL = "control"


# -- certificates (the openssl command lines of docs/fleet.md) -------------------------------

def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}-key.pem", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=folder)


def make_cert(folder: Path, ca: str, name: str, *, usage: str, alt_names: str | None = None) -> None:
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
    lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature",
             f"extendedKeyUsage={usage}", "subjectKeyIdentifier=hash", "authorityKeyIdentifier=keyid,issuer"]
    if alt_names:
        lines.append(f"subjectAltName={alt_names}")
    (folder / f"{name}.ext").write_text("\n".join(lines) + "\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}-key.pem",
            "-CAcreateserial", "-out", f"{name}-cert.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)


# -- one stack --------------------------------------------------------------------------------

@dataclass
class Proxy:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Stack:
    """One platform stack: a bench on a Docker "host" of its own."""

    bench_name: str
    role: str
    project: str
    network: str
    volume: str
    #: the folder holding the bench's sites volume (what the volume binds): the test reads it
    sites_dir: Path
    root_password: str
    admin_password: str
    db: Container
    #: the backend container (:meth:`redeploy` makes it)
    backend: Container = field(default=None)  # type: ignore[assignment]
    db_port: int = 0
    #: the loopback port of the backend's web server, kept across redeploys (:attr:`web_url`)
    web_port: int = 0
    proxy: Proxy | None = None
    env_file: Path | None = None
    client: Any = field(default=None, repr=False)

    def redeploy(self, image: str, env: Mapping[str, str] | None = None) -> Container:
        """(Re)create the stack's backend from ``image``, as a redeploy of the stack does: the same
        name, compose labels, network and sites volume (the proxy finds it by its labels); its
        web server (the stand-in's Frappe HTTP side) published on a loopback port of its own,
        the same one after every redeploy (:attr:`web_url`, the bench's frontend URL)."""
        from tests.private_redis import free_port

        if self.backend is not None:
            _remove_container(self.client, self.backend.id)
        if not self.web_port:
            self.web_port = free_port()
        self.backend = self.client.containers.run(
            image, name=f"{self.project}-backend-1", detach=True, network=self.network,
            labels=_labels(self.project, "backend"), volumes={self.volume: {"bind": SITES_PATH, "mode": "rw"}},
            environment=dict(env or {}), ports={"8000/tcp": ("127.0.0.1", self.web_port)})
        _wait_running(self.backend)
        return self.backend

    @property
    def web_url(self) -> str:
        """The stand-in web server of the backend, from this host (send the site as ``Host``)."""
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def image(self) -> str:
        """The image reference the backend runs (as it was created with)."""
        self.backend.reload()
        return self.backend.attrs["Config"]["Image"]

    @property
    def queue(self) -> str:
        return f"jerp.site.{self.bench_name}"

    def bench(self, *args: str, check: bool = True) -> tuple[int, str]:
        """``bench ARGS`` in the stack's backend, as frappe (the stand-in bench): exit code, output."""
        code, output = self.backend.exec_run(["bench", *args], user="frappe", workdir=BENCH_PATH)
        text = output.decode(errors="replace")
        if check and code != 0:
            raise AssertionError(f"bench {' '.join(args[:2])} on {self.bench_name} exited {code}: {text[-2000:]}")
        return code, text

    def new_site(self, prefix: str = "fs") -> str:
        """A new site made by the bench inside the backend (outside jerp-jobs), on the stack's MariaDB."""
        site = f"{prefix}{uuid.uuid4().hex[:8]}.example.com"
        self.bench("new-site", site, "--db-root-password", self.root_password, "--admin-password",
                   self.admin_password, "--mariadb-user-host-login-scope=%")
        return site

    def has_site(self, site: str) -> bool:
        return (self.sites_dir / site / "site_config.json").is_file()

    def site_config(self, site: str) -> dict[str, Any]:
        return json.loads((self.sites_dir / site / "site_config.json").read_text())

    def backup_files(self, site: str) -> list[Path]:
        """The backup files of ``site`` in this stack's sites volume."""
        folder = self.sites_dir / site / "private" / "backups"
        return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    def sql(self, query: str, database: str | None = None) -> list[list[str]]:
        """``query`` as root on the stack's own MariaDB (its published loopback port)."""
        argv = ["mariadb", "--protocol=tcp", "-h", "127.0.0.1", "-P", str(self.db_port), "-uroot", "-N", "-B",
                "-e", query]
        if database:
            argv.append(database)
        done = subprocess.run(argv, env={**os.environ, "MYSQL_PWD": self.root_password}, capture_output=True,
                              text=True, check=True, timeout=60)
        return [line.split("\t") for line in done.stdout.splitlines()]

    def databases(self) -> set[str]:
        return {row[0] for row in self.sql("SHOW DATABASES")}

    def fingerprint(self, database: str) -> dict[str, tuple[str, str]]:
        """Every table of ``database`` with its row count and CHECKSUM TABLE: equal fingerprints, equal data."""
        from tests.e2e_support import fingerprint_with

        return fingerprint_with(self.sql, database)


def _labels(project: str, service: str | None = None) -> dict[str, str]:
    labels = {**naming.LABELS, PROJECT_LABEL: project}
    if service is not None:
        labels.update({SERVICE_LABEL: service, "com.docker.compose.oneoff": "False",
                       "com.docker.compose.container-number": "1"})
    return labels


def _start_stack(client: docker.DockerClient, cleanup: ExitStack, folder: Path, bench_name: str,
                 role: str) -> Stack:
    """The network, sites volume, MariaDB and backend of one stack (the MariaDB may still be
    starting: :func:`_wait_for_db`)."""
    import docker as docker_sdk

    project = naming.unique_name(f"stack-{bench_name}")
    network = client.networks.create(f"{project}_default", driver="bridge",
                                      labels={**_labels(project), "com.docker.compose.network": "default"})
    cleanup.callback(_quietly, network.remove)
    db_name = f"{project}-db-1"
    bench_dir = create_bench(folder / "frappe-bench", db_host=db_name, db_port=3306)
    sites = bench_dir / "sites"
    _make_writable_by_frappe(sites)
    volume = client.volumes.create(name=f"{project}_sites", driver="local",
                                   driver_opts={"type": "none", "o": "bind", "device": str(sites)},
                                   labels={**_labels(project), "com.docker.compose.volume": "sites"})
    root_password = f"root-{bench_name}-{secrets.token_hex(8)}"
    db = client.containers.run(
        naming.MARIADB_IMAGE, ["mariadbd", "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
                               "--skip-innodb-read-only-compressed"],
        name=db_name, detach=True, network=network.name, labels=_labels(project, "db"),
        environment={"MARIADB_ROOT_PASSWORD": root_password}, ports={"3306/tcp": ("127.0.0.1", None)})
    # the containers go before the volume and the network they use (callbacks run last in, first out)
    cleanup.callback(_quietly, volume.remove, force=True)
    cleanup.callback(_remove_container, client, db.id)
    stack = Stack(bench_name=bench_name, role=role, project=project, network=network.name, volume=volume.name,
                  sites_dir=sites, root_password=root_password,
                  admin_password=f"admin-{bench_name}-{secrets.token_hex(6)}", db=db, client=client)
    cleanup.callback(lambda: stack.backend is not None and _remove_container(client, stack.backend.id))
    try:
        stack.redeploy(naming.BACKEND_IMAGE)
    except docker_sdk.errors.DockerException as exc:  # pragma: no cover - shown as the failure
        pytest.fail(f"the backend of {project} did not start: {exc}")
    return stack


def _wait_running(container: Container, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while True:
        container.reload()
        if container.status == "running":
            return
        if container.status in ("exited", "dead") or time.monotonic() > deadline:
            pytest.fail(f"container {container.name} is {container.status}: "
                        f"{container.logs(tail=40).decode(errors='replace')}", pytrace=False)
        time.sleep(0.1)


def _wait_for_db(stack: Stack) -> None:
    """Until the stack's MariaDB answers the root password on its published port."""
    deadline = time.monotonic() + DB_START_S
    while True:
        stack.db.reload()
        if stack.db.status in ("exited", "dead"):
            pytest.fail(f"the MariaDB of {stack.project} exited: {stack.db.logs(tail=40).decode(errors='replace')}",
                        pytrace=False)
        ports = stack.db.attrs["NetworkSettings"]["Ports"].get("3306/tcp") or []
        if ports:
            stack.db_port = int(ports[0]["HostPort"])
            try:
                stack.sql("SELECT 1")
                return
            except subprocess.CalledProcessError:
                pass
        if time.monotonic() > deadline:
            pytest.fail(f"the MariaDB of {stack.project} does not answer after {DB_START_S:g}s", pytrace=False)
        time.sleep(0.3)


def _remove_container(client: docker.DockerClient, container_id: str) -> None:
    import docker as docker_sdk

    try:
        client.api.remove_container(container_id, force=True, v=True)
    except docker_sdk.errors.NotFound:
        pass


def _quietly(call: Any, *args: Any, **kwargs: Any) -> None:
    import docker as docker_sdk

    try:
        call(*args, **kwargs)
    except docker_sdk.errors.NotFound:
        pass


def start_proxy(certs: Path, bench_name: str, project: str, log: Path) -> Proxy:
    """``python -m jerp_jobs.socket_proxy`` with TLS on a free loopback port: the stack's own server
    certificate, clients of the fleet's CA only, exec only in ``project``'s backend."""
    from tests.private_redis import free_port

    port = free_port()
    env = {**os.environ, "JERP_PROXY_TLS_CERT": str(certs / f"server-{bench_name}-cert.pem"),
           "JERP_PROXY_TLS_KEY": str(certs / f"server-{bench_name}-key.pem")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "jerp_jobs.socket_proxy", "--listen", f"127.0.0.1:{port}",
             "--upstream", "/var/run/docker.sock", "--tls-client-ca", str(certs / "ca.pem"),
             "--container-labels", f"{PROJECT_LABEL}={project},{SERVICE_LABEL}=backend"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    proxy = Proxy(port, process, log)
    deadline = time.monotonic() + PROXY_START_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"the proxy of {bench_name} exited: {proxy.output()}", pytrace=False)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proxy
        except OSError:
            if time.monotonic() > deadline:
                proxy.stop()
                pytest.fail(f"the proxy of {bench_name} does not listen on {port}: {proxy.output()}", pytrace=False)
            time.sleep(0.05)


# -- the fleet --------------------------------------------------------------------------------

@dataclass
class StackFleet:
    """The stacks, the fleet file, the workers and the environment jerpctl runs with."""

    folder: Path
    certs: Path
    redis_url: str
    stacks: dict[str, Stack]
    fleet_file: Path
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    #: settings of the whole fleet on top of :attr:`env` (the off-site store, the release image...):
    #: set before the workers start
    extra_env: dict[str, str] = field(default_factory=dict)
    _cleanup: ExitStack = field(default_factory=ExitStack)
    _generation: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, bench_name: str) -> Stack:
        return self.stacks[bench_name]

    @property
    def env(self) -> dict[str, str]:
        """The control plane's environment (jerpctl, the control worker): no bench, no credentials."""
        return {"JERP_BROKER_URL": self.redis_url, "JERP_FLEET_FILE": str(self.fleet_file),
                "JERP_EXECUTOR": "docker", "JERP_LOCK_TTL": "10", "JERP_INSTALL_APPS": "erpnext",
                "JERP_WORKER_PING_TIMEOUT": "2", **self.extra_env}

    def worker_env(self, bench_name: str) -> dict[str, str]:
        return {**self.env, "JERP_BENCH": bench_name}

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    # workers

    def start_worker(self, bench_name: str, *, wait: bool = True) -> WorkerProcess:
        """A worker of ``bench_name`` (or of the control plane: :data:`CONTROL`), named
        ``<bench>@host`` (``<bench>-2@host`` and so on for the next of one bench)."""
        old = self.workers.get(bench_name)
        if old is not None and old.proc.poll() is None:
            raise AssertionError(f"the worker of {bench_name} runs already")
        number = self._generation[bench_name] = self._generation.get(bench_name, 0) + 1
        name = bench_name if number == 1 else f"{bench_name}-{number}"
        env = self.env if bench_name == CONTROL else self.worker_env(bench_name)
        worker = WorkerProcess(env, name=name, log_path=self.folder / f"worker-{name}.log")
        self.workers[bench_name] = worker
        self._cleanup.callback(worker.stop)
        if wait:
            worker.wait_ready()
        return worker

    def start_workers(self) -> None:
        """A worker for every bench and the control worker, started together."""
        started = [self.start_worker(name, wait=False) for name in [*self.stacks, CONTROL]]
        for worker in started:
            worker.wait_ready()

    def kill_worker(self, bench_name: str) -> None:
        """SIGKILL the worker of ``bench_name`` (main process and pool), as a crash would."""
        worker = self.workers[bench_name]
        worker.kill()
        worker.stop()  # closes its log

    def restart_worker(self, bench_name: str) -> WorkerProcess:
        """Stop the worker of ``bench_name`` (SIGTERM: it finishes what it runs) and start a new one."""
        self.workers[bench_name].stop()
        return self.start_worker(bench_name)

    def worker_name(self, bench_name: str) -> str:
        """The name the current worker of ``bench_name`` gives Celery (``name@host``)."""
        return f"{self.workers[bench_name].name}@{socket.gethostname()}"

    # credentials

    def write_env_file(self, bench_name: str, values: Mapping[str, str] | None = None, *,
                       extra: Mapping[str, str] | None = None) -> Path:
        """Write ``bench_name``'s env file: ``values``, by default the stack's own credentials
        (the root password of its MariaDB, its admin password), with ``extra`` on top (e.g. its
        PORTAINER_WEBHOOK_URL, JERP_FRONTEND_URL, NPM or S3 secrets). A worker reads it at start:
        :meth:`restart_worker` after changing it."""
        stack = self.stacks[bench_name]
        if values is None:
            values = {"MARIADB_ROOT_PASSWORD": stack.root_password, "FRAPPE_ADMIN_PASSWORD": stack.admin_password}
        values = {**values, **(extra or {})}
        path = stack.env_file or self.folder / f"{bench_name}.env"
        path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        path.chmod(0o600)
        stack.env_file = path
        return path

    # jerpctl, as the control plane runs it

    def jerpctl(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(VENV_BIN / "jerpctl"), *args], env={**os.environ, **self.env},
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def json(self, *args: str, timeout: float = 240) -> tuple[int, Any]:
        """``jerpctl --json ARGS``: exit code and what it printed, decoded."""
        done = self.jerpctl("--json", *args, timeout=timeout)
        try:
            return done.returncode, json.loads(done.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"jerpctl {' '.join(args)} printed no JSON: rc={done.returncode}\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}") from None

    def run_job(self, *args: str, timeout: float = 240) -> tuple[int, dict[str, Any]]:
        """``jerpctl --json enqueue ARGS --wait``: exit code and the final job."""
        return self.json("enqueue", *args, "--wait", timeout=timeout)

    def enqueue(self, *args: str) -> str:
        """``jerpctl --json enqueue ARGS`` without waiting: the job's id."""
        rc, job = self.json("enqueue", *args)
        assert rc == 0, job
        return job["job_id"]

    def job(self, job_id: str) -> dict[str, Any]:
        rc, job = self.json("status", job_id)
        assert rc in (0, 1), job
        return job

    def wait_job(self, job_id: str, *, timeout: float = 120) -> dict[str, Any]:
        """The job once it has ended (its record read through jerpctl)."""
        final = ("succeeded", "failed", "recovered", "cancelled")
        return wait_for(lambda: (j := self.job(job_id))["state"] in final and j, timeout=timeout, interval=0.5,
                        what=f"job {job_id} to end")

    def runtime(self) -> Any:
        """The control plane's runtime in this process (tests.conftest.recording: what it would
        publish is recorded in ``rt.dispatched``, not sent); the caller closes ``rt.redis``."""
        from jerp_jobs.bootstrap import build_runtime
        from jerp_jobs.settings import load_settings
        from tests.conftest import recording

        settings = load_settings(_env_file=None, broker_url=self.redis_url, fleet_file=self.fleet_file,
                                 executor="docker")
        return recording(build_runtime(settings))

    def benches(self) -> dict[str, dict[str, Any]]:
        """``jerpctl --json benches``, by bench."""
        _, answer = self.json("benches")
        return {row["name"]: row for row in answer["benches"]}

    def logs(self) -> str:
        """Every worker's and proxy's log, for a failure message."""
        parts = [f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.folder.glob("*.log"))]
        return "\n".join(parts)

    def close(self) -> None:
        self._cleanup.close()


@dataclass(frozen=True)
class OffsiteStore:
    """A bucket of the test S3 server with age encryption, for a fleet (:func:`offsite_store`)."""

    bucket: str
    #: the fleet-wide settings: the bucket, its endpoint, the age recipient (``StackFleet.extra_env``)
    env: dict[str, str]
    identity_file: Path

    def bench_env(self, bench_name: str) -> dict[str, str]:
        """A bench's own S3 key and the age identity that reads the copies back (its env file's ``extra``)."""
        return {"AWS_ACCESS_KEY_ID": f"key-{bench_name}",
                "AWS_SECRET_ACCESS_KEY": f"secret-{bench_name}-{secrets.token_hex(6)}",
                "JERP_BACKUP_AGE_IDENTITY_FILE": str(self.identity_file)}


@contextmanager
def offsite_store(folder: Path, s3_server: Any) -> Iterator[OffsiteStore]:
    """A fresh bucket on ``s3_server`` (tests/s3_server.py) and an age identity in ``folder``;
    the bucket is emptied and removed at the end."""
    import pyrage

    from tests.s3_server import _remove_bucket

    s3 = s3_server.client()
    bucket = f"fleet-{secrets.token_hex(6)}"
    s3.create_bucket(Bucket=bucket)
    identity = pyrage.x25519.Identity.generate()
    identity_file = folder / "age-identity.txt"
    identity_file.write_text(str(identity) + "\n")
    identity_file.chmod(0o600)
    env = {"JERP_S3_BUCKET": bucket, "JERP_S3_PREFIX": "backups", "JERP_S3_ENDPOINT_URL": s3_server.endpoint_url,
           "JERP_S3_REGION": s3_server.region, "JERP_BACKUP_AGE_RECIPIENTS": str(identity.to_public())}
    try:
        yield OffsiteStore(bucket, env, identity_file)
    finally:
        _remove_bucket(s3, bucket)


def write_fleet_file(path: Path, certs: Path, stacks: Sequence[Stack],
                     extra: Mapping[str, Mapping[str, str | int]] | None = None) -> Path:
    """The fleet file declaring ``stacks``; ``extra`` adds keys of a bench (bench name -> key ->
    value, e.g. its ``npm_forward_host``). Workers read it at start."""
    parts = []
    for stack in stacks:
        assert stack.proxy is not None and stack.env_file is not None
        keys = "".join(f"{key} = {json.dumps(value)}\n" for key, value in (extra or {}).get(stack.bench_name, {}).items())
        parts.append(f"""
[[bench]]
name = "{stack.bench_name}"
role = "{stack.role}"
group = "eu"
docker = "tcp://127.0.0.1:{stack.proxy.port}"
compose_project = "{stack.project}"
backend_service = "backend"
sites_dir = "{stack.sites_dir}"
env_file = "{stack.env_file}"
concurrency = 2
{keys}
[bench.tls]
ca = "{certs / 'ca.pem'}"
cert = "{certs / f'client-{stack.bench_name}-cert.pem'}"
key = "{certs / f'client-{stack.bench_name}-key.pem'}"
""")
    path.write_text("".join(parts))
    return path


def build_fleet(folder: Path, client: docker.DockerClient, redis_url: str,
                benches: Mapping[str, str] = DEFAULT_BENCHES, *, workers: bool = True) -> StackFleet:
    """The stacks of ``benches`` (name -> role), the fleet file and (``workers``) one worker per
    bench and the control worker; :meth:`StackFleet.close` removes everything (also called here
    when building fails)."""
    cleanup = ExitStack()
    try:
        certs = folder / "certs"
        certs.mkdir(parents=True)
        make_ca(certs, "ca")
        stacks: dict[str, Stack] = {}
        for name, role in benches.items():
            stacks[name] = _start_stack(client, cleanup, folder / name, name, role)
        for name in benches:
            make_cert(certs, "ca", f"server-{name}", usage="serverAuth", alt_names="IP:127.0.0.1")
            make_cert(certs, "ca", f"client-{name}", usage="clientAuth")
        for name, stack in stacks.items():
            stack.proxy = start_proxy(certs, name, stack.project, folder / f"proxy-{name}.log")
            cleanup.callback(stack.proxy.stop)
        for stack in stacks.values():
            _wait_for_db(stack)
        fleet = StackFleet(folder=folder, certs=certs, redis_url=redis_url, stacks=stacks,
                           fleet_file=folder / "fleet.toml", _cleanup=cleanup)
        for name in stacks:
            fleet.write_env_file(name)
        write_fleet_file(fleet.fleet_file, certs, list(stacks.values()))
        flush = redis.Redis.from_url(redis_url)
        flush.flushdb()
        cleanup.callback(flush.close)
        cleanup.callback(flush.flushdb)  # after the workers stopped (last in, first out)
        if workers:
            fleet.start_workers()
        return fleet
    except BaseException:
        cleanup.close()
        raise


@pytest.fixture(scope="module")
def fleet_stacks(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient,
                 redis_url: str) -> Iterator[StackFleet]:
    """Three stacks, ``prod-a`` and ``prod-c`` (production) and ``staging-b`` (staging), each with
    its worker, and the control worker, for the whole module (:func:`ensure_workers` starts again
    a worker a test stopped)."""
    fleet = build_fleet(tmp_path_factory.mktemp("stacks"), docker_client, redis_url, THREE_BENCHES)
    try:
        yield fleet
    finally:
        fleet.close()


def ensure_workers(fleet: StackFleet) -> None:
    """Every bench's worker and the control worker run (a test that stopped one starts it again)."""
    for name in [*fleet.stacks, CONTROL]:
        worker = fleet.workers.get(name)
        if worker is None or worker.proc.poll() is not None:
            fleet.start_worker(name)
