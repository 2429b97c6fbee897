"""Environment fingerprint of a commit: Python, platform, versions of imported packages.

Recorded so that a restore elsewhere can say which differences matter before it unpickles.
Versions are looked up once per package per process (importlib.metadata is slow).
"""

from __future__ import annotations

import platform
import sys
import threading
from importlib import metadata
from typing import Any

_versions: dict[str, str | None] = {}
_top_level_to_dist: dict[str, list[str]] = {}
_scan = threading.Thread(target=lambda: _top_level_to_dist.update(
    metadata.packages_distributions()), name="txpy-env-scan", daemon=True)
_imported: tuple[int, dict[str, str]] = (-1, {})


def warm_up() -> None:
    """Start reading installed packages' metadata (~0.3 s) in the background, so the first
    commit does not wait for it."""
    if not _scan.is_alive() and not _top_level_to_dist:
        try:
            _scan.start()
        except RuntimeError:  # already started and finished
            pass


def _dists_of(module: str) -> list[str]:
    warm_up()
    _scan.join()
    return _top_level_to_dist.get(module, [])


def imported_packages() -> dict[str, str]:
    """{distribution: version} for every installed distribution with an imported module.
    Recomputed only when the set of imported modules changes."""
    global _imported
    if _imported[0] == len(sys.modules):
        return _imported[1]
    count = len(sys.modules)
    out: dict[str, str] = {}
    for name in list(sys.modules):
        if "." in name or name.startswith("_") or name in sys.stdlib_module_names:
            continue
        for dist in _dists_of(name):
            if dist not in _versions:
                try:
                    _versions[dist] = metadata.version(dist)
                except metadata.PackageNotFoundError:
                    _versions[dist] = None
            version = _versions[dist]
            if version:
                out[dist] = version
    _imported = (count, dict(sorted(out.items())))
    return _imported[1]


def fingerprint() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "packages": imported_packages(),
    }


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
    for dist, version in recorded.get("packages", {}).items():
        try:
            now = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out.append(f"{dist} {version} at commit, not installed here")
            continue
        if now != version:
            out.append(f"{dist} {now} here, {version} at commit")
    return out
