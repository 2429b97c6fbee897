"""A commit is all or nothing, for the store and for the session: interrupts landing anywhere
inside it, and gc running while it decides which chunks the store has, never leave a HEAD the
store lacks, a commit pointing at a deleted chunk, or a session that stops saving."""

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import txpy
from txpy.errors import StoreBusyError
from txpy.repo import Repository
from txpy.store.chunks import chunk_key

TRIES = 30


def _alarm_raises_interrupt(signum, frame):
    raise KeyboardInterrupt


def _fsck_ok(store):
    repo = Repository.open(store)
    try:
        report = repo.fsck()
        assert report.ok, report.damage
    finally:
        repo.close()


def _check_session_matches_store(s, store, name):
    """HEAD as the session sees it is HEAD as the store has it, on the branch it started on."""
    repo = Repository.open(store)
    try:
        branch, head = repo.refs.head(name)
        assert set(repo.refs.branches(name)) == {"main"}, "no invented branches"
        assert (branch, head) == ("main", s.head.id)
    finally:
        repo.close()


def test_interrupt_anywhere_in_a_commit_leaves_history_and_session_consistent(store):
    ns = {"__name__": "__main__"}
    s = txpy.Session(store=store, name="t", namespace=ns, notify=lambda m: None)
    ns["keep"] = [1, 2, 3]
    s.commit()
    ns["big"] = [{"i": i} for i in range(60_000)]
    started = time.perf_counter()
    s.commit()
    span = time.perf_counter() - started  # how long such a commit takes here
    rng = random.Random(7)
    previous = signal.signal(signal.SIGALRM, _alarm_raises_interrupt)
    interrupted = 0
    try:
        for i in range(TRIES):
            ns["big"] = [{"i": i, "j": j} for j in range(60_000)]
            ns["keep"].append(i)
            before = s.head.id
            signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.0, span * 1.3))
            try:
                s.commit()
            except KeyboardInterrupt:
                interrupted += 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            _check_session_matches_store(s, store, "t")
            # the next commit works, and HEAD holds exactly the namespace
            s.commit()
            assert s.head.id != before or ns["keep"][-1] != i
            state = txpy.load(store, "t")
            assert state["keep"] == ns["keep"] and state["big"][0] == {"i": i, "j": 0}
    finally:
        signal.signal(signal.SIGALRM, previous)
        s.close()
    assert interrupted >= TRIES // 4, f"only {interrupted} interrupts landed inside a commit"
    _fsck_ok(store)


def test_interrupted_async_wait_does_not_drop_a_write_that_succeeds(store):
    ns = {"__name__": "__main__"}
    s = txpy.Session(store=store, name="t", namespace=ns, durability="async",
                     notify=lambda m: None)
    previous = signal.signal(signal.SIGALRM, _alarm_raises_interrupt)
    try:
        for i in range(10):
            ns["a"] = np.full(3_000_000, i, dtype=np.int64)  # 24 MB: a write takes a while
            s.commit()
            signal.setitimer(signal.ITIMER_REAL, 0.002)
            try:
                s.wait()
            except KeyboardInterrupt:
                pass
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            s.wait()
            _check_session_matches_store(s, store, "t")
    finally:
        signal.signal(signal.SIGALRM, previous)
        s.close()
    assert (txpy.load(store, "t")["a"] == 9).all()
    _fsck_ok(store)


def _every_commit_holds_its_number(store, history, name):
    """fsck passes, and every commit's array is full of the number in its message."""
    _fsck_ok(store)
    repo = Repository.open(store)
    try:
        for c in repo.log(history):
            assert (txpy.load(store, history, c.id)[name] == int(c.message)).all()
    finally:
        repo.close()


def _orphan(store, data: bytes) -> None:
    """Leave data's chunks in the store with no commit naming them, as a commit killed
    between its chunks and its record does (through a handle of its own, so the session's
    cache of which chunks exist does not know them)."""
    repo = Repository.open(store)
    try:
        view = memoryview(data)
        repo.chunks.put_many([(chunk_key(view[i:i + (1 << 20)]), view[i:i + (1 << 20)], 1)
                              for i in range(0, len(view), 1 << 20)])
    finally:
        repo.close()


class _GcOnPickle:
    """A user object whose pickling runs `gc` on the store: gc lands exactly between the
    moment chunks are found to exist and the moment the commit relies on them."""

    def __init__(self, store):
        self.store = str(store)

    def __reduce__(self):
        repo = Repository.open(self.store)
        try:
            repo.gc()
        finally:
            repo.close()
        return (str, ("gc ran",))


def test_gc_after_chunks_were_seen_cannot_make_a_commit_lose_them(store, session):
    ns = session.namespace
    ns["seed"] = 0
    session.commit()
    payload = np.arange(1_000_000, dtype=np.int64)  # 8 MB: 8 chunks
    # the session saw these chunks exist (an earlier failed commit of the same data)...
    data = payload.tobytes()
    session.repo.chunks.put_many([(chunk_key(data[i:i + (1 << 20)]), data[i:i + (1 << 20)], 1)
                                  for i in range(0, len(data), 1 << 20)])
    # ...then gc deletes them as orphans while the next commit is under way
    ns["payload"] = payload
    ns["trigger"] = _GcOnPickle(store)
    session.commit()
    _fsck_ok(store)
    assert (txpy.load(store, "t")["payload"] == payload).all()


def test_gc_racing_commits_never_removes_what_a_commit_relies_on(store):
    ns = {"__name__": "__main__"}
    s = txpy.Session(store=store, name="t", namespace=ns, notify=lambda m: None)
    stop = threading.Event()
    collected = [0]

    def collect():
        repo = Repository.open(store)
        try:
            while not stop.is_set():
                try:
                    collected[0] += repo.gc()[0]
                except StoreBusyError:
                    time.sleep(0.0005)
        finally:
            repo.close()

    gc_thread = threading.Thread(target=collect)
    gc_thread.start()
    try:
        for i in range(40):
            value = np.full(300_000, i, dtype=np.int64)  # 2.4 MB: 3 chunks
            _orphan(store, value.tobytes())
            ns["value"] = value
            s.commit(message=str(i))
    finally:
        stop.set()
        gc_thread.join()
        s.close()
    assert collected[0] > 0, "gc never ran between commits: the race was not exercised"
    _every_commit_holds_its_number(store, "t", "value")


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_txpy_gc_from_a_shell_during_commits_keeps_every_commit_whole(store, durability):
    writer = subprocess.Popen([sys.executable, "-c", """
import sys, numpy as np, txpy
from txpy.repo import Repository
from txpy.store.chunks import chunk_key
store = sys.argv[1]
ns = {}
s = txpy.Session(store, "w", ns, durability=sys.argv[2], notify=lambda m: None)
for i in range(30):
    v = np.full(300_000, i, dtype=np.int64)
    r = Repository.open(store)
    d = memoryview(v.tobytes())
    r.chunks.put_many([(chunk_key(d[j:j + (1 << 20)]), d[j:j + (1 << 20)], 1)
                       for j in range(0, len(d), 1 << 20)])
    r.close()
    ns["v"] = v
    s.commit(message=str(i))
s.close()
""", str(store), durability])
    txpy_cli = [str(Path(sys.executable).parent / "txpy"), "gc", "--store", str(store)]
    runs = 0
    while writer.poll() is None:
        subprocess.run(txpy_cli, capture_output=True, timeout=60)
        runs += 1
    assert writer.returncode == 0
    assert runs > 0
    _every_commit_holds_its_number(store, "w", "v")


@pytest.mark.parametrize("seed", [3, 11, 29])
def test_interrupts_while_background_captures_start_and_merge_lose_nothing(store, monkeypatch,
                                                                          seed):
    """KeyboardInterrupt at random moments of a cell's end (the fork, queueing the capture)
    and of the merge (wait): the history is never damaged and the last state is committed
    whole once a commit goes through."""
    from txpy import background
    from txpy.transaction import Transactions

    monkeypatch.setattr(background, "FORK_COST", 0.0)
    ns = {"__name__": "__main__", "keep": [], "big": [{"i": i} for i in range(60_000)]}
    s = txpy.Session(store=store, name="t", namespace=ns, durability="background",
                     notify=lambda m: None)
    txns = Transactions(s, "cell", background=True)
    rng = random.Random(seed)
    previous = signal.signal(signal.SIGALRM, _alarm_raises_interrupt)
    landed = 0
    try:
        for i in range(TRIES):
            ns["keep"].append(i)
            ns["big"][0] = {"i": i}
            txn = txns.begin()
            txns.note(txn, None, "")
            signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.0, 0.03))
            try:
                txns.commit(txn, kind="cell")
                s.wait()
            except KeyboardInterrupt:
                landed += 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        txn = txns.begin()
        txns.note(txn, None, "")
        txns.commit(txn, kind="cell")
        s.wait()
        _check_session_matches_store(s, store, "t")
        state = txpy.load(store, "t")
        assert state["keep"] == ns["keep"] and state["big"][0] == {"i": TRIES - 1}
    finally:
        signal.signal(signal.SIGALRM, previous)
        s.close()
    assert landed >= TRIES // 4, f"only {landed} interrupts landed"
    _fsck_ok(store)
