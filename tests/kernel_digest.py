"""A deep digest of a notebook's namespace and of the global state its results depend on, run
inside the kernel under test (test_kernel_fidelity imports it there).

Independent of what it checks: no pickle, and of txpy only its table of unstorable types.
Each user name is walked into a canonical structure (type, value, attributes, contents...)
and hashed. Identity is part of it: the second
time one object is reached anywhere (under any name, in any global state walked after them),
the walk emits a back-reference ``("@", path)`` to where it was first reached instead of
walking it again, so ``a = [1]; b = a`` and ``a = [1]; b = [1]`` digest differently, and so do
a numpy view of a named array and a copy, closures that share a cell and closures that do not,
a tensor made with torch.from_numpy and a copy. Names are walked in sorted order, then the
global state, so the paths are the same in every kernel that holds the same state.

Values txpy documents it cannot store (a generator, an open file...) are digested by their
type only, the same as txpy's placeholder for them (``NotStored``), and a name bound directly to
one is listed in ``unstorable`` (such a name is not stored at all, so a restore lacks it).
Locks are digested by type only (a restored lock is a new, unlocked one). Matplotlib figures,
axes and lines are digested by what they show and how they link, through accessors that change
nothing; a logger by its name and level (it pickles by name); a classmethod by its function.
Warnings filters are compared by their patterns (Python's default filters hold a plain string
where warnings.filterwarnings puts the compiled regex).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import types
from typing import Any

#: names IPython and ipykernel put into the user namespace
SKIP = frozenset({"In", "Out", "exit", "quit", "get_ipython", "open"})
_ADDR = re.compile(r"0x[0-9a-fA-F]+")
_ATOMS = frozenset({int, float, complex, str, bytes, bool, type(None)})
#: types whose objects txpy documents it can neither store nor rebuild (its own table, the
#: one thing taken from txpy): digested by type name only
_UNSTORABLE = __import__("txpy.encode", fromlist=["_UNSTORABLE"])._UNSTORABLE
MAX_DEPTH = 400
#: a class attribute pickling caches on the class (copyreg): not part of the class
_CLASS_SKIP = frozenset({"__dict__", "__weakref__", "__slotnames__", "__module__", "__doc__"})


def _sha(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:16]


def _strip(text: str) -> str:
    return _ADDR.sub("0x?", text)


def _qualname(cls: type) -> str:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls.__name__)}"


def _is_lock(v: Any) -> bool:
    import threading

    return type(v) in (type(threading.Lock()), type(threading.RLock()))


def _unstorable(v: Any) -> str | None:
    cls = type(v)
    if cls.__name__ == "NotStored" and cls.__module__.startswith("txpy"):
        return str(getattr(v, "what", "?"))  # txpy's placeholder for such a value
    for module_name, names in _UNSTORABLE.items():
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for n in names:
            kind = getattr(module, n, None)
            if isinstance(kind, type) and isinstance(v, kind):
                return cls.__name__
    return None


def _sort_key(v: Any) -> str:
    """A key to order a set's elements by, the same in every process (a set's own order
    depends on string hashing, which differs between processes)."""
    def plain(x: Any) -> Any:
        if isinstance(x, (set, frozenset)):
            return sorted((plain(e) for e in x), key=repr)
        if isinstance(x, tuple):
            return tuple(plain(e) for e in x)
        return _strip(repr(x))
    return repr(plain(v))


def _code(code: types.CodeType) -> str:
    """A code object's instructions and constants (nested code objects likewise), not where
    it was compiled (file names, line numbers)."""
    consts = tuple(_code(c) if isinstance(c, types.CodeType) else _strip(repr(c))
                   for c in code.co_consts)
    return _sha(repr((code.co_code.hex(), consts, code.co_names, code.co_varnames,
                      code.co_freevars, code.co_cellvars, code.co_argcount,
                      code.co_kwonlyargcount, code.co_flags)))


class Walker:
    """One walk over a namespace and the global state: it remembers every object it reached
    (and holds it, so no id is reused during the walk) and every memory block (numpy arrays
    that own their memory, torch storages) by where it was first reached."""

    def __init__(self) -> None:
        self.seen: dict[int, str] = {}
        self.keep: list[Any] = []
        self.memory: dict[int, str] = {}

    def walk(self, v: Any, path: str, depth: int = 0) -> Any:
        cls = type(v)
        if cls in _ATOMS:
            r = repr(v)
            return (cls.__name__, r if len(r) <= 200 else f"sha:{_sha(r)}:{len(r)}")
        if depth > MAX_DEPTH:
            return ("<too deep>",)
        if id(v) in self.seen:
            return ("@", self.seen[id(v)])
        self.seen[id(v)] = path
        self.keep.append(v)
        return self._canonical(v, path, depth + 1)

    def _items(self, items: Any, path: str, depth: int) -> list[Any]:
        return [self.walk(x, f"{path}[{i}]", depth) for i, x in enumerate(items)]

    def _attrs(self, v: Any, path: str, depth: int) -> dict[str, Any]:
        """The instance attributes: __dict__ and every __slots__ entry along the MRO."""
        out: dict[str, Any] = {}
        d = getattr(v, "__dict__", None)
        if isinstance(d, dict):
            for k in sorted(d, key=repr):
                out[str(k)] = self.walk(d[k], f"{path}.{k}", depth)
        for klass in type(v).__mro__:
            slots = klass.__dict__.get("__slots__", ())
            for s in (slots,) if isinstance(slots, str) else slots:
                if s in ("__dict__", "__weakref__") or f"slot:{s}" in out:
                    continue
                name = f"_{klass.__name__.lstrip('_')}{s}" if s.startswith("__") else s
                try:
                    value = object.__getattribute__(v, name)
                except AttributeError:
                    out[f"slot:{s}"] = ("<unset>",)
                else:
                    out[f"slot:{s}"] = self.walk(value, f"{path}.{s}", depth)
        return out

    def _canonical(self, v: Any, path: str, depth: int) -> Any:
        cls = type(v)
        name = _qualname(cls)
        if isinstance(v, types.ModuleType):
            return ("module", v.__name__)
        what = _unstorable(v)
        if what is not None:
            return ("unstorable", what)
        if _is_lock(v):
            return ("lock", name)
        for special in (self._numpy, self._torch, self._pandas, self._matplotlib):
            found = special(v, path, depth)
            if found is not None:
                return found
        if cls in (list, tuple) or (isinstance(v, (list, tuple)) and not hasattr(v, "_fields")):
            return (name, self._items(v, path, depth), self._extra(v, path, depth))
        if isinstance(v, tuple):  # a namedtuple
            return (name, self._items(v, path, depth))
        if isinstance(v, dict):
            items = [(self.walk(k, f"{path}<key {i}>", depth),
                      self.walk(x, f"{path}[{_strip(repr(k))[:40]}]", depth))
                     for i, (k, x) in enumerate(list(v.items()))]
            factory = getattr(v, "default_factory", None)
            return (name, items, self.walk(factory, f"{path}.default_factory", depth),
                    self._extra(v, path, depth))
        if isinstance(v, (set, frozenset)):
            return (name, self._items(sorted(v, key=_sort_key), path, depth))
        if isinstance(v, (bytearray, int, float, str, bytes, complex)):  # and their subclasses
            return (name, _strip(repr(v)), self._extra(v, path, depth))
        if isinstance(v, types.CellType):
            try:
                return ("cell", self.walk(v.cell_contents, f"{path}.contents", depth))
            except ValueError:
                return ("cell", "<empty>")
        if isinstance(v, types.FunctionType):
            return ("function", v.__module__, v.__qualname__, _code(v.__code__),
                    self.walk(v.__defaults__, f"{path}.__defaults__", depth),
                    self.walk(v.__kwdefaults__, f"{path}.__kwdefaults__", depth),
                    [self.walk(c, f"{path}.<closure {n}>", depth)
                     for n, c in zip(v.__code__.co_freevars, v.__closure__ or (), strict=False)],
                    self._attrs(v, path, depth))
        if isinstance(v, types.MethodType):
            return ("method", self.walk(v.__func__, f"{path}.__func__", depth),
                    self.walk(v.__self__, f"{path}.__self__", depth))
        if isinstance(v, (types.BuiltinFunctionType, types.BuiltinMethodType)):
            owner = getattr(v, "__self__", None)
            return ("builtin", getattr(v, "__qualname__", v.__name__),
                    owner.__name__ if isinstance(owner, types.ModuleType)
                    else self.walk(owner, f"{path}.__self__", depth))
        if isinstance(v, type):
            if v.__module__ != "__main__":
                return ("class", _qualname(v))
            return ("class", _qualname(v), [_qualname(b) for b in v.__bases__],
                    {k: self.walk(x, f"{path}.{k}", depth)
                     for k, x in sorted(vars(v).items()) if k not in _CLASS_SKIP})
        if isinstance(v, (classmethod, staticmethod)):
            # not its __dict__: classmethod() copies the function's __name__, __doc__... into
            # it, the implicit classmethod of an __init_subclass__ does not
            return (name, self.walk(v.__func__, f"{path}.__func__", depth))
        if isinstance(v, property):
            return (name, [self.walk(f, f"{path}.{n}", depth) for n, f in
                           (("fget", v.fget), ("fset", v.fset), ("fdel", v.fdel))])
        if isinstance(v, memoryview):
            try:
                return ("memoryview", v.format, v.shape, v.readonly, _sha(v.tobytes()),
                        self.walk(v.obj, f"{path}.obj", depth))
            except ValueError:
                return ("memoryview", "<released>")
        import functools
        import logging
        import weakref

        if isinstance(v, logging.Logger):  # by name, as it pickles (not its handlers)
            return ("logger", v.name, v.level, v.propagate, v.disabled)

        if isinstance(v, functools.partial):
            return (name, self.walk(v.func, f"{path}.func", depth),
                    self.walk(v.args, f"{path}.args", depth),
                    self.walk(v.keywords, f"{path}.keywords", depth), self._attrs(v, path, depth))
        if isinstance(v, (weakref.WeakValueDictionary, weakref.WeakKeyDictionary)):
            return (name, [(self.walk(k, f"{path}<key {i}>", depth),
                            self.walk(x, f"{path}[{_strip(repr(k))[:40]}]", depth))
                           for i, (k, x) in enumerate(list(v.items()))])
        if isinstance(v, weakref.WeakSet):
            return (name, self._items(sorted(v, key=_sort_key), path, depth))
        if isinstance(v, weakref.ref):
            return (name, self.walk(v(), f"{path}()", depth))
        if hasattr(cls, "__next__") and cls.__module__ in ("builtins", "itertools"):
            # map, zip, list_iterator, range_iterator...: what is left to produce
            try:
                reduced = v.__reduce__()
            except Exception:  # noqa: BLE001 - not reducible: its type and repr
                pass
            else:
                return ("iterator", name, getattr(reduced[0], "__name__", "?"),
                        self.walk(tuple(reduced[1:]), f"{path}.<state>", depth))
        if getattr(cls, "__module__", None) == "__main__":  # a notebook class's instance
            return ("object", self.walk(cls, f"{path}.__class__", depth),
                    self._attrs(v, path, depth))
        if hasattr(v, "__dict__") or any("__slots__" in k.__dict__ for k in cls.__mro__[:-1]):
            return ("object", name, self._attrs(v, path, depth))
        return ("other", name, _strip(repr(v)))

    def _extra(self, v: Any, path: str, depth: int) -> Any:
        """The attributes of a builtin type's subclass instance, if any."""
        return self._attrs(v, path, depth) if type(v).__module__ != "builtins" else None

    def _memory(self, pointer: int, path: str) -> Any:
        """Where a memory block (by its address) was first reached, or None if here."""
        if pointer in self.memory:
            return ("@", self.memory[pointer])
        self.memory[pointer] = path
        return None

    def _numpy(self, v: Any, path: str, depth: int) -> Any:
        np = sys.modules.get("numpy")
        if np is None:
            return None
        if isinstance(v, np.generic):
            return ("numpy scalar", str(v.dtype), repr(v.item()) if v.dtype != object
                    else self.walk(v.item(), f"{path}.item()", depth))
        if not isinstance(v, np.ndarray):
            return None
        out: dict[str, Any] = {
            "type": _qualname(type(v)), "dtype": str(v.dtype), "shape": v.shape,
            "strides": v.strides, "c": bool(v.flags.c_contiguous),
            "f": bool(v.flags.f_contiguous), "writeable": bool(v.flags.writeable)}
        if v.dtype == object:
            out["items"] = self._items(list(v.ravel(order="K")), path, depth)
        else:
            out["data"] = _sha(np.ascontiguousarray(v).tobytes())
        base = v.base
        if isinstance(base, np.ndarray):  # a view: of which array, where in it
            out["view of"] = self.walk(base, f"{path}.base", depth)
            out["offset"] = (v.__array_interface__["data"][0]
                             - base.__array_interface__["data"][0])
        elif v.nbytes:
            out["memory"] = self._memory(v.__array_interface__["data"][0], path)
        if getattr(v, "__dict__", None):
            out["attrs"] = self._attrs(v, path, depth)
        return ("ndarray", out)

    def _torch(self, v: Any, path: str, depth: int) -> Any:
        torch = sys.modules.get("torch")
        if torch is None or not isinstance(v, torch.Tensor):
            return None
        out: dict[str, Any] = {
            "type": _qualname(type(v)), "dtype": str(v.dtype), "shape": tuple(v.shape),
            "device": str(v.device), "requires_grad": v.requires_grad, "leaf": v.is_leaf}
        try:
            out["stride"] = v.stride()
            plain = v.detach().cpu().contiguous().reshape(-1)
            out["data"] = _sha(plain.view(torch.uint8).numpy().tobytes()
                               if plain.numel() else b"")
            storage = v.untyped_storage()
            out["storage offset"] = v.storage_offset()
            out["storage bytes"] = storage.nbytes()
            if storage.nbytes():
                out["storage"] = self._memory(storage.data_ptr(), f"{path}.<storage>")
        except Exception as e:  # noqa: BLE001 - sparse, meta...: what can be said
            out["data"] = f"<{type(e).__name__}>"
        if v.grad is not None:
            out["grad"] = self.walk(v.grad, f"{path}.grad", depth)
        if getattr(v, "__dict__", None):
            out["attrs"] = self._attrs(v, path, depth)
        return ("tensor", out)

    def _pandas(self, v: Any, path: str, depth: int) -> Any:
        pd = sys.modules.get("pandas")
        if pd is None:
            return None
        if isinstance(v, pd.Index):
            return ("index", _qualname(type(v)), str(v.dtype), repr(v.names),
                    _sha(repr(list(v))))
        if isinstance(v, pd.Series):
            return ("series", repr(v.name), str(v.dtype),
                    self._pandas(v.index, path, depth), _sha(repr(v.tolist())),
                    self.walk(v.attrs, f"{path}.attrs", depth))
        if isinstance(v, pd.DataFrame):
            columns = [(repr(c), str(v.dtypes.iloc[j]), _sha(repr(v.iloc[:, j].tolist())))
                       for j, c in enumerate(v.columns)]
            return ("dataframe", self._pandas(v.columns, path, depth),
                    self._pandas(v.index, path, depth), columns,
                    self.walk(v.attrs, f"{path}.attrs", depth))
        return None

    def _matplotlib(self, v: Any, path: str, depth: int) -> Any:
        """Figures, axes and lines by what they show and how they are linked, through
        accessors that change nothing (get_xlim would autoscale, get_xydata recache)."""
        if "matplotlib.artist" not in sys.modules:
            return None
        from matplotlib.artist import Artist
        from matplotlib.axes import Axes
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D

        if isinstance(v, Figure):
            return ("figure", [float(x) for x in v.get_size_inches()], float(v.dpi),
                    [self.walk(a, f"{path}.axes[{i}]", depth) for i, a in enumerate(v.axes)],
                    v.get_suptitle() if hasattr(v, "get_suptitle") else None)
        if isinstance(v, Axes):
            return ("axes", self.walk(v.figure, f"{path}.figure", depth), v.get_title(),
                    v.get_xlabel(), v.get_ylabel(),
                    [self.walk(ln, f"{path}.lines[{i}]", depth)
                     for i, ln in enumerate(v.lines)])
        if isinstance(v, Line2D):
            return ("line", self.walk(v.axes, f"{path}.axes", depth),
                    self.walk(v.figure, f"{path}.figure", depth),
                    repr(list(v.get_xdata(orig=True))), repr(list(v.get_ydata(orig=True))),
                    v.get_color(), v.get_label(), v.get_linestyle())
        if isinstance(v, Artist):
            return ("artist", _qualname(type(v)), _strip(repr(v)))
        return None


def _user_names(ns: dict[str, Any]) -> list[str]:
    return sorted(k for k in ns if isinstance(k, str) and not k.startswith("_")
                  and k not in SKIP)


def _filters(filters: list[Any]) -> str:
    """The warnings filters, a message or module by its pattern: Python's own default filters
    hold a plain string ("__main__", matched exactly) where warnings.filterwarnings puts a
    compiled regex (matched as a prefix); the two are taken as the same filter."""
    return _strip(repr([(action, getattr(message, "pattern", message), category,
                         getattr(module, "pattern", module), lineno)
                        for action, message, category, module, lineno in filters]))


def _global_state(walker: Walker, modules: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The state outside the namespace: random generators, library settings, and the data
    globals of the named user modules (walked with the namespace's walker: aliasing between a
    name and a module's global is part of the digest)."""
    import random
    import warnings

    state: dict[str, Any] = {"global:random": _sha(repr(random.getstate())),
                             "global:warnings.filters": _filters(warnings.filters)}
    np = sys.modules.get("numpy")
    if np is not None:
        state["global:numpy.errors"] = sorted(np.geterr().items())
        state["global:numpy.printoptions"] = _strip(repr(sorted(np.get_printoptions().items())))
    nprandom = sys.modules.get("numpy.random")
    if nprandom is not None:
        kind, keys, *rest = nprandom.get_state()
        state["global:numpy.random"] = (kind, _sha(keys.tobytes()), repr(rest))
    logging = sys.modules.get("logging")
    if logging is not None:
        levels = {name: lg.level for name, lg in list(logging.root.manager.loggerDict.items())
                  if isinstance(lg, logging.Logger) and lg.level != logging.NOTSET}
        state["global:logging.levels"] = (logging.root.level, sorted(levels.items()))
    torch = sys.modules.get("torch")
    if torch is not None:
        state["global:torch"] = (str(torch.get_default_dtype()), torch.is_grad_enabled(),
                                 _sha(torch.get_rng_state().numpy().tobytes()))
    pd = sys.modules.get("pandas")
    if pd is not None:
        state["global:pandas.display.max_rows"] = pd.get_option("display.max_rows")
    for m in modules:
        module = sys.modules.get(m)
        if module is None:
            state[f"module:{m}"] = "<not imported>"
            continue
        data = {k: walker.walk(v, f"{m}.{k}")
                for k, v in sorted(vars(module).items())
                if not k.startswith("_") and not isinstance(
                    v, (types.ModuleType, types.FunctionType, type, types.BuiltinFunctionType))}
        state[f"module:{m}"] = data
    return state


def canonical(ns: dict[str, Any], modules: list[str] | tuple[str, ...] = ()
              ) -> dict[str, str]:
    """{name: the repr of its canonical structure} for every user name, then "global:..." and
    "module:..." entries for the global state."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20000))  # the user may have lowered it
    try:
        walker = Walker()
        out = {k: walker.walk(ns[k], k) for k in _user_names(ns)}
        out.update(_global_state(walker, modules))
        # the walker's repr of deep structures recurses too: made here, under the raised limit
        return {k: repr(v) for k, v in out.items()}
    finally:
        sys.setrecursionlimit(limit)


def digest_names(ns: dict[str, Any], modules: list[str] | tuple[str, ...] = ()
                 ) -> dict[str, str]:
    """{name: hex digest} (the global state under "global:..." and "module:..." keys)."""
    return {k: _sha(v) for k, v in canonical(ns, modules).items()}


def digest_namespace(ns: dict[str, Any], modules: list[str] | tuple[str, ...] = ()) -> str:
    """One digest of every name and of the global state."""
    return _sha(repr(sorted(canonical(ns, modules).items())))


def unstorable_names(ns: dict[str, Any]) -> list[str]:
    """Names bound directly to a value that cannot be stored (a generator): not stored."""
    return [k for k in _user_names(ns) if _unstorable(ns[k]) is not None]


def report(ns: dict[str, Any], modules: list[str] | tuple[str, ...] = (),
           width: int = 3000) -> str:
    """One JSON line: the digest of each name, its canonical structure (cut to width
    characters, to say what differs), and the names that cannot be stored."""
    canon = canonical(ns, modules)
    return json.dumps({"names": {k: _sha(v) for k, v in canon.items()},
                       "canonical": {k: v[:width] for k, v in canon.items()},
                       "unstorable": unstorable_names(ns),
                       "all": _sha(repr(sorted(canon.items())))})
