"""The chunk store's encodings: what comes back is byte for byte what went in, and numbers
compressed by byte planes take less room than compressed as they are."""

import sqlite3

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

import txpy
from txpy.errors import CorruptStoreError, StoreVersionError
from txpy.store.backend import LocalBackend
from txpy.store.chunks import ChunkStore, chunk_key, from_planes, to_planes


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), width=st.sampled_from([2, 3, 4, 8, 16]))
def test_byte_planes_invert_exactly_whatever_the_length(data, width):
    assert from_planes(to_planes(data, width), width) == data


def _stored_size(tmp_path, name, data, width):
    """Bytes written to store data; it must read back exactly."""
    store = ChunkStore(LocalBackend(tmp_path / name))
    key = chunk_key(data)
    written = store.put_many([(key, memoryview(data), width)])
    assert store.read(key)[0] == data
    return written


def test_timestamps_by_byte_planes_take_a_fraction_of_plain_zstd(tmp_path):
    stamps = np.arange(1_700_000_000, 1_700_000_000 + 131_072, dtype=np.int64) * 10**9
    data = stamps.tobytes() + b"tail"  # a tail shorter than an item
    by_planes = _stored_size(tmp_path, "planes", data, 8)
    plain = _stored_size(tmp_path, "plain", data, 1)
    assert by_planes * 10 < plain < len(data)


def test_random_bytes_stay_raw_and_come_back(tmp_path):
    data = np.random.default_rng(0).bytes(200_000)
    store = ChunkStore(LocalBackend(tmp_path / "s"))
    key = chunk_key(data)
    assert store.put_many([(key, data, 8)]) == len(data) + 1  # raw: one codec byte
    assert store.get(key) == data


def test_a_chunk_in_an_unknown_encoding_asks_for_a_newer_txpy(tmp_path):
    backend = LocalBackend(tmp_path / "s")
    data = b"x" * 100
    key = chunk_key(data)
    backend.put_many([(key, b"\x09" + data)])
    with pytest.raises(StoreVersionError, match="upgrade txpy"):
        ChunkStore(backend).get(key)


def test_a_format_1_store_opens_and_is_marked_format_2(tmp_path):
    store = tmp_path / ".txpy"
    ns = {"a": np.arange(100_000, dtype=np.float64)}
    with txpy.Session(store, "h", ns, notify=lambda m: None) as s:
        cid = s.commit()
    db = store / "txpy.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE info SET value='1' WHERE key='format'")
    assert np.array_equal(txpy.load(store, "h", cid)["a"], ns["a"])
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM info WHERE key='format'").fetchone() == ("2",)


def test_the_smaller_of_plain_and_byte_plane_compression_is_kept(tmp_path):
    rng = np.random.default_rng(1)
    records = np.tile(rng.integers(0, 256, 3 * 64, dtype=np.uint8), 5000).tobytes()
    stamps = (np.arange(100_000, dtype=np.int64) * 60 * 10**9).tobytes()
    zstd = zstandard.ZstdCompressor(level=1)
    for data, width in ((records, 64), (stamps, 8)):
        plain, planes = len(zstd.compress(data)), len(zstd.compress(to_planes(data, width)))
        written = _stored_size(tmp_path, f"w{width}", data, width)
        assert written <= min(plain, planes) + 2 < max(plain, planes)


@pytest.mark.parametrize("damage", ["flip", "truncate", "grow"])
def test_a_big_buffer_is_read_in_parallel_and_any_damaged_chunk_is_named(tmp_path, damage):
    """Restores read a buffer's chunks in parallel straight into fresh memory; a chunk whose
    bytes or size are wrong is reported (and costs only its own names), never restored."""
    import numpy as np

    import txpy
    from txpy.repo import Repository

    store = tmp_path / ".txpy"
    ns = {"a": np.random.default_rng(0).random(5 * 2**17), "b": np.arange(10)}  # 5 MiB
    with txpy.Session(store, "p", ns, notify=lambda m: None) as s:
        s.commit()
    state = txpy.load(store, "p")
    assert (state["a"] == ns["a"]).all() and state["a"].flags.writeable
    repo = Repository.open(store)
    tree = repo.tree(repo.read_commit(repo.refs.head("p")[1]))
    manifest = repo.manifest(tree.components["a"])
    repo.close()
    key = manifest.buffers[0].chunks[2]
    path = store / "objects" / key
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-1] ^= 0xFF
    elif damage == "truncate":
        del data[-8:]
    else:
        data += b"\0" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match=f"cannot restore a: chunk {key[:12]}"):
        txpy.load(store, "p")
    said = []
    restored = {}
    with txpy.Session(store, "p", restored, notify=said.append) as s:
        s.restore()
    assert "a" not in restored and (restored["b"] == np.arange(10)).all()
    assert any(key[:12] in m for m in said)


RACE = """
import sys, numpy as np, txpy
store = sys.argv[1]
ns = {"a": np.random.default_rng(0).integers(0, 4, 32 * 2**20, dtype=np.uint8)}
with txpy.Session(store, "r", ns, notify=lambda m: None) as s:
    s.commit()
for _ in range(5):
    assert (txpy.load(store, "r")["a"] == ns["a"]).all()
"""


def test_restores_decompress_chunks_in_several_threads_safely(tmp_path):
    """Reader threads each use their own zstd decompressor: sharing one crashed the process
    (a segfault, in a subprocess here so that it fails the test, not the run)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", RACE, str(tmp_path / ".txpy")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
