"""The Docker socket proxy against the ways out of its allowlist: execs it did not create, execs
as another user than the bench's, and deploy-mode creates with more than a recreate of the
platform's containers needs. First against a Docker API on a Unix socket that keeps its execs
and containers, then with docker-py, the Docker executor and the deployer against the real
Docker Engine (containers named after this checkout, tests/naming.py, removed afterwards)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jerp_jobs.deploy import replacement_config
from jerp_jobs.socket_proxy import ExecRegistry, SocketProxy
from tests import naming
from tests.test_socket_proxy import LoopThread, exchange, message_of, raw_request, status_of

BACKEND_ID = "b" * 64
DB_ID = "d" * 64
FRONTEND_ID = "f" * 64
PLATFORM = {"com.docker.compose.project": "jerp"}
BACKEND_LABELS = {**PLATFORM, "com.docker.compose.service": "backend"}


class Engine:
    """A Docker API on a Unix socket that keeps its containers and execs: an exec gets a new
    random id, and starting or inspecting one it does not know is a 404."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        self.cgroup_version = "2"
        self.containers = {
            "backend": {"Id": BACKEND_ID, "Config": {"Labels": BACKEND_LABELS}},
            "frontend": {"Id": FRONTEND_ID,
                         "Config": {"Labels": {**PLATFORM, "com.docker.compose.service": "frontend"}}},
            "db": {"Id": DB_ID, "Config": {"Labels": {"com.docker.compose.service": "db"}}},
        }
        self.execs: dict[str, str] = {}

    def exec_in(self, container_id: str) -> str:
        """An exec created by another client of the socket."""
        exec_id = secrets.token_hex(32)
        self.execs[exec_id] = container_id
        return exec_id

    def forwarded(self, method: str, fragment: str) -> list[tuple[str, str, bytes]]:
        return [r for r in self.requests if r[0] == method and fragment in r[1]]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        body = await reader.readexactly(length)
        method, target = head.decode().split(" ")[:2]
        path = target.split("?")[0]
        self.requests.append((method, path, body))
        parts = path.split("/")
        if parts[1].startswith("v1."):
            parts = ["", *parts[2:]]
        if parts[1:] == ["info"]:
            self._json(writer, 200, {"CgroupVersion": self.cgroup_version})
        elif parts[1] == "containers" and parts[2:] == ["create"]:
            self.containers["new"] = {"Id": "n" * 64, "Config": {"Labels": json.loads(body).get("Labels")}}
            self._json(writer, 201, {"Id": "n" * 64, "Warnings": []})
        elif parts[1] == "containers" and parts[3:] in (["json"], ["exec"]):
            info = next((c for name, c in self.containers.items() if parts[2] in (name, c["Id"])), None)
            if info is None:
                self._json(writer, 404, {"message": f"No such container: {parts[2]}"})
            elif parts[3] == "json":
                self._json(writer, 200, info)
            else:
                self._json(writer, 201, {"Id": self.exec_in(info["Id"])})
        elif parts[1] == "exec" and parts[2] not in self.execs:
            self._json(writer, 404, {"message": f"No such exec instance: {parts[2]}"})
        elif parts[1] == "exec" and parts[3:] == ["start"]:
            writer.write(b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
                         b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\nran in " + self.execs[parts[2]].encode())
        elif parts[1] == "exec" and parts[3:] == ["json"]:
            self._json(writer, 200, {"ID": parts[2], "ContainerID": self.execs[parts[2]], "Running": False,
                                     "ExitCode": 0})
        else:
            self._json(writer, 200, {})
        await writer.drain()
        writer.close()

    @staticmethod
    def _json(writer: asyncio.StreamWriter, status: int, data: object) -> None:
        body = json.dumps(data).encode()
        writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (status, len(body), body))


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture
def engine(loop_thread: LoopThread, tmp_path: Path) -> Iterator[tuple[Engine, str]]:
    fake = Engine()
    path = str(tmp_path / "engine.sock")
    server = loop_thread.run(asyncio.start_unix_server(fake.handle, path))
    yield fake, path
    loop_thread.loop.call_soon_threadsafe(server.close)


@pytest.fixture
def start_proxy(loop_thread: LoopThread, engine: tuple[Engine, str]) -> Iterator[Callable[..., int]]:
    """``start(**SocketProxy keywords) -> port``: the proxy as the jobs stack runs it (exec in
    the backend; with ``allow_deploy``, deploys in compose project ``jerp`` and network proxy)."""
    servers = []

    def start(**options: Any) -> int:
        options = {"container_labels": BACKEND_LABELS, "deploy_networks": ["proxy"], **options}
        server = loop_thread.run(SocketProxy(engine[1], **options).start("127.0.0.1", 0))
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        loop_thread.loop.call_soon_threadsafe(server.close)


def exec_body(**fields: object) -> bytes:
    return json.dumps({"AttachStdout": True, "AttachStderr": True, "Cmd": ["bench", "--version"], **fields}).encode()


def create_exec(port: int, container: str = "backend", **fields: object) -> bytes:
    return exchange(port, raw_request("POST", f"/v1.41/containers/{container}/exec", exec_body(**fields)))


def start_exec(port: int, exec_id: str, prefix: str = "/v1.41") -> bytes:
    return exchange(port, raw_request("POST", f"{prefix}/exec/{exec_id}/start", b'{"Detach": false, "Tty": false}',
                                      headers="Connection: Upgrade\r\nUpgrade: tcp\r\n"))


# -- execs: only those the proxy created, only as the bench user -------------------------------


def test_the_executors_exec_flow_passes(start_proxy, engine):
    """Create as frappe in the backend (what DockerExecutor sends), start, inspect."""
    fake, _ = engine
    port = start_proxy()

    created = create_exec(port, User="frappe", WorkingDir="/home/frappe/frappe-bench", Tty=False,
                          AttachStdin=False, Privileged=False, Env=None)
    assert status_of(created) == 201
    exec_id = json.loads(created.split(b"\r\n\r\n", 1)[1])["Id"]
    assert fake.execs[exec_id] == BACKEND_ID

    started = start_exec(port, exec_id)
    assert started.startswith(b"HTTP/1.1 101 ") and started.endswith(f"ran in {BACKEND_ID}".encode())
    inspected = exchange(port, raw_request("GET", f"/v1.41/exec/{exec_id}/json"))
    assert status_of(inspected) == 200 and json.loads(inspected.split(b"\r\n\r\n", 1)[1])["ExitCode"] == 0


@pytest.mark.parametrize("prefix", ["/v1.41", ""])
def test_an_exec_of_another_container_cannot_be_started(start_proxy, engine, prefix):
    fake, _ = engine
    port = start_proxy()
    exec_id = fake.exec_in(DB_ID)

    response = start_exec(port, exec_id, prefix)

    assert status_of(response) == 403 and "not created through this proxy" in message_of(response)
    assert fake.forwarded("POST", "/start") == []


@pytest.mark.parametrize("prefix", ["/v1.41", ""])
def test_an_exec_of_another_container_cannot_be_inspected(start_proxy, engine, prefix):
    fake, _ = engine
    port = start_proxy()
    exec_id = fake.exec_in(DB_ID)

    response = exchange(port, raw_request("GET", f"{prefix}/exec/{exec_id}/json"))

    assert status_of(response) == 403 and "not created through this proxy" in message_of(response)
    assert fake.forwarded("GET", "/exec/") == []


def test_only_the_exact_id_of_an_exec_the_proxy_created_passes(start_proxy, engine):
    """Not one made in the backend by another client, not a prefix or another case of a known one,
    not one a restarted proxy never saw, and a resize of a known one stays refused."""
    fake, _ = engine
    port = start_proxy()
    known = json.loads(create_exec(port, User="frappe").split(b"\r\n\r\n", 1)[1])["Id"]

    for exec_id in (fake.exec_in(BACKEND_ID), known[:12], known.upper()):
        assert status_of(start_exec(port, exec_id)) == 403
    assert status_of(exchange(port, raw_request("POST", f"/exec/{known}/resize?h=1&w=1"))) == 403
    assert status_of(start_exec(start_proxy(), known)) == 403  # a new proxy knows nothing
    assert fake.forwarded("POST", "/start") == [] and fake.forwarded("POST", "/resize") == []


@pytest.mark.parametrize("fields", [
    pytest.param({"User": "root"}, id="root"),
    pytest.param({"User": "0"}, id="uid-0"),
    pytest.param({"User": "root:root"}, id="root-group"),
    pytest.param({"User": "0:0"}, id="uid-gid-0"),
    pytest.param({"User": "frappe:root"}, id="frappe-in-group-root"),
    pytest.param({"User": "1000"}, id="frappes-uid"),
    pytest.param({"User": ""}, id="empty-the-containers-default"),
    pytest.param({}, id="left-out-the-containers-default"),
    pytest.param({"user": "root"}, id="lower-case-key"),
    pytest.param({"USER": "0"}, id="upper-case-key"),
    pytest.param({"User": ["root"]}, id="not-a-string"),
])
def test_an_exec_as_another_user_is_refused(start_proxy, engine, fields):
    fake, _ = engine

    response = create_exec(start_proxy(), **fields)

    assert status_of(response) == 403
    assert "run as 'frappe' only" in message_of(response)
    assert fake.forwarded("POST", "/exec") == []


def test_a_user_given_twice_is_refused(start_proxy, engine):
    fake, _ = engine
    body = b'{"Cmd": ["id"], "User": "frappe", "user": "root"}'

    response = exchange(start_proxy(), raw_request("POST", "/containers/backend/exec", body))

    assert status_of(response) == 400 and "given 2 times" in message_of(response)
    assert fake.forwarded("POST", "/exec") == []


def test_the_exec_user_is_a_setting(start_proxy, engine, monkeypatch):
    from jerp_jobs.socket_proxy import main

    port = start_proxy(exec_user="bench")
    assert status_of(create_exec(port, User="bench")) == 201
    assert status_of(create_exec(port, User="frappe")) == 403
    with pytest.raises(ValueError):
        SocketProxy("x", exec_user="")
    monkeypatch.setenv("JERP_PROXY_EXEC_USER", " ")
    with pytest.raises(SystemExit):
        main([])


def test_the_exec_registry_is_bounded_and_forgets_idle_ids():
    now = [0.0]
    registry = ExecRegistry(limit=3, ttl=100, clock=lambda: now[0])
    for n in range(3):
        registry.remember(f"e{n}", "c")
    with registry.in_use("e0"):  # a stream open for longer than the ttl
        now[0] = 500
        registry.remember("e3", "c")
        registry.remember("e4", "c")
        assert registry.container_of("e0") == "c"
    assert len(registry) == 3 and registry.container_of("e1") is None and registry.container_of("e2") is None
    now[0] = 599
    assert registry.container_of("e0") == "c"  # its stream ended at 500: used then
    now[0] = 800
    assert registry.container_of("e0") is None and registry.container_of("e3") is None


# -- deploying: only what a recreate of the platform's containers needs ------------------------

#: A container of the platform as Docker Engine 20.10 (API 1.41, cgroup v1) reports it.
HOST_CONFIG_V1 = {
    "Binds": ["jerp_frappe-sites:/home/frappe/frappe-bench/sites",
              "jerp_frappe-assets:/home/frappe/frappe-bench/sites/assets"],
    "ContainerIDFile": "", "LogConfig": {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}},
    "NetworkMode": "jerp_default", "PortBindings": {},
    "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
    "AutoRemove": False, "VolumeDriver": "", "VolumesFrom": None, "ConsoleSize": [0, 0], "CapAdd": None,
    "CapDrop": None, "CgroupnsMode": "host", "Dns": [], "DnsOptions": [], "DnsSearch": [], "ExtraHosts": [],
    "GroupAdd": None, "IpcMode": "private", "Cgroup": "", "Links": None, "OomScoreAdj": 0, "PidMode": "",
    "Privileged": False, "PublishAllPorts": False, "ReadonlyRootfs": False, "SecurityOpt": None, "UTSMode": "",
    "UsernsMode": "", "ShmSize": 67108864, "Runtime": "runc", "Isolation": "", "CpuShares": 0, "Memory": 0,
    "NanoCpus": 0, "CgroupParent": "", "BlkioWeight": 0, "BlkioWeightDevice": None, "BlkioDeviceReadBps": None,
    "BlkioDeviceWriteBps": None, "BlkioDeviceReadIOps": None, "BlkioDeviceWriteIOps": None, "CpuPeriod": 0,
    "CpuQuota": 0, "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0, "CpusetCpus": "", "CpusetMems": "",
    "Devices": None, "DeviceCgroupRules": None, "DeviceRequests": None, "KernelMemory": 0, "KernelMemoryTCP": 0,
    "MemoryReservation": 0, "MemorySwap": 0, "MemorySwappiness": None, "OomKillDisable": False, "PidsLimit": None,
    "Ulimits": None, "CpuCount": 0, "CpuPercent": 0, "IOMaximumIOps": 0, "IOMaximumBandwidth": 0,
    "MaskedPaths": ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
    "ReadonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
}
#: The same container from a newer Engine (API 1.45, cgroup v2), created by compose v2.
HOST_CONFIG_V2 = {
    **{k: v for k, v in HOST_CONFIG_V1.items() if k not in ("KernelMemory", "KernelMemoryTCP", "Binds")},
    "Binds": None, "CgroupnsMode": "private", "Annotations": None, "Init": True, "Tmpfs": {"/tmp": ""},
    "LogConfig": {"Type": "local", "Config": {}},
    "Mounts": [{"Type": "volume", "Source": "jerp_frappe-sites", "Target": "/home/frappe/frappe-bench/sites",
                "VolumeOptions": {}}],
}


def platform_container(host_config: dict[str, Any]) -> dict[str, Any]:
    old_id = "1" * 64
    return {
        "Id": old_id, "Name": "/jerp-frontend-1", "Image": "sha256:" + "a" * 64,
        "Config": {
            "Hostname": old_id[:12], "Domainname": "", "User": "frappe", "AttachStdin": False, "AttachStdout": True,
            "AttachStderr": True, "ExposedPorts": {"8080/tcp": {}}, "Tty": False, "OpenStdin": False,
            "StdinOnce": False, "Env": ["BACKEND=backend:8000", "PATH=/usr/bin"], "Cmd": ["nginx-entrypoint.sh"],
            "Healthcheck": {"Test": ["CMD", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080"]},
            "Image": "reg.example.com/erp:r1", "Volumes": None, "WorkingDir": "/home/frappe/frappe-bench",
            "Entrypoint": None, "OnBuild": None, "StopSignal": "SIGTERM",
            "Labels": {**PLATFORM, "com.docker.compose.service": "frontend", "com.docker.compose.oneoff": "False",
                       "com.docker.compose.image": "sha256:" + "a" * 64},
        },
        "HostConfig": host_config,
        "Mounts": [{"Type": "volume", "Name": "9" * 64, "Destination": "/cache", "RW": True}],
        "NetworkSettings": {"Networks": {
            "jerp_default": {"Aliases": ["jerp-frontend-1", "frontend", old_id[:12]], "NetworkID": "x"},
            "proxy": {"Aliases": ["frontend"], "NetworkID": "y"},
        }},
    }


OLD_IMAGE = {"Env": ["PATH=/usr/bin"], "Cmd": ["nginx-entrypoint.sh"], "User": "frappe", "Labels": None,
             "WorkingDir": "/home/frappe/frappe-bench", "ExposedPorts": {"8080/tcp": {}}}


@pytest.mark.parametrize("host_config, cgroup_version", [(HOST_CONFIG_V1, "1"), (HOST_CONFIG_V2, "2")],
                         ids=["engine-20.10-cgroup-v1", "compose-v2-cgroup-v2"])
def test_a_recreate_as_the_deployer_sends_it_passes(loop_thread, start_proxy, engine, host_config, cgroup_version):
    import docker

    fake, _ = engine
    fake.cgroup_version = cgroup_version
    body, extra = replacement_config(platform_container(host_config), OLD_IMAGE, "reg.example.com/erp:r2",
                                     "sha256:" + "b" * 64)
    assert extra and body["HostConfig"]["NetworkMode"] == "jerp_default"
    api = docker.APIClient(base_url=f"tcp://127.0.0.1:{start_proxy(allow_deploy=True)}", version="1.41")
    try:
        created = api.create_container_from_config(body, name="jerp-frontend-1_jerp_next_abc123")
        for network, endpoint in extra:
            api.connect_container_to_network(created["Id"], network, **endpoint)
    finally:
        api.close()

    [(_, _, sent)] = fake.forwarded("POST", "/containers/create")
    assert json.loads(sent) == body
    assert [(path, json.loads(sent)) for _, path, sent in fake.forwarded("POST", "/connect")] == [
        ("/v1.41/networks/proxy/connect", {"Container": "n" * 64, "EndpointConfig": {"Aliases": ["frontend"]}})]


def create(port: int, **host_config: object) -> bytes:
    body = {"Image": "reg.example.com/erp:r2", "Labels": {**PLATFORM, "com.docker.compose.service": "frontend"},
            "HostConfig": {"NetworkMode": "jerp_default", **host_config}}
    return exchange(port, raw_request("POST", "/v1.41/containers/create?name=x", json.dumps(body).encode()))


@pytest.mark.parametrize("host_config, words", [
    pytest.param({"PortBindings": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "2222"}]}}, "PortBindings",
                 id="port-bindings"),
    pytest.param({"PortBindings": {"22/tcp": [{"HostPort": ""}]}}, "PortBindings", id="port-binding-any-host-port"),
    pytest.param({"PublishAllPorts": True}, "PublishAllPorts", id="publish-all-ports"),
    pytest.param({"CgroupnsMode": "host"}, "CgroupnsMode", id="cgroupns-host-on-cgroup-v2"),
    pytest.param({"Cgroup": "container:docker-proxy"}, "Cgroup", id="cgroup-of-another-container"),
    pytest.param({"Cgroup": "host"}, "Cgroup", id="cgroup-host"),
    pytest.param({"LogConfig": {"Type": "gelf", "Config": {"gelf-address": "udp://203.0.113.9:12201"}}}, "gelf",
                 id="log-gelf"),
    pytest.param({"LogConfig": {"Type": "syslog", "Config": {"syslog-address": "tcp://203.0.113.9:514"}}},
                 "syslog", id="log-syslog"),
    pytest.param({"LogConfig": {"Type": "fluentd", "Config": {"fluentd-address": "203.0.113.9:24224"}}},
                 "fluentd", id="log-fluentd"),
    pytest.param({"LogConfig": {"Type": "splunk", "Config": {"splunk-url": "https://203.0.113.9:8088"}}},
                 "splunk", id="log-splunk"),
    pytest.param({"LogConfig": {"Type": "", "Config": {"syslog-address": "tcp://203.0.113.9:514"}}},
                 "without a log driver", id="log-options-for-the-default-driver"),
    pytest.param({"LogConfig": {"Type": "json-file", "Config": {"gelf-address": "udp://203.0.113.9:1"}}},
                 "gelf-address", id="log-option-of-another-driver"),
    pytest.param({"LogConfig": {"Type": "json-file", "Config": {"max-size": "1m; x"}}}, "max-size",
                 id="log-option-value"),
    pytest.param({"LogConfig": {"type": "json-file", "Type": "gelf"}}, "given 2 times", id="log-type-twice"),
    pytest.param({"NetworkMode": "jobs_docker-api"}, "NetworkMode", id="network-of-another-stack"),
    pytest.param({"NetworkMode": "bridge", "Links": ["jerp-db-1:db"]}, "Links", id="links-on-the-default-bridge"),
    pytest.param({"Sysctls": {"kernel.shm_rmid_forced": "1"}}, "Sysctls", id="sysctls"),
    pytest.param({"OomKillDisable": True}, "OomKillDisable", id="oom-kill-disabled"),
    pytest.param({"OomScoreAdj": -1000}, "OomScoreAdj", id="oom-score-adj-negative"),
    pytest.param({"CpuRealtimeRuntime": 950000}, "CpuRealtimeRuntime", id="realtime-cpu"),
    pytest.param({"BlkioDeviceReadBps": [{"Path": "/dev/sda", "Rate": 1}]}, "BlkioDeviceReadBps",
                 id="host-device-path"),
    pytest.param({"IpcMode": "container:jerp-db-1"}, "IpcMode", id="ipc-of-another-container"),
    pytest.param({"Isolation": "hyperv"}, "Isolation", id="isolation"),
    pytest.param({"Annotations": {"io.kubernetes.cri.x": "y"}}, "Annotations", id="annotations"),
    pytest.param({"ContainerIDFile": "/etc/passwd"}, "ContainerIDFile", id="container-id-file"),
    pytest.param({"Evil": True}, "'Evil'", id="unknown-key"),
    pytest.param({"BindOptions": {"Propagation": "rshared"}}, "'BindOptions'", id="unknown-key-bind-options"),
    pytest.param({"KernelMemoryTcp2": 1}, "'KernelMemoryTcp2'", id="unknown-key-near-a-known-one"),
])
def test_a_deploy_create_with_more_than_a_recreate_needs_is_refused(start_proxy, engine, host_config, words):
    fake, _ = engine

    response = create(start_proxy(allow_deploy=True), **host_config)

    assert status_of(response) in (400, 403) and words in message_of(response)
    assert fake.forwarded("POST", "/containers/create") == []


def test_cgroupns_host_passes_only_where_it_is_dockers_default(start_proxy, engine):
    fake, _ = engine
    port = start_proxy(allow_deploy=True)
    assert status_of(create(port, CgroupnsMode="host")) == 403  # cgroup v2: private is the default
    fake.cgroup_version = "1"
    assert status_of(create(start_proxy(allow_deploy=True), CgroupnsMode="host")) == 201
    assert status_of(create(port, CgroupnsMode="private")) == 201


@pytest.mark.parametrize("body, words", [
    pytest.param({"Cpuset": "0"}, "'Cpuset'", id="top-level-host-setting"),
    pytest.param({"PortBindings": {"22/tcp": [{"HostPort": "2222"}]}}, "'PortBindings'", id="top-level-ports"),
    pytest.param({"NetworkingConfig": {"EndpointsConfig": {"jobs_docker-api": {}}}}, "not a network of the platform",
                 id="endpoint-on-another-stacks-network"),
    pytest.param({"NetworkingConfig": {"EndpointsConfig": {"jerp_default": {"DriverOpts": {"x": "y"}}}}},
                 "driver options", id="endpoint-driver-options"),
    pytest.param({"NetworkingConfig": {"Other": 1}}, "'Other'", id="unknown-networking-key"),
])
def test_a_deploy_create_with_extra_top_level_or_network_settings_is_refused(start_proxy, engine, body, words):
    fake, _ = engine
    full = {"Image": "x", "Labels": {**PLATFORM}, **body}

    response = exchange(start_proxy(allow_deploy=True),
                        raw_request("POST", "/containers/create", json.dumps(full).encode()))

    assert status_of(response) == 403 and words in message_of(response)
    assert fake.forwarded("POST", "/containers/create") == []


def test_a_network_connect_is_limited_to_the_platforms_networks(start_proxy, engine):
    fake, _ = engine
    port = start_proxy(allow_deploy=True)
    for network in ("jobs_docker-api", "host", "bridge"):
        response = exchange(port, raw_request("POST", f"/networks/{network}/connect", b'{"Container": "frontend"}'))
        assert status_of(response) == 403
    driver = b'{"Container": "frontend", "EndpointConfig": {"DriverOpts": {"a": "b"}}}'
    assert status_of(exchange(port, raw_request("POST", "/networks/jerp_default/connect", driver))) == 403
    assert fake.forwarded("POST", "/connect") == []
    ok = exchange(port, raw_request("POST", "/networks/jerp_default/connect", b'{"Container": "frontend"}'))
    assert status_of(ok) == 200


# -- through the real Docker Engine -------------------------------------------------------------

IMAGE = naming.BACKEND_REPO
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


@pytest.fixture
def engine_names(docker_client: Any) -> Iterator[str]:
    """A compose project name of this checkout (tests/naming.py); its containers, networks and
    volumes are removed afterwards."""
    project = naming.unique_name("proxy")
    yield project
    import docker

    for container in docker_client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"}):
        container.remove(force=True, v=False)
    for network in docker_client.networks.list(names=[f"{project}_default"]):
        network.remove()
    for volume in docker_client.volumes.list(filters={"name": project}):
        try:
            volume.remove(force=True)
        except docker.errors.APIError:
            pass


def _run(docker_client: Any, project: str, service: str, image: str, **options: Any) -> Any:
    return docker_client.containers.run(
        image, ["sleep", "infinity"], name=f"{project}-{service}-1", detach=True, init=True,
        labels={PROJECT_LABEL: project, SERVICE_LABEL: service, "com.docker.compose.oneoff": "False",
                "com.docker.compose.container-number": "1"}, **options)


@pytest.fixture
def real_proxy(loop_thread: LoopThread) -> Iterator[Callable[..., int]]:
    servers = []

    def start(**options: Any) -> int:
        server = loop_thread.run(SocketProxy("/var/run/docker.sock", **options).start("127.0.0.1", 0))
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        loop_thread.loop.call_soon_threadsafe(server.close)


@pytest.mark.docker
def test_execs_through_the_proxy_on_the_docker_engine(docker_client, engine_names, real_proxy):
    """The executor runs as frappe; root, uid 0 and execs made by another client are refused."""
    import docker

    from jerp_jobs.executors import DockerExecutor

    project = engine_names
    backend = _run(docker_client, project, "backend", f"{IMAGE}:latest")
    other = _run(docker_client, project, "db", f"{IMAGE}:latest")
    port = real_proxy(container_labels={PROJECT_LABEL: project, SERVICE_LABEL: "backend"})
    client = docker.DockerClient(base_url=f"tcp://127.0.0.1:{port}", timeout=30)
    try:
        executor = DockerExecutor(project=project, client_factory=lambda: client)
        result = executor.run(["sh", "-c", "id -u; echo to-stderr >&2; exit 3"], timeout=30)
        assert result.exit_code == 3 and result.output.splitlines() == ["1000", "to-stderr"]

        for user in ("root", "0", "root:root", ""):
            with pytest.raises(docker.errors.APIError) as refused:
                client.api.exec_create(backend.id, ["id", "-u"], user=user)
            assert refused.value.status_code == 403 and "frappe" in str(refused.value)
        for container in (other, backend):  # made by a client of the socket itself
            exec_id = docker_client.api.exec_create(container.id, ["id", "-u"], user="root")["Id"]
            with pytest.raises(docker.errors.APIError) as refused:
                client.api.exec_start(exec_id)
            assert refused.value.status_code == 403
            with pytest.raises(docker.errors.APIError) as refused:
                client.api.exec_inspect(exec_id)
            assert refused.value.status_code == 403
            assert docker_client.api.exec_inspect(exec_id)["Running"] is False  # never started
            assert docker_client.api.exec_inspect(exec_id)["ExitCode"] is None
    finally:
        client.close()


@pytest.mark.docker
def test_a_deploy_through_the_proxy_on_the_docker_engine(docker_client, engine_names, real_proxy):
    """DockerDeployer recreates a container of the platform through the proxy in deploy mode;
    a create publishing a port or logging to an address is refused."""
    import docker

    from jerp_jobs.deploy import DockerDeployer, service_containers

    project = engine_names
    network = docker_client.networks.create(f"{project}_default")
    image = docker_client.images.get(f"{IMAGE}:latest")
    old = _run(docker_client, project, "frontend", image.id, network=network.name,
               restart_policy={"Name": "unless-stopped"},
               volumes={f"{project}_sites": {"bind": "/home/frappe/frappe-bench/sites", "mode": "rw"}},
               read_only=True, tmpfs={"/tmp": ""}, cap_drop=["ALL"], security_opt=["no-new-privileges:true"])
    labels = {PROJECT_LABEL: project, SERVICE_LABEL: "backend"}
    port = real_proxy(container_labels=labels, allow_deploy=True)
    client = docker.DockerClient(base_url=f"tcp://127.0.0.1:{port}", timeout=60)
    try:
        detail = DockerDeployer(client, project=project, services=["frontend"], repository=IMAGE).deploy("latest")
        assert f"-> {IMAGE}:latest" in detail
        [new] = service_containers(docker_client, project, "frontend")
        assert new.id != old.id and new.running and new.image_ref == f"{IMAGE}:latest"
        attrs = docker_client.containers.get(new.id).attrs
        assert attrs["HostConfig"]["Binds"] == [f"{project}_sites:/home/frappe/frappe-bench/sites:rw"]
        assert list(attrs["NetworkSettings"]["Networks"]) == [network.name]

        base = {"image": f"{IMAGE}:latest", "command": ["true"], "network": network.name,
                "labels": {PROJECT_LABEL: project, SERVICE_LABEL: "frontend"}}
        for extra in ({"ports": {"8000/tcp": 18000}}, {"publish_all_ports": True},
                      {"log_config": {"Type": "syslog", "Config": {"syslog-address": "udp://127.0.0.1:9"}}},
                      {"cgroup_parent": "/"}, {"sysctls": {"net.ipv4.ip_forward": "1"}}):
            with pytest.raises(docker.errors.APIError) as refused:
                client.containers.create(name=f"{project}-x", **base, **extra)
            assert refused.value.status_code == 403
        assert len(docker_client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"})) == 1
    finally:
        client.close()
