"""What may import what, read from the source with `ast` (nothing is imported, so this runs in
well under a second). Imports inside functions count like module-level ones: they run on the
first call, in the same process. `if TYPE_CHECKING:` imports never run and count only for the
layer rules, not for cycles. Dynamic imports (`importlib.import_module(name)`) are not seen.

The layers, from the bottom:
- `training`: imports no other package of the project;
- `serving`: of `training`, only what answering a request needs (SERVING_USES_OF_TRAINING), and
  nothing of `export`, `benchmarks` or `tests`;
- `export`: `training` and `serving`, except serving's process management (SERVING_PROCESSES);
- `benchmarks`: everything but `tests`.
The TorchServe handler loads no process management, and no modules import each other, directly
or through others.
"""

from __future__ import annotations

import ast
import functools
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "export", "serving", "benchmarks", "tests")

# The view sampler, the upload decoder and the adaptive-views rule: one implementation shared by
# evaluation, export's parity check and the server. Never the training loop, losses, augmentation,
# data loaders or the training config.
SERVING_USES_OF_TRAINING = ("training.adaptive_views", "training.view_decode", "training.views")
# Starting, stopping and watching TorchServe: the command line, the lifecycle, the demo.
SERVING_PROCESSES = ("serving.__main__", "serving.demo", "serving.lifecycle")
HANDLER = "serving.handler"

# package -> packages none of its modules may import
FORBIDDEN_PACKAGES = {
    "training": ("export", "serving", "benchmarks", "tests"),
    "serving": ("export", "benchmarks", "tests"),
    "export": ("benchmarks", "tests"),
    "benchmarks": ("tests",),
}

# Imports that break a rule today, each to be removed; an entry that no longer matches an import
# fails the test, so it is deleted together with the fix.
KNOWN_LAYER_EXCEPTIONS = {
    # the demo finds its held-out video with training's config and dataset splits
    # (serving/demo.py, held_out_video), which loads training's data pipeline into serving
    ("serving.demo", "training.config"),
    ("serving.demo", "training.data"),
}
# Import cycles that exist today through imports inside functions, each to be removed like the
# exceptions above (there is none through module-level imports, and none left inside functions).
KNOWN_CYCLES: set[frozenset[str]] = set()


@dataclass(frozen=True)
class Import:
    importer: str  # the importing module, e.g. "serving.core"
    target: str  # the imported module of the project ("serving.lifecycle"), else the name as written ("psutil")
    path: Path
    line: int
    lazy: bool  # inside a function: runs on the first call, not at import
    type_only: bool  # under `if TYPE_CHECKING:`: never runs

    def where(self) -> str:
        kind = " (inside a function)" if self.lazy else " (type checking only)" if self.type_only else ""
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.importer} imports {self.target}{kind}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_in(source: str, module: str, path: Path, modules: set[str]) -> list[Import]:
    """Every import statement of `source`, resolved to project modules where it names one:
    `from serving import lifecycle` imports serving.lifecycle, `from serving.core import X`
    imports serving.core."""
    found: list[Import] = []
    is_package = path.name == "__init__.py"

    def resolve_from(node: ast.ImportFrom) -> list[str]:
        base = node.module or ""
        if node.level:  # relative: from the importer's package, one level up per extra dot
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]

    def visit(node: ast.AST, lazy: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                targets = resolve_from(child)
            else:
                targets = []
            for target in dict.fromkeys(targets):
                found.append(Import(module, target, path, child.lineno, lazy, type_only))
            inner_lazy = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.If) and is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), inner_lazy, True)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), inner_lazy, type_only)
            else:
                visit(child, inner_lazy, type_only)

    visit(ast.parse(source, filename=str(path)), False, False)
    return found


@functools.cache
def all_imports() -> tuple[Import, ...]:
    """Every import of the project's packages (read once per session)."""
    modules = project_modules()
    return tuple(i for name, path in modules.items() for i in imports_in(path.read_text(), name, path, set(modules)))


def package_of(module: str) -> str:
    return module.split(".")[0]


def in_any(module: str, names) -> bool:
    """`module` is one of `names` or inside one of them (a submodule)."""
    return any(module == n or module.startswith(n + ".") for n in names)


def layer_violation(i: Import) -> str | None:
    """Why the import breaks a layer rule, or None."""
    package, target = package_of(i.importer), i.target
    forbidden = FORBIDDEN_PACKAGES.get(package, ())
    if in_any(target, forbidden):
        return f"{package} may not import {package_of(target)}"
    if package == "serving" and in_any(target, ("training",)) and target not in SERVING_USES_OF_TRAINING:
        return f"serving may import of training only {', '.join(SERVING_USES_OF_TRAINING)}"
    if package == "export" and in_any(target, SERVING_PROCESSES + (HANDLER,)):
        return f"export may not import serving's handler or process management ({', '.join(SERVING_PROCESSES)})"
    return None


def test_the_checker_resolves_imports_the_way_python_runs_them():
    source = (
        "from typing import TYPE_CHECKING\n"
        "import serving.core\n"
        "from serving import lifecycle, addresses\n"
        "from serving.tokens import KEY_KINDS\n"
        "from . import core as c\n"
        "if TYPE_CHECKING:\n"
        "    from training.views import InputSpec\n"
        "class A:\n"
        "    import psutil\n"
        "def f():\n"
        "    if True:\n"
        "        from training.train import main\n"
    )
    modules = {
        "serving",
        "serving.core",
        "serving.lifecycle",
        "serving.addresses",
        "serving.tokens",
        "training.views",
        "training.train",
    }
    found = [
        (i.target, i.line, i.lazy, i.type_only)
        for i in imports_in(source, "serving.demo", ROOT / "serving" / "demo.py", modules)
    ]
    assert found == [
        ("typing", 1, False, False),
        ("serving.core", 2, False, False),
        ("serving.lifecycle", 3, False, False),
        ("serving.addresses", 3, False, False),
        ("serving.tokens", 4, False, False),
        ("serving.core", 5, False, False),
        ("training.views", 7, False, True),
        ("psutil", 9, False, False),
        ("training.train", 12, True, False),
    ]
    assert {package_of(m) for m in project_modules()} == set(PACKAGES)
    assert HANDLER in project_modules() and all(m in project_modules() for m in SERVING_PROCESSES)
    assert all(m in project_modules() for m in SERVING_USES_OF_TRAINING)


@pytest.mark.parametrize("package", sorted(FORBIDDEN_PACKAGES))
def test_each_package_imports_only_the_layers_below_it(package):
    broken = [
        f"{i.where()}: {why}"
        for i in all_imports()
        if package_of(i.importer) == package
        and (why := layer_violation(i))
        and (i.importer, i.target) not in KNOWN_LAYER_EXCEPTIONS
    ]
    assert not broken, "imports that break the layering:\n" + "\n".join(broken)


def test_the_known_layer_exceptions_still_exist():
    seen = {(i.importer, i.target) for i in all_imports() if layer_violation(i)}
    gone = sorted(KNOWN_LAYER_EXCEPTIONS - seen)
    assert not gone, f"no longer imported, delete from KNOWN_LAYER_EXCEPTIONS: {gone}"


def psutil_modules() -> set[str]:
    """Modules of the project that manage processes with psutil."""
    return {i.importer for i in all_imports() if in_any(i.target, ("psutil",))}


def test_the_handler_loads_no_process_management():
    """Everything the TorchServe worker imports with the handler (transitively, lazy imports
    included): no command line, lifecycle, demo or psutil-based module."""
    forbidden = set(SERVING_PROCESSES) | psutil_modules() | {"psutil"}
    modules = project_modules()
    by_importer: dict[str, list[Import]] = {}
    for i in all_imports():
        if not i.type_only:
            by_importer.setdefault(i.importer, []).append(i)
    reached: dict[str, list[Import]] = {HANDLER: []}  # module -> the chain of imports that loads it
    queue = deque([HANDLER])
    while queue:
        module = queue.popleft()
        for i in by_importer.get(module, []):
            if i.target not in reached and (i.target in modules or i.target in forbidden):
                reached[i.target] = reached[module] + [i]
                queue.append(i.target)
    why = {
        **{m: "process management" for m in SERVING_PROCESSES},
        **{m: "uses psutil" for m in psutil_modules()},
        "psutil": "psutil",
    }
    broken = [
        f"{m} ({why[m]}), loaded by:\n    " + "\n    ".join(i.where() for i in reached[m])
        for m in sorted(forbidden & set(reached))
    ]
    assert not broken, f"{HANDLER} loads process management:\n  " + "\n  ".join(broken)


def import_graph(*, lazy: bool) -> dict[str, dict[str, Import]]:
    """module -> {imported project module: the first such import}; runtime imports only."""
    modules = project_modules()
    graph: dict[str, dict[str, Import]] = {m: {} for m in modules}
    for i in all_imports():
        if i.target in modules and i.target != i.importer and not i.type_only and (lazy or not i.lazy):
            graph[i.importer].setdefault(i.target, i)
    return graph


def cycles(graph: dict[str, dict[str, Import]]) -> dict[frozenset[str], list[Import]]:
    """Each group of modules that import each other (a strongly connected component, Tarjan's
    algorithm) -> one cycle through its first module, as the chain of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = {stack.pop()}
            while v not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return {frozenset(g): shortest_cycle(graph, g) for g in groups}


def shortest_cycle(graph: dict[str, dict[str, Import]], group: set[str]) -> list[Import]:
    """The shortest chain of imports from the group's first module back to itself."""
    start = min(group)
    chains: dict[str, list[Import]] = {start: []}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w, i in sorted(graph[v].items()):
            if w == start:
                return chains[v] + [i]
            if w in group and w not in chains:
                chains[w] = chains[v] + [i]
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")  # a strongly connected group always has one


def describe(cycle: list[Import]) -> str:
    return "\n  ".join(i.where() for i in cycle)


def test_no_import_cycles_through_module_level_imports():
    found = cycles(import_graph(lazy=False))
    assert not found, "modules that import each other:\n  " + "\n\n  ".join(describe(c) for c in found.values())


def test_no_import_cycles_through_imports_inside_functions():
    groups = cycles(import_graph(lazy=True))
    unknown = [describe(c) for g, c in groups.items() if g not in KNOWN_CYCLES]
    assert not unknown, "modules that import each other:\n  " + "\n\n  ".join(unknown)
    gone = [sorted(g) for g in KNOWN_CYCLES if g not in groups]
    assert not gone, f"no longer a cycle, delete from KNOWN_CYCLES: {gone}"
