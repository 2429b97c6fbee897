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
import __future__

import importlib
import importlib.metadata
import os
import sys
import types
from functools import cache
from typing import Any

import xxhash

from .encode import encode

#: what a module's source makes (``from __future__ import annotations`` binds a _Feature)
_CODE = (types.ModuleType, types.FunctionType, type, types.BuiltinFunctionType,
         types.MethodType, __future__._Feature)


@cache
def _distributed() -> frozenset[str]:
    """Top-level names installed distributions provide (editable installs included)."""
    return frozenset(importlib.metadata.packages_distributions())


@cache
def _installed_roots() -> tuple[str, ...]:
    """Where installed code lives: the interpreter's prefixes (a project's .venv is often in
    the working directory) and every site-packages directory, as given and resolved."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, *_site_dirs()}
    return tuple({path + os.sep for r in roots if r
                  for path in (os.path.abspath(r), os.path.realpath(r))})


@cache
def _resolved(directory: str) -> str:
    return os.path.realpath(directory) + os.sep


def _site_dirs() -> list[str]:
    import site

    return [*site.getsitepackages(), site.getusersitepackages()]


_verdicts: dict[tuple[str, str], bool] = {}


def _is_user_module(name: str, module: Any) -> bool:
    """A module from a file under the working directory that no distribution installs."""
    return _under_cwd(name, module) and \
        name.partition(".")[0] not in _distributed()  # editable installs


def _under_cwd(name: str, module: Any) -> bool:
    """A module from a .py file under the working directory, not under an installed root."""
    file = getattr(module, "__file__", None)
    if not isinstance(file, str) or not file.endswith(".py") or name == "__main__":
        return False
    key = (name, file)
    verdict = _verdicts.get(key)
    if verdict is None:
        # most modules are installed: told by their path as given (resolving a path costs a
        # system call per directory: ~0.2 ms a module, 0.3 s for a kernel with torch)
        verdict = os.path.isabs(file) and not file.startswith(_installed_roots())
        if verdict:  # (torch.ops says its file is "_ops.py": no file under the directory)
            real = os.path.realpath(file)
            verdict = real.startswith(_resolved(os.getcwd())) and \
                not real.startswith(_installed_roots())
        _verdicts[key] = verdict
    return verdict


def user_modules(namespace: dict[str, Any],
                 shared: dict[str, dict[str, str]] | None = None) -> list[str]:
    """The user modules the namespace uses (shared: its aliases, when known); verdicts are
    remembered (see warm)."""
    used = _used_by(namespace) | (aliases(namespace) if shared is None else shared).keys()
    return [name for name in sorted(used)
            if (module := sys.modules.get(name)) is not None and _is_user_module(name, module)]


#: Values whose identity nobody can rely on (small ints and strings are shared by everyone).
_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), tuple, frozenset, range)


def aliases(namespace: dict[str, Any]) -> dict[str, dict[str, str]]:
    """{module: {global: name}}: the mutable data globals of loaded user modules that a
    namespace name binds too (``from helpers import cache``). One object: it is stored with
    the namespace and the module's global is bound to it again on restore; and since the
    module's functions change it without a cell naming it, the name is examined at every
    commit."""
    globals_by_id = {id(value): (name, key) for name, module in _loaded_under_cwd()
                     for key, value in _data_globals(module).items()
                     if not isinstance(value, _IMMUTABLE)}
    if not globals_by_id:
        return {}
    found: dict[str, dict[str, str]] = {}
    for n, value in list(namespace.items()):  # the first name, where several bind it
        where = globals_by_id.get(id(value))
        if where is not None and where[1] not in found.get(where[0], {}):
            found.setdefault(where[0], {})[where[1]] = n
    # only now, for a module some name aliases: is it an installed (editable) package?
    return {name: names for name, names in found.items()
            if _is_user_module(name, sys.modules[name])}


_loaded: dict[str, tuple[Any, bool]] = {}
_last_scan: tuple[tuple[int, str | None], list[tuple[str, types.ModuleType]]] | None = None


def _loaded_under_cwd() -> list[tuple[str, types.ModuleType]]:
    """The modules in sys.modules from files under the working directory (see _under_cwd);
    each module's verdict is remembered with it, and the whole answer while sys.modules
    keeps its size and last entry (a kernel with torch has 2,500 modules: scanning them
    costs ~1 ms, twice a commit)."""
    global _last_scan
    key = (len(sys.modules), next(reversed(sys.modules), None))
    if _last_scan is not None and _last_scan[0] == key:
        return _last_scan[1]
    found = []
    for name, module in list(sys.modules.items()):
        seen = _loaded.get(name)
        if seen is None or seen[0] is not module:
            seen = _loaded[name] = (module, _under_cwd(name, module))
        if seen[1]:
            found.append((name, module))
    _last_scan = (key, found)
    return found


def warm(namespace: dict[str, Any]) -> None:
    """Work out which modules the namespace uses are user modules (listing installed
    distributions takes ~0.3 s), so that forked children inherit the verdicts; at once
    where no module is loaded from the working directory (a notebook importing none)."""
    if _loaded_under_cwd():
        user_modules(namespace)


def aliased(namespace: dict[str, Any]) -> set[str]:
    """The namespace names that bind a user module's global (see aliases)."""
    return {n for found in aliases(namespace).values() for n in found.values()}


def _data_globals(module: types.ModuleType) -> dict[str, Any]:
    return {key: value for key, value in list(vars(module).items())
            if not key.startswith("__") and not isinstance(value, _CODE)}


def _source_digest(file: str) -> str | None:
    try:
        with open(file, "rb") as f:
            return xxhash.xxh3_64_hexdigest(f.read())
    except OSError:
        return None


def _used_by(namespace: dict[str, Any]) -> set[str]:
    """Names of the modules the namespace uses: modules bound to its names, and those that
    define its functions, classes and its values' types (read without running user code;
    the types are gathered first: 5,000 variables have a handful of types)."""
    values = list(namespace.values())
    used = {getattr(kind, "__module__", None) or "" for kind in set(map(type, values))}
    for value in values:
        if isinstance(value, types.ModuleType):
            used.add(value.__name__)
        elif isinstance(value, (types.FunctionType, type)):
            used.add(getattr(value, "__module__", None) or "")
    return used


def capture(namespace: dict[str, Any], *, checked: bool = True) -> dict[str, Any]:
    """{module: {"source": digest, "values": {global: value}, "aliases": {global: name}}} of
    every user module the namespace uses (see _used_by and aliases; a project's other modules
    cost nothing). checked: a global that cannot be pickled whole is left out (it stays as
    the module's code makes it); else every global is in, for a caller that pickles it all."""
    state = {}
    shared = aliases(namespace)
    for name in user_modules(namespace, shared):
        module = sys.modules[name]
        named = shared.get(name, {})
        values = {}
        for key, value in _data_globals(module).items():
            if key in named or (checked and not _picklable(value)):
                continue
            values[key] = value
        state[name] = {"source": _source_digest(module.__file__), "values": values,
                       "aliases": named}
    return state


def _picklable(value: Any) -> bool:
    """Whether value pickles whole: a placeholder for a part that cannot (a generator in a
    dict) would replace what the module's own code made on restore."""
    try:
        return not encode(value, None, collect_shared=False).placeholders
    except Exception:  # UnpicklableError, or a user __reduce__ that raised
        return False


def restore(state: dict[str, Any], namespace: dict[str, Any]) -> list[str]:
    """Import each module (if it is not already) and put its stored values back, and the
    namespace's objects its globals were (namespace: restored first); the modules whose
    source changed since they were captured."""
    changed = []
    for name, saved in state.items():
        module = importlib.import_module(name)
        if saved["source"] is not None and _source_digest(module.__file__) != saved["source"]:
            changed.append(name)
        for key, value in saved["values"].items():
            setattr(module, key, value)
        for key, bound in saved.get("aliases", {}).items():  # stores before aliases had none
            if bound in namespace:
                setattr(module, key, namespace[bound])
    return changed
