"""Content-addressed chunk store: key = blake3(raw bytes), body = zstd or raw, write-once.

Buffers of numbers are compressed by byte planes (all first bytes, then all second bytes…,
as blosc does): the high bytes of floats and timestamps repeat, and zstd finds that only
when they are side by side. Measured on 1 MiB chunks: timestamps 0.62 → 0.01 of their size,
a sorted float column 0.93 → 0.68 (random floats: 0.96 → 0.88, not worth it), and faster.

Every read is verified against its key, so a flipped bit or a swapped file is reported, never
unpickled. Keys are cryptographic (blake3) because signed commit records reach data only
through them: the signature covers the whole Merkle DAG of trees, manifests and chunks.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Container, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import blake3
import zstandard

from ..errors import CorruptStoreError, StoreVersionError, TxpyError
from .backend import Backend, Body, Bytes

RAW = b"\x00"
ZSTD = b"\x01"
#: zstd of the bytes regrouped by byte plane; the next byte is the item size
PLANES = b"\x02"
#: codecs are numbered in order; a first byte this high is damage, not a newer txpy's codec
NEWEST_POSSIBLE_CODEC = 0x20
PROBE_BYTES = 64 * 1024
#: A chunk is compressed only if a probe of its start shrinks below this ratio. Random floats
#: shrink to ~0.85 by planes, but such a chunk then reads 4x slower (1 MiB: 2.1 vs 0.5 ms)
#: and costs ~2 ms to compress: raw, a checkout runs at 0.40 GB/s instead of 0.28, for
#: stores ~1% bigger in the benchmark notebooks.
COMPRESS_IF_BELOW = 0.8
#: Batches of at least this many bytes are compressed by helper threads while written.
PARALLEL_FROM = 2 << 20
HELPERS = 2
#: chunks handed to the helpers ahead of the writes
WINDOW = 8


_hash_threads = blake3.blake3.AUTO


def _one_hash_thread() -> None:
    """In a forked child blake3's thread pool (rayon) has no threads: a parallel hash would
    wait for them forever (seen: background captures hung on the first 1 MiB chunk)."""
    global _hash_threads
    _hash_threads = 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_one_hash_thread)


def chunk_key(data: bytes | memoryview) -> str:
    """The store key of data: blake3, multithreaded for big inputs (not in a forked child)."""
    threads = _hash_threads if len(data) >= (1 << 20) else 1
    return blake3.blake3(data, max_threads=threads).hexdigest()


class ChunkStore:
    """Write-once chunks over any Backend; remembers keys it has seen to skip existence checks.

    That memory is only as good as the store's gc epoch it was filled under: gc may delete a
    chunk this process saw (an orphan a failed commit left), so a writer calls `revalidate`
    with the epoch it read under the store lock before trusting `has`.
    """

    def __init__(self, backend: Backend, level: int = 1):
        self.backend = backend
        self._level = level
        self._per_thread = threading.local()  # compressors are not thread-safe
        self._known: set[str] = set()
        self._epoch: int | None = None
        self._compressing: tuple[int, ThreadPoolExecutor] | None = None

    def revalidate(self, epoch: int) -> None:
        """Forget which keys exist if a gc ran (epoch changed) since they were seen."""
        if epoch != self._epoch:
            self._known.clear()
            self._epoch = epoch

    def has(self, key: str) -> bool:
        """Whether key is stored: exact under the store lock after `revalidate`, a hint
        otherwise (a gc may remove an unreferenced chunk at any time)."""
        if key in self._known:
            return True
        if self.backend.exists(key):
            self._known.add(key)
            return True
        return False

    def _encode(self, data: Bytes, width: int) -> Body:
        compressor = getattr(self._per_thread, "compressor", None)
        if compressor is None:
            compressor = self._per_thread.compressor = zstandard.ZstdCompressor(level=self._level)
        probe = data[:PROBE_BYTES - PROBE_BYTES % width]
        size = len(compressor.compress(probe))
        if 1 < width < 256 and "numpy" in sys.modules:
            # by planes is usually much smaller, but not always (wide records, repeats)
            by_planes = len(compressor.compress(to_planes(probe, width)))
            if by_planes < size:
                if by_planes >= COMPRESS_IF_BELOW * len(probe):
                    return RAW, data
                return PLANES + bytes((width,)), compressor.compress(to_planes(data, width))
        if size >= COMPRESS_IF_BELOW * len(probe):
            return RAW, data  # not joined: a copy into fresh memory costs ~3 ms per MB here
        return ZSTD, compressor.compress(data)

    def put_many(self, chunks: Iterable[tuple[str, Bytes, int]],
                 recheck: Container[str] = ()) -> int:
        """Store each (key, raw data, item size) the store lacks; return the bytes written to
        the backend. The item size is 1 for plain bytes, 8 for a float64 buffer…

        Keys must be chunk_key(data): callers compute them once while fingerprinting. Keys in
        recheck are views of live objects that may have changed since: each one the store
        lacks is hashed again, and a mismatch raises CorruptStoreError instead of storing
        wrong bytes under the key.
        """
        todo = [(key, data, width) for key, data, width in chunks if not self.has(key)]
        for key, data, _ in todo:
            if key in recheck and chunk_key(data) != key:
                raise CorruptStoreError(f"chunk {key[:12]} changed while it was being written")
        written = self.backend.put_many(self._bodies(todo))
        self._known.update(key for key, _, _ in todo)
        return written

    def bodies_of_new(self, chunks: Iterable[tuple[str, Bytes, int]],
                      exists: Callable[[str], bool]) -> Iterator[tuple[str, Body]]:
        """(key, body) of each chunk neither known to be stored (see `revalidate`) nor
        exists(key): for a writer that routes bodies itself (a forked child, which must
        not ask every backend whether a key exists)."""
        return self._bodies([(k, d, w) for k, d, w in chunks
                             if k not in self._known and not exists(k)])

    def remember(self, keys: Iterable[str]) -> None:
        """keys are stored (written by a forked child, checked by the caller under the lock)."""
        self._known.update(keys)

    def _bodies(self, todo: list[tuple[str, Bytes, int]]) -> Iterator[tuple[str, Body]]:
        if sum(memoryview(data).nbytes for _, data, _ in todo) >= PARALLEL_FROM:  # bytes
            return self._encoded_by_helpers(todo)
        return ((key, self._encode(data, width)) for key, data, width in todo)

    def _encoded_by_helpers(self, todo: list[tuple[str, Bytes, int]]
                            ) -> Iterator[tuple[str, Body]]:
        """(key, body) in the order helper threads finish them, at most WINDOW ahead.

        Chunks that do not compress come back at once and are written while the others
        compress (zstd and the writes drop the GIL). A batch like the pandas benchmark's
        sort_values commit (10.4 MB in 13 chunks, 7 compressible) took 17.7 ms (median) with
        one helper keeping the order, 16.1 ms this way; writing it all raw takes 12.2. The
        window bounds the compressed bodies waiting in memory. A forked child makes its own.
        """
        if self._compressing is None or self._compressing[0] != os.getpid():
            self._compressing = (os.getpid(), ThreadPoolExecutor(
                HELPERS, thread_name_prefix="txpy-compress"))
        pool = self._compressing[1]

        def encode(key: str, data: Bytes, width: int) -> tuple[str, Body]:
            return key, self._encode(data, width)

        running: set[Future[tuple[str, Body]]] = set()
        for item in todo:
            running.add(pool.submit(encode, *item))
            while len(running) >= WINDOW:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            yield from (f.result() for f in done)

    def close(self) -> None:
        """Stop the compressing threads, if they were started."""
        if self._compressing is not None:
            self._compressing[1].shutdown()
            self._compressing = None

    def get(self, key: str) -> bytes | bytearray:
        """The raw bytes of key, verified; CorruptStoreError if missing or damaged."""
        return self.read(key)[0]

    def read(self, key: str) -> tuple[bytes | bytearray, int]:
        """(raw bytes, item size they were stored with) of key, verified."""
        return self.decode(key, self.body(key))

    def read_into(self, key: str, dest: memoryview) -> None:
        """Put key's raw bytes, verified, into dest (exactly as long): a chunk stored raw in a
        file is read straight into dest, with no copy in between."""
        f = self.backend.open_file(key)
        if f is None:
            data: Bytes = self.get(key)
        else:
            with f:
                codec = f.read(1)
                if codec == RAW:
                    filled = 0
                    while filled < len(dest):
                        n = f.readinto(dest[filled:])
                        if not n:
                            break
                        filled += n
                    if filled != len(dest) or f.read(1):
                        raise CorruptStoreError(f"chunk {key[:12]} is damaged (wrong size)")
                    if chunk_key(dest) != key:
                        raise CorruptStoreError(f"chunk {key[:12]} is damaged (hash mismatch)")
                    return
                data = self.decode(key, codec + f.read())[0]
        if len(data) != len(dest):
            raise CorruptStoreError(f"chunk {key[:12]} is damaged (wrong size)")
        dest[:] = data

    def body(self, key: str) -> bytes:
        """The bytes stored under key as they are (not verified: see `decode`)."""
        try:
            return self.backend.get(key)
        except FileNotFoundError:
            raise CorruptStoreError(f"chunk {key[:12]} is missing from the store") from None

    def decode(self, key: str, body: bytes) -> tuple[bytes | bytearray, int]:
        """(raw bytes, item size) of a stored body, verified against key."""
        codec, width = body[:1], 1
        try:
            if codec == RAW:
                data = body[1:]
            elif codec == ZSTD:
                data = self._decompressor().decompress(body[1:])
            elif codec == PLANES and len(body) > 1:
                width = body[1]
                if width < 2:  # to_planes is used only for items of 2 bytes and more
                    raise CorruptStoreError(f"chunk {key[:12]} is damaged (item size {width})")
                data = from_planes(self._decompressor().decompress(body[2:]), width)
            else:
                raise _unknown_codec(key, body)
        except zstandard.ZstdError:
            raise CorruptStoreError(f"chunk {key[:12]} is damaged (cannot decompress)") from None
        if chunk_key(data) != key:
            raise CorruptStoreError(f"chunk {key[:12]} is damaged (hash mismatch)")
        return data, width

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        """This thread's: a (de)compressor is not thread-safe, and restores read chunks in
        several threads (sharing one crashed the process: a segfault in `make torture`)."""
        decompressor = getattr(self._per_thread, "decompressor", None)
        if decompressor is None:
            decompressor = self._per_thread.decompressor = zstandard.ZstdDecompressor()
        return decompressor

    def put_bodies(self, bodies: Iterable[tuple[str, bytes]], replace: bool = False) -> int:
        """Store bodies as another store holds them (each checked with `decode` there), so
        both hold the same bytes: a transfer neither recompresses nor changes sizes.
        replace: also over what is stored (a damaged copy), atomically."""
        stored: list[str] = []

        def todo() -> Iterator[tuple[str, bytes]]:  # streamed: bodies are not all in memory
            for key, body in bodies:
                if replace or not self.has(key):
                    stored.append(key)
                    yield key, body

        written = self.backend.put_many(todo(), replace)
        self._known.update(stored)
        return written

    def keys(self) -> Iterator[str]:
        return self.backend.keys()

    def delete(self, key: str) -> None:
        self._known.discard(key)
        self.backend.delete(key)



def _unknown_codec(key: str, body: bytes) -> TxpyError:
    """A body whose first byte names no codec this txpy knows: damage when it cannot be a
    codec at all (empty, too short, or a byte far past the codecs txpy numbers in order),
    else a codec of a newer txpy."""
    if len(body) < 2 or body[0] >= NEWEST_POSSIBLE_CODEC:
        what = "empty" if not body else f"unknown codec byte 0x{body[0]:02x}, {len(body)} bytes"
        return CorruptStoreError(f"chunk {key[:12]} is damaged ({what})")
    return StoreVersionError(f"chunk {key[:12]} is stored in a way this txpy does not know "
                             f"(codec {body[0]}: written by a newer txpy?); upgrade txpy")


def to_planes(data: Bytes, width: int) -> bytes:
    """data regrouped by byte plane: byte 0 of every item, then byte 1… (numpy: ~0.3 ms/MiB);
    a tail shorter than an item stays at the end as it is."""
    np = sys.modules["numpy"]  # the caller checked: only numpy and torch make such buffers
    view = memoryview(data).cast("B")
    whole = len(view) - len(view) % width
    planes = np.frombuffer(view, dtype=np.uint8, count=whole).reshape(-1, width).T.tobytes()
    return planes + view[whole:].tobytes()


def from_planes(planes: bytes, width: int) -> bytearray:
    """The inverse of to_planes, without numpy (bytearray strided assignment, ~0.4 ms/MiB)."""
    whole = len(planes) - len(planes) % width
    out = bytearray(len(planes))
    step = whole // width
    for plane in range(width):
        out[plane:whole:width] = planes[plane * step:(plane + 1) * step]
    out[whole:] = planes[whole:]
    return out  # not copied into bytes: a restore copies each chunk into its buffer anyway
