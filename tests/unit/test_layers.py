"""The package's folders are its layers, and imports only go down them."""

import ast
import importlib
import os
import sys
import warnings

import pytest

import kvmstat
from kvmstat import _compat

PACKAGE = os.path.dirname(kvmstat.__file__)
# Lowest first; a module may import its own layer and the layers below it.
LAYERS = ["host", "tracefs", "counting", "providers", "sampling", "frontends"]
BASE = {"errors", "textsafe", "_compat"}  # under every layer


def _modules():
    for folder, _dirs, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                yield path, rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _imports(path, module):
    is_package = path.endswith("__init__.py")
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = base[: len(base) - node.level + 1] + (node.module.split(".") if node.module else [])
            else:
                target = (node.module or "").split(".")
            if node.module is None:  # from . import x: x may be a module
                for alias in node.names:
                    yield ".".join(target + [alias.name])
            else:
                yield ".".join(target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name


def _layer(module):
    parts = module.split(".")
    if parts[0] != "kvmstat" or len(parts) < 2:
        return None
    if parts[1] in BASE:
        return -1
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def test_every_module_is_in_a_layer():
    loose = [m for _p, m in _modules()
             if m != "kvmstat" and m.count(".") == 1 and _layer(m) is None
             and m.split(".")[1] not in {"__main__"} and m.split(".")[1] not in LAYERS]
    assert loose == []


def test_imports_only_go_down():
    upward = []
    for path, module in _modules():
        own = _layer(module)
        if own is None:  # kvmstat/__init__ (the public API) and __main__ sit on top
            continue
        for target in _imports(path, module):
            if target == "kvmstat":  # __version__
                continue
            theirs = _layer(target)
            if theirs is not None and theirs > own:
                upward.append(f"{module} imports {target}")
    assert upward == []


@pytest.mark.parametrize("old", sorted(_compat.MOVED))
def test_old_module_paths_still_import_with_a_warning(old, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(_compat.MOVED[old])
    assert module.__spec__.name == _compat.MOVED[old]
    assert any(issubclass(w.category, DeprecationWarning) and _compat.MOVED[old] in str(w.message)
               for w in caught)
