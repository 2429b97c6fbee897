"""clone: a new store with a remote as ``origin`` and all its histories.

The store is built in ``DIR/.txpy.partial`` and renamed to ``DIR/.txpy`` only when complete,
so a ``.txpy`` is always a finished clone. A clone that was killed leaves the partial store;
running the same clone again resumes it (chunks already fetched are not fetched again), and
one of another URL, or too broken to open, is replaced.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..errors import TxpyError
from ..repo import STORE_DIR, Repository
from .config import add_remote, get_remote, normalized
from .transfer import Progress, TransferStats, pull

PARTIAL = STORE_DIR + ".partial"


def clone(url: str, dest: Path, *, trust: bool, options: dict[str, Any] | None = None,
          progress: Progress | None = None) -> tuple[Path, TransferStats]:
    """Copy every history of the remote at url into dest/.txpy (see the module's doc)."""
    store = dest / STORE_DIR
    if store.exists():
        raise TxpyError(f"{store} already exists; clone into a new directory")
    partial = dest / PARTIAL
    repo = _resumed(partial, url) or Repository.open(partial, create=True)
    try:
        add_remote(repo, "origin", url, options)
        _, remote = get_remote(repo, "origin")
        stats = pull(repo, remote, "origin", trust=trust, progress=progress)
    except Exception:  # refused or failed: nothing is left; a kill leaves what to resume
        repo.close()
        shutil.rmtree(partial)
        raise
    repo.close()
    partial.rename(store)
    return store, stats


def _resumed(partial: Path, url: str) -> Repository | None:
    """The store a killed clone of url left at partial; None (and nothing there) if there
    is none, or it was of another URL, or it cannot be opened."""
    if not partial.exists():
        return None
    try:
        repo = Repository.open(partial)
    except TxpyError:
        shutil.rmtree(partial)
        return None
    origin = repo.remotes().get("origin")
    if origin is not None and origin[0] == normalized(url):
        return repo
    repo.close()
    shutil.rmtree(partial)
    return None
