"""Where bytes live. Callers never branch on the backend: every backend has these verbs."""

from __future__ import annotations

import abc
import ctypes
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

Bytes = bytes | memoryview | bytearray
#: What put_many writes under a key: bytes, or parts written back to back (a chunk's header and
#: a view of the user's buffer go to a file with one writev, never copied into one block).
Body = Bytes | tuple[Bytes, ...]


def body_parts(body: Body) -> tuple[Bytes, ...]:
    return body if isinstance(body, tuple) else (body,)


def body_size(body: Body) -> int:
    return sum(memoryview(p).nbytes for p in body_parts(body))


def body_bytes(body: Body) -> bytes:
    return b"".join(body_parts(body))


class Backend(abc.ABC):
    """A flat key → bytes store with atomic, write-once puts."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The bytes under key; FileNotFoundError if absent."""

    @abc.abstractmethod
    def put_many(self, items: Iterable[tuple[str, Body]], replace: bool = False) -> int:
        """Write every (key, data) durably and atomically; return the bytes written. A key
        already present is kept unless replace (repairing a damaged copy: readers see the
        old bytes or the new, never nothing)."""

    @abc.abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Write key only if it is absent, atomically even against other writers (the one
        compare-and-swap remotes need); False if it was already there."""

    def open_file(self, key: str) -> BinaryIO | None:
        """key's body as an open file, where a file holds it (reads can then go straight
        into their destination); None where it does not."""
        return None

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether key is present."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove key if present."""

    @abc.abstractmethod
    def keys(self) -> Iterator[str]:
        """Every key present."""

    @abc.abstractmethod
    def sizes(self) -> dict[str, int]:
        """{key: bytes stored} of every key, from one listing: a cheap check that what another
        side holds under a key is what this side holds."""


class LocalBackend(Backend):
    """A flat directory, one file per key.

    A put writes a temp file, fsyncs it, renames it into place, then fsyncs the directory, so
    a crash leaves either the whole file or none of it. Files are fsynced in batches after
    their writes were issued, which lets the kernel coalesce the flushes; being flat (no
    fan-out like git's objects/ab/…), a batch costs one directory fsync, not one per file.
    """

    TMP_PREFIX = ".tmp-"
    FSYNC_BATCH = 256

    def __init__(self, root: str | os.PathLike[str], create: bool = True):
        """create=False: the directory is made at the first write, so merely reading a
        remote that does not exist leaves nothing behind."""
        self.root = Path(root)
        self._made = create
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        self._prefix = str(self.root) + os.sep

    def _make_root(self) -> None:
        if not self._made:
            self.root.mkdir(parents=True, exist_ok=True)
            self._made = True

    def path(self, key: str) -> Path:
        return Path(self._file(key))

    def _file(self, key: str) -> str:
        """The file of key, as a plain string: pathlib costs ~10 µs a call on hot paths."""
        return self._prefix + key

    def get(self, key: str) -> bytes:
        with open(self._file(key), "rb") as f:
            return f.read()

    def open_file(self, key: str) -> BinaryIO | None:
        try:
            return open(self._file(key), "rb", buffering=0)  # noqa: SIM115 - the caller closes
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return os.path.exists(self._file(key))

    def put_many(self, items: Iterable[tuple[str, Body]], replace: bool = False) -> int:
        self._make_root()
        pending: list[tuple[int, str, str]] = []
        written = 0
        try:
            for key, data in items:
                final = self._file(key)
                if not replace and os.path.exists(final):
                    continue
                tmp = f"{self._prefix}{self.TMP_PREFIX}{uuid.uuid4().hex}"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                pending.append((fd, tmp, final))
                written += _write_all(fd, body_parts(data))
                _start_writeback(fd)
                if len(pending) >= self.FSYNC_BATCH:
                    self._publish(pending)
            self._publish(pending)
        finally:
            for fd, tmp, _ in pending:
                os.close(fd)
                os.unlink(tmp)
        return written

    def create(self, key: str, data: bytes) -> bool:
        self._make_root()
        tmp = f"{self._prefix}{self.TMP_PREFIX}{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, self._file(key))  # fails if the name exists: no one is overwritten
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        _fsync_dir(self.root)
        return True

    def _publish(self, pending: list[tuple[int, str, str]]) -> None:
        """Make the batch durable, rename each file into place, fsync the directory; empties
        it. Each file's writeback started as it was written (_start_writeback), so the
        fsyncs mostly wait for pages already on their way. Not syncfs(2): it is a little
        faster for big batches (100 MB: 53 vs 61 ms) but also waits for every other
        process's dirty data on the filesystem, so a commit could stall behind someone
        else's multi-GB write."""
        if not pending:
            return
        for fd, _, _ in pending:
            os.fsync(fd)
        while pending:
            fd, tmp, final = pending.pop()
            _drop_cached(fd)
            os.close(fd)
            os.replace(tmp, final)
        _fsync_dir(self.root)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def keys(self) -> Iterator[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:  # a remote directory no one has written yet
            return
        for name in names:
            if not name.startswith(self.TMP_PREFIX):
                yield name

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def sizes(self) -> dict[str, int]:
        try:
            with os.scandir(self.root) as entries:
                return {e.name: e.stat().st_size for e in entries
                        if not e.name.startswith(self.TMP_PREFIX)}
        except FileNotFoundError:
            return {}

    def remove_temp_files(self) -> int:
        """Delete temp files left by writers that crashed mid-put; only safe under the store's
        exclusive lock. Returns how many were removed."""
        removed = 0
        for tmp in self.root.glob(f"{self.TMP_PREFIX}*"):
            tmp.unlink(missing_ok=True)
            removed += 1
        return removed


class SqliteBackend(Backend):
    """Small objects as rows of one SQLite table (WAL, synchronous=FULL).

    A commit's manifests, tree and small chunks then cost one transaction instead of a file
    each: creating a file right after fsyncs costs ~0.4 ms here, so a first commit of 5,000
    small variables took 4.7 s as files.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self._lock = threading.Lock()
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, body BLOB NOT NULL)")

    def get(self, key: str) -> bytes:
        with self._lock:
            row = self.conn.execute("SELECT body FROM objects WHERE key=?", (key,)).fetchone()
        if row is None:
            raise FileNotFoundError(key)
        return bytes(row[0])

    def put_many(self, items: Iterable[tuple[str, Body]], replace: bool = False) -> int:
        written = 0
        insert = f"INSERT OR {'REPLACE' if replace else 'IGNORE'} INTO objects VALUES (?, ?)"
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for key, data in items:
                    body = body_bytes(data)
                    cur = self.conn.execute(insert, (key, body))
                    written += len(body) if cur.rowcount else 0
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        return written

    def create(self, key: str, data: bytes) -> bool:
        with self._lock:
            try:
                self.conn.execute("INSERT INTO objects VALUES (?, ?)", (key, data))
            except sqlite3.IntegrityError:
                return False
        return True

    def exists(self, key: str) -> bool:
        with self._lock:
            return self.conn.execute(
                "SELECT 1 FROM objects WHERE key=?", (key,)).fetchone() is not None

    def delete(self, key: str) -> None:
        with self._lock:
            self.conn.execute("DELETE FROM objects WHERE key=?", (key,))

    def keys(self) -> Iterator[str]:
        with self._lock:
            rows = self.conn.execute("SELECT key FROM objects").fetchall()
        return (r[0] for r in rows)

    def size(self, key: str) -> int:
        return len(self.get(key))

    def sizes(self) -> dict[str, int]:
        with self._lock:
            return dict(self.conn.execute("SELECT key, length(body) FROM objects").fetchall())

    def close(self) -> None:
        self.conn.close()


class TieredBackend(Backend):
    """Objects below a size in `small` (one transaction per batch), the rest in `large`
    (a file each). Both are written durably before put_many returns."""

    def __init__(self, small: SqliteBackend, large: LocalBackend, threshold: int = 64 << 10):
        self.small, self.large, self.threshold = small, large, threshold

    def get(self, key: str) -> bytes:
        try:
            return self.small.get(key)
        except FileNotFoundError:
            return self.large.get(key)

    def put_many(self, items: Iterable[tuple[str, Body]], replace: bool = False) -> int:
        small: list[tuple[str, Body]] = []

        def large() -> Iterator[tuple[str, Body]]:  # written as they come, small ones at the end
            for key, data in items:
                if body_size(data) < self.threshold:
                    small.append((key, data))
                else:
                    yield key, data

        written = self.large.put_many(large(), replace)
        return written + self.small.put_many(small, replace)

    def open_file(self, key: str) -> BinaryIO | None:
        return self.large.open_file(key)

    def create(self, key: str, data: bytes) -> bool:
        target = self.small if len(data) < self.threshold else self.large
        return target.create(key, data)

    def exists(self, key: str) -> bool:
        return self.small.exists(key) or self.large.exists(key)

    def delete(self, key: str) -> None:
        self.small.delete(key)
        self.large.delete(key)

    def keys(self) -> Iterator[str]:
        yield from self.small.keys()
        yield from self.large.keys()

    def size(self, key: str) -> int:
        return self.small.size(key) if self.small.exists(key) else self.large.size(key)

    def sizes(self) -> dict[str, int]:
        return {**self.large.sizes(), **self.small.sizes()}

    def remove_temp_files(self) -> int:
        return self.large.remove_temp_files()

    def close(self) -> None:
        self.small.close()


def backend_for(url: str, *, fanout: bool = True, create: bool = True,
                **options: Any) -> Backend:
    """A local directory (atomic via rename) for paths and file:// URLs, fsspec otherwise.
    create=False: a local directory is made at the first write, not now."""
    if "://" not in url:
        return LocalBackend(url, create)
    if url.startswith("file://"):
        return LocalBackend(url[len("file://"):], create)
    from .fsspec_backend import FsspecBackend  # only remotes need it: `txpy` starts faster

    return FsspecBackend(url, fanout, **options)


def _libc_function(name: str, *argtypes: Any) -> Callable[..., int] | None:
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (AttributeError, OSError):  # not Linux/glibc
        return None
    if argtypes:
        function.argtypes = list(argtypes)
    return function  # type: ignore[no-any-return]


_libc_sync_file_range = _libc_function("sync_file_range", ctypes.c_int, ctypes.c_int64,
                                       ctypes.c_int64, ctypes.c_uint)
_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int) -> None:
    """Have the kernel start writing fd's pages to disk now, without waiting: by the time
    the batch is fsynced they are mostly there (a 10.4 MB batch of 13 chunks: 16.7 -> 12 ms
    median). Durability still comes from the fsync."""
    if _libc_sync_file_range is not None:
        _libc_sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def _write_all(fd: int, parts: tuple[Bytes, ...]) -> int:
    """Write parts back to back with writev (no copy into one block); return the bytes."""
    views = [memoryview(p).cast("B") for p in parts]
    total = sum(v.nbytes for v in views)
    while views:
        done = os.writev(fd, views)
        while views and done >= views[0].nbytes:
            done -= views.pop(0).nbytes
        if views:
            views[0] = views[0][done:]
    return total


def _drop_cached(fd: int) -> None:
    """Let the kernel drop a durable file's pages from its cache.

    Chunks are written once and rarely read soon, so caching them only evicts the user's own
    data. It is also what makes writes fast: every new file otherwise takes pages the kernel
    has never handed out, which cost ~3 ms per MB here (a 10 MB chunk batch: 36 ms buffered,
    5 ms when each batch's pages are given back and reused by the next).
    """
    if _FADV_DONTNEED is not None:
        os.posix_fadvise(fd, 0, 0, _FADV_DONTNEED)


_FADV_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None)  # not on macOS


def _fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
