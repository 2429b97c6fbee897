"""Restores that bring back everything they can (issue 13, item 3): a value that needs another
name loads after it, and a value that still cannot be loaded is named in one line while every
other value comes back, in a new kernel, a new process or a rollback."""

import subprocess
import sys
import textwrap

import pytest

import txpy
from conftest import corrupt_object
from test_ipython import loaded, run, txpy_lines
from txpy.components import load_in_order

LRU_CACHE = """
import functools
@functools.lru_cache(maxsize=32)
def sq(n):
    return n * n
@functools.cache
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
sq(3), fib(20)
"""
SINGLETONS = """
class _Missing:
    def __reduce__(self):
        return "MISSING"
MISSING = _Missing()
defaults = {"lr": MISSING, "epochs": 3}
def get(key, default=MISSING):
    return defaults.get(key, default)
class Token(str):
    def __reduce__(self):
        return "EOF"
EOF = Token("<eof>")
tokens = ["a", EOF]
"""
SETSTATE = """
def clean(values):
    return [v for v in values if v is not None]
class Series:
    def __init__(self, values):
        self.values = clean(values)
    def __getstate__(self):
        return {"raw": self.values + [None]}
    def __setstate__(self, state):
        self.values = clean(state["raw"])
series = Series([1, None, 2])
"""
INIT_SUBCLASS = """
REGISTRY = {}
class Plugin:
    subclasses = []
    def __init_subclass__(cls, fmt, **kwargs):
        super().__init_subclass__(**kwargs)
        Plugin.subclasses.append(cls)
        REGISTRY[fmt] = cls
        cls.fmt = fmt
class CSV(Plugin, fmt="csv"):
    pass
"""
HOSTILE_GETATTR = """
class Touchy:
    def __init__(self):
        self.items = [1]
    def __getattr__(self, name):
        raise RuntimeError(f"getattr {name}")
touchy = Touchy()
"""


def restore_in_a_new_kernel(ip, capsys, cell):
    """Run cell with txpy on, kill the kernel, restore in a new one; the txpy lines it said."""
    loaded(ip)
    run(ip, cell)
    run(ip, "%unload_ext txpy")
    ip.reset()
    run(ip, "%load_ext txpy")
    capsys.readouterr()
    run(ip, "%txpy restore")
    return txpy_lines(capsys)


def test_an_lru_cache_function_comes_back_as_a_working_cached_function(ip, capsys):
    lines = restore_in_a_new_kernel(ip, capsys, LRU_CACHE)
    ns = ip.user_ns
    assert not [ln for ln in lines if "not restored" in ln], lines
    assert ns["sq"](4) == 16 and ns["sq"](4) == 16
    assert ns["sq"].cache_info().hits == 1 and ns["sq"].cache_info().maxsize == 32
    assert ns["fib"](90) == 2880067194370816120  # recursion through the cache: instant
    assert ns["fib"].cache_info().maxsize is None


def test_a_singleton_reducing_to_its_name_stays_one_object(ip, capsys):
    lines = restore_in_a_new_kernel(ip, capsys, SINGLETONS)
    ns = ip.user_ns
    assert not [ln for ln in lines if "not restored" in ln], lines
    assert ns["defaults"]["lr"] is ns["MISSING"] and ns["get"]("momentum") is ns["MISSING"]
    # a str subclass shares nothing with `tokens`: another component, loaded after EOF
    assert ns["tokens"][1] is ns["EOF"] and ns["EOF"] == "<eof>"
    assert type(ns["EOF"]) is ns["Token"]


def test_a_setstate_calling_a_notebook_function_loads_after_it(ip, capsys):
    lines = restore_in_a_new_kernel(ip, capsys, SETSTATE)
    assert not [ln for ln in lines if "not restored" in ln], lines
    assert ip.user_ns["series"].values == [1, 2]


def test_a_value_tried_before_the_name_it_needs_is_tried_again_after_it(session):
    ns = session.namespace
    exec(SETSTATE, ns)
    session.commit()
    repo, tree = session.repo, session.repo.tree(session.head)
    series, clean = (repo.manifest(tree.components[n]) for n in ("series", "clean"))
    fresh = {"__name__": "__main__"}
    failed = load_in_order(repo, [series], fresh, fresh.update, print)
    assert list(failed) == [("Series", "series")]
    assert isinstance(failed["Series", "series"], NameError) and "clean" in str(
        failed["Series", "series"])
    assert load_in_order(repo, [series, clean], fresh, fresh.update, print) == {}
    assert fresh["series"].values == [1, 2]


def test_subclasses_of_a_class_with_init_subclass_are_registered_once(ip, capsys):
    lines = restore_in_a_new_kernel(ip, capsys, INIT_SUBCLASS)
    ns = ip.user_ns
    assert not [ln for ln in lines if "not restored" in ln], lines
    assert ns["Plugin"].subclasses == [ns["CSV"]] and ns["REGISTRY"] == {"csv": ns["CSV"]}
    assert ns["CSV"].fmt == "csv"
    run(ip, "class JSON(Plugin, fmt='json'):\n    pass")  # the hook still works
    assert ns["Plugin"].subclasses == [ns["CSV"], ns["JSON"]] and set(ns["REGISTRY"]) == {
        "csv", "json"}


def test_an_object_whose_getattr_always_raises_restores(session, store):
    # pickle asks a bare instance for __setstate__; this __getattr__ raises RuntimeError
    ns = session.namespace
    exec(HOSTILE_GETATTR + "kept = [1, 2]", ns)
    c = session.commit()
    fresh = {"__name__": "__main__"}
    said: list[str] = []
    txpy.Session(store, "t", fresh, notify=said.append).restore(c)
    assert object.__getattribute__(fresh["touchy"], "items") == [1]
    assert fresh["kept"] == [1, 2] and said == []


def test_a_new_process_restores_every_case_into_an_empty_main_namespace(tmp_path):
    store = str(tmp_path / ".txpy")
    cells = [LRU_CACHE, SINGLETONS, SETSTATE, INIT_SUBCLASS, HOSTILE_GETATTR]
    commit = textwrap.dedent(f"""
        import txpy
        ns = {{"__name__": "__main__"}}
        s = txpy.Session({store!r}, "nb", ns)
        for cell in {cells!r}:
            exec(cell, ns)
            s.commit()
    """)
    check = textwrap.dedent(f"""
        import txpy
        ns = {{"__name__": "__main__"}}
        txpy.Session({store!r}, "nb", ns, notify=print).restore()
        assert ns["sq"](5) == 25 and ns["fib"](90) == 2880067194370816120
        assert ns["defaults"]["lr"] is ns["MISSING"] and ns["tokens"][1] is ns["EOF"]
        assert ns["series"].values == [1, 2]
        assert ns["Plugin"].subclasses == [ns["CSV"]] and ns["REGISTRY"] == {{"csv": ns["CSV"]}}
        assert object.__getattribute__(ns["touchy"], "items") == [1]
        print("ok")
    """)
    subprocess.run([sys.executable, "-c", commit], check=True, capture_output=True, timeout=120)
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.splitlines() == ["ok"], out.stdout + out.stderr


def test_modules_found_through_the_sessions_sys_path_and_directory_are_found_again(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "shapes.py").write_text("class Square:\n    side = 2\n")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "units.py").write_text("class Meter:\n    pass\n")
    store = str(tmp_path / ".txpy")
    commit = textwrap.dedent(f"""
        import sys, txpy
        sys.path.append({str(tmp_path / "lib")!r})
        import shapes, units  # units: from the working directory ("" on sys.path)
        ns = {{"__name__": "__main__", "square": shapes.Square(), "m": units.Meter(), "n": 1}}
        txpy.Session({store!r}, "nb", ns).commit()
    """)
    restore = textwrap.dedent(f"""
        import txpy
        ns = {{"__name__": "__main__"}}
        txpy.Session({store!r}, "nb", ns, notify=lambda m: print("txpy:", m)).restore()
        print(sorted(k for k in ns if k != "__name__"))
    """)
    subprocess.run([sys.executable, "-c", commit], cwd=tmp_path / "work", check=True,
                   capture_output=True, timeout=120)
    out = subprocess.run([sys.executable, "-c", restore], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.splitlines() == ["['m', 'n', 'square']"], out.stdout + out.stderr

    (tmp_path / "lib" / "shapes.py").unlink()
    (tmp_path / "lib").rmdir()
    out = subprocess.run([sys.executable, "-c", restore], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    lines = out.stdout.splitlines()
    assert lines[0].endswith(f"imported from directories that no longer exist: {tmp_path / 'lib'}")
    assert lines[1:] == [
        "txpy: not restored: square (needs the package 'shapes', which is not installed here)",
        "['m', 'n']"], out.stdout + out.stderr


def test_a_damaged_chunk_costs_only_its_variable_and_a_later_restore_retries(ip, capsys):
    ext = loaded(ip)
    run(ip, "import numpy as np\nweights = np.arange(5)\nnotes = ['keep']\nstep = 7")
    s = ext.session
    damaged = s.repo.manifest(s.repo.tree(s.head).components["weights"]).stream[0]
    store = s.repo.path
    corrupt_object(store, damaged)
    run(ip, "%unload_ext txpy")
    ip.reset()
    run(ip, "%load_ext txpy")
    capsys.readouterr()
    run(ip, "%txpy restore")
    lines = [ln for ln in txpy_lines(capsys) if "not restored" in ln]
    ns = ip.user_ns
    assert lines == [f"txpy: not restored: weights (chunk {damaged[:12]} is damaged "
                     "(hash mismatch))"]
    assert ns["notes"] == ["keep"] and ns["step"] == 7 and "weights" not in ns
    run(ip, "%txpy status")
    assert "last commit" in capsys.readouterr().out
    corrupt_object(store, damaged)  # flipped back: repaired
    run(ip, "%txpy restore")
    assert ns["weights"].tolist() == [0, 1, 2, 3, 4]
    assert not [ln for ln in txpy_lines(capsys) if "not restored" in ln]


def test_a_damaged_random_state_leaves_the_variables_restored(session, store):
    import random

    session.namespace["x"] = [1]
    c = session.commit()
    corrupt_object(store, session.repo.tree(session.head).rng)
    fresh: dict = {}
    said: list[str] = []
    random.seed(3)
    txpy.Session(store, "t", fresh, notify=said.append).restore(c)
    assert fresh == {"x": [1]} and random.random() == random.Random(3).random()
    assert len(said) == 1 and said[0].startswith("not restored: <random generators> (chunk ")


def test_rollback_names_a_value_it_cannot_load_and_rolls_back_the_rest(store):
    said: list[str] = []
    ns: dict = {"__name__": "__main__"}
    s = txpy.Session(store, "t", ns, notify=said.append)
    exec("class Fragile:\n"
         "    def __init__(self):\n"
         "        self.n = 1\n"
         "    def __setstate__(self, state):\n"
         "        raise RuntimeError('cannot come back')\n"
         "fragile = Fragile()\nxs = [1]", ns)
    s.commit()
    with pytest.raises(ZeroDivisionError), s.transaction():
        ns["fragile"] = ns["Fragile"]()
        ns["xs"].append(2)
        raise ZeroDivisionError
    assert ns["xs"] == [1]
    failed = [m for m in said if m.startswith("not restored")]
    assert failed == ["not restored: Fragile, fragile (RuntimeError: cannot come back)"], said
    s.close()
