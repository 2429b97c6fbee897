"""Static change detection (DESIGN.md, "Change detection"): every way a cell can mutate a name
in place must land that name among the candidates. Each story runs cells through
Session.commit(candidates=track.candidates(...)) with verify mode on, which re-fingerprints
every name and fails if one changed outside the candidates; a failing cell must then roll back
to exactly the committed value."""

import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

import txpy
from txpy import track
from txpy.frontends.ipython_calls import shell_calls


@pytest.fixture
def nb(store):
    """A tiny notebook: cells run in a plain dict namespace, each one a transaction."""
    s = txpy.Session(store=store, name="nb", namespace={"__name__": "__main__"},
                     notify=lambda m: None)
    assert s.verify, "verify mode must be on in the test suite"
    yield Notebook(s)
    s.close()


class Notebook:
    def __init__(self, session):
        self.s = session
        self.ns = session.namespace
        self.s.commit()

    def cell(self, source: str):
        code = compile(textwrap.dedent(source), "<cell>", "exec")
        cand = track.candidates(code, self.ns)
        try:
            exec(code, self.ns)
        except Exception:
            self.s.rollback(cand)
            raise
        self.s.commit(kind="cell", code=source, candidates=cand)
        return cand


def names(source: str, ns: dict) -> set | None:
    """Candidates of a notebook cell (with the IPython frontend's hook for its magics)."""
    return track.candidates(compile(textwrap.dedent(source), "<cell>", "exec"), ns,
                            shell_calls)


# --- unit -------------------------------------------------------------------------------

def test_names_of_cell_and_nested_code_only_those_in_namespace():
    ns = {"a": 1, "b": 2, "unused": 3, "__name__": "__main__"}
    assert names("x = a\ndef g():\n    return [b for _ in range(2)]", ns) == {"a", "b"}


@pytest.mark.parametrize("source", [
    "globals()['a'].append(1)", "vars()['a']", "locals()['a']", "eval('a.append(1)')",
    "exec('a.append(1)')", "__import__('__main__').a.append(1)",
    "import __main__\n__main__.a.append(1)", "import sys\nsys.modules['__main__'].a",
    "from sys import modules", "import sys\nsys._getframe().f_globals['a']",
    "get_ipython().user_ns['a']", "get_ipython().run_line_magic('run', 'x.py')",
    "def f():\n    return globals()",
])
def test_dynamic_access_means_examine_everything(source):
    assert names(source, {"a": [], "__name__": "__main__"}) is None


def test_dynamic_access_hidden_in_an_earlier_function_is_found():
    ns = {"__name__": "__main__", "a": []}
    exec("def sneaky():\n    globals()['a'].append(1)", ns)
    assert names("sneaky()", ns) is None


def test_magics_that_run_no_code_are_followed_and_timeit_code_is_read():
    ns = {"__name__": "__main__", "a": [], "b": []}
    assert names("get_ipython().run_line_magic('matplotlib', 'inline')\nb.append(1)", ns) == {"b"}
    assert names("get_ipython().run_line_magic('timeit', '-n 1 -r 1 a.append(1)')", ns) == {"a"}
    assert names("get_ipython().run_cell_magic('time', '', 'a.append(1)\\n')", ns) == {"a"}
    assert names("x = get_ipython().getoutput('ls')", ns) == set()


def test_functions_classes_closures_partials_and_containers_are_followed():
    ns = {"__name__": "__main__"}
    exec(textwrap.dedent("""
        import functools
        a, b, c, d, e, f_, g = [], [], [], [], [], [], []
        def fa(): a.append(1)
        class K:
            def m(self): b.append(1)
        k = K()
        def make():
            def inner(): c.append(1)
            return inner
        closure = make()
        table = {"go": lambda: d.append(1)}
        part = functools.partial(lambda x: e.append(x), 1)
        bound = k.m
        holder = [[{"deep": lambda: f_.append(1)}]]
    """), ns)
    assert names("fa()", ns) == {"fa", "a"}
    assert names("k.m()", ns) == {"k", "K", "b"}
    assert {"closure", "c"} <= names("closure()", ns)
    assert names("table['go']()", ns) == {"table", "d"}
    assert names("part()", ns) == {"part", "e"}
    assert {"bound", "b"} <= names("bound()", ns)
    assert names("holder[0][0]['deep']()", ns) == {"holder", "f_"}


def test_a_value_too_big_to_walk_falls_back_to_every_name_notebook_code_uses():
    ns = {"__name__": "__main__"}
    exec("big = list(range(100_000))\nx = []\nhidden = []\n"
         "big.append(lambda: hidden.append(1))\ndef g(): x.append(1)", ns)
    found = names("big[-1]()", ns)
    assert found is not None and {"big", "hidden", "x", "g"} <= found


def test_a_missed_candidate_is_caught_by_the_check(nb):
    nb.cell("data = [1]\ndef f():\n    data.append(2)")
    exec("f()", nb.ns)
    with pytest.raises(AssertionError, match="'data' changed"):
        nb.s.commit(candidates={"f"})


# --- the DESIGN.md list, through Session with verify on ----------------------------------

def fails(nb, source):
    with pytest.raises(ZeroDivisionError):
        nb.cell(source + "\n1/0")


def test_mutation_through_function_defined_in_an_earlier_cell(nb):
    nb.cell("data = [1, 2]\nother = {'k': 1}")
    nb.cell("def add(x):\n    data.append(x)")
    nb.cell("add(3)")
    assert nb.ns["data"] == [1, 2, 3]
    fails(nb, "add(4)")
    assert nb.ns["data"] == [1, 2, 3]


def test_mutation_through_method_of_notebook_class(nb):
    nb.cell("log = []\nclass Counter:\n    total = []\n"
            "    def bump(self):\n        log.append(1)\n        self.total.append(1)\n"
            "c = Counter()")
    nb.cell("c.bump()")
    assert nb.ns["log"] == [1] and nb.ns["Counter"].total == [1]
    fails(nb, "c.bump()")
    assert nb.ns["log"] == [1] and nb.ns["c"].total == [1]


def test_mutation_through_closure(nb):
    nb.cell("acc = {'n': 0}\ndef make():\n    target = acc\n"
            "    def inc():\n        target['n'] += 1\n    return inc\ninc = make()")
    nb.cell("inc()")
    assert nb.ns["acc"] == {"n": 1}
    fails(nb, "inc()")
    assert nb.ns["acc"] == {"n": 1}


def test_mutation_through_closure_reading_a_global(nb):
    nb.cell("seen = []\ndef make():\n    def rec(x):\n        seen.append(x)\n    return rec\n"
            "rec = make()\ndel make")
    nb.cell("rec(1)")
    fails(nb, "rec(2)")
    assert nb.ns["seen"] == [1]


def test_mutation_through_lambda_stored_in_dict(nb):
    nb.cell("events = []\nhandlers = {'on': lambda e: events.append(e)}")
    nb.cell("handlers['on']('a')")
    assert nb.ns["events"] == ["a"]
    fails(nb, "handlers['on']('b')")
    assert nb.ns["events"] == ["a"]


def test_mutation_through_alias_inside_container(nb):
    nb.cell("inner = [1]\nbox = {'ref': inner}")
    nb.cell("box['ref'].append(2)")
    assert nb.ns["inner"] == [1, 2] and nb.ns["inner"] is nb.ns["box"]["ref"]
    fails(nb, "box['ref'].append(3)")
    assert nb.ns["inner"] == [1, 2] and nb.ns["inner"] is nb.ns["box"]["ref"]


def test_mutation_through_library_functions_given_the_object(nb):
    nb.ns["np"], nb.ns["pd"], nb.ns["torch"] = np, pd, torch
    nb.cell("a = np.zeros(4)\ndf = pd.DataFrame({'x': [1, 2], 'y': [3, 4]})\n"
            "torch.manual_seed(0)\nmodel = torch.nn.Linear(3, 2)\n"
            "opt = torch.optim.SGD(model.parameters(), lr=0.1)")
    nb.cell("np.copyto(a, np.ones(4))")
    nb.cell("df.drop(columns=['y'], inplace=True)")
    nb.cell("model(torch.ones(1, 3)).sum().backward()\nopt.step()\nopt.zero_grad()")
    before = {k: v.clone() for k, v in nb.ns["model"].state_dict().items()}
    fails(nb, "np.copyto(a, np.full(4, 7.0))\ndf.drop(columns=['x'], inplace=True)\n"
              "model(torch.ones(1, 3)).sum().backward()\nopt.step()")
    assert nb.ns["a"].tolist() == [1.0] * 4
    assert list(nb.ns["df"].columns) == ["x"]
    after = nb.ns["model"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_mutation_through_globals(nb):
    nb.cell("cfg = {'lr': 0.1}\nname = 'cfg'")
    cand = nb.cell("globals()[name]['lr'] = 0.2")
    assert cand is None
    assert nb.ns["cfg"] == {"lr": 0.2}
    fails(nb, "globals()[name]['lr'] = 0.3")
    assert nb.ns["cfg"] == {"lr": 0.2}


def test_mutation_through_method_reached_via_instance_attribute_callback(nb):
    nb.cell("hits = []\nclass Trainer:\n    def __init__(self, cb):\n        self.cb = cb\n"
            "    def run(self):\n        self.cb()\n"
            "t = Trainer(lambda: hits.append(1))")
    nb.cell("t.run()")
    fails(nb, "t.run()")
    assert nb.ns["hits"] == [1]


def test_code_reached_through_library_wrappers_generators_and_lazy_calls_is_followed():
    ns = {"__name__": "__main__"}
    exec(textwrap.dedent("""
        import contextlib, functools, torch
        a, b, c, d, e = [], [], [], [], []
        @contextlib.contextmanager
        def ctx():
            a.append(1)
            yield
        @functools.singledispatch
        def show(x):
            b.append(x)
        @torch.no_grad()
        def step():
            c.append(1)
        def produce():
            while True:
                d.append(1)
                yield
        gen = produce()
        def keep(x):
            e.append(x)
        lazy = map(keep, [1, 2])
    """), ns)
    assert {"ctx", "a"} <= names("with ctx():\n    pass", ns)
    assert {"show", "b"} <= names("show(1)", ns)
    assert {"step", "c"} <= names("step()", ns)
    assert {"gen", "d"} <= names("next(gen)", ns)
    assert {"lazy", "e"} <= names("list(lazy)", ns)


def test_reading_ipython_output_history_examines_everything():
    ns = {"__name__": "__main__", "xs": [1], "_": None, "Out": {}}
    ns["_"] = ns["xs"]
    assert names("_.append(2)", ns) is None
    assert names("Out[3].append(2)", ns) is None
    assert names("for _ in range(3):\n    xs.append(1)", ns) == {"xs", "_"}


def test_a_generator_mutating_a_global_in_a_later_cell_is_stored(nb):
    nb.cell("log = []\ndef produce():\n    while True:\n        log.append(1)\n        yield\n"
            "gen = produce()")
    nb.cell("next(gen)")  # verify mode: log must be examined
    nb.cell("next(gen)")
    assert nb.ns["log"] == [1, 1]
