"""Crash safety (real SIGKILL), concurrent writers, integrity checks, gc."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace

import pytest

import txpy
from conftest import corrupt_object
from txpy.errors import CorruptStoreError, StoreBusyError, UntrustedError
from txpy.repo import Repository

WRITER = textwrap.dedent("""
    import sys, numpy as np, txpy
    store, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ns = {}
    s = txpy.Session(store, name, ns, notify=lambda m: None)
    if s.head is not None:
        s.restore()
    start = ns.get("step", -1) + 1
    for i in range(start, start + count):
        ns["step"] = i
        ns["arr"] = np.full(400_000, i, dtype=np.int64)   # 3.2 MB: several chunks per commit
        ns["lst"] = list(range(i % 50))
        cid = s.commit(message=str(i))
        print(i, cid, flush=True)
""")


def _start_writer(store, name, count=10_000, durability="sync"):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(store), name, str(count)],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "TXPY_DURABILITY": durability})


def _check_every_commit(store, name):
    repo = Repository.open(store)
    try:
        report = repo.fsck()
        assert report.ok, report.damage
        commits = repo.log(name)
    finally:
        repo.close()
    for c in commits:
        state = txpy.load(store, name, c.id)
        i = int(c.message)
        assert state["step"] == i
        if i < 0:  # the seed commit made by the test itself
            continue
        assert (state["arr"] == i).all() and state["lst"] == list(range(i % 50))
    return commits


@pytest.mark.parametrize("durability, kills", [("sync", 12), ("async", 8)])
def test_sigkill_at_random_points_never_damages_earlier_commits(store, durability, kills):
    rnd = random.Random(1234)
    confirmed: list[str] = []
    for _ in range(kills):
        proc = _start_writer(store, "crash", durability=durability)
        time.sleep(rnd.uniform(0.6, 1.6))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        confirmed += [line.split()[1] for line in out.splitlines() if len(line.split()) == 2]
    commits = _check_every_commit(store, "crash")
    ids = {c.id for c in commits}
    # every commit reported is there; in async mode the last one of a run may still have been
    # in flight when the process died
    in_flight = 1 if durability == "async" else 0
    assert confirmed and len(set(confirmed) - ids) <= in_flight * kills
    repo = Repository.open(store)
    repo.gc()  # orphan chunks and temp files of killed commits go; everything else stays
    repo.close()
    assert _check_every_commit(store, "crash")


def test_two_processes_writing_one_history_at_once(store):
    txpy.Session(store, "shared", {"step": -1}, notify=lambda m: None).commit(message="-1")
    procs = [_start_writer(store, "shared", count=15) for _ in range(2)]
    outs = [p.communicate()[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    _check_every_commit(store, "shared")
    last = [out.splitlines()[-1].split()[1] for out in outs]
    repo = Repository.open(store)
    heads = set(repo.refs.branches("shared").values())
    repo.close()
    assert set(last) <= heads  # each writer's work is on a branch of its own: none lost


def _commit_sample(store):
    ns = {"x": list(range(1000)), "y": {"k": "v" * 100}}
    s = txpy.Session(store, "f", ns, notify=lambda m: None)
    cid = s.commit()
    return s, cid


def test_fsck_names_the_commit_and_variable_a_damaged_chunk_affects(store):
    s, cid = _commit_sample(store)
    tree = s.repo.tree(s.repo.read_commit(cid))
    manifest = s.repo.manifest(tree.components["x"])
    corrupt_object(store, manifest.stream[0])
    report = s.repo.fsck()
    assert [(d.commit, d.names) for d in report.damage] == [(cid, ("x",))]
    with pytest.raises(CorruptStoreError, match="damaged"):
        txpy.load(store, "f")


def tamper(store, sql, *args):
    """Change the store's commit records behind txpy's back, as an attacker would."""
    with sqlite3.connect(store / "txpy.db") as conn:
        conn.execute(sql, args)
    conn.close()


def test_tampered_commit_record_is_refused(store):
    s, cid = _commit_sample(store)
    body = s.repo.commit_record(cid).body.replace(b'"api"', b'"cell"')
    tamper(store, "UPDATE commits SET body=? WHERE id=?", body, cid)
    with pytest.raises(CorruptStoreError, match="does not match"):
        txpy.load(store, "f")
    assert not s.repo.fsck().ok


def test_forged_signature_is_refused(store):
    s, cid = _commit_sample(store)
    tamper(store, "UPDATE commits SET sig=? WHERE id=?", "ab" * 64, cid)
    with pytest.raises(CorruptStoreError, match="bad signature"):
        txpy.load(store, "f")


def test_commit_signed_by_an_untrusted_key_is_refused(store):
    s, cid = _commit_sample(store)
    tamper(store, "UPDATE commits SET signer=? WHERE id=?", os.urandom(32).hex(), cid)
    with pytest.raises(UntrustedError, match="does not trust"):
        txpy.load(store, "f")


def test_gc_removes_only_unreferenced_chunks(store):
    s, cid = _commit_sample(store)
    orphan = s._writer.stage_object(b"left behind by a crashed commit")
    s.repo.chunks.put_many(s._writer.take(private=False)[0])
    removed, _ = s.repo.gc()
    assert removed == 1 and not s.repo.chunks.has(orphan)
    assert txpy.load(store, "f", cid)["x"] == list(range(1000))


def test_gc_waits_for_no_writer(store):
    s, _ = _commit_sample(store)
    other = Repository.open(store)
    with s.repo.writing(), pytest.raises(StoreBusyError):
        other.gc()
    other.close()


def _racing(store, attempt):
    """Run attempt(repo, i) for two Repository objects on one store at the same moment."""
    barrier = threading.Barrier(2)
    repos = [Repository.open(store) for _ in range(2)]
    results = [None, None]

    def run(i):
        barrier.wait()
        results[i] = attempt(repos[i], i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in repos:
        r.close()
    return results


def test_two_writers_moving_one_branch_from_the_same_commit_cannot_both_win(store):
    s, _ = _commit_sample(store)
    for round_ in range(20):
        tip = s.repo.refs.tip("f", "main")
        new = [f"{round_:02d}{i}".ljust(64, "0") for i in range(2)]

        def move(repo, i, tip=tip, new=new):
            return repo.refs.set_if_equals("f", "main", tip, new[i])

        moved = _racing(store, move)
        assert sorted(moved) == [False, True]
        assert s.repo.refs.tip("f", "main") == new[moved.index(True)]
    created = _racing(store, lambda repo, i: repo.refs.add_if_new("f", "new", f"{i}" * 64))
    assert sorted(created) == [False, True]


def test_a_commit_whose_branch_moved_meanwhile_starts_a_branch_of_its_own(store):
    s, base = _commit_sample(store)
    parent = s.repo.read_commit(base)
    children = [replace(parent, id="", parents=(base,), message=str(i)).sealed()
                for i in range(2)]
    branches = _racing(store, lambda repo, i: repo.new_commit(children[i], "main")[1])
    assert sorted(branches) == ["main", "main-2"]
    assert set(s.repo.refs.branches("f").values()) == {c.id for c in children}
