"""A user module's global that a notebook name binds too (`from helpers import cache`): one
object, examined at every commit (the module's functions change it unnamed), rolled back in
place and restored as one object again (issue 14, class 5)."""

import subprocess
import sys
import textwrap

import pytest

import txpy
from txpy.transaction import Transactions

HELPERS = "import threading\ncache = []\ncounter = 0\nlock = threading.Lock()\n" \
          "numbers = (i for i in range(3))\nbox = {'gen': numbers, 'n': 1}\n\n\n" \
          "def bump():\n    global counter\n    counter += 1\n    cache.append(counter)\n"


@pytest.fixture
def helpers(tmp_path, monkeypatch):
    (tmp_path / "helpers.py").write_text(HELPERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("helpers", None)


def _cell(txns, source):
    code = compile(textwrap.dedent(source), "<cell>", "exec")
    txn = txns.begin(code, source)
    try:
        exec(code, txns.session.namespace)
    except Exception as e:
        txns.rollback(txn, e)
        return
    txns.commit(txn, kind="cell")


def test_a_module_global_bound_to_a_name_stays_one_object(helpers, tmp_path):
    store = tmp_path / ".txpy"
    ns: dict = {"__name__": "__main__"}
    with txpy.Session(store=store, name="t", namespace=ns, notify=lambda m: None) as s:
        txns = Transactions(s, "cell")
        _cell(txns, "import helpers\nfrom helpers import cache")
        _cell(txns, "helpers.bump()")  # changes `cache`, which the cell does not name
        assert s.head.writes == ("cache",)
        _cell(txns, "helpers.bump()\ncache.append('bad')\n1/0")
        assert ns["cache"] == [1] and ns["cache"] is sys.modules["helpers"].cache
        _cell(txns, "helpers.bump()")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import txpy
        ns = {{"__name__": "__main__"}}
        txpy.Session({str(store)!r}, "t", ns).restore()
        import helpers
        print(ns["cache"], ns["cache"] is helpers.cache, helpers.counter)
        print(type(helpers.lock).__name__, next(helpers.numbers),
              helpers.box["gen"] is helpers.numbers)
        helpers.bump()
        print(ns["cache"])
    """)], capture_output=True, text=True, timeout=120, cwd=tmp_path, check=True).stdout
    assert out.split("\n")[:3] == ["[1, 2] True 2", "lock 0 True", "[1, 2, 3]"]
