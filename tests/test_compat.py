"""The private APIs txpy borrows (txpy.compat) still exist and still do what txpy relies on.

When one of these fails after a library upgrade, the upgrade changed something txpy reaches
into: fix txpy/compat.py (and its version range), never the test.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import types
from pathlib import Path

import cloudpickle
import pytest
from cloudpickle import cloudpickle as _cp

import txpy
from conftest import run
from txpy.compat import (
    UnsupportedVersionError,
    check_ipython,
    cloudpickle_class_setstate,
    cloudpickle_function_newargs,
    cloudpickle_function_setstate,
    cloudpickle_function_state,
    cloudpickle_make_skeleton_class,
    cloudpickle_skeleton_bases,
    cloudpickle_track_classes,
    cloudpickle_with_slots,
    cloudpickle_with_state_setter,
    copyreg_newobj,
    copyreg_slotnames,
    forget_line_magic,
    fresh_classes,
    pandas_changed_options,
    pandas_set_options,
    private,
    require,
)
from txpy.errors import TxpyError

CELL = """
import json

def make(k):
    def scaled(x, *, by=2):
        "x times k times by, as JSON"
        return json.dumps(x * k * by)
    return scaled

f = make(3)
f.tag = "kept"
"""


def test_a_closure_rebuilt_from_cloudpickles_function_state_uses_the_new_namespace():
    ns = {"__name__": "__main__"}
    run(ns, CELL)
    f = ns["f"]
    pickler = cloudpickle.Pickler(io.BytesIO())
    code, _, _, _, closure = cloudpickle_function_newargs(pickler, f)
    assert code is f.__code__ and len(closure) == len(code.co_freevars)
    with pytest.raises(ValueError):
        closure[0].cell_contents  # noqa: B018 - cells stay empty until the state fills them
    target = {"json": json}

    g = types.FunctionType(code, target, None, None, closure)
    cloudpickle_function_setstate(g, cloudpickle_function_state(f))

    assert g(1) == "6" and g(1, by=10) == "30"
    assert (g.__name__, g.__doc__, g.tag) == ("scaled", f.__doc__, "kept")
    assert g.__globals__ is target


def test_function_state_is_cloudpickles_own_without_the_globals():
    ns = {"__name__": "__main__"}
    run(ns, "import json.decoder\ndef parse(s):\n    return json.decoder.JSONDecoder().decode(s)")
    parse = ns["parse"]

    state, slotstate = cloudpickle_function_state(parse)
    theirs, their_slotstate = _cp._function_getstate(parse)

    assert state == theirs
    assert slotstate.keys() == their_slotstate.keys()
    assert slotstate["_cloudpickle_submodules"] == their_slotstate["_cloudpickle_submodules"] \
        == [sys.modules["json.decoder"]]
    assert slotstate["__globals__"] == {} and their_slotstate["__globals__"] == {"json": json}


def test_a_notebook_class_reduces_to_a_skeleton_with_its_bases():
    ns = {"__name__": "__main__"}
    run(ns, "class Base:\n    pass\nclass Child(Base):\n    pass")
    pickler = cloudpickle.Pickler(io.BytesIO())

    reduced = pickler.reducer_override(ns["Child"])

    assert cloudpickle_skeleton_bases(reduced) == (ns["Base"],)
    rebuilt = cloudpickle_make_skeleton_class(*reduced[1])
    assert rebuilt.__name__ == "Child" and rebuilt.__bases__ == (ns["Base"],)
    assert cloudpickle_skeleton_bases(pickler.reducer_override(json.JSONDecoder)) is None


def test_a_skeleton_class_reduction_takes_another_state_setter():
    ns = {"__name__": "__main__"}
    run(ns, "class Child:\n    x = 1")
    reduced = cloudpickle.Pickler(io.BytesIO()).reducer_override(ns["Child"])
    assert reduced[5] is cloudpickle_class_setstate  # what cloudpickle sets the state with
    setter = object()
    assert cloudpickle_with_state_setter(reduced, setter)[5] is setter
    assert cloudpickle_with_state_setter(reduced, setter)[:5] == reduced[:5]


def test_a_tracked_class_unpickles_as_itself_in_this_process():
    ns = {"__name__": "__main__"}
    run(ns, "class Tracked:\n    pass")
    cloudpickle_track_classes([ns["Tracked"]()], "__main__")
    data = cloudpickle.dumps(ns["Tracked"])
    assert cloudpickle.loads(data) is ns["Tracked"]


def test_pandas_options_changed_from_their_defaults_are_read_and_set():
    pd = pytest.importorskip("pandas")
    before = pandas_changed_options(pd)
    with pd.option_context("display.max_rows", 7):
        changed = pandas_changed_options(pd)
        assert changed.get("display.max_rows") == 7
    assert pandas_changed_options(pd) == before
    pandas_set_options(pd, changed)
    try:
        assert pd.get_option("display.max_rows") == 7
    finally:
        pandas_set_options(pd, before)
    assert pandas_changed_options(pd) == before


def test_slotnames_caches_what_pickling_an_instance_would():
    class Slotted:
        __slots__ = ("a", "b")

    assert copyreg_slotnames(Slotted) == ["a", "b"]
    assert Slotted.__dict__["__slotnames__"] == ["a", "b"]


def test_newobj_is_the_constructor_pickle_itself_uses():
    class Point:
        def __init__(self, x):
            self.x = x

    assert Point(1).__reduce_ex__(5)[0] is copyreg_newobj
    bare = copyreg_newobj(Point)
    assert type(bare) is Point and not hasattr(bare, "x")


def test_a_forgotten_line_magic_is_gone_from_the_shell(ip):
    from IPython.core.magic import Magics, line_magic, magics_class

    @magics_class
    class ProbeMagics(Magics):
        @line_magic
        def compat_probe(self, line):
            return "probed"

    ip.register_magics(ProbeMagics)
    assert ip.run_line_magic("compat_probe", "") == "probed"

    forget_line_magic(ip, "compat_probe", ProbeMagics.__name__)

    assert ip.find_line_magic("compat_probe") is None
    assert "compat_probe" not in ip.magics_manager.lsmagic()["line"]
    assert "ProbeMagics" not in ip.magics_manager.registry


def test_an_unsupported_version_is_named_with_what_to_install():
    require("cloudpickle", "3.1.3", range(3, 4), "cloudpickle>=3,<4")
    require("IPython", "8.12.0", range(8, 10), "ipython>=8,<10")

    with pytest.raises(UnsupportedVersionError) as caught:
        require("cloudpickle", "4.0.0", range(3, 4), "cloudpickle>=3,<4")

    assert str(caught.value) == ("txpy relies on private parts of cloudpickle 3.x, and this is "
                                 "cloudpickle 4.0.0: pip install 'cloudpickle>=3,<4'")
    assert isinstance(caught.value, TxpyError) and isinstance(caught.value, ImportError)
    with pytest.raises(UnsupportedVersionError, match=r"IPython 8\.x or 9\.x.* 10\.0\.dev1"):
        require("IPython", "10.0.dev1", range(8, 10), "ipython>=8,<10")


def test_a_missing_private_name_is_named_with_its_library_and_version():
    with pytest.raises(UnsupportedVersionError, match=r"^cloudpickle 3\.9 has no "
                       r"cloudpickle\.cloudpickle\.Pickler\._gone, which txpy relies on"):
        private(_cp.Pickler, "_gone", "cloudpickle", "3.9")


def test_an_unsupported_ipython_is_refused_before_its_tables_are_touched(ip, monkeypatch):
    import IPython

    monkeypatch.setattr(IPython, "__version__", "10.0.0")
    with pytest.raises(UnsupportedVersionError, match="this is IPython 10.0.0"):
        check_ipython()
    with pytest.raises(UnsupportedVersionError):
        forget_line_magic(ip, "alias", "OSMagics")
    assert ip.find_line_magic("alias") is not None


@pytest.mark.parametrize(("tamper", "message"), [
    ("cloudpickle.__version__ = '4.0.0'", "this is cloudpickle 4.0.0"),
    ("del cloudpickle.cloudpickle._function_setstate",
     "has no cloudpickle.cloudpickle._function_setstate"),
])
def test_importing_txpy_against_a_changed_cloudpickle_fails_in_one_clear_line(tamper, message):
    src = Path(txpy.__file__).parents[1]
    code = f"import cloudpickle\n{tamper}\nimport txpy"

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(src)}, timeout=120)

    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("txpy.compat.UnsupportedVersionError: ") and message in last


def test_a_skeleton_class_made_with_slots_has_slot_descriptors():
    ns = {"__name__": "__main__"}
    exec("class P:\n    __slots__ = ('x',)\n", ns)
    cls = ns["P"]
    reduced = cloudpickle_with_slots(
        cloudpickle.Pickler(io.BytesIO()).reducer_override(cls), ("x",))
    assert cloudpickle_skeleton_bases(reduced) == (object,)
    rebuilt = reduced[0](*reduced[1])
    assert "x" in vars(rebuilt) and not hasattr(rebuilt(), "__dict__")


def test_fresh_classes_unpickles_a_class_by_value_as_a_new_class():
    ns = {"__name__": "__main__"}
    exec("class K:\n    pass\n", ns)
    data = cloudpickle.dumps(ns["K"])
    assert cloudpickle.loads(data) is ns["K"]  # what the tracker does, and fresh_classes undoes
    with fresh_classes():
        assert cloudpickle.loads(data) is not ns["K"]
    assert cloudpickle.loads(data) is ns["K"]
