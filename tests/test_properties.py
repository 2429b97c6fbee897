"""Property tests: whatever the values and their sharing, a restore equals what was committed,
and a rolled-back transaction leaves the namespace exactly as before it."""

import math
import shutil
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import txpy

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                    st.binary(max_size=8),
                    st.floats(allow_nan=False).filter(lambda f: not math.isinf(f)))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4),
    st.tuples(inner, inner)), max_leaves=20)
names = st.lists(st.from_regex(r"[a-z]{1,6}", fullmatch=True), min_size=1, max_size=6,
                 unique=True)


def _aliases(namespace):
    """For each pair of names, whether their values are the same object (sharing structure)."""
    ks = sorted(namespace)
    return {(a, b): namespace[a] is namespace[b] for a in ks for b in ks if a < b}


def _snapshot(namespace):
    import pickle

    return {k: pickle.dumps(v) for k, v in namespace.items()}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=names, data=st.data())
def test_restore_equals_commit_with_sharing_kept(names, data):
    ns = {}
    for n in names:
        if ns and data.draw(st.booleans(), label="alias"):
            ns[n] = ns[data.draw(st.sampled_from(sorted(ns)), label="of")]
        else:
            ns[n] = data.draw(st.lists(values, max_size=3), label=n)  # a mutable container
    root = tempfile.mkdtemp()
    try:
        s = txpy.Session(f"{root}/.txpy", "p", ns, notify=lambda m: None)
        cid = s.commit()
        state = txpy.load(f"{root}/.txpy", "p", cid)
        s.close()
    finally:
        shutil.rmtree(root)
    assert {k: v for k, v in state.items() if not k.startswith("__")} == ns
    assert _aliases({k: state[k] for k in ns}) == _aliases(ns)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial=st.dictionaries(st.from_regex(r"[a-z]{1,4}", fullmatch=True),
                               st.lists(values, max_size=3), min_size=1, max_size=5),
       data=st.data())
def test_failed_transaction_leaves_namespace_as_before(initial, data):
    ns = dict(initial)
    root = tempfile.mkdtemp()
    try:
        s = txpy.Session(f"{root}/.txpy", "p", ns, notify=lambda m: None)
        s.commit()
        before = _snapshot(ns)
        aliases = _aliases(ns)
        try:
            with s.transaction():
                for _ in range(data.draw(st.integers(1, 5), label="steps")):
                    target = data.draw(st.sampled_from(sorted(ns)), label="target")
                    action = data.draw(st.sampled_from(["append", "clear", "rebind", "delete",
                                                        "new"]), label="action")
                    if action == "append" and isinstance(ns.get(target), list):
                        ns[target].append(data.draw(values, label="item"))
                    elif action == "clear" and isinstance(ns.get(target), list):
                        ns[target].clear()
                    elif action == "rebind":
                        ns[target] = data.draw(values, label="value")
                    elif action == "delete" and len(ns) > 1:
                        del ns[target]
                    else:
                        ns["zz_new"] = [1]
                raise RuntimeError("the cell fails")
        except RuntimeError:
            pass
        s.close()
    finally:
        shutil.rmtree(root)
    assert _snapshot(ns) == before
    assert _aliases(ns) == aliases


DTYPES = ["float64", "float32", "float16", "int64", "uint16", "int8", "bool", "complex128",
          "datetime64[ns]", "timedelta64[s]", [("a", "<i4"), ("b", "<f8")]]  # last: 12 bytes


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(DTYPES), size=st.integers(70_000, 400_000), seed=st.integers(0, 99),
       kind=st.sampled_from(["random", "smooth", "constant"]))
def test_numeric_arrays_restore_bit_for_bit_whatever_their_compression(dtype, size, seed, kind):
    """Chunks are compressed raw, plain or by byte planes depending on the data: the restore
    must be exact in every case, including item sizes that do not divide a chunk."""
    import numpy as np

    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if kind == "random":
        value = rng.integers(0, 256, size * dtype.itemsize, dtype=np.uint8).view(dtype)
    else:
        step = np.arange(size) * (kind == "smooth") + seed
        value = np.zeros(size, dtype)
        for field in dtype.names or [None]:
            target = value[field] if field else value
            with np.errstate(over="ignore", invalid="ignore"):  # float16 overflows: inf
                target[...] = (step % 2 if target.dtype == bool else step).astype(target.dtype)
    root = tempfile.mkdtemp()
    try:
        with txpy.Session(f"{root}/.txpy", "p", {"a": value}, notify=lambda m: None) as s:
            cid = s.commit()
        restored = txpy.load(f"{root}/.txpy", "p", cid)["a"]
    finally:
        shutil.rmtree(root)
    assert restored.dtype == value.dtype and restored.tobytes() == value.tobytes()


def _groups_from_scratch(reached):
    """Connected components of names linked by a shared id: the plain, whole-session way."""
    groups = [{name} for name in reached]
    for ids in {i for s in reached.values() for i in s}:
        touching = [g for g in groups if any(ids in reached[n] for n in g)]
        groups = [g for g in groups if g not in touching] + [set().union(*touching)]
    return sorted(tuple(sorted(g)) for g in groups)


id_sets = st.sets(st.integers(0, 12), max_size=5)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from("abcdef"), st.none() | id_sets), max_size=25),
       fresh=st.dictionaries(st.sampled_from("abcdef"), id_sets, max_size=3),
       unstored=st.sets(st.sampled_from("abcdef"), max_size=2), pairwise=st.booleans())
def test_incremental_grouping_equals_grouping_from_scratch(steps, fresh, unstored, pairwise):
    """Names set and dropped one at a time, then some examined afresh: the groups are those a
    computation over every name's current ids gives (both ways of comparing examined names)."""
    from txpy import graph

    index, known = graph.SharingIndex(), {}
    for name, ids in steps:
        if ids is None:
            index.discard(name)
            known.pop(name, None)
        else:
            index.set(name, ids)
            known[name] = ids
    reached = {n: ids for n, ids in known.items() if n not in unstored} | fresh
    default, graph.PAIRWISE_UP_TO = graph.PAIRWISE_UP_TO, (16 if pairwise else 0)
    try:
        assert index.groups(reached, fresh) == _groups_from_scratch(reached)
    finally:
        graph.PAIRWISE_UP_TO = default


CELLS = [
    "lst.append({k})",
    "d['k{k}'] = [{k}]",
    "x = {k}",
    "view[0] = {k}",  # a numpy view: the change is in arr's memory too
    "add({k})",  # a notebook function appending to a global
    "nested['inner'].append({k})",
    "alias = lst",
    "lst = list(lst)",
    "t = (lst, d)",
    "lst.append({k})\nd.clear()\n1 / 0",  # fails half-way
    "x = -{k}\narr[:] = {k}\nraise ValueError('no')",  # fails after rebinding and writing
    "lib.items.append({k})",  # a library object with pickling of its own, sharing lst
    "lib.n = {k}\nlst.append({k})\n1 / 0",
    "lib = {k}\nlst.append({k})\n1 / 0",  # rebinds the library object, mutates what it held
]

SETUP = ("import numpy as np, types\nlst = [0]\nd = {'a': [1]}\nx = 0\narr = np.zeros(6)\n"
         "view = arr[2:5]\nnested = {'inner': lst}\nlib = types.SimpleNamespace(items=lst, n=0)\n"
         "def add(v):\n    lst.append(v)\n")


def _seen(ns):
    """What the variables hold, as plain data, with which of them share objects."""
    import numpy as np

    out = {}
    for k, v in ns.items():
        if k.startswith("__") or callable(v) or k in ("np", "types"):
            continue
        out[k] = v.tolist() if isinstance(v, np.ndarray) else repr(v)
    ids = {k: id(v) for k, v in ns.items() if k in out}
    out["(shared)"] = sorted((a, b) for a in ids for b in ids if a < b and ids[a] == ids[b])
    if "view" in ns:
        out["(view of arr)"] = np.shares_memory(ns["view"], ns["arr"])
        out["(nested holds lst)"] = ns["nested"]["inner"] is ns["lst"]
        lib = ns.get("lib")
        out["(lib holds lst)"] = getattr(lib, "items", None) is ns["lst"]
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells=st.lists(st.tuples(st.sampled_from(CELLS), st.integers(1, 9)), min_size=1,
                      max_size=7))
def test_random_notebooks_in_the_background_restore_and_roll_back_exactly(cells):
    """Cells over shared lists, views, notebook functions and failing cells, each captured by
    a forked child while the next runs: every failing cell leaves the namespace as before it,
    and a restore of the last commit equals the namespace after the last cell."""
    from txpy import background
    from txpy.transaction import Transactions

    fork_cost, background.FORK_COST = background.FORK_COST, 0.0
    root = tempfile.mkdtemp()
    try:
        ns = {"__name__": "__main__"}
        s = txpy.Session(f"{root}/.txpy", "p", ns, durability="background",
                         notify=lambda m: None)
        txns = Transactions(s, "cell", background=True)
        for code in [SETUP] + [c.format(k=k) for c, k in cells]:
            before = _seen(ns)
            txn = txns.begin()
            compiled = compile(code, "<cell>", "exec")
            txns.note(txn, compiled, code)
            try:
                exec(compiled, ns)
            except (ZeroDivisionError, ValueError) as e:
                assert txns.rollback(txn, e) is not None
                assert _seen(ns) == before, code
                continue
            txns.commit(txn, kind="cell")
        s.wait()
        after = _seen(ns)
        s.close()
        restored = {"__name__": "__main__"}
        with txpy.Session(f"{root}/.txpy", "p", restored, notify=lambda m: None) as again:
            again.restore()
        assert _seen(restored) == after
    finally:
        background.FORK_COST = fork_cost
        shutil.rmtree(root)
