"""The core user story of issue 2: commit, transaction/rollback, checkout, log, diff, load."""

import random
import textwrap
import warnings

import numpy as np
import pytest

import txpy
from conftest import run, store_bytes
from txpy.errors import TxpyError


def test_user_story_from_the_issue(store):
    ns: dict = {}
    s = txpy.Session(store=store, name="demo", namespace=ns, notify=lambda m: None)
    ns["x"] = np.zeros((5_000_000,))
    c1 = s.commit()
    ns["x"][17] = 1.0
    ns["y"] = {"a": [1, 2]}
    c2 = s.commit()
    with pytest.raises(ValueError), s.transaction():
        ns["y"]["a"].append(3)
        raise ValueError
    assert ns["y"] == {"a": [1, 2]}
    s.checkout(c1)
    assert "y" not in ns and ns["x"][17] == 0
    assert [c.id for c in s.log()][-2:] == [c2, c1]
    d = s.diff(c1, c2)
    assert d.added == ("y",) and d.changed == ("x",) and d.removed == ()
    state = txpy.load(store, "demo", c2)
    assert state["x"][17] == 1.0 and state["y"] == {"a": [1, 2]}
    assert txpy.load(store, "demo", "main")["y"] == {"a": [1, 2]}


def test_commit_without_changes_returns_head(session):
    session.namespace["a"] = [1]
    c1 = session.commit()
    assert session.commit() == c1
    assert len(session.log()) == 1


def test_rollback_restores_rebound_deleted_and_created_names(session):
    ns = session.namespace
    run(ns, "a = [1, 2]; b = {'k': 1}; c = 'keep'")
    session.commit()
    with pytest.raises(ZeroDivisionError), session.transaction():
        run(ns, "a.append(3); del b; c = 'changed'; d = 'new'; 1/0")
    assert ns["a"] == [1, 2] and ns["b"] == {"k": 1} and ns["c"] == "keep" and "d" not in ns


def test_keyboard_interrupt_rolls_back(session):
    ns = session.namespace
    ns["arr"] = np.arange(10)
    session.commit()
    with pytest.raises(KeyboardInterrupt), session.transaction():
        ns["arr"][:] = -1
        raise KeyboardInterrupt
    assert ns["arr"].tolist() == list(range(10))


def test_checkout_old_commit_then_commit_starts_a_branch_and_loses_nothing(session):
    ns = session.namespace
    ns["v"] = 1
    c1 = session.commit()
    ns["v"] = 2
    c2 = session.commit()
    session.checkout(c1)
    assert ns["v"] == 1 and session.branch is None
    ns["v"] = 3
    c3 = session.commit()
    branches = session.branches()
    assert branches["main"] == c2 and c3 in branches.values() and session.branch != "main"
    session.checkout("main")
    assert ns["v"] == 2
    assert {c.id for c in session.log()} >= {c1, c2, c3}


def test_checkout_loads_only_what_differs(session):
    ns = session.namespace
    ns["big"] = np.ones(1000)
    ns["small"] = 1
    c1 = session.commit()
    big = ns["big"]
    ns["small"] = 2
    session.commit()
    session.checkout(c1)
    assert ns["big"] is big and ns["small"] == 1


def test_one_element_change_of_a_large_array_grows_store_by_about_one_chunk(session, store):
    ns = session.namespace
    ns["x"] = np.random.default_rng(0).random(10_000_000)  # 80 MB, incompressible
    session.commit()
    before = store_bytes(store)
    ns["x"][1234567] = 42.0
    session.commit()
    grown = store_bytes(store) - before
    assert grown < 2 * 1024 * 1024, grown
    assert txpy.load(store, "t")["x"][1234567] == 42.0


def test_identical_data_is_stored_once_across_names_and_histories(store):
    data = np.random.default_rng(1).random(2_000_000)  # 16 MB
    s1 = txpy.Session(store=store, name="one", namespace={"a": data}, notify=lambda m: None)
    s1.commit()
    after_first = store_bytes(store)
    s2 = txpy.Session(store=store, name="two", namespace={"b": data.copy(), "c": data.copy()},
                      notify=lambda m: None)
    s2.commit()
    assert store_bytes(store) - after_first < 100_000
    assert np.array_equal(txpy.load(store, "two")["c"], data)


def test_co_variables_keep_shared_references(session, store):
    ns = session.namespace
    run(ns, """
        a = b = []
        d = {'inner': a}
        solo = [1]
    """)
    c = session.commit()
    state = txpy.load(store, "t", c)
    assert state["a"] is state["b"] is state["d"]["inner"]
    state["a"].append(1)
    assert state["d"]["inner"] == [1]


def test_global_random_generators_continue_the_same_stream(session):
    ns = session.namespace
    random.seed(3)
    np.random.seed(3)
    ns["x"] = 1
    session.commit()
    saved = random.getstate(), np.random.get_state()
    expected = (random.random(), np.random.rand())
    random.setstate(saved[0])
    np.random.set_state(saved[1])
    with pytest.raises(RuntimeError), session.transaction():
        random.random()
        np.random.rand()
        raise RuntimeError
    assert (random.random(), np.random.rand()) == expected


def test_checkout_restores_random_state(session):
    ns = session.namespace
    random.seed(7)
    ns["x"] = 1
    c1 = session.commit()
    first = random.random()
    ns["x"] = 2
    session.commit()
    session.checkout(c1)
    assert random.random() == first


def test_functions_and_classes_defined_in_the_session_round_trip(session, store):
    ns = session.namespace
    run(ns, """
        scale = 10
        class Counter:
            def __init__(self):
                self.n = 0
            def bump(self):
                self.n += scale
                return self.n
        def make():
            return Counter()
        counter = make()
        counter.bump()
        square = lambda v: v * v
    """)
    c = session.commit()
    state = txpy.load(store, "t", c)
    assert state["counter"].n == 10
    assert isinstance(state["make"](), state["Counter"])
    assert isinstance(state["counter"], state["Counter"])
    state["scale"] = 1  # restored functions read the restored namespace, not a copy
    assert state["counter"].bump() == 11
    assert state["square"](4) == 16


def test_unserializable_values_never_fail_a_commit(session, store):
    ns = session.namespace
    run(ns, """
        import threading
        gen = (i for i in range(3))
        lock = threading.Lock()
        ok = [1, 2]
    """)
    said = []
    session.notify = said.append
    c = session.commit()
    assert any("'gen' is not stored" in m for m in said), said
    assert set(session.unstored) == {"gen", "lock"}
    with pytest.warns(txpy.TxpyWarning, match="gen .generator.*lock"):
        state = txpy.load(store, "t", c)
    assert state["ok"] == [1, 2] and "gen" not in state


def test_a_load_reports_unstored_names_even_when_warnings_are_errors(session, store, capsys):
    session.namespace.update(gen=(i for i in range(3)), ok=[1])
    session.commit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = txpy.load(store, "t")
    assert state["ok"] == [1]
    assert "not restored (never stored): gen (generator)" in capsys.readouterr().err


def test_deep_object_graphs_are_stored(session, store):
    ns = session.namespace
    node = None
    for i in range(100_000):
        node = [i, node]
    ns["linked"] = node
    c = session.commit()
    restored = txpy.load(store, "t", c)["linked"]
    depth = 0
    while restored is not None:
        restored = restored[1]
        depth += 1
    assert depth == 100_000


def test_clear_errors_for_bad_input(session, store, tmp_path):
    session.namespace["a"] = 1
    session.commit()
    with pytest.raises(TxpyError, match="unknown commit or branch"):
        session.checkout("nope")
    with pytest.raises(TxpyError, match="unknown commit"):
        txpy.load(store, "t", "abcdef12")
    with pytest.raises(TxpyError, match="not a txpy store"):
        txpy.load(tmp_path / "elsewhere")
    with pytest.raises(TxpyError, match="no commits"):
        txpy.load(store, "missing-history")


def test_store_from_a_newer_version_is_refused(session, store):
    session.namespace["a"] = 1
    session.commit()
    session.repo.meta.conn.execute("UPDATE info SET value='99' WHERE key='format'")
    with pytest.raises(TxpyError, match="newer txpy"):
        txpy.load(store, "t")


def test_big_writes_and_loads_are_announced(store, monkeypatch):
    import txpy.loading

    monkeypatch.setattr(txpy.loading, "ANNOUNCE_BYTES", 1_000_000)
    said: list[str] = []
    ns = {"big": np.random.default_rng(0).random(500_000)}  # 4 MB
    s = txpy.Session(store, "a", ns, notify=said.append)
    c1 = s.commit()
    ns["big"] = np.zeros(10)
    s.commit()
    s.checkout(c1)
    assert said[0].startswith("writing 3.8 MB") and said[-1].startswith("loading 3.8 MB")


def test_a_commit_imports_nothing_the_user_did_not(tmp_path):
    # numpy.random (7 ms) is part of the state only once the user imported it
    import subprocess
    import sys

    store = str(tmp_path / ".txpy")
    code = ("import sys, numpy, txpy\n"
            f"s = txpy.Session(store={store!r}, namespace={{'a': numpy.ones(3)}})\n"
            "s.commit()\n"
            "print('numpy.random' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_function_using_a_submodule_imported_after_its_first_commit_restores_elsewhere(
        tmp_path):
    # make() reaches email.mime.text through `email`: a restore must import the submodule,
    # including when it was imported only after make() had already been committed once
    import subprocess
    import sys

    store = str(tmp_path / ".txpy")
    (tmp_path / "commit.py").write_text(textwrap.dedent(f"""
        import txpy
        ns = {{"__name__": "__main__"}}
        s = txpy.Session(store={store!r}, name="h", namespace=ns)
        exec("import email\\n"
             "def make(t):\\n"
             "    return email.mime.text.MIMEText(t).get_payload()", ns)
        s.commit()
        exec("import email.mime.text\\nx = make('hi')", ns)
        s.commit(candidates={{"email", "make", "x"}})
    """))
    (tmp_path / "restore.py").write_text(textwrap.dedent(f"""
        import sys, txpy
        assert "email.mime.text" not in sys.modules
        print(txpy.load({store!r}, "h")["make"]("hello"))
    """))
    subprocess.run([sys.executable, tmp_path / "commit.py"], check=True, capture_output=True)
    out = subprocess.run([sys.executable, tmp_path / "restore.py"], capture_output=True,
                         text=True)
    assert out.stdout.strip() == "hello", out.stderr


def test_a_big_commit_mixing_compressible_and_random_chunks_comes_back_exactly(session, store):
    # several MiB: compressed on a helper thread while written, in order
    rng = np.random.default_rng(2)
    ns = session.namespace
    ns["noise"] = rng.random(1_000_000)  # 8 MB, stored raw
    ns["steps"] = np.repeat(np.arange(1000.0), 1000)  # 8 MB, compresses well
    ns["mixed"] = [rng.random(200_000), np.zeros(200_000), b"x" * 3_000_000]
    c = session.commit()
    assert store_bytes(store) < 8_000_000 + 1_600_000 + 4_000_000  # steps, zeros, bytes shrank
    state = txpy.load(store, "t", c)
    assert np.array_equal(state["noise"], ns["noise"])
    assert np.array_equal(state["steps"], ns["steps"])
    assert all(np.array_equal(a, b) for a, b in zip(state["mixed"][:2], ns["mixed"][:2],
                                                     strict=True))
    assert state["mixed"][2] == ns["mixed"][2]
    assert session.repo.fsck().ok
