"""Background capture on a big session: the cell's wait, the child's work, and memory.

    python benchmarks/bench_background.py [--mb 1024]

A session holds a big float64 array (--mb), a 3M-row pandas frame when pandas is installed,
and a list of 100,000 dicts. Each "cell" changes a little of it; we print, per cell, the time
from the cell's end to the prompt (what the user waits for), the time the child took to
capture, and the peak memory of kernel + child together (proportional set size, PSS: pages
they share are counted once), against the kernel's own before the cell.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

import txpy
from txpy import background
from txpy.transaction import Transactions


def pss(pid: int) -> int:
    """Bytes of proportional set size of pid (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakMemory:
    """Samples PSS of this process and its children every 5 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            try:
                with open(f"/proc/{me}/task/{me}/children") as f:
                    kids = [int(p) for p in f.read().split()]
            except OSError:
                kids = []
            self.peak = max(self.peak, pss(me) + sum(pss(k) for k in kids))
            time.sleep(0.005)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


CELLS = [
    "big[:1000] += 1",
    "rows.append({'i': len(rows)})",
    "x = 1",
    "frame.iloc[:10, 0] = 0.0" ,
    "big[-1000:] -= 1\nrows[0]['seen'] = True",
    "small = list(range(50))",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1024, help="size of the big array")
    args = parser.parse_args()
    os.environ.pop("TXPY_VERIFY", None)
    ns: dict = {"__name__": "__main__", "np": np}
    ns["big"] = np.random.default_rng(0).standard_normal(args.mb * 2**20 // 8)
    ns["rows"] = [{"i": i} for i in range(100_000)]
    try:
        import pandas as pd

        ns["frame"] = pd.DataFrame(np.random.default_rng(1).standard_normal((3_000_000, 4)))
    except ImportError:
        ns["frame"] = None
        CELLS.remove("frame.iloc[:10, 0] = 0.0")
    with tempfile.TemporaryDirectory() as d:
        s = txpy.Session(d, "bench", ns, durability="background", notify=lambda m: None)
        txns = Transactions(s, "cell", background=True)
        first = txns.begin()
        txns.note(first, None, "")
        txns.commit(first, kind="cell")
        s.wait()
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; kernel PSS "
              f"{pss(os.getpid()) / 2**20:.0f} MB; fork from {background.FORK_COST * 1000:g} ms")
        waits = []
        for _ in range(3):
            for code in CELLS:
                txn = txns.begin()
                compiled = compile(code, "<cell>", "exec")
                txns.note(txn, compiled, code)
                exec(compiled, ns)
                before = pss(os.getpid())
                with PeakMemory() as memory:
                    started = time.perf_counter()
                    cid = txns.commit(txn, kind="cell")
                    wait = time.perf_counter() - started
                    s.wait()
                    captured = time.perf_counter() - started
                waits.append(wait)
                extra = memory.peak - before
                print(f"  {code.splitlines()[0]:<32} prompt after {wait * 1000:6.1f} ms  "
                      f"durable after {captured * 1000:7.1f} ms  "
                      f"{'forked' if cid == '' else 'in process'}  extra memory at peak "
                      f"{extra / 2**20:6.1f} MB ({100 * extra / before:4.1f}%)", flush=True)
        waits.sort()
        print(f"prompt after: median {1000 * statistics.median(waits):.1f} ms, "
              f"p95 {1000 * waits[int(0.95 * (len(waits) - 1))]:.1f} ms")
        s.close()


if __name__ == "__main__":
    main()
