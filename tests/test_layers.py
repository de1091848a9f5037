"""The package imports one way, layer by layer, and has no import cycle.

Layers, lowest first (a module imports from its own layer and the ones below, never above):

- foundation: errors and failure classes, settings, logging, Redis key names, site names and folders, the
  fleet of benches, bench commands and their output, hooks, retention, the backup files on disk;
- store: everything kept in Redis (jobs, locks, site state, audit, freshness, manifests);
- adapters: the outside world (executors, the off-site store, NPM, the Docker platform,
  smoke tests, notifications);
- engine: workflows as data, the runtime with its parts passed in, starting jobs, running steps,
  the resumer, the parent/child protocol;
- workflows: the runbook's operations and the catalog that lists them;
- app: the Celery app and tasks, the wiring (bootstrap), Beat, jerpctl, the webhook, the
  supervisor and the socket proxy.

Every import counts, also one inside a function; imports only for type checkers
(``if TYPE_CHECKING:``) count for the direction but not for cycles.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from jerp_jobs import catalog
from jerp_jobs.workflow import Workflow

PACKAGE = Path(__file__).resolve().parent.parent / "jerp_jobs"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules_under(folder: str) -> set[str]:
    """Every module under ``jerp_jobs/<folder>``, in its packages too (``operations.release.steps``)."""
    return {_module_name(path) for path in (PACKAGE / folder).rglob("*.py")}


LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {
        "jerp_jobs", "jerp_jobs.errors", "jerp_jobs.failures", "jerp_jobs.settings", "jerp_jobs.readsettings", "jerp_jobs.secretnames", "jerp_jobs.envfile",
        "jerp_jobs.log", "jerp_jobs.sites", "jerp_jobs.bench", "jerp_jobs.hooks", "jerp_jobs.retention",
        "jerp_jobs.dumpstats", "jerp_jobs.backupfiles", "jerp_jobs.keys", "jerp_jobs.sentry", "jerp_jobs.fleet",
    }),
    ("store", {
        "jerp_jobs.jobs", "jerp_jobs.resp", "jerp_jobs.locks", "jerp_jobs.sitestate", "jerp_jobs.audit",
        "jerp_jobs.freshness", "jerp_jobs.manifests", "jerp_jobs.releases", "jerp_jobs.fanouts", "jerp_jobs.placement",
    }),
    ("adapters", {
        "jerp_jobs.executors", "jerp_jobs.executors._argv", "jerp_jobs.executors.base", "jerp_jobs.executors.docker",
        "jerp_jobs.executors.local", "jerp_jobs.offsite", "jerp_jobs.offsite.crypto",
        "jerp_jobs.offsite.s3", "jerp_jobs.integrations", "jerp_jobs.integrations.npm", "jerp_jobs.deploy",
        "jerp_jobs.smoke", "jerp_jobs.platform", "jerp_jobs.notify", "jerp_jobs.pitr",
    }),
    ("engine", {
        "jerp_jobs.workflow", "jerp_jobs.runtime", "jerp_jobs.enqueue", "jerp_jobs.runner", "jerp_jobs.resume",
        "jerp_jobs.actions",
    }),
    ("workflows", {"jerp_jobs.catalog", *_modules_under("operations")}),
    ("app", {
        "jerp_jobs.celery", "jerp_jobs.tasks", "jerp_jobs.bootstrap", "jerp_jobs.beat", "jerp_jobs.cli", "jerp_jobs.cliformat",
        "jerp_jobs.webhook", "jerp_jobs.supervise", "jerp_jobs.socket_proxy",
        "jerp_jobs.dashboard", *(f"jerp_jobs.dashboard.{p.stem}" for p in (PACKAGE / "dashboard").glob("*.py")
                                 if p.stem != "__init__"),
        "jerp_jobs.observe", "jerp_jobs.metrics",
    }),
]
RANK = {module: rank for rank, (_, modules) in enumerate(LAYERS) for module in modules}
LAYER_NAME = {module: LAYERS[rank][0] for module, rank in RANK.items()}


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


MODULES = _modules()


def _project_module(name: str) -> str | None:
    """The project module an imported name lives in (``a.b.c`` -> ``a.b`` when ``c`` is a name)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> Iterator[tuple[str, int, bool]]:
    """(imported project module, line, only for type checkers) for every import of ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def walk(node: ast.AST, typing_only: bool) -> Iterator[tuple[str, int, bool]]:
        for child in ast.iter_child_nodes(node):
            inner = typing_only or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in child.names] + [base]
            for target in targets:
                found = _project_module(target) if target.startswith("jerp_jobs") else None
                if found and found != module:
                    yield found, child.lineno, inner
            yield from walk(child, inner)

    yield from walk(ast.parse(path.read_text(encoding="utf-8")), False)


def test_every_module_has_a_layer() -> None:
    missing = sorted(set(MODULES) - set(RANK))
    assert not missing, f"modules with no layer in tests/test_layers.py: {missing}"
    gone = sorted(set(RANK) - set(MODULES))
    assert not gone, f"layers name modules that do not exist: {gone}"


def test_no_module_imports_from_a_higher_layer() -> None:
    upward = sorted({
        f"{module} ({LAYER_NAME[module]}) line {line} imports {target} ({LAYER_NAME[target]})"
        for module in MODULES
        for target, line, _ in _imports(module)
        if RANK[target] > RANK[module]
    })
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle() -> None:
    graph = {module: {target for target, _, typing_only in _imports(module) if not typing_only} for module in MODULES}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_redis_key_is_named_in_one_module() -> None:
    spelled = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for path in MODULES.values() if path.name != "keys.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if '"jerp:' in line or "'jerp:" in line
    ]
    assert not spelled, f"Redis keys spelled outside jerp_jobs/keys.py: {spelled}"


def test_the_engine_imports_no_workflow_and_no_transport() -> None:
    engine = [m for m, rank in RANK.items() if LAYERS[rank][0] == "engine"]
    for module in engine:
        for target, line, _ in _imports(module):
            assert not target.startswith(("jerp_jobs.operations", "jerp_jobs.catalog", "jerp_jobs.tasks",
                                          "jerp_jobs.celery", "jerp_jobs.bootstrap")), (module, line, target)


def _defined_workflows() -> Iterator[tuple[str, str, Workflow]]:
    import importlib

    for module in sorted(m for m in MODULES if m.startswith("jerp_jobs.operations.")):
        for name, value in vars(importlib.import_module(module)).items():
            if isinstance(value, Workflow):
                yield module, name, value


@pytest.mark.parametrize("module,name,workflow", list(_defined_workflows()), ids=lambda v: getattr(v, "kind", v))
def test_every_workflow_is_in_the_catalog(module: str, name: str, workflow: Workflow) -> None:
    assert catalog.CATALOG.get(workflow.kind) is workflow, (
        f"{module}.{name} ({workflow.kind}) is not in jerp_jobs.catalog.CATALOG: nobody could start it"
    )


def test_the_catalog_holds_the_runbook_operations() -> None:
    assert {"provision", "backup", "backup-all", "restore", "migrate", "migrate-all", "drill", "release",
            "install-app", "install-app-all", "uninstall-app", "offboard", "restore-all", "rescan", "prune",
            "clear-cache", "build-assets", "list-sites", "move", "move-drop"} == set(catalog.CATALOG)
