"""Which remotes a store knows: add one (checked it can be written), find one by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import RemoteError
from ..repo import Repository
from .objects import Remote

#: fsspec protocols that cannot hold a remote: read-only, or unable to create-if-absent
UNSUPPORTED = {"http": "read-only", "https": "read-only", "github": "read-only",
               "zip": "read-only", "tar": "read-only"}


def normalized(url: str) -> str:
    """url with a plain path turned into an absolute file:// URL."""
    return url if "://" in url else "file://" + str(Path(url).resolve())


def add_remote(repo: Repository, name: str, url: str, options: dict[str, Any] | None = None
               ) -> None:
    """Remember a remote under name (options: fsspec storage options, e.g. an endpoint)."""
    url = normalized(url)
    protocol = url.partition("://")[0]
    if protocol in UNSUPPORTED:
        raise RemoteError(f"{protocol}:// cannot hold a txpy remote ({UNSUPPORTED[protocol]}); "
                          "use a directory (file://), s3://, gs:// or az://")
    Remote(url, options, name)  # fails early on an unknown protocol or a missing driver
    repo.set_remote(name, url, options or {})


def get_remote(repo: Repository, name: str | None) -> tuple[str, Remote]:
    """The remote called name, or the only/``origin`` one when name is None."""
    remotes = repo.remotes()
    if name is None:
        if "origin" in remotes or len(remotes) != 1:
            name = "origin"
        else:
            name = next(iter(remotes))
    if name not in remotes:
        known = ", ".join(remotes) or "none"
        raise RemoteError(f"no remote {name!r} (known: {known}); add one with "
                          "`txpy remote add NAME URL`")
    url, options = remotes[name]
    return name, Remote(url, options, name)
