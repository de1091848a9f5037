"""The fleet: the benches jerp-jobs drives, as data (docs/fleet.md).

A bench is one Frappe bench of the platform: a compose project on a Docker host, with its
backend service and its sites volume. Each bench has

- ``name``: its id, a DNS label (``a-z``, ``0-9``, ``-``; 1 to 63 characters, no ``-`` at
  either end); its Celery queue is ``jerp.site.<name>`` (:data:`QUEUE_PREFIX`);
- ``role``: ``production`` or ``staging``;
- ``group``: a free label for fan-outs over part of the fleet (default ``default``);
- ``docker``: how its Docker API is reached: ``local`` (this host: ``DOCKER_HOST`` or the
  socket, as today) or ``tcp://HOST:PORT``, which needs TLS client certificates: a ``[bench.tls]``
  table with ``ca`` (the CA that signed the host's proxy certificate), ``cert`` and ``key``
  (the client certificate and its key), paths of readable files;
- ``compose_project`` and ``backend_service`` (default: ``JERP_COMPOSE_PROJECT`` and
  ``JERP_BACKEND_SERVICE``);
- ``sites_dir``: its sites folder as this bench's worker sees it (optional);
- ``concurrency``: how many of its sites a fan-out works on at once (default
  ``JERP_FANOUT_CONCURRENCY``);
- ``env_file``: the file holding this bench's own credentials (``MARIADB_ROOT_PASSWORD``,
  ``FRAPPE_ADMIN_PASSWORD``, the NPM and Portainer secrets...), read by this bench's worker only;
  no two benches name one file, and a staging bench shares no credential with a production one;
- ``npm_forward_host`` and ``npm_forward_port``: where Nginx Proxy Manager reaches this bench's
  frontend (default: ``JERP_NPM_FORWARD_HOST`` and ``JERP_NPM_FORWARD_PORT``): a site's proxy
  host forwards there, and a move to this bench points the proxy host there. Every process
  reads them (the fleet file), unlike the env file.

They are declared in one TOML file named by ``JERP_FLEET_FILE``::

    [[bench]]
    name = "prod-a"
    role = "production"
    group = "eu"
    docker = "tcp://host-a.example.net:2376"
    compose_project = "jerp"
    sites_dir = "/mnt/prod-a/sites"

    [bench.tls]
    ca = "certs/ca.pem"
    cert = "certs/client-cert.pem"
    key = "certs/client-key.pem"

Relative paths are read from the file's folder. The file is checked as a whole when it is
loaded and every problem is a :class:`FleetError` naming the file, the bench and the field:
unknown keys, a missing or malformed value, two benches with one name, two benches in one
compose project of one Docker host, a ``tcp://`` bench without its certificates (or with a
file that cannot be read), a fleet without a production bench.

Without ``JERP_FLEET_FILE`` the fleet is one implicit bench, ``default`` (production), built
from the settings of a single-host install: ``JERP_COMPOSE_PROJECT``, ``JERP_BACKEND_SERVICE``,
``JERP_SITES_DIR``; its queue is the site queue workers consume today, ``jerp.site``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jerp_jobs.errors import ConfigError, InvalidInput
from jerp_jobs.sites import sites_dir as settings_sites_dir

#: the setting naming the fleet file
VARIABLE = "JERP_FLEET_FILE"
ROLES = ("production", "staging")
LOCAL = "local"
#: a declared bench's Celery queue is this prefix and its name
QUEUE_PREFIX = "jerp.site."
#: the queue of the implicit bench: the site queue of a single-host install (jerp_jobs.celery.SITE_QUEUE)
SITE_QUEUE = "jerp.site"
#: the control plane's queue (jerp_jobs.celery.CONTROL_QUEUE)
CONTROL_QUEUE = "jerp.control"
IMPLICIT_NAME = "default"
DEFAULT_GROUP = "default"

_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
#: what compose accepts as a project name
_PROJECT = re.compile(r"[a-z0-9][a-z0-9_-]*")
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_TCP = re.compile(r"tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(?P<port>[0-9]{1,5})/?")

BENCH_KEYS = frozenset({"name", "role", "group", "docker", "tls", "compose_project", "backend_service", "sites_dir",
                        "concurrency", "env_file", "npm_forward_host", "npm_forward_port"})
#: what NPM accepts as a forward host: a host name or an IPv4/IPv6 address
_FORWARD_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?|\[?[0-9A-Fa-f:.]+\]?")
TLS_KEYS = ("ca", "cert", "key")
TOP_KEYS = frozenset({"bench"})


class FleetError(ConfigError):
    """The fleet file is unusable; names the file, and the bench and field when there is one."""

    def __init__(self, file: Path | str, problem: str, *, bench: str | None = None, field: str | None = None) -> None:
        where = str(file)
        if bench is not None:
            where += f": bench {bench!r}"
        if field is not None:
            where += f", field {field!r}" if bench is not None else f": field {field!r}"
        super().__init__(VARIABLE, f"({where}): {problem}")
        self.file = str(file)
        self.bench = bench
        self.field = field


@dataclass(frozen=True)
class DockerTLS:
    """TLS client certificates for a ``tcp://`` Docker API: the CA that signed the server's
    certificate, the client's certificate and its key (file paths)."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class Bench:
    name: str
    role: str
    group: str
    #: ``local`` or ``tcp://HOST:PORT``
    docker: str
    compose_project: str
    backend_service: str
    queue: str
    tls: DockerTLS | None = None
    sites_dir: Path | None = None
    #: sites a fan-out works on at once on this bench (None: JERP_FANOUT_CONCURRENCY)
    concurrency: int | None = None
    #: this bench's credentials (an env file read by its worker only)
    env_file: Path | None = None
    #: where NPM reaches this bench's frontend (None: JERP_NPM_FORWARD_HOST / JERP_NPM_FORWARD_PORT)
    npm_forward_host: str | None = None
    npm_forward_port: int | None = None

    def npm_forward(self, settings: Any) -> tuple[str, int]:
        """(host, port) that a proxy host of a site on this bench forwards to: the bench's own
        ``npm_forward_host`` / ``npm_forward_port``, else the settings'."""
        return (self.npm_forward_host or settings.npm_forward_host,
                self.npm_forward_port or int(settings.npm_forward_port))

    @property
    def is_local(self) -> bool:
        return self.docker == LOCAL

    @property
    def endpoint(self) -> str:
        """Where its Docker API is, as shown to people: ``local`` or ``tcp://host:port (TLS)``."""
        return LOCAL if self.is_local else f"{self.docker} (TLS)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "role": self.role, "group": self.group, "docker": self.docker,
            "tls": None if self.tls is None else {k: str(getattr(self.tls, k)) for k in TLS_KEYS},
            "compose_project": self.compose_project, "backend_service": self.backend_service,
            "queue": self.queue, "sites_dir": None if self.sites_dir is None else str(self.sites_dir),
            "concurrency": self.concurrency, "env_file": None if self.env_file is None else str(self.env_file),
            "npm_forward_host": self.npm_forward_host, "npm_forward_port": self.npm_forward_port,
        }


@dataclass(frozen=True)
class Fleet:
    benches: tuple[Bench, ...]
    #: the fleet file, or None for the implicit bench of a single-host install
    source: Path | None = None

    def __iter__(self) -> Iterator[Bench]:
        return iter(self.benches)

    def __len__(self) -> int:
        return len(self.benches)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.benches]

    @property
    def declared(self) -> bool:
        """A fleet file declares it (benches have their own queues); False for a single host."""
        return self.source is not None

    @property
    def single(self) -> Bench | None:
        """The one bench of a fleet that has only one, else None."""
        return self.benches[0] if len(self.benches) == 1 else None

    def queue_of(self, name: str | None) -> str:
        """The queue a step of a job on bench ``name`` is published on. A job on no bench (a
        fan-out over several benches: bookkeeping only) goes to the control queue."""
        if not name:
            single = self.single
            return single.queue if single is not None else CONTROL_QUEUE
        return self.get(name).queue

    def select(self, *, group: str | None = None, role: str | None = None) -> list[Bench]:
        """The benches of ``group`` and ``role`` (either None: any), in the file's order;
        InvalidInput naming the groups or roles there are when none matches."""
        chosen = [b for b in self.benches if (group is None or b.group == group) and (role is None or b.role == role)]
        if not chosen:
            wanted = " and ".join(part for part in (group and f"group {group!r}", role and f"role {role!r}") if part)
            groups = ", ".join(sorted({b.group for b in self.benches}))
            raise InvalidInput(f"no bench of the fleet has {wanted} (groups: {groups})")
        return chosen

    def get(self, name: str) -> Bench:
        for bench in self.benches:
            if bench.name == name:
                return bench
        raise InvalidInput(f"no bench named {name!r} in the fleet (benches: {', '.join(self.names)})")

    def with_role(self, role: str) -> list[Bench]:
        return [b for b in self.benches if b.role == role]

    @property
    def staging(self) -> Bench | None:
        """The staging bench releases and drills go to first: the first bench of role
        ``staging`` in the file; None when the fleet has none (a single host has none)."""
        return next((b for b in self.benches if b.role == "staging"), None)

    def in_group(self, group: str) -> list[Bench]:
        return [b for b in self.benches if b.group == group]


def implicit_fleet(settings: Any) -> Fleet:
    """The one bench of a single-host install, from today's settings."""
    try:
        folder: Path | None = settings_sites_dir(settings)
    except ConfigError:
        folder = None
    bench = Bench(name=IMPLICIT_NAME, role="production", group=DEFAULT_GROUP, docker=LOCAL,
                  compose_project=settings.compose_project, backend_service=settings.backend_service,
                  queue=SITE_QUEUE, sites_dir=folder)
    return Fleet(benches=(bench,), source=None)


def load_fleet(settings: Any) -> Fleet:
    """The fleet of ``JERP_FLEET_FILE``, checked as a whole; the implicit bench without it."""
    path = getattr(settings, "fleet_file", None)
    if path is None:
        return implicit_fleet(settings)
    return read_fleet_file(Path(path), default_project=settings.compose_project,
                           default_service=settings.backend_service)


def read_fleet_file(path: Path, *, default_project: str = "jerp", default_service: str = "backend") -> Fleet:
    """Read and check the fleet file at ``path``; FleetError on the first problem found."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FleetError(path, "the file does not exist") from None
    except IsADirectoryError:
        raise FleetError(path, "is a folder, not a file") from None
    except OSError as exc:
        raise FleetError(path, f"the file cannot be read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise FleetError(path, "the file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise FleetError(path, f"not valid TOML: {exc}") from None
    return parse_fleet(data, path, default_project=default_project, default_service=default_service)


def parse_fleet(data: Mapping[str, Any], path: Path, *, default_project: str = "jerp",
                default_service: str = "backend") -> Fleet:
    """The fleet of a decoded fleet file (``path`` names it in errors and anchors relative paths)."""
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise FleetError(path, f"unknown key(s) {', '.join(map(repr, unknown))} at the top level; "
                               "benches are declared as [[bench]] tables", field=unknown[0])
    entries = data.get("bench")
    if entries is None:
        raise FleetError(path, "declares no bench: add at least one [[bench]] table")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise FleetError(path, "'bench' must be an array of tables ([[bench]])", field="bench")
    if not entries:
        raise FleetError(path, "declares no bench: add at least one [[bench]] table")
    base = path.parent
    benches: list[Bench] = []
    names: set[str] = set()
    places: dict[tuple[str, str], str] = {}
    for number, entry in enumerate(entries, 1):
        bench = _bench(entry, number, path, base, default_project, default_service)
        if bench.name in names:
            raise FleetError(path, "two benches have this name; bench names are unique", bench=bench.name,
                             field="name")
        names.add(bench.name)
        place = (bench.docker, bench.compose_project)  # docker: normalised by _bench
        if place in places:
            raise FleetError(path, f"compose project {bench.compose_project!r} of Docker {bench.docker} is "
                                   f"already bench {places[place]!r}; one compose project is one bench",
                             bench=bench.name, field="compose_project")
        places[place] = bench.name
        if bench.env_file is not None:
            other = next((b for b in benches if b.env_file is not None and _same_file(b.env_file, bench.env_file)), None)
            if other is not None:
                raise FleetError(path, f"{str(bench.env_file)!r} is already the credentials of bench {other.name!r}; "
                                       "credentials are never shared between benches", bench=bench.name, field="env_file")
        benches.append(bench)
    if not any(b.role == "production" for b in benches):
        raise FleetError(path, "no bench has role 'production'; a fleet has at least one production bench",
                         field="role")
    return Fleet(benches=tuple(benches), source=path)


def _bench(entry: Mapping[str, Any], number: int, path: Path, base: Path, default_project: str,
           default_service: str) -> Bench:
    label = entry.get("name") if isinstance(entry.get("name"), str) and entry.get("name") else f"#{number}"

    def fail(field: str, problem: str) -> FleetError:
        return FleetError(path, problem, bench=label, field=field)

    unknown = sorted(set(entry) - BENCH_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key; a bench has {', '.join(sorted(BENCH_KEYS))}")
    if "name" not in entry:
        raise fail("name", "missing; every bench has a name")
    name = _text(entry, "name", fail)
    if not _NAME.fullmatch(name):
        raise fail("name", f"{name!r} is not a bench name: 1 to 63 of a-z, 0-9 and '-', "
                           "not starting or ending with '-'")
    if "role" not in entry:
        raise fail("role", f"missing; one of {', '.join(ROLES)}")
    role = _text(entry, "role", fail)
    if role not in ROLES:
        raise fail("role", f"{role!r} is not a role; one of {', '.join(ROLES)}")
    group = _text(entry, "group", fail, DEFAULT_GROUP)
    if not _GROUP.fullmatch(group):
        raise fail("group", f"{group!r} is not a group label: 1 to 63 of letters, digits, '.', '_' and '-'")
    project = _text(entry, "compose_project", fail, default_project)
    if not _PROJECT.fullmatch(project):
        raise fail("compose_project", f"{project!r} is not a compose project name (a-z, 0-9, '_', '-')")
    service = _text(entry, "backend_service", fail, default_service)
    if not _SERVICE.fullmatch(service):
        raise fail("backend_service", f"{service!r} is not a compose service name")
    docker = _text(entry, "docker", fail, LOCAL)
    tls_entry = entry.get("tls")
    if docker == LOCAL:
        if tls_entry is not None:
            raise fail("tls", "a local bench reaches Docker on this host; TLS certificates are for tcp:// benches")
        tls = None
    else:
        match = _TCP.fullmatch(docker)
        if not match or not 0 < int(match["port"]) < 65536:
            raise fail("docker", f"{docker!r} is neither 'local' nor tcp://HOST:PORT")
        docker = f"tcp://{match['host'].lower()}:{int(match['port'])}"
        tls = _tls(tls_entry, base, fail)
    folder = _optional_path(entry, "sites_dir", base, fail, "leave it out when the worker does not see the sites folder")
    concurrency = entry.get("concurrency")
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                    or concurrency < 1):
        raise fail("concurrency", f"{concurrency!r} is not a number of sites at once (a whole number, at least 1)")
    env_file = _optional_path(entry, "env_file", base, fail, "leave it out when the bench uses the worker's own environment")
    if env_file is not None and not env_file.is_file():
        raise fail("env_file", f"{str(env_file)!r} is not a file" if env_file.exists()
                   else f"{str(env_file)!r} does not exist")
    forward_host = None
    if "npm_forward_host" in entry:
        forward_host = _text(entry, "npm_forward_host", fail)
        if not _FORWARD_HOST.fullmatch(forward_host):
            raise fail("npm_forward_host", f"{forward_host!r} is not a host name or address NPM can forward to")
    forward_port = entry.get("npm_forward_port")
    if forward_port is not None and (isinstance(forward_port, bool) or not isinstance(forward_port, int)
                                     or not 0 < forward_port < 65536):
        raise fail("npm_forward_port", f"{forward_port!r} is not a port (a whole number from 1 to 65535)")
    return Bench(name=name, role=role, group=group, docker=docker, compose_project=project,
                 backend_service=service, queue=QUEUE_PREFIX + name, tls=tls, sites_dir=folder,
                 concurrency=concurrency, env_file=env_file, npm_forward_host=forward_host,
                 npm_forward_port=forward_port)


def _text(entry: Mapping[str, Any], field: str, fail: Any, default: str | None = None) -> str:
    value = entry.get(field, default)
    if not isinstance(value, str):
        raise fail(field, f"must be a string, not {type(value).__name__}")
    if value != value.strip() or any(ord(c) < 32 for c in value):
        raise fail(field, f"{value!r} has surrounding spaces or control characters")
    return value


def _tls(value: Any, base: Path, fail: Any) -> DockerTLS:
    if value is None:
        raise fail("tls", "a tcp:// bench needs TLS client certificates: a [bench.tls] table with ca, cert and key")
    if not isinstance(value, dict):
        raise fail("tls", "must be a table with ca, cert and key")
    unknown = sorted(set(value) - set(TLS_KEYS))
    if unknown:
        raise fail(f"tls.{unknown[0]}", "unknown key; the tls table has ca, cert and key")
    files: dict[str, Path] = {}
    for key in TLS_KEYS:
        if key not in value:
            raise fail(f"tls.{key}", "missing; a tcp:// bench needs ca, cert and key")
        text = _text(value, key, lambda field, problem: fail(f"tls.{field}", problem))
        if not text:
            raise fail(f"tls.{key}", "empty")
        file = _path(text, base)
        if not file.is_file():
            raise fail(f"tls.{key}", f"{str(file)!r} is not a file" if file.exists() else f"{str(file)!r} does not exist")
        if not os.access(file, os.R_OK):
            raise fail(f"tls.{key}", f"{str(file)!r} cannot be read by this process")
        files[key] = file
    return DockerTLS(**files)


def _optional_path(entry: Mapping[str, Any], field: str, base: Path, fail: Any, when_absent: str) -> Path | None:
    """The path of ``field`` (relative to ``base``), None when it is left out; never empty."""
    if field not in entry:
        return None
    text = _text(entry, field, fail)
    if not text:
        raise fail(field, f"empty; {when_absent}")
    return _path(text, base)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def _path(text: str, base: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


#: what a bench's env file may set: its credentials and where its database is
BENCH_ENV_VARIABLES = frozenset({
    "MARIADB_ROOT_PASSWORD", "FRAPPE_ADMIN_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "NPM_SECRET",
    "NPM_URL", "NPM_IDENTITY", "PORTAINER_WEBHOOK_URL", "JERP_SMOKE_PASSWORD", "JERP_SMOKE_USER",
    "JERP_FRONTEND_URL", "JERP_DB_HOST", "JERP_DB_PORT", "JERP_MANIFEST_KEY", "JERP_BACKUP_AGE_IDENTITY_FILE",
})
#: of these, the ones that are secrets: never the same value on two benches
BENCH_SECRET_VARIABLES = frozenset({
    "MARIADB_ROOT_PASSWORD", "FRAPPE_ADMIN_PASSWORD", "AWS_SECRET_ACCESS_KEY", "NPM_SECRET",
    "PORTAINER_WEBHOOK_URL", "JERP_SMOKE_PASSWORD",
})


def bench_environment(bench: Bench) -> dict[str, str]:
    """The variables of ``bench``'s env file (empty without one); FleetError naming the file
    and the variable for one a bench's file may not set."""
    if bench.env_file is None:
        return {}
    from jerp_jobs.envfile import parse_env_file

    try:
        values = parse_env_file(bench.env_file)
    except OSError as exc:
        raise FleetError(bench.env_file, f"the credentials file cannot be read: {exc.strerror or exc}",
                         bench=bench.name, field="env_file") from None
    unknown = sorted(set(values) - BENCH_ENV_VARIABLES)
    if unknown:
        raise FleetError(bench.env_file, f"sets {unknown[0]}, which is not a bench's own setting "
                                         f"(a bench's file sets {', '.join(sorted(BENCH_ENV_VARIABLES))})",
                         bench=bench.name, field="env_file")
    return values


def shared_credentials(fleet: Fleet) -> list[tuple[str, str, str]]:
    """(variable, bench, other bench) for each secret two benches' env files give the same value,
    among the files readable here (a file that is not is left out). Values are compared, never shown."""
    seen: dict[tuple[str, str], str] = {}
    shared: list[tuple[str, str, str]] = []
    for bench in fleet:
        if bench.env_file is None or not os.access(bench.env_file, os.R_OK):
            continue
        for variable, value in sorted(bench_environment(bench).items()):
            if variable not in BENCH_SECRET_VARIABLES or not value:
                continue
            other = seen.setdefault((variable, value), bench.name)
            if other != bench.name:
                shared.append((variable, other, bench.name))
    return shared


def bench_overrides(bench: Bench) -> dict[str, Any]:
    """The settings a worker of ``bench`` takes from the bench (its env file aside)."""
    overrides: dict[str, Any] = {"compose_project": bench.compose_project, "backend_service": bench.backend_service,
                                 "bench": bench.name}
    if bench.sites_dir is not None:
        overrides["sites_dir"] = bench.sites_dir
    return overrides


def bench_credentials(fleet: Fleet, bench: Bench) -> dict[str, str]:
    """The variables of ``bench``'s env file; FleetError, naming the variable and both benches
    (never the value), when another bench's file readable here gives a secret the same value."""
    shared = [s for s in shared_credentials(fleet) if bench.name in s[1:]]
    if shared:
        variable, one, other = shared[0]
        raise FleetError(bench.env_file or "", f"{variable} has the same value for benches {one!r} and {other!r}; "
                                               "every bench has credentials of its own", bench=bench.name,
                         field="env_file")
    return bench_environment(bench)
