"""Imports point down the layers and never go round in a circle: the import graph, read with ``ast``.

lmdm_engine:  cli > io > stream > runtime > core, and train beside stream (core and runtime only); it never imports
the bridge or the exporter (they register their commands as entry points). lmdm_bridge: cli > client, server >
hosting > protocol > wire. Lazy imports inside functions count too: they are dependencies all the same."""

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]

# layer -> the layers it may import (its own included); a module's layer is its first sub-package, or "" at the top
ENGINE = {
    "core": {"core"},
    "runtime": {"core", "runtime"},
    "stream": {"core", "runtime", "stream"},
    "train": {"core", "runtime", "train"},
    "io": {"core", "runtime", "stream", "io"},
    "cli": {"core", "runtime", "stream", "train", "io", "cli"},
    "models": set(),
    "": set(),
}
BRIDGE = {
    "wire": {"wire"},
    "protocol": {"wire", "protocol"},
    "hosting": {"wire", "protocol", "hosting"},
    "server": {"wire", "protocol", "hosting", "server"},
    "client": {"wire", "protocol"},
    "cli": {"server"},
    "__main__": {"cli"},
    "": {"client", "protocol", "server"},
}
OUTSIDE = {"lmdm_engine": set(), "lmdm_bridge": {"lmdm_engine"}, "lmdm_export": {"lmdm_engine"}}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "node_modules" in path.parts:
                continue
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """The project modules ``module`` imports, anywhere in the file (a package's name stands for its __init__)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # "a.b.c" imported as a name of module "a.b"
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _layer(module: str) -> tuple[str, str]:
    top, _, rest = module.partition(".")
    return top, rest.split(".")[0] if rest else ""


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    top, layer = _layer(module)
    rules = {"lmdm_engine": ENGINE, "lmdm_bridge": BRIDGE}.get(top)
    for target in sorted(GRAPH[module]):
        other, other_layer = _layer(target)
        if other != top:
            assert other in OUTSIDE[top], f"{module} imports {target}: {top} may not import {other}"
        elif rules is not None:
            assert layer in rules, f"{module}: layer {layer!r} has no rule in tests/test_layers.py"
            assert other_layer in rules[layer] or other_layer == layer, (
                f"{module} ({layer or 'top'}) imports {target} ({other_layer or 'top'}): imports point down")


def test_no_import_cycles():
    """Tarjan's strongly connected components of the whole project's import graph: all of them single modules."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_the_graph_is_read():
    """The checks above see the real imports (a parser that found none would pass them all)."""
    assert "lmdm_engine.core.model" in GRAPH["lmdm_engine.runtime.torch"]
    assert "lmdm_engine.runtime.latent_stream" in GRAPH["lmdm_engine.train.arc"]
    assert "lmdm_bridge.wire.osc" in GRAPH["lmdm_bridge.wire.blocks"]
    assert "lmdm_engine.stream.session" in GRAPH["lmdm_export.verify"]


def test_the_readme_layout_names_every_layer():
    """The README's layout table lists every sub-package folder (a new layer cannot go unexplained)."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Layout"):readme.index("\n## ", readme.index("## Layout") + 1)]
    for folder in PACKAGE_DIRS.values():
        for init in sorted((ROOT / folder).glob("*/__init__.py")):
            sub = init.parent.relative_to(ROOT).as_posix()
            assert f"`{sub}/" in table or f"`{init.parent.name}/`" in table, f"README layout lacks {sub}/"
