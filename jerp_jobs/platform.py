"""The platform stack a release acts on: deploy an image tag, confirm the containers run it,
ping and smoke-test sites. :class:`Platform` is what the release workflow needs;
:class:`DockerPlatform` is the real one (Portainer's stack webhook or the Docker API through the
socket proxy, the frontend for pings and smoke tests).

Importing this module is cheap: the Docker client, the deploy helpers and the HTTP client of
the smoke tests are imported when a release first uses them (``jerpctl`` never does)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from jerp_jobs.errors import ConfigError

if TYPE_CHECKING:
    from jerp_jobs.settings import Settings


class SmokeResult(Protocol):
    @property
    def ok(self) -> bool: ...

    def summary(self) -> str: ...

    def as_dict(self) -> dict[str, Any]: ...


class Platform(Protocol):
    """What a release does to the platform; :class:`DockerPlatform` is the real one."""

    def running_tag(self) -> str | None: ...

    def deploy(self, tag: str) -> str: ...

    def wait_rollout(self, tag: str, *, since: float, deadline_s: float) -> str: ...

    def ping(self, site: str) -> None: ...

    def smoke(self, site: str) -> SmokeResult: ...


@dataclass
class DockerPlatform:
    """The platform stack on the Docker Engine (through the socket proxy in the jobs stack):
    Portainer's stack webhook or the Docker API to deploy, the containers to confirm, the
    frontend to ping and smoke-test."""

    settings: Settings
    client: Any = None

    def _client(self) -> Any:
        if self.client is None:
            import docker

            self.client = docker.from_env(timeout=60)
        return self.client

    @property
    def repository(self) -> str:
        if not self.settings.release_image:
            raise ConfigError("JERP_RELEASE_IMAGE", "is not set; releases need the platform image (registry/name)")
        return self.settings.release_image

    def running_tag(self) -> str | None:
        from jerp_jobs import deploy as stack

        return stack.running_tag(self._client(), self.settings.compose_project, self.settings.backend_service,
                                 self.repository)

    def deploy(self, tag: str) -> str:
        from jerp_jobs import deploy as stack

        _ = self.repository
        return stack.deployer_from_settings(self.settings, self._client()).deploy(tag)

    def wait_rollout(self, tag: str, *, since: float, deadline_s: float) -> str:
        from jerp_jobs import deploy as stack

        seen = stack.wait_rollout(self._client(), project=self.settings.compose_project,
                                  service=self.settings.backend_service, image_ref=f"{self.repository}:{tag}",
                                  deadline_s=deadline_s, since=since)
        return f"{self.settings.backend_service} runs {self.repository}:{tag} in {len(seen)} container(s)"

    def ping(self, site: str) -> None:
        from jerp_jobs import smoke as checks

        checks.ping(site, base_url=self.settings.frontend_url, timeout=min(10.0, self.settings.smoke_timeout))

    def smoke(self, site: str) -> SmokeResult:
        from jerp_jobs import smoke as checks

        password = self.settings.secret("smoke_password") if self.settings.smoke_password else None
        return checks.smoke_site(site, base_url=self.settings.frontend_url, user=self.settings.smoke_user,
                          password=password, timeout=self.settings.smoke_timeout)
