"""Random SIGKILLs of a session and of its capturing children, then a full check.

    python benchmarks/torture.py [--kills 1000] [--per-store 50]

A writer process commits cells in a loop (a 2.4 MB array, a list, a counter; some cells
re-commit unchanged state), with sync durability or background capture by forked children.
At a random moment the script SIGKILLs the writer, one of its children, or both. Then it runs
fsck and loads every commit made since the last check, comparing it with what that cell
committed, and checks that every commit seen durable before is still there. It prints the
kills, corrupt stores (target 0) and lost durable commits (target 0).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import txpy
from txpy.repo import Repository

WRITER = textwrap.dedent("""
    import sys, numpy as np, txpy
    from txpy.transaction import Transactions
    store, durability = sys.argv[1], sys.argv[2]
    ns = {"__name__": "__main__"}
    s = txpy.Session(store, "k", ns, durability=durability, notify=lambda m: None)
    if s.head is not None:
        s.restore()
    txns = Transactions(s, "cell", background=True)
    start = ns.get("step", -1) + 1
    for i in range(start, start + 1_000_000):
        txn = txns.begin()
        txns.note(txn, None, "")
        ns["step"] = i
        if i % 3:
            ns["arr"] = np.full(300_000, i, dtype=np.int64)
        ns["lst"] = list(range(i % 40))
        txns.commit(txn, kind="cell", message=str(i))
        print(i, flush=True)
""")


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    """Running (a zombie, which a container's init may never reap, has finished)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def gone(pid: int, seconds: float = 10.0) -> None:
    end = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.02)


def one_kill(store: Path, durability: str, rng: random.Random, victim: str | None = None,
             run_for: tuple[float, float] = (0.0, 0.6)) -> str:
    """Run a writer on store for a random time in run_for (seconds after its first cell),
    then SIGKILL the writer ("kernel"), one of its capturing children ("child") or both
    (victim None: chosen at random); the victim."""
    env = {**os.environ, "TXPY_FORK_COST": "0"}
    env.pop("TXPY_VERIFY", None)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(store), durability],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    proc.stdout.readline()
    time.sleep(rng.uniform(*run_for))
    kids = children(proc.pid)
    if victim is None:
        victim = rng.choice(["kernel", "child", "both"]) if durability == "background" \
            else "kernel"
    if victim in ("child", "both") and kids:
        try:
            os.kill(rng.choice(kids), signal.SIGKILL)
        except ProcessLookupError:  # it had finished its capture
            pass
        time.sleep(rng.uniform(0.0, 0.2))
    if victim in ("kernel", "both"):
        proc.kill()
    else:
        proc.terminate()
    proc.wait()
    proc.stdout.close()
    for kid in kids:
        gone(kid)
    return victim


def check(store: Path, seen: set[str]) -> tuple[bool, int, set[str]]:
    """(store whole, durable commits lost, ids now) after a kill."""
    repo = Repository.open(store)
    try:
        whole = repo.fsck().ok
        commits = repo.log("k")
    finally:
        repo.close()
    ids = {c.id for c in commits}
    for c in commits:
        if c.id in seen:
            continue
        state = txpy.load(store, "k", c.id)
        i = int(c.message)
        arr = i if i % 3 else i - 1  # every third cell leaves the array as it was
        if state["step"] != i or state["lst"] != list(range(i % 40)) or (
                i > 0 and not (state["arr"] == arr).all()):
            whole = False
    return whole, len(seen - ids), ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--per-store", type=int, default=50,
                        help="kills before starting a fresh store (checks stay quick)")
    args = parser.parse_args()
    rng = random.Random(2026)
    kills = corrupt = lost = 0
    victims: dict[str, int] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        while kills < args.kills:
            store = Path(tmp) / f"s{kills}" / ".txpy"
            seen: set[str] = set()
            for _ in range(min(args.per_store, args.kills - kills)):
                durability = rng.choice(["sync", "background", "background"])
                victim = one_kill(store, durability, rng)
                victims[f"{durability}/{victim}"] = victims.get(f"{durability}/{victim}", 0) + 1
                kills += 1
                whole, lost_now, seen = check(store, seen)
                corrupt += not whole
                lost += lost_now
            print(f"{kills} kills, {corrupt} corrupt stores, {lost} durable commits lost "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
    print("kills by mode/victim: " + ", ".join(f"{k} {v}" for k, v in sorted(victims.items())))
    print(f"TOTAL: {kills} kills, {corrupt} corrupt stores, {lost} lost durable commits")
    sys.exit(1 if corrupt or lost else 0)


if __name__ == "__main__":
    main()
