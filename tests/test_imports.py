"""The package's import structure, read with ``ast`` (nothing is imported) (issue 19).

* No import circles among module-level imports: the graph is module -> the package modules it imports when it is
  first imported (top-level statements, those inside top-level ``try`` / ``if`` / ``with`` / ``for`` / ``while``
  blocks and class bodies; not ``if TYPE_CHECKING:`` blocks, not imports inside functions, which run later).
  ``import a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``, so those are edges too, except for packages that
  contain the importer (they are already being initialised when it runs). A module-level
  ``importlib.import_module("a.b")`` counts as ``import a.b``; ``importlib.import_module(f"{__name__}.{m.name}")``
  (the loop over ``pkgutil.iter_modules(__path__)`` that fills a registry) as importing every public submodule.
* No cross-package import of a private module (file or folder named ``_x``): only modules inside the folder that
  holds it (and its subfolders) may import it. A private name (``from m import _x``, ``_x`` not a module) may be
  imported only by modules of the folder that defines it. Imports anywhere in a file count, lazy ones too.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "contrastkit"


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool

    @property
    def folder(self) -> str:
        """The package whose folder holds this file (the package itself for an ``__init__``)."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


@dataclass
class Import:
    importer: str
    target: str            # a module of the package
    line: int
    module_level: bool
    name: str | None = None  # for ``from target import name`` where name is not a module


@dataclass
class Walk:
    modules: dict[str, Module] = field(default_factory=dict)
    imports: list[Import] = field(default_factory=list)


def find_modules(root: Path, package: str) -> dict[str, Module]:
    """Every ``.py`` file of the package under ``root`` (the folder that contains the package's folder)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = Module(".".join(parts), path, is_package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_statements(body: list[ast.stmt]):
    """Statements run when the module is imported: top level, and inside blocks and class bodies there."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _module_level_statements(node.body)
            yield from _module_level_statements(node.orelse)
        elif isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _module_level_statements(block)
            for handler in node.handlers:
                yield from _module_level_statements(handler.body)
        elif isinstance(node, (ast.With, ast.For, ast.While)):
            yield from _module_level_statements(node.body)
            yield from _module_level_statements(getattr(node, "orelse", []))
        elif isinstance(node, ast.ClassDef):
            yield from _module_level_statements(node.body)


def _resolve(module: Module, node: ast.ImportFrom) -> str | None:
    """The absolute module name of ``from ... import``, relative ones resolved."""
    if node.level == 0:
        return node.module
    base = module.folder.split(".")
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports_of(module: Module, node: ast.stmt, modules: dict[str, Module], package: str, module_level: bool):
    def known(name: str) -> str | None:
        # the longest prefix that is a module of the package (``import a.b.c`` where c is an attribute -> a.b)
        parts = name.split(".")
        while parts:
            if ".".join(parts) in modules:
                return ".".join(parts)
            parts.pop()
        return None

    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == package or alias.name.startswith(package + "."):
                target = known(alias.name)
                if target:
                    yield Import(module.name, target, node.lineno, module_level)
    elif isinstance(node, ast.ImportFrom):
        source = _resolve(module, node)
        if not source or not (source == package or source.startswith(package + ".")):
            return
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if submodule in modules:
                yield Import(module.name, submodule, node.lineno, module_level)
            else:
                target = known(source)
                if target:
                    yield Import(module.name, target, node.lineno, module_level,
                                 name=None if alias.name == "*" else alias.name)


def _dynamic_imports(module: Module, node: ast.stmt, modules: dict[str, Module], package: str):
    """``importlib.import_module(...)`` run by a module-level statement (not inside a function)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(current, ast.stmt) and current is not node:
            continue  # a nested statement is yielded on its own by _module_level_statements
        stack.extend(ast.iter_child_nodes(current))
        if not (isinstance(current, ast.Call) and current.args and (
                (isinstance(current.func, ast.Attribute) and current.func.attr == "import_module")
                or (isinstance(current.func, ast.Name) and current.func.id == "import_module"))):
            continue
        argument = current.args[0]
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            yield from _imports_of(module, ast.Import(names=[ast.alias(argument.value)], lineno=current.lineno),
                                   modules, package, True)
        elif (isinstance(argument, ast.JoinedStr) and len(argument.values) >= 2 and module.is_package
              and isinstance(argument.values[0], ast.FormattedValue)
              and isinstance(argument.values[0].value, ast.Name) and argument.values[0].value.id == "__name__"
              and isinstance(argument.values[1], ast.Constant) and argument.values[1].value == "."):
            for name in modules:
                child = name[len(module.name) + 1:]
                if name.startswith(module.name + ".") and "." not in child and not child.startswith("_"):
                    yield Import(module.name, name, current.lineno, True)


def walk(root: Path, package: str) -> Walk:
    """Every import of the package's modules from the package's own modules."""
    result = Walk(find_modules(root, package))
    for module in result.modules.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
        top = {id(node) for node in _module_level_statements(tree.body)}
        for node in _module_level_statements(tree.body):
            result.imports.extend(_dynamic_imports(module, node, result.modules, package))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                result.imports.extend(_imports_of(module, node, result.modules, package, id(node) in top))
    return result


def import_graph(result: Walk) -> dict[str, dict[str, int]]:
    """module -> {module it runs on import: line of the first import statement that does}."""
    graph: dict[str, dict[str, int]] = {name: {} for name in result.modules}
    for imp in result.imports:
        if not imp.module_level:
            continue
        graph[imp.importer].setdefault(imp.target, imp.line)
        # the packages that hold the importer (its folder and those above) are already being initialised
        held_by = result.modules[imp.importer].folder
        parts = imp.target.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent in result.modules and not (held_by == parent or held_by.startswith(parent + ".")):
                graph[imp.importer].setdefault(parent, imp.line)
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the strongly connected components of the graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
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
                    components.append(sorted(component))
    return components


def _short(name: str, package: str) -> str:
    return name[len(package) + 1:] if name.startswith(package + ".") else name


def import_cycles(root: Path, package: str, result: Walk | None = None) -> list[str]:
    """One line per circle: its modules, then each import inside it (``a:line -> b``)."""
    result = result or walk(root, package)
    graph = import_graph(result)
    found = []
    for component in strongly_connected(graph):
        members = set(component)
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        edges = ", ".join(f"{_short(a, package)}:{graph[a][b]} -> {_short(b, package)}"
                          for a in component for b in sorted(graph[a]) if b in members)
        found.append(f"{' <-> '.join(_short(m, package) for m in component)}  [{edges}]")
    return found


def _is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def private_imports(root: Path, package: str, result: Walk | None = None) -> list[str]:
    """``importer:line -> imported`` for each private module or name imported from outside where it lives."""
    result = result or walk(root, package)
    found = []
    for imp in result.imports:
        importer = result.modules[imp.importer]
        parts = imp.target.split(".")
        for i, part in enumerate(parts):
            holder = ".".join(parts[:i])  # the folder that holds the private module (or folder) ``part``
            if _is_private(part) and not (importer.name == holder or importer.name.startswith(holder + ".")):
                found.append(f"{_short(imp.importer, package)}:{imp.line} -> {_short(imp.target, package)}")
                break
        if imp.name and _is_private(imp.name) and importer.folder != result.modules[imp.target].folder:
            found.append(f"{_short(imp.importer, package)}:{imp.line} -> {_short(imp.target, package)}.{imp.name}")
    return sorted(set(found))


@pytest.fixture(scope="module")
def package_walk() -> Walk:
    return walk(SRC, PACKAGE)


def test_the_walk_sees_the_whole_package(package_walk):
    assert len(package_walk.modules) > 100, sorted(package_walk.modules)
    assert f"{PACKAGE}.engine.trainer" in package_walk.modules
    assert sum(imp.module_level for imp in package_walk.imports) > 200


def test_no_import_circles(package_walk):
    cycles = import_cycles(SRC, PACKAGE, package_walk)
    assert not cycles, "import circles among module-level imports:\n" + "\n".join(cycles)


def test_no_cross_package_private_imports(package_walk):
    found = private_imports(SRC, PACKAGE, package_walk)
    assert not found, "private modules or names imported from outside their package:\n" + "\n".join(found)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checks_find_what_they_should(tmp_path):
    _write(tmp_path, {
        "fake/__init__.py": "",
        "fake/a.py": "from fake import b\n",
        "fake/b.py": "try:\n    from fake.a import thing\nexcept ImportError:\n    pass\n",
    })
    assert import_cycles(tmp_path, "fake") == ["a <-> b  [a:1 -> b, b:2 -> a]"]

    # a parent package that imports its module, which imports a name from the parent: a circle;
    # lazy and TYPE_CHECKING imports are not, nor is a module's own package being run by an import
    _write(tmp_path, {
        "lazy/__init__.py": "from lazy.sub import m\n",
        "lazy/sub/__init__.py": "",
        "lazy/sub/m.py": ("from typing import TYPE_CHECKING\nfrom lazy.sub import other\n"
                          "if TYPE_CHECKING:\n    import lazy\n"
                          "def f():\n    from lazy import x\n"),
        "lazy/sub/other.py": "VALUE = 1\n",
        "circle/__init__.py": "from .m import f\n",
        "circle/m.py": "from circle import REGISTRY\n",
    })
    assert import_cycles(tmp_path, "lazy") == []
    assert import_cycles(tmp_path, "circle") == ["circle <-> m  [circle:1 -> m, m:1 -> circle]"]

    # importing a.sub.y runs a/sub/__init__ too
    _write(tmp_path, {
        "parent/__init__.py": "",
        "parent/sub/__init__.py": "from parent import x\n",
        "parent/sub/y.py": "",
        "parent/x.py": "import parent.sub.y\n",
    })
    assert import_cycles(tmp_path, "parent") == ["sub <-> x  [sub:1 -> x, x:1 -> sub]"]

    # a registry filled by importing every public submodule, which registers itself with the package's registry
    _write(tmp_path, {
        "registry/__init__.py": ("import importlib\nimport pkgutil\nREGISTRY = {}\n"
                                 "for info in pkgutil.iter_modules(__path__):\n"
                                 "    if not info.name.startswith('_'):\n"
                                 "        importlib.import_module(f'{__name__}.{info.name}')\n"),
        "registry/one.py": "from registry import REGISTRY\n",
        "registry/_private.py": "from registry import REGISTRY\n",
        "registry/lazy.py": "import importlib\ndef f():\n    importlib.import_module('registry')\n",
    })
    assert import_cycles(tmp_path, "registry") == ["registry <-> one  [registry:6 -> one, one:1 -> registry]"]

    _write(tmp_path, {
        "priv/__init__.py": "",
        "priv/one/__init__.py": "",
        "priv/one/_helpers.py": "_SECRET = 1\nPUBLIC = 2\n",
        "priv/one/user.py": "from ._helpers import _SECRET\n",
        "priv/one/deep/__init__.py": "from priv.one._helpers import PUBLIC\n",
        "priv/one/shown.py": "_NAME = 1\n",
        "priv/two.py": ("def f():\n    from priv.one import _helpers\n"
                        "from priv.one.shown import _NAME\nimport priv.one._helpers\n"),
    })
    assert private_imports(tmp_path, "priv") == [
        "two:2 -> one._helpers", "two:3 -> one.shown._NAME", "two:4 -> one._helpers"]
