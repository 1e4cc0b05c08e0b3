"""The package's import graph: layered, acyclic, no private names across modules
(docs/architecture.md). ``lint-imports`` checks the layer contract in pyproject.toml;
these tests check what it does not, on the same graph (grimp, import-linter's)."""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

grimp = pytest.importorskip("grimp")

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "ctvol"


def _graph(type_checking: bool = False) -> object:
    return grimp.build_graph("ctvol", exclude_type_checking_imports=not type_checking)


def _module_of(path: pathlib.Path) -> tuple[str, str]:
    """(module, package of its relative imports) for a file of the package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    mod = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return mod, mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]


def private_imports() -> list[tuple[str, str, str]]:
    """(importer, module, name) for every ``from M import _name`` of a ctvol name
    that is not itself a module (a private module may be imported; its names are public)."""
    modules = _graph(type_checking=True).modules  # type: ignore[attr-defined]
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mod, pkg = _module_of(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            if src.split(".")[0] != "ctvol":
                continue
            for alias in node.names:
                name = alias.name
                if name.startswith("_") and not name.startswith("__") \
                        and f"{src}.{name}" not in modules:
                    found.append((mod, src, name))
    return found


def cycles(graph: object) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    g = graph
    mods = sorted(g.modules)  # type: ignore[attr-defined]
    adj = {m: sorted(g.find_modules_directly_imported_by(m)) for m in mods}  # type: ignore[attr-defined]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in mods:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on.add(v)
            recurse = False
            for j in range(i, len(adj[v])):
                w = adj[v][j]
                if w not in index:
                    work.append((v, j + 1))
                    work.append((w, 0))
                    recurse = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if recurse:
                continue
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return out


def test_no_module_imports_a_private_name_of_another() -> None:
    assert private_imports() == []


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(_graph()) == []


def test_no_module_imports_the_package_root() -> None:
    g = _graph()
    importers = g.find_modules_that_directly_import("ctvol")  # type: ignore[attr-defined]
    assert sorted(importers) == []


def test_the_checks_find_what_they_look_for(tmp_path: pathlib.Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The cycle finder and the private-name scan are not vacuous."""
    class Graph:
        modules = {"a", "b", "c", "d"}
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

        def find_modules_directly_imported_by(self, m: str) -> set[str]:
            return self.edges[m]

    assert cycles(Graph()) == [["a", "b", "c"]]
    pkg = tmp_path / "ctvol"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "one.py").write_text("def _helper(): ...\n")
    (pkg / "sub" / "two.py").write_text("from .one import _helper\nfrom . import one\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)

    class Modules:
        modules = {"ctvol", "ctvol.sub", "ctvol.sub.one", "ctvol.sub.two"}

    monkeypatch.setattr(sys.modules[__name__], "_graph", lambda type_checking=False: Modules())
    assert private_imports() == [("ctvol.sub.two", "ctvol.sub.one", "_helper")]


#: Builtin raises that are not validation errors: the Mapping protocol's KeyError,
#: abstract methods, and ctvol.testing's compute-counting scheduler (module
#: ``__getattr__``'s AttributeError is the protocol too).
PROTOCOL_RAISES = {("ctvol._run", "KeyError"), ("ctvol.models.unet", "NotImplementedError"),
                   ("ctvol.models._base", "NotImplementedError"),
                   ("ctvol.testing", "RuntimeError")}


def builtin_raises() -> list[tuple[str, str, int]]:
    """(module, exception, line) of every ``raise Builtin(...)`` in the package."""
    import builtins

    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mod, _ = _module_of(path)
        tree = ast.parse(path.read_text())
        protocol = {id(n) for f in ast.walk(tree)
                    if isinstance(f, ast.FunctionDef) and f.name == "__getattr__"
                    for n in ast.walk(f)}
        for node in ast.walk(tree):
            if id(node) in protocol:
                continue
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) \
                    and isinstance(node.exc.func, ast.Name):
                name = node.exc.func.id
                if isinstance(getattr(builtins, name, None), type) \
                        and issubclass(getattr(builtins, name), BaseException) \
                        and (mod, name) not in PROTOCOL_RAISES:
                    found.append((mod, name, node.lineno))
    return found


def test_every_error_raised_is_a_ctvol_error() -> None:
    """Validation errors are ctvol errors that also subclass the builtin they replace,
    so ``except ValueError`` keeps working and the CLI catches one base."""
    assert builtin_raises() == []


def test_ctvol_errors_subclass_the_builtins_they_replace() -> None:
    from ctvol import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        if issubclass(cls, Warning):
            continue
        assert issubclass(cls, errors.CtvolError), name
        builtin = [b for b in cls.__mro__ if b.__module__ == "builtins"]
        assert builtin[0] is not Exception or cls is errors.CtvolError, name
    with pytest.raises(ValueError, match="factor must be an integer >= 2"):
        from ctvol._volume import check_factor

        check_factor(1)
