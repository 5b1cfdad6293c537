"""The house rules, drawn from the imports: no circle, no arrow up a layer (issue 22).

Layers, lowest first: ``dspex`` < ``registry`` < ``tasks`` < ``flows`` < ``deployments``; a module may
import its own layer and the ones below. Inside ``flows/``, the ready-made flows at the top level
(``flows/pipeline.py``, ``flows/rag.py``, ...) build on the concept subpackages (``flows/engine/``,
``flows/guards/``, ...), never the other way round, and a subpackage's ``__init__`` imports nothing,
so importing one module never loads its siblings.

Every import counts, the ones inside functions too (a lazy import that closes a circle is still a
circle); only ``if TYPE_CHECKING:`` blocks are left out, as they never run. The graph is read with
`ast` from the source, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("dspex", "registry", "tasks", "flows", "deployments")

Graph = dict[str, set[str]]


def project_modules(root: Path, packages: Iterable[str] = LAYERS) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of ``packages`` under ``root``."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return skipped


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that module ``name`` imports (``from a import b`` counts ``a.b`` when it
    is a module, else ``a``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _type_checking_nodes(tree)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                full = f"{source}.{alias.name}"
                targets.append(full if full in modules else source)
        for target in targets:
            resolved = resolve(target)
            if resolved is not None and resolved != name:
                found.add(resolved)
    return found


def import_graph(root: Path, packages: Iterable[str] = LAYERS) -> Graph:
    """Module -> the project modules it imports, for every module of ``packages``."""
    modules = project_modules(root, packages)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def circles(graph: Graph) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan's)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:  # iterative, so a deep graph never hits the recursion limit
        nonlocal counter
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
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

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def upward_imports(graph: Graph) -> list[str]:
    """Imports of a higher layer than the importer's, as ``a -> b`` lines."""
    rank = {layer: n for n, layer in enumerate(LAYERS)}
    return [
        f"{module} -> {target}"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if rank[target.split(".")[0]] > rank[module.split(".")[0]]
    ]


def flows_rule_breaks(graph: Graph, root: Path) -> list[str]:
    """Inside ``flows/``: a subpackage module importing a ready-made flow (a top-level module of
    ``flows/`` or the ``flows`` package itself), or a subpackage ``__init__`` that imports anything."""
    top = {"flows"} | {f"flows.{p.stem}" for p in (root / "flows").glob("*.py") if p.stem != "__init__"}
    breaks = []
    for module, targets in sorted(graph.items()):
        if not module.startswith("flows.") or module in top:
            continue
        breaks += [f"{module} -> {target} (a ready-made flow)" for target in sorted(targets & top)]
        init = root / Path(*module.split(".")) / "__init__.py"
        if init.exists() and module.count(".") == 1 and targets:
            breaks.append(f"{module}/__init__.py imports {sorted(targets)} (it should import nothing)")
    return breaks


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(ROOT)


def test_no_import_circles(graph: Graph) -> None:
    found = circles(graph)
    assert not found, "import circles (break each by moving the shared piece down):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_no_import_goes_up_a_layer(graph: Graph) -> None:
    found = upward_imports(graph)
    assert not found, f"imports up a layer ({' < '.join(LAYERS)}):\n" + "\n".join(found)


def test_ready_made_flows_sit_on_top_of_the_concept_packages(graph: Graph) -> None:
    found = flows_rule_breaks(graph, ROOT)
    assert not found, "\n".join(found)


def test_every_concept_package_has_a_question_and_a_literal_all() -> None:
    for init in sorted((ROOT / "flows").glob("*/__init__.py")):
        tree = ast.parse(init.read_text())
        doc = ast.get_docstring(tree) or ""
        assert doc.splitlines()[0].endswith("?"), f"{init}: the docstring should open with its question"
        assigned = [
            n for n in tree.body if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "__all__"
        ]
        assert assigned, f"{init}: no __all__"
        names = ast.literal_eval(assigned[0].value)  # raises if it is not a literal
        on_disk = {p.stem for p in init.parent.glob("*.py")} | {
            p.name for p in init.parent.iterdir() if (p / "__init__.py").exists()
        }
        assert set(names) == on_disk - {"__init__"}, f"{init}: __all__ {names} != its modules"


# --- the checker itself: it finds what it is meant to find ----------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in LAYERS:
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    return tmp_path


def test_checker_finds_a_circle_closed_by_a_lazy_import(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "flows/a.py": "from flows.b import x\n",
            "flows/b.py": "def x():\n    from flows.a import y  # the lazy import closes it\n",
            "flows/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from flows.a import y\n",
        },
    )
    graph = import_graph(root)
    assert circles(graph) == [["flows.a", "flows.b"]]
    assert "flows.a" not in graph["flows.c"]  # type-checking imports never run


def test_checker_finds_an_upward_import_and_a_subpackage_on_a_flow(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "dspex/low.py": "import deployments.cli\n",
            "deployments/cli.py": "",
            "flows/pipeline.py": "",
            "flows/engine/__init__.py": "from flows.engine import core\n",
            "flows/engine/core.py": "from flows.pipeline import x\n",
            "tasks/payloads/__init__.py": "",
            "tasks/payloads/api.py": "from . import storage\nfrom .storage import w\n",
            "tasks/payloads/storage.py": "",
        },
    )
    graph = import_graph(root)
    assert upward_imports(graph) == ["dspex.low -> deployments.cli"]
    assert graph["tasks.payloads.api"] == {"tasks.payloads.storage"}  # relative imports resolve
    breaks = flows_rule_breaks(graph, root)
    assert any("flows.engine.core -> flows.pipeline" in b for b in breaks)
    assert any("flows.engine/__init__.py imports" in b for b in breaks)
