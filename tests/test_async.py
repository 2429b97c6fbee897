"""Async durability: the commit is written in the background, with the same guarantees."""

import errno

import numpy as np
import pytest

import txpy
from txpy.errors import CommitFailedError


@pytest.fixture
def asession(store):
    s = txpy.Session(store=store, name="a", namespace={}, durability="async",
                     notify=lambda m: None)
    yield s
    s.close()


def test_values_changed_while_the_writer_runs_do_not_leak_into_the_commit(asession, store):
    ns = asession.namespace
    ns["x"] = np.zeros(3_000_000)  # 24 MB: the writer is still busy when we mutate
    c1 = asession.commit()
    ns["x"][:] = 7.0
    asession.wait()
    assert (txpy.load(store, "a", c1)["x"] == 0).all()
    c2 = asession.commit()
    asession.checkout(c1)
    assert (ns["x"] == 0).all()
    asession.checkout(c2)
    assert (ns["x"] == 7).all()


def test_rollback_waits_for_the_write_and_restores(asession):
    ns = asession.namespace
    ns["lst"] = [1, 2]
    asession.commit()
    with pytest.raises(ValueError), asession.transaction():
        ns["lst"].append(3)
        raise ValueError
    assert ns["lst"] == [1, 2]


def test_a_failed_background_write_is_reported_and_nothing_is_lost(asession, store, monkeypatch):
    ns = asession.namespace
    ns["a"] = [1]
    c1 = asession.commit()
    asession.wait()

    def disk_full(chunks, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(asession.repo.chunks, "put_many", disk_full)
    ns["a"].append(2)
    asession.commit()
    with pytest.raises(CommitFailedError, match="No space left"):
        asession.wait()
    assert asession.head.id == c1
    monkeypatch.undo()
    c3 = asession.commit()  # the next commit retries and includes the change
    asession.wait()
    assert c3 != c1 and txpy.load(store, "a")["a"] == [1, 2]


def test_a_commit_encoded_during_a_failing_write_is_abandoned_then_redone(asession, store,
                                                                          monkeypatch):
    ns = asession.namespace
    ns["a"] = [1]
    asession.commit()
    asession.wait()
    monkeypatch.setattr(asession.repo.chunks, "put_many",
                        lambda chunks, **kwargs: (_ for _ in ()).throw(
                            OSError(errno.EIO, "I/O error")))
    ns["a"].append(2)
    asession.commit()          # written in the background: fails
    ns["b"] = "next cell"
    with pytest.raises(CommitFailedError, match="I/O error"):
        asession.commit()      # encoded meanwhile; abandoned when the write it follows fails
    monkeypatch.undo()
    asession.commit()
    asession.wait()
    state = txpy.load(store, "a")
    assert state["a"] == [1, 2] and state["b"] == "next cell"
