"""User modules: the `.py` files a notebook imports from its own directory hold state too.

``import helpers`` then ``helpers.cache.append(1)`` or ``helpers.counter += 1``: the values
live in the module, not in the namespace, and a module is stored by name (a restore imports
it afresh). So the data globals of user modules — modules the namespace uses (a module bound
to a name, or one defining a function, class or type in it) whose file is under the working
directory and that no installed distribution provides — are captured with the rest of the
global state at every commit, and put back over the module's fresh import on restore and
rollback. Functions, classes and modules are not stored (they come from the source); a module
whose source changed since the commit is named when its values are put back.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import types
from functools import cache
from typing import Any

import xxhash

from .encode import encode

_CODE = (types.ModuleType, types.FunctionType, type, types.BuiltinFunctionType,
         types.MethodType)


@cache
def _distributed() -> frozenset[str]:
    """Top-level names installed distributions provide (editable installs included)."""
    return frozenset(importlib.metadata.packages_distributions())


@cache
def _installed_roots() -> tuple[str, ...]:
    """Where installed code lives: the interpreter's prefixes (a project's .venv is often in
    the working directory) and every site-packages directory."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, *_site_dirs()}
    return tuple(os.path.realpath(r) + os.sep for r in roots if r)


def _site_dirs() -> list[str]:
    import site

    return [*site.getsitepackages(), site.getusersitepackages()]


_verdicts: dict[tuple[str, str], bool] = {}


def _is_user_module(name: str, module: Any) -> bool:
    file = getattr(module, "__file__", None)
    if not isinstance(file, str) or not file.endswith(".py") or name == "__main__":
        return False
    key = (name, file)
    verdict = _verdicts.get(key)
    if verdict is None:
        real = os.path.realpath(file)
        verdict = (real.startswith(os.path.realpath(os.getcwd()) + os.sep)
                   and not real.startswith(_installed_roots())
                   and name.partition(".")[0] not in _distributed())  # editable installs
        _verdicts[key] = verdict
    return verdict


def user_modules(namespace: dict[str, Any]) -> list[str]:
    """The user modules the namespace uses. Its verdicts are remembered: a session calls it
    before forking a capture, so that children inherit them instead of each working them out
    again (listing installed distributions takes ~0.3 s)."""
    return [name for name in sorted(_used_by(namespace))
            if (module := sys.modules.get(name)) is not None and _is_user_module(name, module)]


def _source_digest(file: str) -> str | None:
    try:
        with open(file, "rb") as f:
            return xxhash.xxh3_64_hexdigest(f.read())
    except OSError:
        return None


def _used_by(namespace: dict[str, Any]) -> set[str]:
    """Names of the modules the namespace uses: modules bound to its names, and those that
    define its functions, classes and its values' types (read without running user code)."""
    used = set()
    for value in list(namespace.values()):
        if isinstance(value, types.ModuleType):
            used.add(value.__name__)
        elif isinstance(value, (types.FunctionType, type)):
            used.add(getattr(value, "__module__", None) or "")
        else:
            used.add(type(value).__module__)
    return used


def capture(namespace: dict[str, Any]) -> dict[str, Any]:
    """{module: {"source": digest, "values": {global: value}}} of every user module the
    namespace uses (see _used_by; a project's other modules cost nothing); a global that
    cannot be pickled is left out (it stays as the module's code makes it)."""
    state = {}
    for name in user_modules(namespace):
        module = sys.modules[name]
        values = {}
        for key, value in list(vars(module).items()):
            if key.startswith("__") or isinstance(value, _CODE):
                continue
            try:
                encode(value, None, collect_shared=False)
            except Exception:  # UnpicklableError, or a user __reduce__ that raised
                continue
            values[key] = value
        state[name] = {"source": _source_digest(module.__file__), "values": values}
    return state


def restore(state: dict[str, Any]) -> list[str]:
    """Import each module (if it is not already) and put its stored values back; the modules
    whose source changed since they were captured."""
    changed = []
    for name, saved in state.items():
        module = importlib.import_module(name)
        if saved["source"] is not None and _source_digest(module.__file__) != saved["source"]:
            changed.append(name)
        for key, value in saved["values"].items():
            setattr(module, key, value)
    return changed
