"""Moving the platform stack to an image tag, and confirming it from the running containers.

Two ways to deploy, chosen by :func:`deployer_from_settings`:

- :class:`PortainerDeployer` calls the stack's Portainer webhook,
  ``POST <portainer>/api/stacks/webhooks/<uuid>?<PORTAINER_TAG_VARIABLE>=<tag>`` (Business
  Edition applies query parameters as environment overrides that the compose file references,
  here ``REGISTRY_IMAGE_TAG``). The webhook URL is a secret — its uuid is the only credential —
  so it never appears in a message or a log line: it shows as
  ``https://host/api/stacks/webhooks/…``.
- :class:`DockerDeployer`, when no Portainer is configured, recreates each service's containers
  on ``<repository>:<tag>`` through the Docker API, the way compose recreates a container: same
  configuration, labels (compose's included), environment, mounts (anonymous volumes kept),
  networks with their aliases, healthcheck and restart policy; only the image changes. The
  image must already be on the Docker host: nothing is pulled.

Neither answer proves anything (Portainer Community Edition answers ``204`` and may redeploy
nothing), so :func:`wait_rollout` watches the service's containers until every running one runs
the new image — created after the deploy started, or already on it — and is healthy when it has
a healthcheck, or raises :class:`~jerp_jobs.errors.RolloutTimeout` saying what it saw last.

Containers are found by their compose labels (``com.docker.compose.project`` — a Portainer
stack's name — and ``com.docker.compose.service``); one-off containers (``compose run``) are
ignored. The Docker API calls used: containers list and inspect, image inspect (to tell the
old image's defaults from the container's own settings), and for :class:`DockerDeployer`
container create, start, stop, rename and remove, and network connect. ``jerp_jobs.socket_proxy``
allows the latter with ``--allow-deploy``.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from jerp_jobs.errors import (
    ConfigError,
    DeployBusy,
    DeployError,
    DeployUnavailable,
    RolloutTimeout,
)
from jerp_jobs.executors.docker import PROJECT_LABEL, SERVICE_LABEL, compose_order
from jerp_jobs.hooks import validate_tag
from jerp_jobs.log import get_logger

if TYPE_CHECKING:
    import docker
    import httpx

    from jerp_jobs.settings import Settings

log = get_logger(__name__)

ONEOFF_LABEL = "com.docker.compose.oneoff"
#: Compose v2 records the image id the container was created from; kept in step when recreating.
IMAGE_LABEL = "com.docker.compose.image"

_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TIMESTAMP = re.compile(r"(?P<base>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?P<frac>\.\d+)?(?P<tz>Z|[+-]\d\d:\d\d)")
_DEFAULT_STOP_TIMEOUT = 10
#: Config fields an image supplies defaults for: kept only where the container set its own.
_IMAGE_DEFAULTS = ("WorkingDir", "User", "StopSignal", "Healthcheck", "Shell", "OnBuild")


# -- reading what runs ------------------------------------------------------------------


@dataclass(frozen=True)
class RunningContainer:
    """One container of a compose service, as inspected.

    ``image_ref`` is the image the container was created with (``Config.Image``, e.g.
    ``registry/x:abc``), ``image_id`` the image it runs (``sha256:…``), ``created`` the time it
    was created (epoch seconds, Docker's clock), ``health`` the healthcheck status (``starting``,
    ``healthy``, ``unhealthy``) or None when it has no healthcheck.
    """

    id: str
    name: str
    service: str
    image_ref: str
    image_id: str
    created: float
    running: bool
    health: str | None

    @property
    def short_id(self) -> str:
        return self.id[:12]


def _api(client: Any) -> Any:
    """The low-level API client of a ``docker.DockerClient`` (or the API client itself)."""
    return getattr(client, "api", client)


def _api_errors() -> tuple[type[BaseException], ...]:
    import docker.errors
    import requests.exceptions

    return (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


def _not_found() -> type[BaseException]:
    import docker.errors

    return docker.errors.NotFound


def _reason(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    text = str(explanation or exc).strip()
    return text or type(exc).__name__


def _docker_failed(exc: BaseException, doing: str) -> DeployError:
    import docker.errors

    if isinstance(exc, docker.errors.APIError) and exc.status_code is not None and exc.status_code < 500:
        return DeployError(f"the Docker API refused {doing}: {_reason(exc)}", status=exc.status_code)
    return DeployUnavailable(f"the Docker API failed while {doing}: {_reason(exc)}")


def _parse_time(text: str) -> float:
    """Docker's RFC 3339 timestamps (nanoseconds, ``Z``) as epoch seconds."""
    match = _TIMESTAMP.fullmatch(text.strip())
    if not match:
        raise ValueError(f"unreadable timestamp {text!r}")
    tz = "+00:00" if match["tz"] == "Z" else match["tz"]
    base = datetime.fromisoformat(match["base"] + tz).timestamp()
    return base + (float(match["frac"]) if match["frac"] else 0.0)


def _container_from_inspect(info: Mapping[str, Any], service: str) -> RunningContainer:
    config = info.get("Config") or {}
    state = info.get("State") or {}
    health = state.get("Health") or {}
    try:
        created = _parse_time(str(info.get("Created", "")))
    except ValueError:
        created = 0.0
    return RunningContainer(
        id=str(info["Id"]),
        name=str(info.get("Name") or info["Id"][:12]).lstrip("/"),
        service=service,
        image_ref=str(config.get("Image") or ""),
        image_id=str(info.get("Image") or ""),
        created=created,
        running=bool(state.get("Running")),
        health=str(health["Status"]) if health.get("Status") else None,
    )


def _list_service(api: Any, project: str, service: str) -> list[dict[str, Any]]:
    filters = {"label": [f"{PROJECT_LABEL}={project}", f"{SERVICE_LABEL}={service}"]}
    listed = api.containers(all=True, filters=filters)
    listed = [c for c in listed if (c.get("Labels") or {}).get(ONEOFF_LABEL, "False") != "True"]
    return sorted(listed, key=compose_order)


def _names(container: Mapping[str, Any]) -> str:
    names = container.get("Names") or [container.get("Name") or container.get("Id", "")]
    return str(names[0]).lstrip("/")


def _leftover(container: Mapping[str, Any]) -> bool:
    """A container a cut-short replacement left behind (see DockerDeployer._replace)."""
    name = _names(container)
    return "_jerp_next_" in name or "_jerp_old_" in name


def service_containers(client: docker.DockerClient, project: str, service: str) -> list[RunningContainer]:
    """Every container (running or not, one-offs aside) of ``service`` in compose ``project``.

    Ordered by container number. A container removed between the list and its inspection is
    left out. Docker API failures raise :class:`DeployUnavailable` (or :class:`DeployError`).
    """
    api = _api(client)
    try:
        listed = _list_service(api, project, service)
    except _api_errors() as exc:
        raise _docker_failed(exc, f"listing the containers of service {service!r}") from exc
    found = []
    for item in listed:
        try:
            info = api.inspect_container(item["Id"])
        except _not_found():
            continue
        except _api_errors() as exc:
            raise _docker_failed(exc, f"inspecting a container of service {service!r}") from exc
        found.append(_container_from_inspect(info, service))
    return found


def _split_ref(image_ref: str) -> tuple[str, str | None, str | None]:
    """``repo[:tag][@digest]`` -> (normalized repository, tag or None, digest or None)."""
    ref, _, digest = image_ref.strip().partition("@")
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    tag = None
    if colon > slash:
        ref, tag = ref[:colon], ref[colon + 1 :]
    return _normalize_repository(ref), tag, digest or None


def _normalize_repository(repository: str) -> str:
    """``docker.io/library/x`` and ``x`` are the same repository; so are ``index.docker.io/u/x`` and ``u/x``."""
    repository = repository.strip().lower()
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if repository.startswith(prefix):
            repository = repository[len(prefix) :]
            break
    if repository.startswith("library/") and repository.count("/") == 1:
        repository = repository[len("library/") :]
    return repository


def _normalize_ref(image_ref: str) -> str:
    repository, tag, digest = _split_ref(image_ref)
    if digest:
        return f"{repository}@{digest}"
    return f"{repository}:{tag or 'latest'}"


def tag_of(image_ref: str, repository: str) -> str | None:
    """The tag of ``image_ref`` when it names ``repository``: ``("reg/x:abc", "reg/x") -> "abc"``.

    No tag means ``latest``, as for Docker. A reference by digest, or to another repository,
    gives None.
    """
    if not image_ref or not repository:
        return None
    ref_repository, tag, digest = _split_ref(image_ref)
    if digest or ref_repository != _normalize_repository(repository):
        return None
    return tag or "latest"


def running_tag(client: docker.DockerClient, project: str, service: str, repository: str) -> str | None:
    """The tag of ``repository`` that the service's running containers run, or None.

    None when no container runs, when they run different tags, or another image.
    """
    tags = {tag_of(c.image_ref, repository) for c in service_containers(client, project, service) if c.running}
    if len(tags) == 1:
        return tags.pop()
    return None


# -- Portainer ------------------------------------------------------------------------------


def shown_webhook(url: str) -> str:
    """The webhook URL as it may be shown: its origin and path, with the uuid (the credential) hidden."""
    import httpx

    try:
        parsed = httpx.URL(url)
        path = parsed.path
        origin = f"{parsed.scheme}://{parsed.host}" + (f":{parsed.port}" if parsed.port else "")
    except (httpx.InvalidURL, TypeError, ValueError):
        return "<portainer>/api/stacks/webhooks/…"
    head = path.rstrip("/").rpartition("/")[0]
    return f"{origin}{head}/…" if head else f"{origin}/…"


class PortainerDeployer:
    """Redeploys the Portainer stack of a webhook with the image tag as an environment override.

    ``transport`` is an httpx transport (``httpx.MockTransport`` in tests; default: the network).
    Answers: ``202`` (with ``{"stackId", "message"}``), ``204`` and ``200`` pass; ``409`` raises
    :class:`DeployBusy`; ``404`` :class:`DeployError` (unknown webhook); other ``4xx``
    :class:`DeployError`; ``5xx`` and network failures :class:`DeployUnavailable`. Both of the
    latter two are :class:`~jerp_jobs.errors.TransientError`.
    """

    def __init__(
        self,
        webhook_url: str,
        *,
        tag_variable: str = "REGISTRY_IMAGE_TAG",
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        import httpx

        if not webhook_url or not webhook_url.startswith(("http://", "https://")):
            raise ConfigError("PORTAINER_WEBHOOK_URL", "must be the stack webhook's http(s):// URL")
        try:
            httpx.URL(webhook_url)
        except httpx.InvalidURL:
            raise ConfigError("PORTAINER_WEBHOOK_URL", "is not a valid URL") from None
        if not _VARIABLE.fullmatch(tag_variable):
            raise ConfigError("JERP_PORTAINER_TAG_VARIABLE", f"{tag_variable!r} is not a variable name")
        self._url = webhook_url
        self._secret_part = webhook_url.rstrip("/").rpartition("/")[2]
        self.tag_variable = tag_variable
        self.timeout = timeout
        self._transport = transport
        self.shown = shown_webhook(webhook_url)

    def __repr__(self) -> str:
        return f"PortainerDeployer({self.shown!r}, tag_variable={self.tag_variable!r})"

    def _clean(self, text: str) -> str:
        """Text from elsewhere (an exception, an answer) with the URL and uuid hidden."""
        text = text.replace(self._url, self.shown)
        if len(self._secret_part) >= 8:
            text = text.replace(self._secret_part, "…")
        return text

    def deploy(self, tag: str) -> str:
        """Ask Portainer to redeploy the stack on ``tag``; a human line about its answer."""
        import httpx

        validate_tag(tag)
        url = httpx.URL(self._url).copy_merge_params({self.tag_variable: tag})
        where = f"Portainer webhook {self.shown}"
        try:
            with httpx.Client(transport=self._transport, timeout=self.timeout, follow_redirects=False) as http:
                answer = http.post(url)
        except httpx.HTTPError as exc:
            reason = self._clean(str(exc) or type(exc).__name__)
            log.warning("portainer_webhook_failed", webhook=self.shown, tag=tag, reason=reason)
            # ``from None``: the httpx exception holds the request, and with it the URL.
            raise DeployUnavailable(f"{where} could not be reached: {reason}", tag=tag) from None
        status = answer.status_code
        detail = self._detail(answer)
        log.info("portainer_webhook_called", webhook=self.shown, tag=tag, status=status)
        if status in (200, 202, 204):
            if status == 202:
                return f"Portainer accepted the redeploy on {self.tag_variable}={tag}{detail} (202)"
            return f"Portainer answered {status} to the redeploy on {self.tag_variable}={tag}{detail}"
        if status == 409:
            raise DeployBusy(f"{where}: a deployment of the stack is already in progress (409){detail}",
                             tag=tag, status=status)
        if status == 404:
            raise DeployError(f"{where}: unknown webhook (404) — was the stack's webhook recreated?{detail}",
                              tag=tag, status=status)
        if status >= 500:
            raise DeployUnavailable(f"{where} failed with {status}{detail}", tag=tag, status=status)
        raise DeployError(f"{where} refused the redeploy with {status}{detail}", tag=tag, status=status)

    def _detail(self, answer: httpx.Response) -> str:
        try:
            data = answer.json()
        except ValueError:
            text = answer.text.strip()[:200]
            return f": {self._clean(text)}" if text else ""
        if not isinstance(data, dict):
            return ""
        parts = []
        if data.get("stackId") is not None:
            parts.append(f"stack {data['stackId']}")
        for key in ("message", "details"):
            if data.get(key):
                parts.append(self._clean(str(data[key]))[:200])
        return f" ({'; '.join(parts)})" if parts else ""


# -- Docker -----------------------------------------------------------------------------


class DockerDeployer:
    """Recreates the containers of ``services`` in compose ``project`` on ``repository:<tag>``.

    For each container, in order: inspect it; create the replacement (same configuration,
    host configuration, labels, environment, mounts, first network with its aliases; the image's
    own defaults — environment, command, labels… — come from the new image, as with compose);
    connect it to the other networks; stop the old container, rename it aside, give the new one
    the name, start it, remove the old one (its anonymous volumes stay: the new container uses
    them). If the start fails, the new container is removed and the old one put back under its
    name and started again, and :class:`DeployError` is raised. Containers already on the
    image are left alone; a service with no container is skipped and reported.

    A later ``docker compose up`` with the stack's own environment recreates the containers on
    the tag that environment names: keep ``REGISTRY_IMAGE_TAG`` of the stack in step.
    """

    def __init__(self, client: docker.DockerClient, *, project: str, services: Sequence[str], repository: str) -> None:
        if not project:
            raise ValueError("project must be a compose project name")
        if not repository or "@" in repository or _split_ref(repository)[1] is not None:
            raise ConfigError("JERP_RELEASE_IMAGE", f"{repository!r} must be an image name without tag or digest")
        self.client = client
        self.project = project
        self.services = list(services)
        self.repository = repository

    def __repr__(self) -> str:
        return f"DockerDeployer(project={self.project!r}, services={self.services!r})"

    def deploy(self, tag: str) -> str:
        """Move every service to ``repository:tag``; a line per service about what was done."""
        validate_tag(tag)
        api = _api(self.client)
        image_ref = f"{self.repository}:{tag}"
        new_image = self._inspect_image(api, image_ref)
        report: list[str] = []
        for service in self.services:
            try:
                listed = _list_service(api, self.project, service)
            except _api_errors() as exc:
                raise _docker_failed(exc, f"listing the containers of service {service!r}") from exc
            if not listed:
                log.warning("deploy_service_skipped", service=service, project=self.project, reason="no container")
                report.append(f"{service}: no container, skipped")
                continue
            leftovers = [item for item in listed if _leftover(item)]
            listed = [item for item in listed if not _leftover(item)]
            if leftovers:  # an earlier deploy was cut short (its worker died): clear up, start what it stopped
                report.append(f"{service}: " + self._clear_leftovers(api, leftovers))
            done = []
            for item in listed:
                try:
                    done.append(self._replace(api, service, item["Id"], image_ref, new_image,
                                              interrupted=bool(leftovers)))
                except DeployError as exc:
                    if not report and not done:
                        raise
                    moved = "; ".join([*report, *(f"{service}: {d}" for d in done)])
                    raise type(exc)(f"{exc} (already done: {moved})", **exc.fields) from exc
            report.append(f"{service}: " + ", ".join(done))
        if all(line.endswith("no container, skipped") for line in report):
            raise DeployError(f"compose project {self.project!r} has no container of {', '.join(self.services)}: "
                              "is the stack up, and is JERP_COMPOSE_PROJECT its name?", project=self.project)
        return "; ".join(report)

    # -- one container -----------------------------------------------------------------

    def _inspect_image(self, api: Any, ref: str) -> dict[str, Any]:
        try:
            return dict(api.inspect_image(ref))
        except _not_found():
            raise DeployError(f"the image {ref} is not on the Docker host: pull it first", image=ref) from None
        except _api_errors() as exc:
            raise _docker_failed(exc, f"inspecting the image {ref}") from exc

    def _old_image_config(self, api: Any, image_id: str) -> dict[str, Any] | None:
        try:
            return dict(api.inspect_image(image_id).get("Config") or {})
        except _api_errors() as exc:
            log.warning("deploy_old_image_unreadable", image=image_id, reason=_reason(exc))
            return None

    def _clear_leftovers(self, api: Any, leftovers: Sequence[Mapping[str, Any]]) -> str:
        """Remove the containers a cut-short replacement left (``*_jerp_next_*`` never took the
        name; ``*_jerp_old_*`` was set aside); the service's containers are then started below."""
        removed = []
        for item in leftovers:
            name = _names(item)
            try:
                api.remove_container(item["Id"], force=True, v=False)
                removed.append(name)
            except _api_errors() as exc:
                log.warning("deploy_leftover_left", container=name, reason=_reason(exc))
        log.warning("deploy_leftovers_removed", containers=removed)
        return "removed what an interrupted deploy left: " + (", ".join(removed) or "nothing")

    def _replace(self, api: Any, service: str, container_id: str, image_ref: str, new_image: Mapping[str, Any],
                 *, interrupted: bool = False) -> str:
        try:
            info = api.inspect_container(container_id)
        except _api_errors() as exc:
            raise _docker_failed(exc, f"inspecting a container of service {service!r}") from exc
        name = str(info["Name"]).lstrip("/")
        old_id = str(info["Id"])
        config = info.get("Config") or {}
        new_id_of_image = str(new_image.get("Id") or "")
        same_ref = _normalize_ref(str(config.get("Image") or "")) == _normalize_ref(image_ref)
        running_now = bool((info.get("State") or {}).get("Running"))
        if same_ref and info.get("Image") == new_id_of_image:
            if interrupted and not running_now:
                try:
                    api.start(old_id)
                except _api_errors() as exc:
                    raise _docker_failed(exc, f"starting container {name} on {image_ref}") from exc
                return f"{name} already on {image_ref}, started (an interrupted deploy had left it stopped)"
            return f"{name} already on {image_ref}"
        host_config = info.get("HostConfig") or {}
        if host_config.get("AutoRemove"):
            raise DeployError(f"container {name} is removed when it stops (AutoRemove): it cannot be replaced safely",
                              container=name)
        state = info.get("State") or {}
        # after an interrupted deploy the container may be stopped by us, not by its operator
        was_running = bool(state.get("Running") or state.get("Restarting")) or interrupted
        old_defaults = self._old_image_config(api, str(info.get("Image") or ""))
        body, extra_networks = replacement_config(info, old_defaults, image_ref, new_id_of_image)
        temporary = f"{name}_jerp_next_{secrets.token_hex(3)}"
        aside = f"{name}_jerp_old_{old_id[:12]}"
        log.info("deploy_container_replacing", service=service, container=name, image=image_ref)

        try:
            new_id = str(api.create_container_from_config(body, name=temporary)["Id"])
        except _api_errors() as exc:
            raise _docker_failed(exc, f"creating the replacement of container {name} on {image_ref}") from exc
        step = "connecting it to its networks"
        try:
            for network, endpoint in extra_networks:
                api.connect_container_to_network(new_id, network, **endpoint)
            step = f"stopping the old container {name}"
            timeout = config.get("StopTimeout")
            api.stop(old_id, timeout=int(timeout) if timeout is not None else _DEFAULT_STOP_TIMEOUT)
            step = f"renaming the old container {name}"
            api.rename(old_id, aside)
            step = f"naming the new container {name}"
            api.rename(new_id, name)
            if was_running:
                step = f"starting the new container {name} on {image_ref}"
                api.start(new_id)
        except _api_errors() as exc:
            restored = self._put_back(api, old_id, new_id, name, was_running)
            message = f"deploying {service}: {step} failed: {_reason(exc)}; {restored}"
            log.error("deploy_container_failed", service=service, container=name, step=step, reason=_reason(exc))
            raise DeployError(message, service=service, container=name, image=image_ref) from exc
        try:
            api.remove_container(old_id, v=False)
        except _api_errors() as exc:
            log.warning("deploy_old_container_left", container=aside, reason=_reason(exc))
        log.info("deploy_container_replaced", service=service, container=name, image=image_ref, id=new_id[:12])
        return f"{name} -> {image_ref}" + ("" if was_running else " (left stopped, as it was)")

    def _put_back(self, api: Any, old_id: str, new_id: str, name: str, was_running: bool) -> str:
        """Remove the replacement; give the old container its name back and start it again."""
        problems = []
        try:
            api.remove_container(new_id, force=True, v=False)
        except _api_errors() as exc:
            problems.append(f"removing the new container failed ({_reason(exc)})")
        try:
            current = str(api.inspect_container(old_id).get("Name", "")).lstrip("/")
            if current != name:
                api.rename(old_id, name)
            if was_running:
                api.start(old_id)
        except _api_errors() as exc:
            problems.append(f"putting back the old container failed ({_reason(exc)})")
        if problems:
            return "then " + "; ".join(problems)
        return f"the old container {name} was put back" + (" and started" if was_running else "")


def replacement_config(
    info: Mapping[str, Any], old_image: Mapping[str, Any] | None, image_ref: str, image_id: str = ""
) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """The body of ``POST /containers/create`` recreating the inspected container on ``image_ref``,
    and the networks to connect afterwards (name, keyword arguments of
    ``connect_container_to_network``).

    Settings equal to the old image's defaults (``old_image``: its ``Config``) are left out so
    the new image's own apply: environment entries, labels, command and entrypoint, working
    directory, user, healthcheck, exposed ports, volumes. Without ``old_image`` everything is
    copied. The automatic hostname (the old short id) is dropped.
    """
    config = dict(info.get("Config") or {})
    defaults = dict(old_image or {})
    old_id = str(info.get("Id", ""))
    body: dict[str, Any] = {k: v for k, v in config.items() if k not in ("Image", "Hostname", "Env", "Labels")}
    body["Image"] = image_ref
    hostname = config.get("Hostname")
    if hostname and hostname != old_id[:12]:
        body["Hostname"] = hostname
    env = list(config.get("Env") or [])
    image_env = set(defaults.get("Env") or []) if old_image is not None else set()
    body["Env"] = [item for item in env if item not in image_env]
    labels = dict(config.get("Labels") or {})
    image_labels = dict(defaults.get("Labels") or {}) if old_image is not None else {}
    body["Labels"] = {k: v for k, v in labels.items() if image_labels.get(k, object()) != v}
    if IMAGE_LABEL in body["Labels"] and image_id:
        body["Labels"][IMAGE_LABEL] = image_id
    if old_image is not None:
        own_entrypoint = config.get("Entrypoint") != defaults.get("Entrypoint")
        if not own_entrypoint:
            body.pop("Entrypoint", None)
        if not own_entrypoint and config.get("Cmd") == defaults.get("Cmd"):
            body.pop("Cmd", None)
        for key in _IMAGE_DEFAULTS:
            if key in body and body[key] == defaults.get(key):
                body.pop(key)
        for key in ("ExposedPorts", "Volumes"):
            own = {k: v for k, v in (config.get(key) or {}).items() if k not in (defaults.get(key) or {})}
            if own:
                body[key] = own
            else:
                body.pop(key, None)

    host_config = dict(info.get("HostConfig") or {})
    host_config["Binds"] = _binds_with_anonymous_volumes(info, host_config)
    body["HostConfig"] = host_config

    networks = dict((info.get("NetworkSettings") or {}).get("Networks") or {})
    mode = str(host_config.get("NetworkMode") or "")
    extra: list[tuple[str, dict[str, Any]]] = []
    if networks and mode not in ("host", "none") and not mode.startswith("container:"):
        primary = mode if mode in networks else next(iter(networks))
        body["NetworkingConfig"] = {"EndpointsConfig": {primary: _endpoint(networks[primary], old_id)}}
        for network, endpoint in networks.items():
            if network == primary:
                continue
            settings = _endpoint(endpoint, old_id)
            ipam = settings.get("IPAMConfig") or {}
            extra.append((network, {
                "aliases": settings.get("Aliases"),
                "links": settings.get("Links"),
                "ipv4_address": ipam.get("IPv4Address") or None,
                "ipv6_address": ipam.get("IPv6Address") or None,
                "link_local_ips": ipam.get("LinkLocalIPs") or None,
            }))
    return body, extra


def _endpoint(endpoint: Mapping[str, Any], old_id: str) -> dict[str, Any]:
    """The settings of a network endpoint worth carrying over (not its address or ids)."""
    aliases = [a for a in (endpoint.get("Aliases") or []) if a not in (old_id[:12], old_id)]
    settings: dict[str, Any] = {}
    if aliases:
        settings["Aliases"] = aliases
    if endpoint.get("Links"):
        settings["Links"] = list(endpoint["Links"])
    ipam = endpoint.get("IPAMConfig")
    if ipam:
        settings["IPAMConfig"] = dict(ipam)
    if endpoint.get("DriverOpts"):
        settings["DriverOpts"] = dict(endpoint["DriverOpts"])
    return settings


def _binds_with_anonymous_volumes(info: Mapping[str, Any], host_config: Mapping[str, Any]) -> list[str] | None:
    """The container's binds plus its anonymous volumes, by name, so their data stays."""
    binds = list(host_config.get("Binds") or [])
    covered = {_bind_target(b) for b in binds}
    covered |= {str(m.get("Target")) for m in host_config.get("Mounts") or [] if m.get("Target")}
    for mount in info.get("Mounts") or []:
        if mount.get("Type") != "volume" or not mount.get("Name"):
            continue
        target = str(mount.get("Destination") or "")
        if not target or target in covered:
            continue
        binds.append(f"{mount['Name']}:{target}" + ("" if mount.get("RW", True) else ":ro"))
        covered.add(target)
    return binds or None


def _bind_target(bind: str) -> str:
    parts = bind.split(":")
    return parts[1] if len(parts) >= 2 else parts[0]


# -- confirming the rollout -------------------------------------------------------------


def _rollout_problem(containers: Sequence[RunningContainer], service: str, image_ref: str, since: float) -> str | None:
    """What still keeps the rollout from being done, or None when it is."""
    if not containers:
        return f"{service} has no container"
    running = [c for c in containers if c.running]
    if not running:
        names = ", ".join(c.name for c in containers)
        return f"{service} has no running container ({names})"
    wanted = _normalize_ref(image_ref)
    for c in running:
        if _normalize_ref(c.image_ref) != wanted:
            return f"{service} still runs {c.image_ref} (container {c.name})"
    fresh_images = {c.image_id for c in running if c.created >= since}
    for c in running:
        if c.created < since and fresh_images and c.image_id not in fresh_images:
            return f"{service} container {c.name} runs an older image of {image_ref} (created before the deploy)"
    for c in running:
        if c.health not in (None, "healthy"):
            return f"{service} runs {image_ref} but container {c.name} is {c.health}"
    return None


def wait_rollout(
    client: docker.DockerClient,
    *,
    project: str,
    service: str,
    image_ref: str,
    deadline_s: float,
    since: float,
    poll_s: float = 2.0,
    on_progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[RunningContainer]:
    """Wait until the service's running containers all run ``image_ref``; return them.

    Done when there is at least one running container, and every running one runs
    ``image_ref`` (by the reference it was created with), was created at/after ``since``
    (epoch seconds, ``time.time()`` taken just before the deploy) or already ran ``image_ref``
    — unless a container created since runs another image under that reference (a moved tag)
    — and is healthy when it has a healthcheck. Stopped containers are ignored.

    ``on_progress(description)`` is called whenever what keeps the rollout from being done
    changes. Docker API failures are retried until the deadline. After ``deadline_s`` seconds,
    :class:`RolloutTimeout` names what was seen last, e.g. ``backend still runs reg/x:old
    (container jerp_backend_1) after 600 s``.
    """
    end = clock() + deadline_s
    last: str | None = None
    while True:
        try:
            containers = service_containers(client, project, service)
        except DeployError as exc:
            problem: str | None = f"the Docker API failed: {exc}"
            containers = []
        else:
            problem = _rollout_problem(containers, service, image_ref, since)
        if problem is None:
            running = [c for c in containers if c.running]
            log.info("rollout_confirmed", project=project, service=service, image=image_ref,
                     containers=[c.name for c in running])
            return running
        if problem != last:
            log.info("rollout_waiting", project=project, service=service, image=image_ref, state=problem)
            if on_progress is not None:
                on_progress(problem)
            last = problem
        remaining = end - clock()
        if remaining <= 0:
            message = f"{problem} after {deadline_s:g} s"
            log.warning("rollout_timeout", project=project, service=service, image=image_ref, state=problem)
            raise RolloutTimeout(message, service=service, image=image_ref, seen=problem)
        sleep(min(poll_s, remaining))


# -- from the settings ------------------------------------------------------------------


def deployer_from_settings(
    settings: Settings, client: docker.DockerClient | None = None
) -> PortainerDeployer | DockerDeployer:
    """Portainer when ``PORTAINER_WEBHOOK_URL`` is set, else the Docker API.

    The Docker deployer needs ``JERP_RELEASE_IMAGE`` (ConfigError otherwise); ``client``
    defaults to ``docker.from_env()``.
    """
    if settings.portainer_webhook_url is not None and settings.portainer_webhook_url.get_secret_value():
        return PortainerDeployer(settings.secret("portainer_webhook_url"), tag_variable=settings.portainer_tag_variable)
    if not settings.release_image:
        raise ConfigError("JERP_RELEASE_IMAGE", "is not set; deploying without Portainer needs the image name")
    if client is None:
        import docker

        client = docker.from_env()
    return DockerDeployer(client, project=settings.compose_project, services=settings.deploy_services,
                          repository=settings.release_image)
