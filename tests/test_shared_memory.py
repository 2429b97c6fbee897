"""Memory shared between arrays (issue 14, class 2): names whose arrays view the same memory
are one co-variable, so a change made through one is stored for the other, and views come
back as views of their restored base, in a new process and after a rollback."""

import numpy as np
import pytest
import torch

import txpy
from conftest import run


def _commit_cell(session, source, candidates):
    """A cell that names only `candidates`, as a notebook's static tracking would see it."""
    run(session.namespace, source)
    session.commit(candidates=candidates)


def test_a_change_through_a_view_is_stored_for_its_base(session, store):
    ns = session.namespace
    ns["a"] = np.arange(10.0)
    session.commit()
    ns["b"] = ns["a"][2:5]
    session.commit()
    _commit_cell(session, "b[0] = 99", {"b"})  # verify mode: a must have been examined
    state = txpy.load(store, "t")
    assert state["a"][2] == 99 and state["b"][0] == 99
    state["b"][1] = -1  # still one memory after the restore
    assert state["a"][3] == -1 and np.shares_memory(state["a"], state["b"])
    assert state["b"].base is state["a"]  # as numpy made it: the base is the named array


def test_arrays_over_one_buffer_and_tensors_from_numpy_are_one_component(session, store):
    ns = session.namespace
    ns["buf"] = bytearray(80)
    ns["x"] = np.frombuffer(ns["buf"], dtype=np.float64)
    ns["y"] = np.frombuffer(ns["buf"], dtype=np.float64, offset=8)
    ns["c"] = np.ones(4)
    ns["t"] = torch.from_numpy(ns["c"])
    session.commit()
    _commit_cell(session, "x[3] = 7", {"x"})
    _commit_cell(session, "t[1] = 5", {"t"})
    tree = session.repo.tree(session.head)
    assert len({tree.components[n] for n in ("buf", "x", "y")}) == 1
    assert tree.components["c"] == tree.components["t"]
    state = txpy.load(store, "t")
    assert state["y"][2] == 7 and state["c"][1] == 5 and state["t"][1] == 5
    state["t"][2] = 9  # the tensor still lives in the array's memory
    assert state["c"][2] == 9 and np.shares_memory(state["c"], state["t"].numpy())


def test_a_rollback_restores_base_and_view_together_and_keeps_them_one(session):
    ns = session.namespace
    ns["grid"] = np.zeros((4, 4))
    ns["edge"] = ns["grid"][1]
    session.commit()
    with pytest.raises(ValueError), session.transaction():
        ns["edge"][:] = 3
        raise ValueError
    assert not ns["grid"].any() and not ns["edge"].any()
    ns["edge"][0] = 1
    assert ns["grid"][1, 0] == 1


def test_a_view_whose_base_nobody_named_is_stored_as_what_it_shows(session, store):
    ns = session.namespace
    ns["small"] = np.arange(1_000_000)[:10]  # the million-element base is not a variable
    session.commit()
    assert txpy.load(store, "t")["small"].tolist() == list(range(10))
    assert session.head.stats["bytes_new"] < 100_000
