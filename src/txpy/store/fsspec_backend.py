"""Any fsspec URL as a Backend: where remotes live (S3 and compatible servers, gs://, az://,
memory://)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from .backend import Backend, Body, body_bytes


class FsspecBackend(Backend):
    """Any fsspec URL (s3://, gs://, az://, memory://, …). Object stores make each put atomic
    (an object is wholly there or not), which is what write-once chunks and refs need.

    Keys are fanned out (``ab/cdef…``) so no listing is huge; fanout=False keeps them flat,
    for a few named objects (a remote's marker) next to the fanned-out folders.
    """

    def __init__(self, url: str, fanout: bool = True, **options: Any):
        import fsspec  # only remotes need it; keeps `txpy` start-up fast

        self.fs, self.root = fsspec.core.url_to_fs(url, **options)
        self.root = self.root.rstrip("/")
        self._fanout = fanout

    def path(self, key: str) -> str:
        return f"{self.root}/{key[:2]}/{key[2:]}" if self._fanout else f"{self.root}/{key}"

    def get(self, key: str) -> bytes:
        return self.fs.cat_file(self.path(key))

    def put_many(self, items: Iterable[tuple[str, Body]], replace: bool = False) -> int:
        written = 0  # an object store's put replaces atomically; chunks are write-once anyway
        for key, data in items:
            body = body_bytes(data)
            self.fs.pipe_file(self.path(key), body)
            written += len(body)
        return written

    def create(self, key: str, data: bytes) -> bool:
        try:  # S3: a conditional put (If-None-Match: *)
            self.fs.pipe_file(self.path(key), data, mode="create")
        except FileExistsError:
            return False
        return True

    def exists(self, key: str) -> bool:
        self.fs.invalidate_cache(self.path(key))
        return self.fs.exists(self.path(key))

    def delete(self, key: str) -> None:
        if self.exists(key):
            self.fs.rm_file(self.path(key))

    def keys(self) -> Iterator[str]:
        return iter(self.sizes())

    def sizes(self) -> dict[str, int]:
        self.fs.invalidate_cache()  # another process may have written since we last listed
        try:
            if not self._fanout:
                return {i["name"].rstrip("/").rpartition("/")[2]: i.get("size") or 0
                        for i in self.fs.ls(self.root, detail=True)}
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return {}
        prefix = len(self.root) + 1
        out = {}
        for p, info in found.items():
            rel = p[prefix:] if p.startswith(self.root) else p
            fan, _, rest = rel.partition("/")
            if len(fan) == 2 and rest and "/" not in rest:
                out[fan + rest] = info["size"]
        return out
