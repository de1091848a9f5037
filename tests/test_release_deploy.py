"""Moving the platform to an image tag (jerp_jobs.deploy): the Portainer webhook client against
httpx's MockTransport and the stand-in Portainer, the rollout check against scripted container
states, then both deployers on this machine's Docker Engine with a compose stack of the stand-in
backend, confirmed from the containers."""

from __future__ import annotations

import io
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from jerp_jobs.deploy import (
    DeployBusy,
    DeployUnavailable,
    DockerDeployer,
    PortainerDeployer,
    RunningContainer,
    deployer_from_settings,
    replacement_config,
    running_tag,
    service_containers,
    shown_webhook,
    tag_of,
    wait_rollout,
)
from jerp_jobs.errors import ConfigError, DeployError, InvalidInput, RolloutTimeout, TransientError
from jerp_jobs.settings import load_settings
from tests import naming
from tests.deploy_support import Compose, compose_command, write_env_file
from tests.standin.portainer import Portainer

WEBHOOK_ID = "638e6967-ef77-4906-8af8-236800621360"
WEBHOOK_URL = f"https://portainer.example.com:9443/api/stacks/webhooks/{WEBHOOK_ID}"
REPO = naming.BACKEND_REPO
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


# -- tag_of ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ref, repository, expected", [
    pytest.param("reg.example.com/x:abc", "reg.example.com/x", "abc", id="tag"),
    pytest.param("reg.example.com:5000/team/x:1.2.3-rc_1", "reg.example.com:5000/team/x", "1.2.3-rc_1",
                 id="registry-port"),
    pytest.param("reg.example.com:5000/team/x", "reg.example.com:5000/team/x", "latest", id="no-tag-is-latest"),
    pytest.param("reg.example.com/x@sha256:" + "a" * 64, "reg.example.com/x", None, id="digest"),
    pytest.param("reg.example.com/x:abc@sha256:" + "a" * 64, "reg.example.com/x", None, id="tag-and-digest"),
    pytest.param("reg.example.com/y:abc", "reg.example.com/x", None, id="other-repository"),
    pytest.param("other.example.com/x:abc", "reg.example.com/x", None, id="other-registry"),
    pytest.param("reg.example.com/x-old:abc", "reg.example.com/x", None, id="prefix-is-not-the-repository"),
    pytest.param("docker.io/library/redis:7", "redis", "7", id="docker-hub-long-form"),
    pytest.param("frappe/erpnext:v15.1.0", "docker.io/frappe/erpnext", "v15.1.0", id="docker-hub-user"),
    pytest.param("", "reg.example.com/x", None, id="empty"),
])
def test_tag_of(ref: str, repository: str, expected: str | None) -> None:
    assert tag_of(ref, repository) == expected


# -- PortainerDeployer against MockTransport --------------------------------------------------


@dataclass
class Recorder:
    """A MockTransport handler answering from a script, recording the requests."""

    status: int = 202
    body: Any = None
    fail: Exception | None = None

    def __post_init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail is not None:
            raise self.fail
        if self.body is None:
            return httpx.Response(self.status)
        return httpx.Response(self.status, json=self.body)


def deployer(recorder: Recorder, url: str = WEBHOOK_URL, **kwargs: Any) -> PortainerDeployer:
    return PortainerDeployer(url, transport=httpx.MockTransport(recorder), **kwargs)


def assert_secret_absent(*texts: object) -> None:
    for text in texts:
        assert WEBHOOK_ID not in str(text) and WEBHOOK_ID[:8] not in str(text)


def test_the_tag_goes_as_the_override_variable_in_a_post() -> None:
    recorder = Recorder(202, {"stackId": 7, "message": "Stack update started"})

    detail = deployer(recorder).deploy("0123abc")

    [request] = recorder.requests
    assert request.method == "POST"
    assert request.url.path == f"/api/stacks/webhooks/{WEBHOOK_ID}"
    assert dict(request.url.params) == {"REGISTRY_IMAGE_TAG": "0123abc"}
    assert "stack 7" in detail and "0123abc" in detail
    assert_secret_absent(detail)


def test_a_configured_variable_name_and_the_urls_own_query_are_kept() -> None:
    recorder = Recorder(204)

    deployer(recorder, WEBHOOK_URL + "?pullimage=false", tag_variable="SERVICE_TAG").deploy("r2")

    [request] = recorder.requests
    assert dict(request.url.params) == {"pullimage": "false", "SERVICE_TAG": "r2"}


@pytest.mark.parametrize("status, body", [
    pytest.param(202, {"stackId": 3, "message": "Stack update started"}, id="202-newer"),
    pytest.param(204, None, id="204-older"),
    pytest.param(200, None, id="200"),
])
def test_accepting_answers_pass(status: int, body: Any) -> None:
    assert "r2" in deployer(Recorder(status, body)).deploy("r2")


@pytest.mark.parametrize("recorder, error, transient, words", [
    pytest.param(Recorder(409, {"message": "Another deployment is in progress"}), DeployBusy, True, "in progress",
                 id="409-busy"),
    pytest.param(Recorder(404, {"message": f"Unable to find the stack by webhook ID {WEBHOOK_ID}"}), DeployError,
                 False, "unknown webhook", id="404-unknown"),
    pytest.param(Recorder(401, {"message": "Unauthorized"}), DeployError, False, "401", id="401"),
    pytest.param(Recorder(502, None), DeployUnavailable, True, "502", id="502"),
    pytest.param(Recorder(500, {"message": "boom", "details": f"webhook {WEBHOOK_ID} failed"}), DeployUnavailable,
                 True, "500", id="500-echoing-the-uuid"),
    pytest.param(Recorder(fail=httpx.ConnectError(f"cannot connect to {WEBHOOK_URL}")), DeployUnavailable, True,
                 "could not be reached", id="connect-error"),
    pytest.param(Recorder(fail=httpx.ReadTimeout("timed out")), DeployUnavailable, True, "timed out",
                 id="timeout"),
    pytest.param(Recorder(302, None), DeployError, False, "302", id="redirect-not-followed"),
])
def test_refusals_and_failures_are_typed_and_never_show_the_webhook(
    recorder: Recorder, error: type[Exception], transient: bool, words: str
) -> None:
    with capture_logs() as logs, pytest.raises(error) as raised:
        deployer(recorder).deploy("r2")

    assert isinstance(raised.value, DeployError)
    assert isinstance(raised.value, TransientError) is transient
    assert words in str(raised.value)
    assert "https://portainer.example.com:9443/api/stacks/webhooks/…" in str(raised.value)
    assert raised.value.__cause__ is None  # httpx errors hold the request, and the URL in it
    assert_secret_absent(raised.value, raised.value.fields, logs)
    assert logs and all(entry.get("webhook") == "https://portainer.example.com:9443/api/stacks/webhooks/…"
                        for entry in logs)


def test_busy_is_a_deploy_error_and_transient() -> None:
    assert issubclass(DeployBusy, DeployError) and issubclass(DeployBusy, TransientError)


@pytest.mark.parametrize("tag", ["", "-x", "a b", "x;rm", "a/b", "t" * 129, "r2&REGISTRY_URL=evil"])
def test_an_invalid_tag_is_refused_before_any_request(tag: str) -> None:
    recorder = Recorder()
    with pytest.raises(InvalidInput):
        deployer(recorder).deploy(tag)
    assert recorder.requests == []


def test_the_webhook_url_is_shown_without_its_uuid() -> None:
    assert shown_webhook(WEBHOOK_URL) == "https://portainer.example.com:9443/api/stacks/webhooks/…"
    assert shown_webhook("http://p/portainer/api/stacks/webhooks/x?y=1") == "http://p/portainer/api/stacks/webhooks/…"
    with capture_logs() as logs:
        shown = repr(deployer(Recorder()))
    assert_secret_absent(shown, logs)


@pytest.mark.parametrize("url", ["", "portainer.example.com/api/stacks/webhooks/x", "ftp://p/x"])
def test_a_webhook_url_that_is_not_http_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        PortainerDeployer(url)
    assert raised.value.variable == "PORTAINER_WEBHOOK_URL"


# -- the stand-in Portainer, through the deployer --------------------------------------------


def test_standin_portainer_answers_like_portainer_and_redeploys_in_the_background() -> None:
    started: list[dict[str, str]] = []
    release = threading.Event()

    def redeploy(overrides: dict[str, str]) -> None:
        started.append(overrides)
        release.wait(10)

    with Portainer(redeploy, stack_id=4) as portainer:
        client = PortainerDeployer(portainer.webhook_url)
        assert "stack 4" in client.deploy("r2")  # answered while the redeploy still runs
        with pytest.raises(DeployBusy):
            client.deploy("r3")
        release.set()
        portainer.wait_idle(10)
        client.deploy("r3")
        portainer.wait_idle(10)
        with pytest.raises(DeployError, match="unknown webhook"):
            PortainerDeployer(portainer.webhook_url.replace(portainer.webhook_id, str(uuid.uuid4()))).deploy("r2")

    assert started == [{"REGISTRY_IMAGE_TAG": "r2"}, {"REGISTRY_IMAGE_TAG": "r3"}]
    assert [c.status for c in portainer.calls] == [202, 409, 202, 404]
    assert portainer.calls[0].uuid == portainer.webhook_id and portainer.errors == []


def test_standin_portainer_legacy_and_noop_answer_204() -> None:
    calls: list[dict[str, str]] = []
    with Portainer(calls.append, legacy=True) as legacy:
        PortainerDeployer(legacy.webhook_url).deploy("r2")
    with Portainer(calls.append, noop=True) as noop:
        PortainerDeployer(noop.webhook_url + "?pullimage=false").deploy("r2")

    assert [c.status for c in legacy.calls + noop.calls] == [204, 204]
    assert calls == [{"REGISTRY_IMAGE_TAG": "r2"}]  # noop redeploys nothing
    assert noop.calls[0].query == {"pullimage": "false", "REGISTRY_IMAGE_TAG": "r2"}


# -- wait_rollout and running_tag against scripted container states --------------------------


class ScriptedDocker:
    """The two calls the rollout check makes (containers list, container inspect), from a script
    of states: each list call moves to the next state (the last one stays)."""

    def __init__(self, *states: list[dict[str, Any]]) -> None:
        self.states = list(states)
        self.current: list[dict[str, Any]] = []
        self.lists = 0

    def containers(self, all: bool = False, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        assert all and filters is not None
        self.current = self.states[min(self.lists, len(self.states) - 1)]
        self.lists += 1
        wanted = dict(item.split("=", 1) for item in filters["label"])
        return [{"Id": c["Id"], "Names": ["/" + c["Name"]], "Labels": c["Config"]["Labels"]} for c in self.current
                if all_labels(c, wanted)]

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        import docker.errors

        for c in self.current:
            if c["Id"] == container_id:
                return c
        raise docker.errors.NotFound("gone")


def all_labels(container: dict[str, Any], wanted: dict[str, str]) -> bool:
    labels = container["Config"]["Labels"]
    return all(labels.get(k) == v for k, v in wanted.items())


def inspected(name: str, ref: str, *, created: str = "2030-01-01T00:00:10.5Z", image_id: str = "sha256:new",
              running: bool = True, health: str | None = None, service: str = "backend",
              oneoff: bool = False) -> dict[str, Any]:
    state: dict[str, Any] = {"Running": running, "Status": "running" if running else "exited"}
    if health:
        state["Health"] = {"Status": health}
    labels = {PROJECT_LABEL: "jerp", SERVICE_LABEL: service, "com.docker.compose.oneoff": str(oneoff)}
    return {"Id": name.ljust(64, "0"), "Name": f"/{name}", "Created": created, "Image": image_id, "State": state,
            "Config": {"Image": ref, "Labels": labels}}


SINCE = 1893456005.0  # 2030-01-01T00:00:05Z


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def rollout(api: ScriptedDocker, *, deadline_s: float = 10, **kwargs: Any) -> list[RunningContainer]:
    clock = FakeClock()
    return wait_rollout(api, project="jerp", service="backend", image_ref="reg/x:new", deadline_s=deadline_s,
                        since=SINCE, poll_s=1, clock=clock, sleep=clock.sleep, **kwargs)


def test_the_rollout_is_confirmed_once_the_new_container_is_healthy() -> None:
    seen: list[str] = []
    api = ScriptedDocker(
        [inspected("jerp_backend_1", "reg/x:old", created="2030-01-01T00:00:01Z", image_id="sha256:old")],
        [inspected("jerp_backend_1", "reg/x:old", created="2030-01-01T00:00:01Z", image_id="sha256:old",
                   running=False)],
        [inspected("jerp_backend_1", "reg/x:new", health="starting")],
        [inspected("jerp_backend_1", "reg/x:new", health="healthy"),
         inspected("jerp_backend_run_1", "reg/x:old", image_id="sha256:old", oneoff=True),
         inspected("jerp_db_1", "mariadb:10.6", service="db")],
    )

    [container] = rollout(api, on_progress=seen.append)

    assert (container.name, container.image_ref, container.health) == ("jerp_backend_1", "reg/x:new", "healthy")
    assert container.created == pytest.approx(SINCE + 5.5)
    assert seen == ["backend still runs reg/x:old (container jerp_backend_1)",
                    "backend has no running container (jerp_backend_1)",
                    "backend runs reg/x:new but container jerp_backend_1 is starting"]


def test_a_container_that_already_ran_the_image_counts() -> None:
    api = ScriptedDocker([inspected("jerp_backend_1", "reg/x:new", created="2030-01-01T00:00:01Z")])
    assert [c.name for c in rollout(api)] == ["jerp_backend_1"]


def test_an_old_container_under_a_moved_tag_does_not_count() -> None:
    api = ScriptedDocker([
        inspected("jerp_backend_1", "reg/x:new", created="2030-01-01T00:00:01Z", image_id="sha256:before"),
        inspected("jerp_backend_2", "reg/x:new", image_id="sha256:after"),
    ])
    with pytest.raises(RolloutTimeout, match="jerp_backend_1 runs an older image of reg/x:new"):
        rollout(api)


@pytest.mark.parametrize("state, words", [
    pytest.param([inspected("jerp_backend_1", "reg/x:old", image_id="sha256:old")],
                 "backend still runs reg/x:old (container jerp_backend_1) after 10 s", id="old-image"),
    pytest.param([], "backend has no container after 10 s", id="no-container"),
    pytest.param([inspected("jerp_backend_1", "reg/x:new", health="unhealthy")],
                 "backend runs reg/x:new but container jerp_backend_1 is unhealthy after 10 s", id="unhealthy"),
    pytest.param([inspected("jerp_backend_1", "reg/x:new"), inspected("jerp_backend_2", "reg/x:old")],
                 "backend still runs reg/x:old (container jerp_backend_2)", id="one-of-two-old"),
])
def test_the_timeout_names_what_was_seen_last(state: list[dict[str, Any]], words: str) -> None:
    api = ScriptedDocker(state)
    with pytest.raises(RolloutTimeout) as raised:
        rollout(api)
    assert words in str(raised.value)
    assert api.lists == 11  # polled every second, once more at the deadline


def test_docker_api_failures_are_retried_until_the_deadline() -> None:
    import docker.errors

    class Failing(ScriptedDocker):
        def containers(self, all: bool = False, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
            self.lists += 1
            if self.lists < 3:
                raise docker.errors.APIError("proxy restarting", response=None)
            return super().containers(all=all, filters=filters)

    api = Failing([inspected("jerp_backend_1", "reg/x:new")])
    assert len(rollout(api)) == 1


@pytest.mark.parametrize("state, expected", [
    pytest.param([inspected("a", "reg/x:r1"), inspected("b", "reg/x:r1")], "r1", id="same"),
    pytest.param([inspected("a", "reg/x:r1"), inspected("b", "reg/x:r2")], None, id="mixed"),
    pytest.param([inspected("a", "reg/x:r1"), inspected("b", "reg/x:r2", running=False)], "r1", id="stopped-ignored"),
    pytest.param([inspected("a", "other/y:r1")], None, id="other-image"),
    pytest.param([], None, id="nothing-runs"),
])
def test_running_tag(state: list[dict[str, Any]], expected: str | None) -> None:
    assert running_tag(ScriptedDocker(state), "jerp", "backend", "reg/x") == expected


def test_docker_deployer_fails_when_the_project_has_none_of_the_services() -> None:
    class WithImage(ScriptedDocker):
        def inspect_image(self, ref: str) -> dict[str, Any]:
            return {"Id": "sha256:new", "Config": {}}

    api = WithImage([inspected("jerp_db_1", "mariadb:10.6", service="db")])
    with pytest.raises(DeployError, match="has no container of backend, frontend"):
        DockerDeployer(api, project="jerp", services=["backend", "frontend"], repository="reg/x").deploy("r2")


# -- the replacement's configuration ---------------------------------------------------------


def test_the_replacement_keeps_the_containers_own_settings_and_takes_the_new_images_defaults() -> None:
    old_id = "c0ffee000000" + "1" * 52
    info = {
        "Id": old_id,
        "Config": {
            "Hostname": old_id[:12], "Image": "reg/x:old", "User": "frappe", "WorkingDir": "/home/frappe",
            "Env": ["PATH=/nvm/v18/bin:/usr/bin", "GUNICORN_WORKERS=2"],
            "Cmd": ["gunicorn", "app"], "Entrypoint": None,
            "Labels": {PROJECT_LABEL: "jerp", SERVICE_LABEL: "backend", "org.opencontainers.image.version": "old",
                       "com.docker.compose.image": "sha256:old"},
            "Healthcheck": {"Test": ["CMD", "true"], "Interval": 1000000000},
            "ExposedPorts": {"8000/tcp": {}}, "Volumes": {"/data": {}, "/image-volume": {}},
        },
        "HostConfig": {"Binds": ["jerp_data:/data:rw"], "NetworkMode": "jerp_default",
                       "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0}},
        "Mounts": [
            {"Type": "volume", "Name": "jerp_data", "Destination": "/data", "RW": True},
            {"Type": "volume", "Name": "f" * 64, "Destination": "/image-volume", "RW": True},
            {"Type": "bind", "Source": "/etc/x", "Destination": "/x", "RW": False},
        ],
        "NetworkSettings": {"Networks": {
            "jerp_default": {"Aliases": ["backend", old_id[:12]], "IPAddress": "10.0.0.2", "NetworkID": "n1"},
            "proxy": {"Aliases": ["backend-public"], "IPAMConfig": {"IPv4Address": "10.9.0.5"}},
        }},
    }
    old_image = {"Env": ["PATH=/nvm/v18/bin:/usr/bin"], "Cmd": ["gunicorn", "app"], "Entrypoint": None,
                 "User": "frappe", "WorkingDir": "/home/frappe", "Labels": {"org.opencontainers.image.version": "old"},
                 "ExposedPorts": {"8000/tcp": {}}, "Volumes": {"/image-volume": {}}}

    body, extra = replacement_config(info, old_image, "reg/x:new", "sha256:new")

    assert body["Image"] == "reg/x:new"
    assert body["Env"] == ["GUNICORN_WORKERS=2"]  # PATH comes from the new image
    assert body["Labels"] == {PROJECT_LABEL: "jerp", SERVICE_LABEL: "backend", "com.docker.compose.image": "sha256:new"}
    assert "Cmd" not in body and "Entrypoint" not in body and "User" not in body and "WorkingDir" not in body
    assert "Hostname" not in body and "ExposedPorts" not in body
    assert body["Volumes"] == {"/data": {}}
    assert body["Healthcheck"] == {"Test": ["CMD", "true"], "Interval": 1000000000}
    assert body["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert body["HostConfig"]["Binds"] == ["jerp_data:/data:rw", f"{'f' * 64}:/image-volume"]
    assert body["NetworkingConfig"] == {"EndpointsConfig": {"jerp_default": {"Aliases": ["backend"]}}}
    assert extra == [("proxy", {"aliases": ["backend-public"], "links": None, "ipv4_address": "10.9.0.5",
                                "ipv6_address": None, "link_local_ips": None})]


def test_an_own_command_and_hostname_are_kept() -> None:
    info = {"Id": "a" * 64, "Config": {"Hostname": "backend-host", "Image": "reg/x:old", "Cmd": ["bench", "schedule"],
                                       "Entrypoint": None, "Env": None, "Labels": None},
            "HostConfig": {"NetworkMode": "host"}, "NetworkSettings": {"Networks": {"host": {}}}}

    body, extra = replacement_config(info, {"Cmd": ["gunicorn"], "Entrypoint": None}, "reg/x:new")

    assert body["Cmd"] == ["bench", "schedule"] and body["Hostname"] == "backend-host"
    assert "NetworkingConfig" not in body and extra == []
    assert body["HostConfig"]["Binds"] is None


# -- deployer_from_settings ----------------------------------------------------------------


def test_portainer_is_used_when_its_webhook_is_configured() -> None:
    settings = load_settings(_env_file=None, portainer_webhook_url=WEBHOOK_URL, portainer_tag_variable="APP_TAG")
    chosen = deployer_from_settings(settings, None)
    assert isinstance(chosen, PortainerDeployer) and chosen.tag_variable == "APP_TAG"
    assert_secret_absent(repr(chosen))


def test_the_docker_api_is_used_without_portainer() -> None:
    settings = load_settings(_env_file=None, release_image="reg.example.com/erp", compose_project="plat",
                             deploy_services="backend,frontend")
    chosen = deployer_from_settings(settings, object())  # type: ignore[arg-type]
    assert isinstance(chosen, DockerDeployer)
    assert (chosen.project, chosen.services, chosen.repository) == ("plat", ["backend", "frontend"],
                                                                    "reg.example.com/erp")


def test_without_portainer_the_release_image_is_required() -> None:
    with pytest.raises(ConfigError) as raised:
        deployer_from_settings(load_settings(_env_file=None), object())  # type: ignore[arg-type]
    assert raised.value.variable == "JERP_RELEASE_IMAGE"


# -- on the real Docker Engine ----------------------------------------------------------------

COMPOSE_FILE = """\
version: "2.4"
services:
  backend:
    image: ${STANDIN_REPO:?}:${REGISTRY_IMAGE_TAG:?}
    environment:
      STACK_SETTING: kept
    volumes:
      - data:/data
      - /scratch
    restart: unless-stopped
    healthcheck:
      test: ["CMD", "test", "-d", "/data"]
      interval: 1s
      timeout: 5s
      retries: 30
    networks:
      default:
        aliases: [api]
      side:
        aliases: [api-side]
volumes:
  data:
networks:
  side:
"""


@dataclass
class Releases:
    """Three tags of the stand-in backend: two that differ in an ENV and a LABEL, one that cannot start."""

    r1: str
    r2: str
    broken: str


@pytest.fixture(scope="module")
def releases(docker_client: Any) -> Iterator[Releases]:
    """Builds ``jerp-test-<id>/standin-backend:r1-…``, ``r2-…`` and ``broken-…`` (metadata-only layers
    on the stand-in backend image); removes them at the end."""
    import docker

    compose_command()  # fails the test when compose is missing
    suffix = secrets.token_hex(3)
    made = Releases(f"r1-{suffix}", f"r2-{suffix}", f"broken-{suffix}")
    lines = {made.r1: 'ENV RELEASE=r1\nLABEL jerp.test.release="r1"',
             made.r2: 'ENV RELEASE=r2\nLABEL jerp.test.release="r2"',
             made.broken: 'ENTRYPOINT ["/nonexistent/entrypoint"]'}
    try:
        for tag, extra in lines.items():
            dockerfile = f"FROM {REPO}:latest\n{extra}\n".encode()
            docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=f"{REPO}:{tag}", rm=True, pull=False,
                                     labels=naming.LABELS)
    except docker.errors.DockerException as exc:
        pytest.fail(f"cannot build the release images from {REPO}:latest: {exc}", pytrace=False)
    yield made
    for tag in lines:
        try:
            docker_client.images.remove(f"{REPO}:{tag}", force=True)
        except docker.errors.NotFound:
            pass


@dataclass
class Stack:
    compose: Compose
    project: str
    env_file: Path

    def redeploy(self, overrides: dict[str, str]) -> None:
        """What Portainer does for a compose stack with environment overrides."""
        values = dict(line.split("=", 1) for line in self.env_file.read_text().splitlines() if "=" in line)
        write_env_file(self.env_file, {**values, **overrides})
        self.compose.up()


@pytest.fixture
def stack(releases: Releases, docker_client: Any, tmp_path: Path) -> Iterator[Stack]:
    """A compose project (unique name) with one service ``backend`` on r1, healthy; always taken down
    with its volumes."""
    import docker
    project = naming.unique_name("deploy")
    (tmp_path / "compose.yml").write_text(COMPOSE_FILE)
    env_file = write_env_file(tmp_path / "stack.env", {"STANDIN_REPO": REPO, "REGISTRY_IMAGE_TAG": releases.r1})
    compose = Compose(project, [tmp_path / "compose.yml"], env_file)
    try:
        compose.up()
        compose.wait_healthy(["backend"], timeout=120)
        yield Stack(compose, project, env_file)
    finally:
        # A redeployed container mounts its predecessor's anonymous volumes by name, so `down -v`
        # keeps them: they are the project's, removed here.
        mounted = {mount["Name"]
                   for container in docker_client.containers.list(
                       all=True, filters={"label": f"{PROJECT_LABEL}={project}"})
                   for mount in container.attrs["Mounts"] if mount["Type"] == "volume"}
        compose.down()
        leftovers = docker_client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"})
        for container in leftovers:
            container.remove(force=True, v=True)
        for volume in mounted:
            try:
                docker_client.volumes.get(volume).remove()
            except docker.errors.NotFound:
                pass
        assert not leftovers, f"containers left behind: {[c.name for c in leftovers]}"


def confirm(docker_client: Any, stack: Stack, tag: str, since: float, deadline_s: float = 120) -> RunningContainer:
    [container] = wait_rollout(docker_client, project=stack.project, service="backend", image_ref=f"{REPO}:{tag}",
                               deadline_s=deadline_s, since=since, poll_s=0.5)
    return container


@pytest.mark.docker
def test_portainer_redeploy_is_confirmed_from_the_containers(docker_client: Any, stack: Stack,
                                                             releases: Releases) -> None:
    [before] = service_containers(docker_client, stack.project, "backend")
    assert running_tag(docker_client, stack.project, "backend", REPO) == releases.r1

    with Portainer(stack.redeploy, delay_s=0.5) as portainer:
        since = time.time()
        detail = PortainerDeployer(portainer.webhook_url).deploy(releases.r2)
        after = confirm(docker_client, stack, releases.r2, since)

    assert "accepted" in detail
    assert portainer.errors == []
    assert [c.query for c in portainer.calls] == [{"REGISTRY_IMAGE_TAG": releases.r2}]
    assert after.id != before.id and after.created >= since and after.health == "healthy"
    assert running_tag(docker_client, stack.project, "backend", REPO) == releases.r2
    assert docker_client.containers.get(after.id).attrs["Config"]["Labels"]["jerp.test.release"] == "r2"


@pytest.mark.docker
def test_a_webhook_that_does_nothing_ends_in_a_rollout_timeout(docker_client: Any, stack: Stack,
                                                               releases: Releases) -> None:
    with Portainer(stack.redeploy, noop=True) as portainer:
        since = time.time()
        PortainerDeployer(portainer.webhook_url).deploy(releases.r2)
        with pytest.raises(RolloutTimeout) as raised:
            confirm(docker_client, stack, releases.r2, since, deadline_s=3)

    assert f"backend still runs {REPO}:{releases.r1} (container " in str(raised.value)
    assert str(raised.value).endswith("after 3 s")
    assert running_tag(docker_client, stack.project, "backend", REPO) == releases.r1


def _snapshot(container: Any) -> dict[str, Any]:
    attrs = container.attrs
    return {
        "name": container.name,
        "labels": {k: v for k, v in attrs["Config"]["Labels"].items() if k != "jerp.test.release"},
        "networks": {name: sorted(a for a in (ep.get("Aliases") or []) if a != container.id[:12])
                     for name, ep in attrs["NetworkSettings"]["Networks"].items()},
        "mounts": sorted((m["Type"], m.get("Name"), m["Destination"], m["RW"]) for m in attrs["Mounts"]),
        "restart": attrs["HostConfig"]["RestartPolicy"],
        "healthcheck": attrs["Config"]["Healthcheck"],
        "cmd": attrs["Config"]["Cmd"],
        "user": attrs["Config"]["User"],
    }


@pytest.mark.docker
def test_docker_deployer_recreates_the_container_on_the_new_tag(docker_client: Any, stack: Stack,
                                                                releases: Releases) -> None:
    old = docker_client.containers.get(stack.compose.container("backend"))
    for path in ("/data/kept", "/scratch/kept"):
        assert old.exec_run(["sh", "-c", f"echo before > {path}"], user="root").exit_code == 0
    before = _snapshot(old)

    since = time.time()
    detail = DockerDeployer(docker_client, project=stack.project, services=["backend", "absent"],
                            repository=REPO).deploy(releases.r2)
    confirmed = confirm(docker_client, stack, releases.r2, since)

    assert f"-> {REPO}:{releases.r2}" in detail and "absent: no container, skipped" in detail
    new = docker_client.containers.get(confirmed.id)
    assert new.id != old.id and confirmed.health == "healthy"
    assert _snapshot(new) == before
    assert set(before["networks"]) == {f"{stack.project}_default", f"{stack.project}_side"}
    assert "api" in before["networks"][f"{stack.project}_default"]
    env = new.attrs["Config"]["Env"]
    assert "STACK_SETTING=kept" in env and "RELEASE=r2" in env and "RELEASE=r1" not in env
    assert new.attrs["Config"]["Labels"]["jerp.test.release"] == "r2"
    assert new.exec_run(["cat", "/data/kept", "/scratch/kept"]).output == b"before\nbefore\n"
    import docker

    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(old.id)
    assert running_tag(docker_client, stack.project, "backend", REPO) == releases.r2
    assert stack.compose.container("backend") == new.id  # compose still owns it
    # Already there: nothing to do.
    assert "already on" in DockerDeployer(docker_client, project=stack.project, services=["backend"],
                                          repository=REPO).deploy(releases.r2)


@pytest.mark.docker
def test_docker_deployer_puts_the_old_container_back_when_the_new_one_cannot_start(
    docker_client: Any, stack: Stack, releases: Releases
) -> None:
    old = docker_client.containers.get(stack.compose.container("backend"))

    with pytest.raises(DeployError) as raised:
        DockerDeployer(docker_client, project=stack.project, services=["backend"],
                       repository=REPO).deploy(releases.broken)

    assert "starting the new container" in str(raised.value) and "put back and started" in str(raised.value)
    containers = service_containers(docker_client, stack.project, "backend")
    assert [(c.id, c.name, c.running) for c in containers] == [(old.id, old.name, True)]
    confirm(docker_client, stack, releases.r1, since=time.time(), deadline_s=60)
    assert running_tag(docker_client, stack.project, "backend", REPO) == releases.r1


@pytest.mark.docker
def test_docker_deployer_refuses_a_tag_that_is_not_on_the_host(docker_client: Any, stack: Stack) -> None:
    old_id = stack.compose.container("backend")
    with pytest.raises(DeployError, match="not on the Docker host"):
        DockerDeployer(docker_client, project=stack.project, services=["backend"],
                       repository=REPO).deploy(f"missing-{secrets.token_hex(3)}")
    assert stack.compose.container("backend") == old_id



@pytest.mark.docker
def test_docker_deployer_works_through_the_socket_proxy_allowing_deploys(docker_client: Any, stack: Stack,
                                                                         releases: Releases) -> None:
    """The proxy as the jobs stack runs it (exec: the backend; deploys: the platform's project)
    lets through every call DockerDeployer and the rollout check make, and still nothing else."""
    import docker

    from jerp_jobs.socket_proxy import SocketProxy
    from tests.test_socket_proxy import LoopThread

    loop = LoopThread()
    proxy = SocketProxy("/var/run/docker.sock", allow_deploy=True,
                        container_labels={PROJECT_LABEL: stack.project, SERVICE_LABEL: "backend"})
    server = loop.run(proxy.start("127.0.0.1", 0))
    client = docker.DockerClient(base_url=f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}", timeout=60)
    try:
        old_id = stack.compose.container("backend")
        since = time.time()
        DockerDeployer(client, project=stack.project, services=["backend"], repository=REPO).deploy(releases.r2)
        [confirmed] = wait_rollout(client, project=stack.project, service="backend", image_ref=f"{REPO}:{releases.r2}",
                                   deadline_s=120, since=since, poll_s=0.5)
        assert confirmed.id != old_id and running_tag(client, stack.project, "backend", REPO) == releases.r2

        labels = {PROJECT_LABEL: stack.project, SERVICE_LABEL: "backend"}
        for kwargs in ({"labels": {PROJECT_LABEL: "another"}},
                       {"labels": labels, "volumes": {"/": {"bind": "/host", "mode": "ro"}}},
                       {"labels": labels, "privileged": True},
                       {"labels": labels, "network_mode": "host"}):
            with pytest.raises(docker.errors.APIError) as refused:
                client.containers.create(f"{REPO}:{releases.r1}", ["true"], **kwargs)
            assert refused.value.status_code == 403
        with pytest.raises(docker.errors.APIError) as refused:
            client.images.list()
        assert refused.value.status_code == 403
    finally:
        client.close()
        loop.loop.call_soon_threadsafe(server.close)
        loop.stop()


@pytest.mark.docker
def test_a_deploy_cut_short_after_the_swap_is_finished_by_the_next_attempt(docker_client: Any, stack: Stack,
                                                                          releases: Releases) -> None:
    """The worker died after naming the new container and before starting it: the old one is
    set aside and stopped, the new one has the name and is stopped. The next attempt starts it
    and removes what was left."""
    old = docker_client.containers.get(stack.compose.container("backend"))
    name = old.name
    old.stop(timeout=5)
    old.rename(f"{name}_jerp_old_{old.id[:12]}")
    labels = dict(old.attrs["Config"]["Labels"])
    networks = list(old.attrs["NetworkSettings"]["Networks"])
    new = docker_client.containers.create(f"{REPO}:{releases.r2}", name=name, labels=labels,
                                          network=networks[0])

    since = time.time()
    detail = DockerDeployer(docker_client, project=stack.project, services=["backend"],
                            repository=REPO).deploy(releases.r2)
    assert "interrupted" in detail and "started" in detail
    confirmed = confirm(docker_client, stack, releases.r2, since - 60)
    assert confirmed.id == new.id and confirmed.running
    import docker

    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(old.id)
