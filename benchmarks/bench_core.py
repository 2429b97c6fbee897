"""Core throughput: commit/checkout of changed buffers, hashing vs memcpy, store growth.

Run with `make bench` (or `python benchmarks/bench_core.py [--mb 400]`). Nothing else should
run on the machine meanwhile: the numbers are wall-clock.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import xxhash

import txpy
from txpy import components


def best(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def store_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(mb: int, chunk_size: int) -> dict[str, float]:
    components.CHUNK_SIZE = chunk_size
    gb = mb / 1024
    root = Path(tempfile.mkdtemp(prefix="txpy-bench-", dir=Path.home()))
    try:
        ns: dict = {}
        s = txpy.Session(root / ".txpy", "bench", ns, notify=lambda m: None)
        ns["x"] = np.random.default_rng(0).random(mb * 131072)  # mb MiB of float64
        r: dict[str, float] = {}
        t = time.perf_counter()
        s.commit()
        r["first commit GB/s"] = gb / (time.perf_counter() - t)
        t = time.perf_counter()
        s.commit()
        r["unchanged commit s"] = time.perf_counter() - t
        before = store_size(root)
        ns["x"][len(ns["x"]) // 2] = -1.0
        t = time.perf_counter()
        c = s.commit()
        r["1-element commit s"] = time.perf_counter() - t
        r["1-element growth MB"] = (store_size(root) - before) / 2**20
        ns["x"] += 1.0
        t = time.perf_counter()
        s.commit()
        r["all-changed commit GB/s"] = gb / (time.perf_counter() - t)
        t = time.perf_counter()
        s.checkout(c)
        r["checkout GB/s"] = gb / (time.perf_counter() - t)
        s.close()
        return r
    finally:
        shutil.rmtree(root)


def baselines(mb: int) -> None:
    a = np.random.default_rng(1).random(mb * 131072)
    gb = mb / 1024
    view = memoryview(a).cast("B")
    out = np.empty_like(a)
    np.copyto(out, a)
    print(f"baselines on a {mb} MiB float64 array")
    print(f"  np.copy into fresh memory   {gb / best(lambda: np.copy(a), 1):7.2f} GB/s")
    print(f"  np.copyto, warm memory      {gb / best(lambda: np.copyto(out, a)):7.2f} GB/s")
    xxh = best(lambda: xxhash.xxh3_128(view).digest())
    print(f"  xxh3-128 in place           {gb / xxh:7.2f} GB/s")
    print(f"  txpy fingerprint (chunked)  {gb / best(lambda: components._split(view)):7.2f} GB/s")


def many_names(n: int = 5000) -> None:
    """A namespace of many small variables: the cost is per object, not per byte."""
    root = Path(tempfile.mkdtemp(prefix="txpy-bench-", dir=Path.home()))
    try:
        ns = {f"v{i}": [i, str(i)] for i in range(n)}
        s = txpy.Session(root / ".txpy", "many", ns, notify=lambda m: None)
        t = time.perf_counter()
        s.commit()
        first = time.perf_counter() - t
        ns["v1"].append(0)
        t = time.perf_counter()
        s.commit(candidates={"v1"})
        one = time.perf_counter() - t
        s.close()
        print(f"{n} small variables: first commit {first:.2f} s, "
              f"then one changed {one * 1000:.0f} ms")
    finally:
        shutil.rmtree(root)


def big_object_graph(n: int = 100_000) -> None:
    """One variable holding many objects (parsed JSON records): a cell that does not touch it
    must not pay for it, and one that reads it pays once."""
    root = Path(tempfile.mkdtemp(prefix="txpy-bench-", dir=Path.home()))
    try:
        ns = {"records": [{"id": i, "tags": [i]} for i in range(n)]}
        s = txpy.Session(root / ".txpy", "graph", ns, notify=lambda m: None)
        t = time.perf_counter()
        s.commit()
        first = time.perf_counter() - t
        other, reread = [], []
        for k in range(5):
            ns["x"] = k
            t = time.perf_counter()
            s.commit(candidates={"x"})
            other.append(time.perf_counter() - t)
            t = time.perf_counter()
            s.commit(candidates={"records"})
            reread.append(time.perf_counter() - t)
        s.close()
        print(f"a list of {n} dicts: first commit {first:.2f} s; a cell not touching it "
              f"{min(other) * 1000:.1f} ms; one reading it {min(reread) * 1000:.0f} ms")
    finally:
        shutil.rmtree(root)


class _Node:
    def __init__(self, nxt: object) -> None:
        self.next = nxt


def linked_list(sizes: tuple[int, ...] = (20_000, 60_000, 200_000)) -> None:
    """Deep structures: commit time must grow with the graph, not its square."""
    root = Path(tempfile.mkdtemp(prefix="txpy-bench-", dir=Path.home()))
    try:
        ns: dict = {"__name__": "__main__"}
        s = txpy.Session(root / ".txpy", "deep", ns, notify=lambda m: None)
        for n in sizes:
            node = None
            for _ in range(n):
                node = _Node(node)
            ns["head"] = node
            t = time.perf_counter()
            s.commit()
            first = time.perf_counter() - t
            t = time.perf_counter()
            s.commit(candidates={"head"})
            print(f"a linked list of {n} nodes: commit {first:.2f} s, "
                  f"re-read {time.perf_counter() - t:.2f} s")
        s.close()
    finally:
        shutil.rmtree(root)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=400)
    args = parser.parse_args()
    baselines(args.mb)
    many_names()
    big_object_graph()
    linked_list()
    for chunk in (256 << 10, 1 << 20, 4 << 20):
        r = run(args.mb, chunk)
        print(f"chunk size {chunk >> 10} KiB:")
        for k, v in r.items():
            print(f"  {k:26} {v:8.3f}")


if __name__ == "__main__":
    main()
