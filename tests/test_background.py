"""Background capture (durability "background"): a forked copy-on-write child captures the
state as it was when the transaction ended, while the next one runs."""

import importlib.util
import os
import random
import signal
import time

import numpy as np
import pytest

import txpy
from txpy import background
from txpy.errors import CommitFailedError, CorruptStoreError
from txpy.repo import Repository
from txpy.store.chunks import chunk_key
from txpy.transaction import Transactions

PARENT = os.getpid()


@pytest.fixture(autouse=True)
def every_capture_forks(monkeypatch):
    monkeypatch.setattr(background, "FORK_COST", 0.0)


def open_session(store, ns, messages=None, verify=None):
    notify = (lambda m: None) if messages is None else messages.append
    s = txpy.Session(store, "bg", ns, durability="background", notify=notify, verify=verify)
    return s, Transactions(s, "cell", background=True)


def run(txns, code):
    """One cell: begin, run, commit (or roll back if it raises); what commit returned."""
    txn = txns.begin()
    compiled = compile(code, "<cell>", "exec")
    txns.note(txn, compiled, code)
    try:
        exec(compiled, txns.session.namespace)
    except Exception as e:
        txns.rollback(txn, e)
        return None
    return txns.commit(txn, kind="cell")


def restored(store):
    return txpy.load(store, "bg")


class Slow:
    """Pickling it takes a while (in the child: the parent goes on meanwhile)."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __reduce__(self):
        time.sleep(self.seconds)
        return Slow, (self.seconds,)


class DiesInChild:
    """Kills the process that pickles it, unless that is the test process."""

    def __reduce__(self):
        if os.getpid() != PARENT:
            os.kill(os.getpid(), signal.SIGKILL)
        return DiesInChild, ()


class HangsInChild:
    """Waits forever in a forked child (a lock another thread held at the fork)."""

    def __reduce__(self):
        while os.getpid() != PARENT:
            time.sleep(1)
        return HangsInChild, ()


def test_a_commit_holds_the_state_when_the_transaction_ended_not_later(store):
    ns = {"__name__": "__main__", "np": np}
    s, txns = open_session(store, ns)
    assert run(txns, "a = np.arange(1_000_000); lst = [1]; d = {'k': 1}") == ""
    assert s._background.pending
    # the next cell changes everything while the child may still be working
    ns["a"][:] = -1
    ns["lst"].append(2)
    ns["d"]["k"] = 2
    s.wait()
    state = restored(store)
    assert (state["a"] == np.arange(1_000_000)).all()
    assert state["lst"] == [1] and state["d"] == {"k": 1}
    assert s.head.stats["covers"] == 1 and s.head.stats["commit_seconds"] < 1
    s.close()


def test_commits_that_fall_behind_coalesce_and_the_last_state_is_whole(store):
    ns = {"__name__": "__main__", "Slow": Slow, "np": np}
    s, txns = open_session(store, ns)
    run(txns, "slow = Slow(0.4); n = 0")
    for i in range(1, 6):
        assert run(txns, f"n = {i}; slow.seconds = 0.4; x{i} = [{i}]") == ""
    s.wait()
    log = s.log()
    assert len(log) < 6  # some commits covered several cells
    assert sum(c.stats["covers"] for c in log) == 6
    assert log[0].code.count("\n") == log[0].stats["covers"] - 1
    coalesced = next(c for c in log if c.stats["covers"] > 1)
    from txpy import porcelain
    assert any(f"covers {coalesced.stats['covers']} transactions" in line
               for line in porcelain.show(s.repo, "bg", coalesced.id))
    assert any(f"cell×{coalesced.stats['covers']}" in line
               for line in porcelain.log(s.repo, "bg"))
    state = restored(store)
    assert state["n"] == 5 and [state[f"x{i}"] for i in range(1, 6)] == [[1], [2], [3], [4],
                                                                         [5]]
    assert Repository.open(store).fsck().ok
    s.close()


def test_rollback_after_background_commits_is_exact(store):
    ns = {"__name__": "__main__", "Slow": Slow}
    s, txns = open_session(store, ns)
    run(txns, "slow = Slow(0.3); lst = [1, 2]; d = {'a': 1}")
    run(txns, "lst.append(3); d['b'] = 2")
    before = (list(ns["lst"]), dict(ns["d"]), id(ns["lst"]))
    assert run(txns, "lst.append(4); d.clear(); new = 1; 1 / 0") is None
    assert (ns["lst"], ns["d"], id(ns["lst"])) == before
    assert "new" not in ns
    s.close()


def test_the_random_state_a_forked_child_captures_is_the_sessions(store):
    """Python's random reseeds itself in a forked child: the child must capture the state
    the session had, or a rollback and a restore continue another stream."""
    ns = {"__name__": "__main__"}
    s, txns = open_session(store, ns)
    run(txns, "import random\nrandom.seed(1)\nfirst = random.random()")
    s.wait()
    expected = random.random()
    random.seed(1)
    random.random()
    assert run(txns, "random.random()\n1 / 0") is None
    assert random.random() == expected
    s.close()


def test_a_class_caching_its_slot_names_in_one_process_pickles_the_same_in_the_other(store):
    """Pickling an instance caches __slotnames__ on its class: the child cached it in its own
    memory only, so the class would look changed the next time the kernel pickled it."""
    ns = {"__name__": "__main__"}
    s, txns = open_session(store, ns, verify=True)
    run(txns, "class Point:\n    __slots__ = ('x', 'y')\n    def __init__(self, x, y):\n"
              "        self.x, self.y = x, y\np = Point(1, 2)")
    s.wait()
    assert run(txns, "p.x = 10\n1 / 0") is None
    assert ns["p"].x == 1 and isinstance(ns["p"], ns["Point"])
    run(txns, "q = 1")
    s.wait()
    assert not txns.errors, txns.errors
    s.close()


def test_a_rollback_keeps_the_classes_a_forked_child_pickled(store):
    """cloudpickle tracks a class by an id it makes when it first pickles it: made in the
    child, the kernel would not know it, and a rollback would replace the notebook's class
    and its instances with new ones."""
    ns = {"__name__": "__main__"}
    s, txns = open_session(store, ns)
    run(txns, "class Feed:\n    def __init__(self):\n        self.items = []\nfeed = Feed()")
    s.wait()
    Feed, feed = ns["Feed"], ns["feed"]
    assert run(txns, "feed.items.append(1)\nFeed.extra = 1\n1 / 0") is None
    assert ns["Feed"] is Feed and ns["feed"] is feed and feed.items == []
    assert not hasattr(Feed, "extra")
    s.close()


def test_a_failing_transaction_that_checked_out_goes_back_to_the_state_before_it(store):
    """The transaction began while the previous cell was still being captured: the commit it
    must go back to was not known when it began."""
    ns = {"__name__": "__main__", "Slow": Slow}
    s, txns = open_session(store, ns)
    run(txns, "slow = Slow(0.3); v = 1")
    s.wait()
    first = s.head.id
    run(txns, "v = 2; slow.seconds = 0.3")
    assert s._background.pending
    txn = txns.begin()
    s.checkout(first)
    ns["v"] = 99
    txns.rollback(txn, ZeroDivisionError())
    assert ns["v"] == 2 and s.head.id != first
    assert restored(store)["v"] == 2
    s.close()


def test_a_child_that_dies_costs_no_data_and_capture_goes_on_in_process(store):
    ns = {"__name__": "__main__", "DiesInChild": DiesInChild}
    messages = []
    s, txns = open_session(store, ns, messages)
    run(txns, "x = [1]")
    assert run(txns, "x.append(2); bomb = DiesInChild()") == ""
    with pytest.raises(CommitFailedError):
        s.wait()  # the state after that cell is not committed: a rollback would lose it
    assert any("could not capture in the background" in m and "SIGKILL" in m
               for m in messages)
    assert run(txns, "y = 3") != ""  # in process now: an id at once
    assert s._background.off is not None
    s.wait()
    state = restored(store)
    assert state["x"] == [1, 2] and state["y"] == 3 and "bomb" in state
    s.close()


def test_a_child_that_hangs_is_killed_at_the_deadline(store, monkeypatch):
    monkeypatch.setattr(background, "DEADLINE", 1.0)
    ns = {"__name__": "__main__", "HangsInChild": HangsInChild}
    messages = []
    s, txns = open_session(store, ns, messages)
    started = time.monotonic()
    run(txns, "h = HangsInChild(); z = [0]")
    with pytest.raises(CommitFailedError, match="longer than 1 s"):
        s.wait()
    assert time.monotonic() - started < 30
    run(txns, "z.append(1)")
    s.wait()
    assert restored(store)["z"] == [0, 1]
    s.close()


def test_verify_mode_still_catches_a_missed_mutation(store, monkeypatch):
    monkeypatch.setenv("TXPY_VERIFY", "1")
    ns = {"__name__": "__main__"}
    s, txns = open_session(store, ns)
    run(txns, "a = [1]; b = [2]")
    s.wait()
    ns["b"].append(3)  # behind the transaction's back: not a candidate of the next one
    run(txns, "a.append(2)")
    with pytest.raises(AssertionError, match="'b' changed but was not examined"):
        s.wait()
    s.close()


def test_a_gc_between_the_child_writing_and_the_record_is_caught(store):
    ns = {"__name__": "__main__"}
    s = txpy.Session(store, "bg", ns, notify=lambda m: None)
    s.commit()
    repo = s.repo
    chunks = [(k, memoryview(b), 1) for k, b in
              ((chunk_key(d), d) for d in (os.urandom(200_000),))]
    written = repo.write_in_child(chunks)
    repo.gc()  # the chunk is referenced by no commit: an orphan
    with pytest.raises(CorruptStoreError, match="a gc removed 1 chunks"):
        repo.publish_from_child(s.head.sealed(), "main", written)
    s.close()


def _torture():
    """benchmarks/torture.py, whose kills and checks this test runs a few of."""
    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "torture.py")
    spec = importlib.util.spec_from_file_location("torture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("victim", ["kernel", "child", "both"])
def test_sigkill_of_kernel_or_child_never_damages_the_store(store, victim):
    torture = _torture()
    rng = random.Random(victim)
    seen = set()
    for _ in range(4):
        torture.one_kill(store, "background", rng, victim, run_for=(0.3, 1.2))
        whole, lost, seen = torture.check(store, seen)
        assert whole and lost == 0
    assert len(seen) >= 2


def test_with_cuda_in_use_commits_are_captured_in_process_and_it_is_said_once(store,
                                                                             monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    ns = {"__name__": "__main__"}
    messages = []
    s, txns = open_session(store, ns, messages)
    assert run(txns, "a = [1]") not in ("", None)  # an id at once: in process
    assert run(txns, "a.append(2)") not in ("", None)
    assert [m for m in messages if "CUDA" in m] == [
        "CUDA is in use: commits are captured in this process (a forked child cannot read "
        "CUDA memory)"]
    s.close()


def test_a_mutation_behind_the_cells_backs_is_found_by_a_sweep_within_ten_cells(store):
    """A library kept a notebook list (here: a plain reference outside the namespace) and
    appends to it between cells: no cell names it, the background sweep finds it."""
    held = [0]
    ns = {"__name__": "__main__", "kept": held}
    messages = []
    s, txns = open_session(store, ns, messages, verify=False)  # verify would flag it at once
    for i in range(10):
        held.append(i)  # behind the cells' backs
        run(txns, f"other{i} = {i}")
        s.wait()  # a person reading the output: each capture is merged before the next cell
    assert restored(store)["kept"] == held
    assert "kept" in s.escaped
    assert any("'kept' changed outside the cells that name it" in m for m in messages)
