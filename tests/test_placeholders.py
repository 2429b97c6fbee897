"""A stored value reached through an unstorable one (issue 14, class 3): a dict holding a
generator, an object holding a lock or a file, ``G = globals()`` are stored, with what cannot
be stored replaced by a placeholder that says so, instead of not being stored at all."""

import threading

import pytest

import txpy
from conftest import run
from txpy.encode import NotStored


def test_the_storable_parts_of_a_value_are_stored_and_the_rest_is_named(session, store):
    said = []
    session.notify = said.append
    ns = session.namespace
    run(ns, """
        def counter():
            n = 0
            while True:
                n += 1
                yield n
        box = {"gen": counter(), "data": [1, 2]}
    """)
    session.commit()
    ns["box"]["data"].append(3)
    session.commit()
    assert any("'box' is stored without the generator" in m for m in said), said
    state = txpy.load(store, "t")
    assert state["box"]["data"] == [1, 2, 3]
    assert isinstance(state["box"]["gen"], NotStored) and "generator" in repr(state["box"]["gen"])
    assert "box" not in session.unstored


def test_an_object_holding_a_lock_comes_back_with_a_new_lock(session, store):
    ns = session.namespace
    run(ns, """
        import threading
        class Cache:
            def __init__(self):
                self.lock = threading.Lock()
                self.items = {}
        cache = Cache()
        cache.items["a"] = 1
    """)
    session.commit()
    with pytest.raises(ValueError), session.transaction():
        ns["cache"].items["b"] = 2
        raise ValueError
    assert ns["cache"].items == {"a": 1}  # it rolls back like any value
    restored = txpy.load(store, "t")["cache"]
    assert restored.items == {"a": 1} and isinstance(restored.lock, type(threading.Lock()))


def test_a_handle_on_the_namespace_comes_back_as_the_restoring_namespace(session, store):
    ns = session.namespace
    run(ns, "G = globals()\nx = 1")
    session.commit()
    state = txpy.load(store, "t")
    assert state["G"] is state and state["x"] == 1


def test_a_rollback_restores_what_a_value_holding_a_generator_can_store_and_says_so(session):
    said = []
    session.notify = said.append
    ns = session.namespace
    run(ns, """
        gen = (i for i in range(10))
        box = {'gen': gen, 'data': [1]}
        other = [1]
        class Feed:
            def __init__(self):
                self.source = (i for i in range(3))
                self.items = []
        feed = Feed()
    """)
    session.commit()
    box, data, feed, source = ns["box"], ns["box"]["data"], ns["feed"], ns["feed"].source
    with pytest.raises(ValueError), session.transaction():
        ns["box"]["data"].append(2)
        ns["other"].append(2)
        ns["feed"].items.append(1)
        raise ValueError
    assert ns["box"] is box and box["data"] is data and data == [1] and box["gen"] is ns["gen"]
    assert ns["feed"] is feed and feed.items == [] and feed.source is source
    assert isinstance(feed, ns["Feed"]) and ns["other"] == [1]
    assert any("rolled back except what txpy cannot store" in m and "box (generator)" in m
               for m in said), said


def test_a_rebound_value_holding_a_generator_is_kept_as_it_is_and_said_so(session):
    said = []
    session.notify = said.append
    ns = session.namespace
    run(ns, "box = {'gen': (i for i in range(10)), 'data': [1]}")
    session.commit()
    with pytest.raises(ValueError), session.transaction():
        run(ns, "box = {'gen': (i for i in range(3)), 'data': [2]}")
        raise ValueError
    assert ns["box"]["data"] == [2]  # a decoded box would lack its generator
    assert any("kept as they are" in m and "box (generator)" in m for m in said), said


def test_an_open_file_or_a_thread_alone_is_said_not_stored_not_stood_in_for(session, tmp_path):
    """cloudpickle would store a file open for reading as a StringIO of its content and a
    thread as a dead copy: a restore would differ silently. txpy says they are not stored."""
    said = []
    session.notify = said.append
    (tmp_path / "data.txt").write_text("hello")
    ns = session.namespace
    ns["f"] = open(tmp_path / "data.txt")  # noqa: SIM115 - the open file is the value tested
    ns["t"] = threading.Thread(target=lambda: None)
    ns["ok"] = [1]
    try:
        session.commit()
    finally:
        ns["f"].close()
    assert set(session.unstored) == {"f", "t"}
    assert any("'f' is not stored (TextIOWrapper" in m for m in said), said
    assert any("'t' is not stored (Thread" in m for m in said), said
