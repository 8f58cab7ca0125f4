"""The core of the package imports no TensorFlow/Keras, and no module imports another in a cycle."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stardist_hier"

#: the TensorFlow-free core (issue 9): every module under these
CORE = ("hierarchy", "patches", "masks", "atomic", "readers", "metrics", "augment", "synth")


def _modules(names):
    out = []
    for name in names:
        path = PACKAGE / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
        for f in files:
            parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def test_every_core_module_imports_without_tensorflow_or_keras():
    mods = _modules(CORE)
    assert len(mods) > 20, mods  # the walk found the core
    code = ("import importlib, sys\n"
            f"for m in {mods!r}:\n"
            "    importlib.import_module(m)\n"
            "    bad = [k for k in ('tensorflow', 'keras') if k in sys.modules]\n"
            "    assert not bad, f'{m} imports {bad}'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def _module_level_imports(path, module):
    """Package-internal modules imported at module level (not inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in tree.body:
        for n in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(n, ast.ImportFrom):
                if n.level:
                    base = package.split(".")
                    base = base[: len(base) - (n.level - 1)]
                    name = ".".join(base + ([n.module] if n.module else []))
                else:
                    name = n.module or ""
                if name.startswith("stardist_hier"):
                    out.add(name)
                    out.update(f"{name}.{a.name}" for a in n.names)
            elif isinstance(n, ast.Import):
                out.update(a.name for a in n.names if a.name.startswith("stardist_hier"))
    return out


def test_no_import_cycles_and_the_core_does_not_import_applications():
    files = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {m: {d for d in _module_level_imports(f, m) if d in files and d != m} for m, f in files.items()}
    # a package importing its own submodules (its __init__) is not a cycle
    graph = {m: {d for d in deps if not (files[m].name == "__init__.py" and d.startswith(m + "."))}
             for m, deps in graph.items()}
    state, cycles = {}, []

    def visit(m, path):
        state[m] = "open"
        for d in graph[m]:
            if state.get(d) == "open":
                cycles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles[:3]
    apps = ("stardist_hier.experiments", "stardist_hier.commands", "stardist_hier.cli")
    core = tuple(f"stardist_hier.{c}" for c in CORE)
    for m, deps in graph.items():
        if m.startswith(core):
            assert not [d for d in deps if d.startswith(apps + ("stardist_hier.model", "stardist_hier.predict",
                                                                 "stardist_hier.export"))], m
        if m.startswith(("stardist_hier.model", "stardist_hier.predict", "stardist_hier.export")):
            assert not [d for d in deps if d.startswith(apps)], m


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    """The check above can fail: a two-module cycle written here is found."""
    pkg = tmp_path / "stardist_hier"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("from .a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    with pytest.raises(AssertionError):
        test_no_import_cycles_and_the_core_does_not_import_applications()
