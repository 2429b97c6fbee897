"""Environment fingerprint of a commit: Python, platform, versions of imported packages, and
where the session imported its own modules from.

Recorded so that a restore elsewhere can say which differences matter before it unpickles.
A package's version is its top-level module's ``__version__``: reading it costs nothing,
whereas mapping modules to installed distributions (importlib.metadata) costs ~0.3 s.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import site
import sys
from typing import Any

_imported: tuple[int, dict[str, str]] = (-1, {})


def imported_packages() -> dict[str, str]:
    """{top-level module: version} for every imported third-party package that declares a
    ``__version__``. Recomputed only when the set of imported modules changes."""
    global _imported
    if _imported[0] != len(sys.modules):
        count = len(sys.modules)
        out = {}
        for name, module in list(sys.modules.items()):
            if "." in name or name.startswith("_") or name in sys.stdlib_module_names:
                continue
            version = _declared_version(module)
            if version:
                out[name] = version
        _imported = (count, dict(sorted(out.items())))
    return _imported[1]


def _declared_version(module: Any) -> str:
    """A module's own ``__version__`` string, read from its dict: some packages serve it
    through a deprecated module ``__getattr__`` that warns."""
    version = getattr(module, "__dict__", {}).get("__version__")
    return version if isinstance(version, str) else ""


def fingerprint() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "packages": imported_packages(),
        "cwd": os.getcwd(),
        "path": import_paths(),
    }


def import_paths() -> list[str]:
    """The entries of sys.path that are not Python's own (its standard library and
    site-packages): the ones a notebook appended, its working directory (``""``), a script's
    folder. A value of a class from a module found there can be unpickled only where they are
    on sys.path too. Kept as written (relative ones are relative to the recorded cwd)."""
    roots = (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             getattr(site, "USER_SITE", None))
    own = tuple(os.path.join(os.path.abspath(root), "") for root in roots if root)
    out = []
    for entry in sys.path:
        if isinstance(entry, str):
            where = os.path.abspath(entry)
            if not os.path.join(where, "").startswith(own) and os.path.exists(where):
                out.append(entry)
    return out


def add_import_paths(recorded: dict[str, Any]) -> list[str]:
    """Put the directories a commit imported its modules from on sys.path (appended, where
    they are missing), so that its values can be unpickled; return those that no longer
    exist. Commits from before they were recorded have none."""
    cwd = recorded.get("cwd")
    if cwd is None:
        return []
    here = {os.path.abspath(entry) for entry in sys.path if isinstance(entry, str)}
    gone = []
    for entry in recorded.get("path", ()):
        folder = os.path.normpath(os.path.join(cwd, entry))
        if folder in here:
            continue
        if os.path.exists(folder):
            sys.path.append(folder)
            here.add(folder)
        else:
            gone.append(folder)
    return gone


def _version_here(module: str) -> str | None:
    """The version of module installed here; None if absent, "" if unknown without importing
    it (then it is not compared)."""
    loaded = sys.modules.get(module)
    if loaded is not None:
        return _declared_version(loaded)
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    from importlib import metadata  # ~60 ms to import: only when comparing environments

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return ""


def mismatches(recorded: dict[str, Any]) -> list[str]:
    """Differences between a commit's environment and this one that can change what loads:
    Python minor version, platform, versions of the packages the session had imported."""
    out = []
    here = fingerprint()
    py_then, py_now = recorded.get("python", ""), here["python"]
    if py_then.split(".")[:2] != py_now.split(".")[:2]:
        out.append(f"python {py_now} here, {py_then} at commit")
    if recorded.get("platform") and recorded["platform"] != here["platform"]:
        out.append(f"platform {here['platform']} here, {recorded['platform']} at commit")
    for module, version in recorded.get("packages", {}).items():
        now = _version_here(module)
        if now is None:
            out.append(f"{module} {version} at commit, not installed here")
        elif now and now != version:
            out.append(f"{module} {now} here, {version} at commit")
    return out
