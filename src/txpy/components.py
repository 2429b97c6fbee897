"""Components (co-variables) to and from the store: fingerprints, manifests, chunks.

Writing: a fingerprint is xxh3-128 over the pickle stream and the per-chunk digests of every
out-of-band buffer (≈30 GB/s here, hashed in place). Only chunks whose xxh3 digest is new are
hashed again with blake3 to get their store key; the writer decides under the store lock
which of them the store lacks.

Reading: a manifest's chunks are read and verified, then unpickled; components load in
dependency order and one that cannot be loaded costs only its own names.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import xxhash

from .encode import Encoded, decode, encode
from .errors import CorruptStoreError, RestoreError, TxpyError
from .model import BufferRef, ComponentManifest, Tree
from .repo import Repository
from .store.backend import Bytes
from .store.chunks import ChunkStore, chunk_key

CHUNK_SIZE = 1 << 20
#: threads reading one buffer's chunks on restore
READERS = 4
#: restored buffers from this size are fresh anonymous mappings (see _fresh_memory)
FRESH_MAPPING_FROM = 1 << 20
_KEY_CACHE_LIMIT = 1 << 20


@dataclass
class Fingerprint:
    """An encoded value with its digest and its chunks (digest, bytes) ready to store."""

    encoded: Encoded
    digest: str
    stream_chunks: list[tuple[bytes, memoryview]]
    buffer_chunks: list[list[tuple[bytes, memoryview]]]


def _split(data: memoryview) -> list[tuple[bytes, memoryview]]:
    return [(xxhash.xxh3_128_digest(data[i:i + CHUNK_SIZE]), data[i:i + CHUNK_SIZE])
            for i in range(0, len(data), CHUNK_SIZE)] or [(xxhash.xxh3_128_digest(b""), data)]


def fingerprint(encoded: Encoded) -> Fingerprint:
    """Hash an encoded value chunk by chunk, without copying its buffers."""
    h = xxhash.xxh3_128()
    stream_chunks = _split(memoryview(encoded.stream))
    buffer_chunks = [_split(b) for b in encoded.buffers]
    for part in (stream_chunks, *buffer_chunks):
        h.update(len(part).to_bytes(8, "little"))
        for digest, data in part:
            h.update(digest)
            h.update(len(data).to_bytes(8, "little"))
    return Fingerprint(encoded, h.hexdigest(), stream_chunks, buffer_chunks)


def digest_of(value: object, namespace: dict | None) -> str:
    """The fingerprint digest of one value (UnpicklableError if it cannot be encoded)."""
    return fingerprint(encode(value, namespace, collect_shared=False)).digest


class ComponentWriter:
    """Stages components of one commit, then writes them in one durable batch.

    Remembers xxh3 → blake3 keys across commits so unchanged chunks are not rehashed.
    """

    def __init__(self, chunks: ChunkStore):
        self.chunks = chunks
        self._keys: dict[tuple[bytes, int], str] = {}
        self._pending: list[tuple[str, memoryview, int]] = []

    def _key(self, digest: bytes, data: memoryview) -> str:
        k = (digest, len(data))
        key = self._keys.get(k)
        if key is None:
            if len(self._keys) >= _KEY_CACHE_LIMIT:
                self._keys.clear()
            key = self._keys[k] = chunk_key(data)
        return key

    def keys_known(self) -> int:
        """A mark for `keys_since`."""
        return len(self._keys)

    def keys_since(self, mark: int) -> list[tuple[tuple[bytes, int], str]]:
        """The chunk keys computed since mark (all, if the cache was cleared meanwhile): what
        a forked child hands back so that its parent does not hash those chunks again."""
        items = list(self._keys.items())
        return items[mark:] if len(items) >= mark else items

    def learn_keys(self, items: list[tuple[tuple[bytes, int], str]]) -> None:
        if len(self._keys) + len(items) >= _KEY_CACHE_LIMIT:
            self._keys.clear()
        self._keys.update(items)

    def stage(self, names: tuple[str, ...], fp: Fingerprint) -> str:
        """Queue the component's chunks and its manifest; return the manifest key."""
        pending = self._pending

        def keys_of(part: list[tuple[bytes, memoryview]], width: int) -> tuple[str, ...]:
            out = []
            for digest, data in part:
                key = self._key(digest, data)
                pending.append((key, data, width))
                out.append(key)
            return tuple(out)

        stream = keys_of(fp.stream_chunks, 1)
        buffers = tuple(
            BufferRef(keys_of(part, width), len(raw), raw.readonly)
            for part, raw, width in zip(fp.buffer_chunks, fp.encoded.buffers,
                                        fp.encoded.widths, strict=True)
        )
        manifest = ComponentManifest(names, stream, buffers, tuple(dict.fromkeys(fp.encoded.notes)))
        return self.stage_object(manifest.to_bytes())

    def stage_object(self, body: bytes) -> str:
        """Queue a small record (a manifest, a tree); return its key."""
        key = chunk_key(body)
        self._pending.append((key, memoryview(body), 1))
        return key

    def take(self, private: bool) -> tuple[list[tuple[str, Bytes, int]], set[str]]:
        """The queued chunks, each once, as (key, data, item size), emptying the queue; and
        the keys that are still views of live objects.

        Which chunks the store lacks is decided by the writer under the store lock (a gc may
        delete an orphan of the same content at any time before). private: copy the chunks
        the store seems to lack now, because user arrays may change while a background
        writer runs; the others stay views, rechecked against their key if they must be
        written after all.
        """
        pending, self._pending = self._pending, []
        unique = {k: (data, width) for k, data, width in pending}
        if not private:
            return [(k, data, width) for k, (data, width) in unique.items()], set()
        chunks: list[tuple[str, Bytes, int]] = []
        live: set[str] = set()
        for k, (data, width) in unique.items():
            if isinstance(data.obj, bytes):
                chunks.append((k, data, width))
            elif self.chunks.has(k):
                chunks.append((k, data, width))
                live.add(k)
            else:
                chunks.append((k, bytes(data), width))
        return chunks, live

    def discard(self) -> None:
        """Forget queued chunks (the commit was abandoned)."""
        self._pending = []


def read_manifests(repo: Repository, tree: Tree, keys: Iterable[str]
                   ) -> tuple[list[ComponentManifest], dict[tuple[str, ...], Exception]]:
    """The manifests of keys, and {names: error} for those that cannot be read (damaged)."""
    manifests: list[ComponentManifest] = []
    failed: dict[tuple[str, ...], Exception] = {}
    for key in keys:
        try:
            manifests.append(repo.manifest(key))
        except TxpyError as e:
            failed[tuple(sorted(n for n, k in tree.components.items() if k == key))] = e
    return manifests, failed


def load_in_order(repo: Repository, manifests: list[ComponentManifest],
                  namespace: dict[str, Any], bind: Callable[[dict[str, Any]], None],
                  notify: Callable[[str], None]) -> dict[tuple[str, ...], Exception]:
    """Decode components and bind each at once (bind gets its {name: value}), names before
    the values that need them; return {names: error} for those that could not be loaded.
    What a component's encoder could not keep exactly (its notes) goes to notify.

    Which name a value needs shows only while it loads: a ``__setstate__`` calling a notebook
    function, a reference to a singleton by name raise NameError until that name is bound.
    Those are tried again after the others, while that makes progress; every other component
    is decoded once. Any other failure is final for that component only.
    """
    failed: dict[tuple[str, ...], Exception] = {}
    waiting, progress = manifests, True
    while waiting and progress:
        retry, progress = [], False
        for manifest in waiting:
            try:
                bind(decode_manifest(repo, manifest, namespace))
            except Exception as e:  # its own code may raise anything: it alone is not restored
                failed[manifest.names] = e
                if isinstance(e, NameError):
                    retry.append(manifest)
            else:
                failed.pop(manifest.names, None)
                progress = True
                if manifest.notes:
                    notify(f"{', '.join(manifest.names)}: {'; '.join(manifest.notes)}")
        waiting = retry
    return failed


def first_failure(failed: dict[tuple[str, ...], Exception]) -> TxpyError:
    """The error to raise where a partial restore is not wanted (txpy.load): txpy's own
    errors keep their type, with the names they affect."""
    names, e = min(failed.items(), key=lambda item: item[0])
    what = f"cannot restore {', '.join(names)}: {reason_of(e)}"
    return type(e)(what) if isinstance(e, TxpyError) else RestoreError(what)


def reason_of(e: Exception) -> str:
    """One line saying why a value was not restored (txpy's own errors say it already)."""
    text = str(e).splitlines()[0] if str(e) else ""
    if not isinstance(e, TxpyError):
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text[:200]


def not_restored_line(failed: dict[tuple[str, ...], str]) -> str:
    """The one line naming every value not restored, each with why."""
    return "not restored: " + ", ".join(
        f"{', '.join(names)} ({reason})" for names, reason in sorted(failed.items()))


class _NotWhole(Exception):
    """A buffer's chunks are not all CHUNK_SIZE long but the last (not written by _split)."""


_readers: tuple[int, ThreadPoolExecutor] | None = None


def _read_in_parallel(repo: Repository, ref: BufferRef, dest: memoryview) -> None:
    """Read a buffer's chunks into their places in dest, several at a time: reading,
    decompressing and hashing all release the GIL."""
    global _readers
    count = len(ref.chunks)
    if count != -(-ref.nbytes // CHUNK_SIZE):
        raise _NotWhole
    if count == 1:
        repo.chunks.read_into(ref.chunks[0], dest)
        return
    if _readers is None or _readers[0] != os.getpid():  # a forked child makes its own
        _readers = (os.getpid(), ThreadPoolExecutor(READERS, thread_name_prefix="txpy-read"))
    spans = [dest[i * CHUNK_SIZE:(i + 1) * CHUNK_SIZE] for i in range(count)]
    reads = [_readers[1].submit(repo.chunks.read_into, k, span)
             for k, span in zip(ref.chunks, spans, strict=True)]
    wait(reads)  # all of them, before anyone else writes into dest
    for done in reads:
        done.result()


def _fresh_memory(size: int) -> bytearray | mmap.mmap:
    """Writable memory for a restored buffer. A big one is an anonymous mapping: its pages
    are zero until the readers write them, where bytearray(size) first writes zeros over all
    of them (measured: 0.4 s of a 0.7 s restore of 640 MB)."""
    if size < FRESH_MAPPING_FROM:
        return bytearray(size)
    return mmap.mmap(-1, size)


def _read_in_order(repo: Repository, ref: BufferRef, buf: bytearray | mmap.mmap) -> None:
    pos = 0
    for k in ref.chunks:
        data = repo.chunks.get(k)
        buf[pos:pos + len(data)] = data
        pos += len(data)
    if pos != len(buf):
        raise CorruptStoreError(f"buffer of {len(buf)} bytes came back with {pos}")


def decode_manifest(repo: Repository, manifest: ComponentManifest, namespace: dict[str, Any]
                    ) -> dict[str, Any]:
    """{name: value} of the component a manifest describes, its chunks read and verified."""
    stream = b"".join(repo.chunks.get(k) for k in manifest.stream)
    buffers: list[Any] = []
    for ref in manifest.buffers:
        buf = _fresh_memory(ref.nbytes)
        try:
            _read_in_parallel(repo, ref, memoryview(buf))
        except (CorruptStoreError, _NotWhole):
            _read_in_order(repo, ref, buf)  # says exactly what is wrong, if anything is
        buffers.append(bytes(buf) if ref.readonly else buf)
    value = decode(stream, buffers, namespace)
    if len(manifest.names) == 1:
        return {manifest.names[0]: value}
    return dict(zip(manifest.names, value, strict=True))
