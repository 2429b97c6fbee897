"""The transaction layer every frontend uses: what a commit records of its transaction (read
and write sets, what each variable is), the one sweep policy, and failed commits retried."""

import json
import logging
import textwrap
import warnings

import numpy as np
import pandas as pd
import pytest

import txpy
from txpy import transaction
from txpy.transaction import Transactions


def _run(txns, source):
    """A transaction running source in the session's namespace, as a frontend would."""
    code = compile(source, "<cell>", "exec")
    txn = txns.begin(code, source)
    exec(code, txns.session.namespace)
    return txns.commit(txn, kind="cell")


def test_a_commit_records_what_its_transaction_read_and_wrote(session):
    txns = Transactions(session, "cell")
    ns = session.namespace
    _run(txns, "xs = [1]\nw = [0]\nz = 1\nk = {'a': 1}")
    _run(txns, "xs.append(len(k))\ny = 2\ndel z\nw = [0]")
    c = session.head
    assert set(c.writes) == {"xs", "y", "z", "w"}  # w: rebound, though to an equal value
    assert set(c.reads) == {"xs", "k", "w"} and "z" not in ns
    _run(txns, "print(k['a'])")
    assert session.head.id == c.id  # nothing changed: no commit


def test_a_commit_says_what_each_variable_is_without_running_user_code(session):
    ns = session.namespace
    calls = []

    class Touchy:
        def __len__(self):
            calls.append("len")
            raise RuntimeError("len")

        def __getattr__(self, name):
            calls.append(name)
            raise RuntimeError(name)

    ns.update(a=np.zeros((3, 4)), df=pd.DataFrame({"x": [1, 2], "y": ["a", "b"]}),
              xs=[1, 2, 3], t=Touchy())
    session.commit()
    kinds = session.repo.tree(session.head).kinds
    assert kinds["a"] == "ndarray float64 (3, 4)" and kinds["xs"] == "list len 3"
    assert kinds["df"].startswith("DataFrame") and kinds["df"].endswith("(2, 2)")
    assert kinds["t"].endswith("Touchy") and calls == []


def test_one_commit_in_sweep_every_examines_every_name(session, monkeypatch):
    monkeypatch.setattr(transaction, "SWEEP_EVERY", 3)
    txns = Transactions(session, "cell")
    ns = session.namespace
    ns["kept"] = []
    _run(txns, "x = 0")
    examined = []
    for i in range(6):
        _run(txns, f"x = {i + 1}")
        examined.append(session.head.stats["examined"])
    assert examined.count(max(examined)) == 2 and max(examined) > min(examined)


def test_a_failed_commit_is_retried_before_the_next_transaction(session, monkeypatch):
    txns = Transactions(session, "cell")
    ns = session.namespace
    said = []
    session.notify = said.append
    _run(txns, "xs = []")
    real = session.commit
    monkeypatch.setattr(session, "commit",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    assert _run(txns, "xs.append(1)") is None
    assert txns.unsaved is not None and any("could not save this cell" in m for m in said)
    monkeypatch.setattr(session, "commit", real)
    failing = compile("xs.append(2)\n1/0", "<cell>", "exec")
    txn = txns.begin(failing, "xs.append(2)\n1/0")  # retries the failed commit first
    assert txns.unsaved is None and txn.unsaved is None
    with pytest.raises(ZeroDivisionError):
        try:
            exec(failing, ns)
        except ZeroDivisionError as e:
            txns.rollback(txn, e)
            raise
    assert ns["xs"] == [1]  # the unsaved cell's append was saved by the retry, and kept


def test_after_a_rollback_that_failed_the_next_commit_examines_every_name(session):
    txns = Transactions(session, "cell")
    ns = session.namespace
    _run(txns, "xs = [1]\nys = [1]")
    failing = compile("xs.append(2)\nys.append(2)\n1/0", "<cell>", "exec")
    txn = txns.begin(failing, "")
    with pytest.raises(ZeroDivisionError):
        exec(failing, ns)
    real = session.rollback
    session.rollback = lambda *a: (_ for _ in ()).throw(KeyboardInterrupt())
    try:
        assert txns.rollback(txn, ZeroDivisionError()) is None  # interrupted half-way
    finally:
        session.rollback = real
    _run(txns, "z = 1")  # names neither xs nor ys: verify mode fails if they are not examined
    assert txpy.load(session.repo.path, session.name)["xs"] == [1, 2]


def test_a_name_a_library_changes_behind_the_cells_joins_the_escape_set(session, monkeypatch):
    monkeypatch.setattr(transaction, "SWEEP_EVERY", 3)
    monkeypatch.delattr(json, "keeper", raising=False)  # gone afterwards
    txns = Transactions(session, "cell")
    said = []
    session.notify = said.append
    _run(txns, textwrap.dedent("""
        import json
        seen = []
        def show(message):
            seen.append(message)
        json.keeper = show  # a library module keeps a notebook function where txpy never looks
    """))
    session.verify = False  # the miss this test is about, until the sweep finds it
    _run(txns, "json.keeper('one')")  # names json, not seen: missed...
    _run(txns, "json.keeper('two')")  # ...until this commit, a sweep, finds it
    assert session.escaped == {"seen"}
    assert any("'seen' changed outside the cells" in m for m in said), said
    session.verify = True
    _run(txns, "json.keeper('three')")  # from now on examined at every commit
    assert txpy.load(session.repo.path, session.name)["seen"] == ["one", "two", "three"]


def test_notebook_code_a_library_keeps_is_followed_at_every_commit_and_rollback(session,
                                                                                 monkeypatch):
    """A logging handler and filter, warnings.showwarning: the cells name only the library,
    yet what the notebook code it keeps changes is committed and rolled back (verify on)."""
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # put back afterwards
    monkeypatch.setattr(warnings, "filters", list(warnings.filters))
    txns = Transactions(session, "cell")
    _run(txns, textwrap.dedent("""
        import functools, logging, warnings
        records, seen, shown = [], [], []
        class ListHandler(logging.Handler):
            def __init__(self, target):
                super().__init__()
                self.target = target
            def emit(self, record):
                self.target.append(record.getMessage())
        def note(target, record):
            target.append(record.name)
            return True
        def show(message, *args, **kwargs):
            shown.append(str(message))
        logger = logging.getLogger("txpy.test.held")
        logger.addHandler(ListHandler(records))
        logger.addFilter(functools.partial(note, seen))
        logger.propagate = False
        warnings.showwarning = show
        warnings.simplefilter("always")
    """))
    try:
        _run(txns, "logging.getLogger('txpy.test.held').warning('kept')\nwarnings.warn('w')")
        assert set(session.head.writes) == {"records", "seen", "shown"}
        ns = session.namespace
        records = ns["records"]
        failing = "logging.getLogger('txpy.test.held').warning('lost')\n1/0"
        txn = txns.begin(compile(failing, "<cell>", "exec"), failing)
        with pytest.raises(ZeroDivisionError):
            exec(failing, ns)
        txns.rollback(txn, ZeroDivisionError())
        assert ns["records"] is records and records == ["kept"] and ns["seen"] == ["txpy.test.held"]
        assert txpy.load(session.repo.path, session.name)["shown"] == ["w"]
    finally:
        logger = logging.getLogger("txpy.test.held")
        logger.handlers.clear()
        logger.filters.clear()
