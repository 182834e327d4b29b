"""The layering of the project's own modules, read from their source (`ast`), not by importing.

- No import circles among the modules under ``worker/`` and ``producers/``. Every ``import``
  counts: at module level, inside ``if TYPE_CHECKING:`` and inside functions. A circle made of
  imports deferred into functions still ties the two modules into one unit (neither can be
  read, tested or moved alone), and the ``TYPE_CHECKING`` ones are what a type checker follows.
  An edge goes to the module named (``from worker import tasks`` names ``worker.tasks``), not to
  its parent packages, whose ``__init__`` modules are kept light.
- ``producers`` (what a web app installs) never imports ``worker``, ``httpx``, ``celery`` or
  ``uvicorn``, directly or through another ``producers`` module, lazily or not.
- Inside ``producers``, the groups keep their seams: `producers.job` (what a job is, its rules)
  imports neither the Redis store nor the Segment mapping; `producers.store` (the Redis store the
  worker shares) never imports the Segment mapping; `producers.segment` never imports the store.
- The two Attentive destinations are siblings over `worker.destinations.attentive`: neither
  subclasses nor imports the other (the one check that imports, to ask ``issubclass``).
- Modules longer than `LONG_MODULE` lines are reported (a warning in pytest's summary), never
  failed: the team's guide asks for most modules under it, not all.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("worker", "producers")
FORBIDDEN_IN_PRODUCERS = frozenset({"worker", "httpx", "celery", "uvicorn"})
LONG_MODULE = 200
PRODUCERS_SEAMS = {
    "producers.job": ("producers.store", "producers.segment"),
    "producers.store": ("producers.segment",),
    "producers.segment": ("producers.store",),
}
"""A group of ``producers`` -> the groups none of its modules may import."""


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of `PACKAGES`."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path, modules: Iterable[str] = ()) -> Iterator[str]:
    """Every module name ``module`` imports, anywhere in its source (absolute names).

    ``from package import name`` counts as importing ``package.name`` when that is one of
    ``modules``, else as importing ``package``.
    """
    known = set(modules)
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                yield f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {target for target in _imported(name, path, modules) if target in modules and target != name}
        for name, path in modules.items()
    }


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_circle_finder_finds_a_circle_and_only_circles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _circles(graph) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    graph = _graph()
    assert len(graph) > 40, "the modules were not found"
    circles = _circles(graph)
    assert circles == [], "import circles: " + "; ".join(" <-> ".join(circle) for circle in circles)


def test_producers_never_imports_the_worker_or_its_dependencies() -> None:
    modules = _modules()
    producers = {name: path for name, path in modules.items() if name.split(".")[0] == "producers"}
    assert "producers" in producers, "producers/__init__.py was not found"
    # how a web app's `import producers` reaches each module (breadth first, producers modules only)
    via: dict[str, list[str]] = {"producers": ["producers"]}
    frontier = ["producers"]
    while frontier:
        name = frontier.pop(0)
        for target in _imported(name, producers[name], producers):
            if target in producers and target not in via:
                via[target] = [*via[name], target]
                frontier.append(target)
    broken = [
        f"{' -> '.join(via.get(name, [name]))} imports {target}"
        for name, path in sorted(producers.items())
        for target in sorted(set(_imported(name, path)))
        if target.split(".")[0] in FORBIDDEN_IN_PRODUCERS
    ]
    assert broken == []


def test_producers_groups_keep_their_seams() -> None:
    modules = _modules()
    crossings = [
        f"{name} imports {target}"
        for name, path in sorted(modules.items())
        for group, forbidden in PRODUCERS_SEAMS.items()
        if name == group or name.startswith(group + ".")
        for target in sorted(set(_imported(name, path, modules)))
        if any(target == other or target.startswith(other + ".") for other in forbidden)
    ]
    assert all(group in modules for group in PRODUCERS_SEAMS), "a producers group was not found"
    assert crossings == []


def test_long_modules_are_reported() -> None:
    lengths = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    long = sorted(((n, name) for name, n in lengths.items() if n > LONG_MODULE), reverse=True)
    if long:
        listed = ", ".join(f"{name} ({n})" for n, name in long)
        warnings.warn(f"{len(long)} modules over {LONG_MODULE} lines: {listed}", stacklevel=1)
    assert lengths, "no modules were found"


def test_the_attentive_destinations_are_siblings_over_one_shared_module() -> None:
    """Issue 18: REST and GraphQL share `worker.destinations.attentive`; neither is the other."""
    from worker.destinations.attentive_graphql import AttentiveGraphQL
    from worker.destinations.attentive_rest import AttentiveRest

    assert not issubclass(AttentiveGraphQL, AttentiveRest) and not issubclass(AttentiveRest, AttentiveGraphQL)
    graph = _graph()
    rest, graphql = "worker.destinations.attentive_rest", "worker.destinations.attentive_graphql"
    assert rest not in graph[graphql] and graphql not in graph[rest]
    assert "worker.destinations.attentive" in graph[rest] & graph[graphql]
