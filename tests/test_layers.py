"""The package's folders are its layers, and no module imports from a layer
above its own (README, "Layout").

Every ``import`` and ``from ... import`` in vhdkit/ is read from the source
(function-level ones included: a lazy import is still a dependency).  A
module's layer is its folder under vhdkit/; the modules at the top of
vhdkit/ (errors, config, fileutil, native, ...) are the base every layer
uses and import no layer themselves.  ``vhdkit/__main__.py`` is the program
(``python -m vhdkit``, the installed script): Python wants it at the top,
and it stands above every layer."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "vhdkit"

#: the layers, lowest first: a module may import from its own layer and the ones before it
LAYERS = ["vhd", "store", "pack", "registry", "tasks", "api", "cli"]
BASE = -1                 # the modules at the top of vhdkit/
PROGRAM = len(LAYERS)     # vhdkit/__main__.py


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _rank(module: str) -> int:
    """The layer of ``module`` (a dotted name in vhdkit)."""
    parts = module.split(".")
    if parts[1:] == ["__main__"]:
        return PROGRAM
    if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        return LAYERS.index(parts[1])
    return BASE


def _submodule_or(package: str, name: str) -> str:
    """What ``from PACKAGE import NAME`` imports: the module PACKAGE.NAME if
    there is one, else (a name defined in it) PACKAGE."""
    where = ROOT.joinpath(*package.split("."), name)
    return f"{package}.{name}" if where.with_suffix(".py").exists() or where.is_dir() else package


def _imports(path: Path):
    """(line, module) of every vhdkit module ``path`` imports."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            names = [_submodule_or(base, a.name) for a in node.names]
        else:
            continue
        for name in names:
            if name == "vhdkit" or name.startswith("vhdkit."):
                yield node.lineno, name


def test_every_folder_of_the_package_is_a_known_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS)


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _rank(_module(path))
        for line, name in _imports(path):
            if name != "vhdkit" and _rank(name) > own:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)
