"""txpy — Transactional Python: Durability, Atomicity, Replicability, Time-versioning for a
Python session's state, with no change to the user's code."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from . import env
from .compat import fresh_classes
from .components import first_failure, load_in_order, read_manifests
from .errors import TxpyError, TxpyWarning
from .frontends.runner import checkpoint
from .model import Commit, Diff
from .repo import Repository
from .session import Session

__all__ = ["Commit", "Diff", "Session", "TxpyError", "TxpyWarning", "checkpoint", "enable",
           "load", "load_ipython_extension", "unload_ipython_extension"]
__version__ = "0.1.0"


def load(store: str | os.PathLike[str] = ".txpy", name: str | None = None,
         commit: str | None = None) -> dict[str, Any]:
    """A fresh dict holding the state of a commit (default: HEAD of history ``name``).

    ``name`` may be omitted when the store holds one history. Global random generators are
    not touched; names that were never stored are reported, not returned.
    """
    repo = Repository.open(store)
    try:
        if name is None:
            histories = repo.histories()
            if commit is None and len(histories) != 1:
                raise TxpyError(f"the store holds {len(histories)} histories "
                                f"({', '.join(histories) or 'none'}); name one")
            name = histories[0] if len(histories) == 1 else None
        target = repo.resolve(name, commit)
        differences = env.mismatches(target.env)
        if differences:
            _warn(f"commit {target.short} was made elsewhere: " + "; ".join(differences))
        gone = env.add_import_paths(target.env)  # before anything is unpickled
        if gone:
            _warn(f"commit {target.short} imported from directories that no longer exist: "
                  + ", ".join(gone))
        tree = repo.tree(target)
        state: dict[str, Any] = {}
        manifests, failed = read_manifests(repo, tree, set(tree.components.values()))
        with fresh_classes():  # never the live session's classes, reset from this commit
            failed.update(load_in_order(repo, manifests, state, state.update, _warn))
        if failed:
            raise first_failure(failed)
        if tree.unstored:
            _warn("not restored (never stored): " + ", ".join(
                f"{n} ({u.type_name})" for n, u in sorted(tree.unstored.items())))
        return state
    finally:
        repo.close()


def _warn(message: str) -> None:
    """A TxpyWarning for load's caller; where the user's filters turn warnings into errors, a
    line on stderr instead: a load must not fail over what it only reports."""
    try:
        warnings.warn(message, TxpyWarning, stacklevel=3)
    except Warning:
        print(f"txpy: {message}", file=sys.stderr)


def enable() -> Any:
    """Make every cell of the running IPython/Jupyter shell a transaction (= %load_ext txpy)."""
    from .frontends.ipython import enable as _enable
    return _enable()


def load_ipython_extension(ip: Any) -> None:
    from .frontends.ipython import load_ipython_extension as _load
    _load(ip)


def unload_ipython_extension(ip: Any) -> None:
    from .frontends.ipython import unload_ipython_extension as _unload
    _unload(ip)
