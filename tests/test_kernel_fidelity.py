"""Fidelity, class by class, in real kernels (issue "fidelity"): for each class of notebook
state, a notebook sets it up, a failing cell mutates it and is rolled back, a successful cell
mutates it, then the kernel is killed with SIGKILL and a new kernel restores it. After the
rollback the state must be exactly what it was before the failing cell, and after the restore
exactly what it was before the kill, compared by a deep digest of every name and of the
global state (tests/kernel_digest.py, run inside the kernel: no pickle, no txpy), identity and
sharing included. Cells of checks (identity, links) must print True at every stage."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from test_jupyter_kernel import execute, kernel, ok, sigkill

TESTS = str(Path(__file__).resolve().parent)


@dataclass
class Pattern:
    id: str
    setup: list[str]  # cells, one by one, as a user would
    failing: str  # mutations; the test appends 1/0
    success: list[str]  # the mutations that stay
    checks: list[str] = field(default_factory=list)  # expressions True at every stage
    live_checks: list[str] = field(default_factory=list)  # True while the kernel lives
    modules: list[str] = field(default_factory=list)  # user modules to digest
    files: dict[str, str] = field(default_factory=dict)  # written beside the notebook
    needs: tuple[str, ...] = ()  # libraries the notebook imports
    #: digest entries not compared for this class
    not_compared: tuple[str, ...] = ()


UNNAMED = Pattern(
    "mutation-through-unnamed",
    setup=[
        "import contextlib, functools, logging\n"
        "log = []\n"
        "def traced(f):\n"
        "    @functools.wraps(f)\n"
        "    def wrapper(*args, **kwargs):\n"
        "        log.append(('call', f.__name__))\n"
        "        return f(*args, **kwargs)\n"
        "    return wrapper\n"
        "@traced\n"
        "def work(x):\n"
        "    log.append(x)\n"
        "    return x\n"
        "@contextlib.contextmanager\n"
        "def scope(tag):\n"
        "    log.append(('enter', tag))\n"
        "    yield\n"
        "    log.append(('exit', tag))",
        "def produce():\n"
        "    for i in range(3):\n"
        "        log.append(('gen', i))\n"
        "        yield i\n"
        "gen = produce()\n"
        "sink = []\n"
        "mapped = map(sink.append, range(3))",
        "class ListHandler(logging.Handler):\n"
        "    def __init__(self, target):\n"
        "        super().__init__()\n"
        "        self.target = target\n"
        "    def emit(self, record):\n"
        "        self.target.append(record.getMessage())\n"
        "records = []\n"
        "logging.getLogger('nb').addHandler(ListHandler(records))\n"
        "logging.getLogger('nb').propagate = False",
    ],
    failing="work(7)\n"
            "with scope('bad'):\n"
            "    log.append('inside')\n"
            "logging.getLogger('nb').warning('lost')\n"
            "list(mapped)",
    success=["work(1)\n"
             "with scope('ok'):\n"
             "    log.append('inside')",
             "drained = list(gen)",
             "n_mapped = len(list(mapped))",
             "logging.getLogger('nb').warning('x')"],
    checks=["work.__wrapped__.__name__ == 'work'", "log is log"],
    live_checks=["logging.getLogger('nb').handlers[0].target is records"],
)

SHARED_MEMORY = Pattern(
    "shared-memory",
    needs=("numpy", "torch"),
    setup=["import numpy as np, torch\n"
           "base = np.arange(10.)\n"
           "view = base[2:5]\n"
           "view2 = base[5:8]\n"
           "arr = np.ones(4)\n"
           "t = torch.from_numpy(arr)\n"
           "tv = t[1:3]"],
    failing="view[:] = 7\n"
            "np.multiply(view, 3, out=view2)\n"
            "t.mul_(5)\n"
            "tv.add_(1)",
    success=["view[:] = -1", "np.multiply(view, 2, out=view2)", "t.add_(1)", "tv.mul_(3)"],
    checks=["view.base is base", "view2.base is base", "np.shares_memory(arr, t.numpy())",
            "bool((base[2:5] == view).all() and (base[5:8] == view2).all())",
            "bool((t.numpy() == arr).all())", "tv.untyped_storage().data_ptr() == "
            "t.untyped_storage().data_ptr() == arr.__array_interface__['data'][0]"],
)

UNSTORABLE = Pattern(
    "stored-through-unstorable",
    setup=["import threading\n"
           "class Box:\n"
           "    def __init__(self):\n"
           "        self.lock = threading.Lock()\n"
           "        self.items = []\n"
           "box = Box()",
           "def countdown():\n"
           "    yield 1\n"
           "holder = {'gen': countdown(), 'items': []}",
           "class Feed:\n"
           "    def __init__(self):\n"
           "        self.source = countdown()\n"
           "        self.items = []\n"
           "feed = Feed()"],
    failing="box.items.append('bad')\nholder['items'].append('bad')\nfeed.items.append('bad')",
    success=["box.items.append(1)", "holder['items'].append(2)", "feed.items.append(3)"],
    checks=["box.lock.acquire(False) and (box.lock.release() or True)",
            "isinstance(box, Box)", "isinstance(feed, Feed)"],
)

GLOBAL_STATE = Pattern(
    "global-state",
    needs=("numpy", "pandas", "torch"),
    setup=["import logging, random, warnings\n"
           "import numpy as np, pandas as pd, torch",
           "random.seed(1); np.random.seed(2); torch.manual_seed(3)\n"
           "draws = [random.random(), float(np.random.rand()), float(torch.rand(1))]"],
    failing="warnings.filterwarnings('ignore', category=DeprecationWarning)\n"
            "logging.getLogger('x').setLevel(logging.ERROR)\n"
            "np.seterr(all='raise')\n"
            "np.set_printoptions(precision=3)\n"
            "torch.set_default_dtype(torch.float64)\n"
            "torch.set_grad_enabled(False)\n"
            "pd.set_option('display.max_rows', 7)\n"
            "draws += [random.random(), float(np.random.rand()), float(torch.rand(1))]",
    success=["warnings.filterwarnings('ignore', category=DeprecationWarning)\n"
             "logging.getLogger('x').setLevel(logging.ERROR)\n"
             "np.seterr(all='raise')\n"
             "np.set_printoptions(precision=3)\n"
             "torch.set_default_dtype(torch.float64)\n"
             "pd.set_option('display.max_rows', 7)",
             "draws += [random.random(), float(np.random.rand()), float(torch.rand(1))]"],
    not_compared=(),
)

USER_MODULES = Pattern(
    "user-modules",
    files={"helpers.py": "cache = []\ncounter = 0\n\n\ndef bump():\n    global counter\n"
                         "    counter += 1\n    cache.append(counter)\n"},
    setup=["import helpers", "helpers.bump()", "from helpers import cache"],
    failing="helpers.bump()\ncache.append('bad')\nhelpers.counter = 99",
    success=["helpers.bump()", "cache.append(5)"],
    checks=["cache is helpers.cache"],
    modules=["helpers"],
)

IDENTITY = Pattern(
    "rollback-identity",
    setup=["d = {}\nkey = [1]\nd['k'] = key\nregistry = {id(d): d}",
           "def make():\n"
           "    n = 0\n"
           "    def inc():\n"
           "        nonlocal n\n"
           "        n += 1\n"
           "        return n\n"
           "    def get():\n"
           "        return n\n"
           "    return inc, get\n"
           "inc, get = make()",
           "plugins = []\n"
           "class Base:\n"
           "    def __init_subclass__(cls, **kwargs):\n"
           "        super().__init_subclass__(**kwargs)\n"
           "        plugins.append(cls)\n"
           "class PluginA(Base):\n"
           "    pass",
           "import functools, logging, weakref\n"
           "seen = []\n"
           "def note(target, record):\n"
           "    target.append(record.getMessage())\n"
           "    return True\n"
           "flt = functools.partial(note, seen)\n"
           "logging.getLogger('nb6').addFilter(flt)\n"
           "logging.getLogger('nb6').addHandler(logging.NullHandler())\n"
           "logging.getLogger('nb6').propagate = False\n"
           "class Node:\n"
           "    pass\n"
           "node = Node()\n"
           "logging.getLogger('nb6').nodes = weakref.WeakValueDictionary({'n': node})"],
    failing="d['new'] = 1\nkey.append(2)\ninc()\n"
            "class PluginB(Base):\n    pass\n"
            "logging.getLogger('nb6').warning('lost')\n"
            "node.tag = 'bad'",
    success=["d['new'] = 1\nkey.append(2)", "inc()",
             "class PluginB(Base):\n    pass",
             "logging.getLogger('nb6').warning('kept')", "node.tag = 'ok'"],
    checks=["inc() == get()", "list(registry.values())[0] is d", "d['k'] is key",
            "plugins[0] is PluginA", "PluginA.__mro__[1] is Base", "flt.args[0] is seen",
            "type(node) is Node"],
    live_checks=["registry[id(d)] is d", "logging.getLogger('nb6').filters[0] is flt",
                 "logging.getLogger('nb6').nodes.get('n') is node"],
)

VALUES = Pattern(
    "values-that-differ",
    needs=("matplotlib", "torch"),
    setup=["class Point:\n"
           "    __slots__ = ('x', 'y')\n"
           "    def __init__(self, x, y):\n"
           "        self.x, self.y = x, y\n"
           "p = Point(1, 2)",
           "def make():\n"
           "    count = 0\n"
           "    def bump():\n"
           "        nonlocal count\n"
           "        count += 1\n"
           "        return count\n"
           "    def peek():\n"
           "        return count\n"
           "    return bump, peek\n"
           "bump, peek = make()",
           "buf = bytearray(b'abc')\nmv = memoryview(buf)",
           "import matplotlib.pyplot as plt\n"
           "fig, ax = plt.subplots()\n"
           "line, = ax.plot([1, 2])",
           "import torch\nw = torch.ones(3, requires_grad=True)"],
    failing="p.x = 10\nbump()\nmv[0] = ord('z')\nline.set_ydata([3, 4])\nax.set_title('bad')\n"
            "(w * 2).sum().backward()\n"
            "with torch.no_grad():\n    w.mul_(5)",
    success=["p.x = 3", "bump()", "mv[1] = ord('q')", "line.set_ydata([5, 6])",
             "ax.set_title('ok')", "(w * 3).sum().backward()",
             "with torch.no_grad():\n    w.add_(1)"],
    checks=["line.axes is ax and ax.figure is fig and line.figure is fig",
            "ax in fig.axes and line in ax.lines", "mv.obj is buf", "bump() == peek()",
            "type(p) is Point and not hasattr(p, '__dict__')", "w.requires_grad and w.is_leaf",
            "w.grad is None or w.grad.shape == w.shape"],
)

SETTINGS = Pattern(
    "robustness-to-settings",
    setup=["import warnings\nwarnings.filterwarnings('error')",
           "import signal, sys\n"
           "sys.setrecursionlimit(200)\n"
           "def on_interrupt(signum, frame):\n"
           "    pass\n"
           "signal.signal(signal.SIGINT, on_interrupt)",
           "def ticks():\n"
           "    yield 1\n"
           "class Feed:\n"
           "    def __init__(self):\n"
           "        self.source = ticks()\n"
           "        self.items = []\n"
           "feed = Feed()\n"
           "nums = [1, 2, 3]",
           "deep = []\n"
           "cur = deep\n"
           "for level in range(150):\n"
           "    cur.append([])\n"
           "    cur = cur[0]"],
    failing="nums.append(4)\ncur.append('bad')\nlate = 'bad'",
    success=["nums.append(5)", "feed.items.append(1)", "late = {'a': [1, 2]}",
             "cur.append('leaf')"],
    checks=["isinstance(feed, Feed) and isinstance(feed.items, list)"],
)


CASES = [pytest.param(p, id=p.id) for p in [
    UNNAMED, SHARED_MEMORY, UNSTORABLE, GLOBAL_STATE, USER_MODULES, IDENTITY, VALUES, SETTINGS]]


def _digest(kc, pattern):
    out = ok(kc, f"print(__import__('kernel_digest').report(globals(), {pattern.modules!r}))")
    return json.loads(out.strip().splitlines()[-1])


def _where(a: str, b: str) -> str:
    """Both canonical structures around their first difference."""
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
             min(len(a), len(b)))
    lo = max(0, i - 150)
    return f"\n      was: ...{a[lo:i + 150]}...\n      now: ...{b[lo:i + 150]}..."


def _assert_same(was, now, stage, leave_out):
    a = {k: v for k, v in was["names"].items() if k not in leave_out}
    b = {k: v for k, v in now["names"].items() if k not in leave_out}
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    lines = []
    for k in differ:
        if k not in b:
            lines.append(f"  {k}: missing after {stage}")
        elif k not in a:
            lines.append(f"  {k}: appeared after {stage}")
        else:
            lines.append(f"  {k}: differs" + _where(was["canonical"][k], now["canonical"][k]))
    assert not differ, f"not the same after {stage}: {differ}\n" + "\n".join(lines)


def _check(kc, exprs, stage):
    if not exprs:
        return
    out = ok(kc, "print(" + ", ".join(f"bool({e})" for e in exprs) + ")").split()
    wrong = [e for e, v in zip(exprs, out, strict=True) if v != "True"]
    assert not wrong, f"after {stage}, False: {wrong}"


@pytest.mark.parametrize("pattern", CASES)
def test_a_class_of_state_rolls_back_and_restores_exactly(pattern, tmp_path, monkeypatch):
    for library in pattern.needs:
        pytest.importorskip(library)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [TESTS, *filter(None, [os.environ.get("PYTHONPATH")])]))  # for kernel_digest
    for name, text in pattern.files.items():
        (tmp_path / name).write_text(text)

    with kernel(tmp_path) as (km, kc):
        ok(kc, "%load_ext txpy")
        for cell in pattern.setup:
            ok(kc, cell)
        _check(kc, pattern.checks + pattern.live_checks, "the setup")
        before = _digest(kc, pattern)

        status, _, err = execute(kc, pattern.failing + "\n1/0")
        assert status == "error" and "rolled back" in err, err
        _assert_same(before, _digest(kc, pattern), "the rollback", pattern.not_compared)
        _check(kc, pattern.checks + pattern.live_checks, "the rollback")

        for cell in pattern.success:
            ok(kc, cell)
        _check(kc, pattern.checks + pattern.live_checks, "the successful cells")
        expected = _digest(kc, pattern)
        assert "every cell is durable" in ok(kc, "%txpy wait")
        sigkill(km)

    with kernel(tmp_path) as (km, kc):
        ok(kc, "%load_ext txpy")
        status, out, err = execute(kc, "%txpy restore")
        assert status == "ok" and "restored" in out, err
        assert not [line for line in err.splitlines() if "verify" in line], err
        restored = _digest(kc, pattern)
        # a name bound to a generator is not stored (txpy says so): the rest must be exact
        unstored = [n for n in expected["unstorable"] if n not in restored["names"]]
        _assert_same(expected, restored, "the restore", (*pattern.not_compared, *unstored))
        _check(kc, pattern.checks, "the restore")
