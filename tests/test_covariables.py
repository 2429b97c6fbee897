"""Co-variable grouping: shared objects join names, independent values stay apart."""

import numpy as np
import pandas as pd

import txpy
from conftest import run
from txpy import encode


def _components(session):
    tree = session.repo.tree(session.head)
    groups: dict[str, set[str]] = {}
    for name, key in tree.components.items():
        groups.setdefault(key, set()).add(name)
    return sorted(sorted(g) for g in groups.values())


def test_independent_values_are_separate_components(session):
    ns = session.namespace
    ns.update(df1=pd.DataFrame({"a": [1.0, 2.0]}), df2=pd.DataFrame({"a": [1.0, 2.0]}),
              l1=[1, 2], l2=[1, 2], arr=np.arange(3), f=np.float64(1.5))
    session.commit()
    session.commit()  # the grouping is stable from one commit to the next
    assert _components(session) == [["arr"], ["df1"], ["df2"], ["f"], ["l1"], ["l2"]]


def test_sharing_inside_big_values_is_found(session, store):
    ns = session.namespace
    shared = [0]
    big = [list(range(50)) for _ in range(20_000)] + [shared]  # pickles to > MEMO_LIMIT
    obj_array = np.empty(2, dtype=object)
    obj_array[0], obj_array[1] = shared, "text"
    ns.update(big=big, alias=shared, in_array=obj_array, apart=[0])
    assert len(encode.encode(big, ns, collect_shared=False).stream) > encode.MEMO_LIMIT
    c = session.commit()
    assert ["alias", "big", "in_array"] in _components(session)
    state = txpy.load(store, "t", c)
    assert state["big"][-1] is state["alias"] is state["in_array"][0]


def test_a_cell_that_creates_sharing_merges_components(session, store):
    ns = session.namespace
    ns.update(a=[1], b={"k": None})
    session.commit()
    ns["b"]["k"] = ns["a"]
    c = session.commit(candidates={"b"})
    assert ["a", "b"] in _components(session)
    state = txpy.load(store, "t", c)
    assert state["b"]["k"] is state["a"]


def test_pickling_temporaries_are_not_remembered_as_shared():
    from txpy.knowledge import persistent

    temporaries = []

    class Odd:
        def __init__(self, payload):
            self.payload = payload

        def __reduce__(self):  # a fresh list each time: a temporary of the pickler
            args = [self.payload]
            temporaries.append(id(args))
            return Odd, (args,)

    kept = [1]
    value = Odd(kept)
    shared = encode.encode(value, {}, collect_shared=True).shared
    assert temporaries[0] in shared
    ids = persistent(shared)
    assert id(value) in ids and id(kept) in ids and temporaries[0] not in ids
    assert shared == {}


_LIBRARY_CACHE: list = []


class Cached:
    """Its reducer's argument list outlives the pickling in a cache, as library caches do."""

    def __init__(self, payload=None):
        self.payload = payload

    def __reduce__(self):
        args = [0]
        _LIBRARY_CACHE.append(args)
        return Cached, (args,)


def test_an_object_freed_after_its_commit_does_not_join_names_later(session):
    ns = session.namespace
    ns["a"] = Cached()
    session.commit()
    _LIBRARY_CACHE.clear()  # the cached list dies; a new list may take its address
    ns["b"] = [[0] for _ in range(50)]
    session.commit(candidates={"b"})
    assert _components(session) == [["a"], ["b"]]


class WithDefaults:
    """A library class whose instances all refer to one class-level default."""

    shared_default: list = []

    def __init__(self):
        self.options = WithDefaults.shared_default


def test_a_library_class_default_every_instance_holds_does_not_join_names(session, store):
    ns = session.namespace
    ns.update(a=WithDefaults(), b=WithDefaults(), c=[1])
    ns["d"] = ns["c"]
    session.commit()
    assert _components(session) == [["a"], ["b"], ["c", "d"]]
    state = txpy.load(store, "t")
    assert state["a"].options == [] and state["c"] is state["d"]


def test_class_defaults_of_a_class_made_in_any_namespace_stay_shared(store):
    # a namespace without __name__ gives its classes __module__ "builtins": still user state
    ns: dict = {}
    run(ns, """
        class Options:
            defaults = []
        a, b = Options(), Options()
        a.opts = b.opts = Options.defaults
    """)
    with txpy.Session(store, "t", ns, notify=lambda m: None) as s:
        cid = s.commit()
    state = txpy.load(store, "t", cid)
    assert state["a"].opts is state["b"].opts is state["Options"].defaults


def test_frames_with_string_columns_stay_apart_and_real_sharing_still_joins(session, store):
    # pandas hands string columns and labels one cached dtype object: a descriptor, not a link
    ns = session.namespace
    df = pd.DataFrame({"A": np.arange(100.0)},
                      index=pd.date_range("2024-01-01", periods=100, freq="min"))
    df["E"] = np.where(df["A"] > 50, "up", "down")
    ns.update(df=df, summary=df.describe(), pivot=df.groupby("E")[["A"]].agg(["mean"]),
              ranked=df["A"].rank())
    c = session.commit()
    assert _components(session) == [["df", "ranked"], ["pivot"], ["summary"]]
    state = txpy.load(store, "t", c)
    assert state["ranked"].index._data is state["df"].index._data  # shared, as before
