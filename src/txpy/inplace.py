"""Rolling back in place: the committed content is written back into the live objects.

A rollback that rebinds a name to a decoded copy cuts it off from everyone else who holds
the live object: a closure, a library's registry, a dict keyed by ``id(x)``, a view of an
array. So where a failed transaction only mutated an object (its name still binds the same
object), the decoded value is used as a source: its content is copied into the live object,
recursively into the objects the live one holds, where their types allow — builtin
containers, numpy arrays, torch tensors, functions (their closure cells), instances of the
session's own classes and of library classes that pickle as their ``__dict__`` (no
``__reduce__``/``__getstate__``/``__setstate__`` of their own). Anything else (a library
object with its own pickling, a changed type, shape or code) is replaced by the decoded
value. What txpy cannot store (a NotStored placeholder in the decoded value: a generator)
stays as the live object holds it.

A replaced object holds decoded objects: if one of those had its content written into a live
object instead, the component would come back split (a library object and a notebook
object no longer sharing the array they shared). A merge checks for that
(Merger.consistent) and then the names are bound to the decoded values, whole.
"""

from __future__ import annotations

import copyreg
import functools
import gc
import sys
import types
from typing import Any

from .encode import NotStored

_SCALARS = (type(None), bool, int, float, complex, str, bytes)
#: objects a replaced value's walk does not enter: they hold no decoded objects of its own
#: (a function's globals are the namespace: its closure and defaults are walked; a builtin
#: method's __self__ is walked, a builtin function's is a module)
_OPAQUE = (type, types.ModuleType, types.CodeType)
#: a walk that meets more objects than this gives up and says "not consistent" (safe)
WALK_LIMIT = 1_000_000


_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class defined in Python, not in C


def _default_pickled(cls: type) -> bool:
    """Whether pickle stores an instance of cls as its class and ``__dict__`` (and slots)
    only: then writing the decoded ``__dict__`` into the live one is what unpickling does.
    Only classes defined in Python: a C type's instances (a function) hold more."""
    return (cls.__flags__ & _HEAP_TYPE and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__
            and getattr(cls, "__getstate__", None) is object.__getstate__
            and not hasattr(cls, "__setstate__") and cls not in copyreg.dispatch_table)


class Merger:
    """One rollback's merges; objects several names share are merged once.

    main: the module name of the session's own classes ("__main__")."""

    def __init__(self, main: str | None):
        self.main = main
        self.done: dict[int, Any] = {}  # id(live) -> what it became (cycles, shared objects)
        self._kept: set[int] = set()  # ids of decoded objects written into live ones
        self._replaced: list[Any] = []  # decoded objects bound instead of live ones

    def merge(self, live: Any, saved: Any) -> Any:
        """The object to bind: live with saved's content written into it where types allow,
        else saved."""
        if live is saved or isinstance(saved, _SCALARS):
            return saved
        if type(saved) is NotStored and live is not None:
            return live  # what txpy cannot store (a generator) stays as it is
        if type(live) is not type(saved):
            self._replaced.append(saved)
            return saved
        if id(live) in self.done:
            return self.done[id(live)]
        self.done[id(live)] = live  # for cycles: while it is being merged, it stays itself
        result = self._merge_by_type(live, saved)
        self.done[id(live)] = result
        if result is live:
            self._kept.add(id(saved))
        elif result is saved:
            self._replaced.append(saved)
        return result

    def replace(self, saved: Any) -> Any:
        """saved, bound as it is (its name was rebound since HEAD): checked by consistent."""
        if not isinstance(saved, _SCALARS):
            self._replaced.append(saved)
        return saved

    def consistent(self) -> bool:
        """Whether no replaced object reaches a decoded object whose content went into a
        live one instead (the names would no longer share it)."""
        if not self._kept or not self._replaced:
            return True
        seen: set[int] = set()
        todo = list(self._replaced)
        while todo:
            obj = todo.pop()
            if id(obj) in seen or isinstance(obj, _OPAQUE) or isinstance(obj, _SCALARS):
                continue
            if id(obj) in self._kept:
                return False
            seen.add(id(obj))
            if len(seen) > WALK_LIMIT:
                return False
            if isinstance(obj, types.FunctionType):
                todo += [obj.__closure__, obj.__defaults__, obj.__kwdefaults__, obj.__dict__]
            else:
                todo += gc.get_referents(obj)
        return True

    def _merge_by_type(self, live: Any, saved: Any) -> Any:
        kind = type(live)
        if kind is list:
            live[:] = [self.merge(a, b) for a, b in zip(live, saved, strict=False)] \
                + saved[len(live):]
            return live
        if kind is dict:
            return self._merge_dict(live, saved)
        if kind is set:
            live.clear()
            live.update(saved)
            return live
        if kind is bytearray:
            live[:] = saved
            return live
        if kind is types.FunctionType:
            return self._merge_function(live, saved)
        if kind is functools.partial:
            return self._merge_partial(live, saved)
        if kind in (types.MethodType, types.BuiltinMethodType):
            # a bound method cannot change: it stays if its object and function do
            func = getattr(live, "__func__", None)
            same = self.merge(live.__self__, saved.__self__) is live.__self__ and (
                func is None or self.merge(func, saved.__func__) is func)
            return live if same else saved
        if kind is tuple:  # immutable: its items may have been mutated, not itself
            if len(live) != len(saved):
                return saved
            merged = tuple(self.merge(a, b) for a, b in zip(live, saved, strict=True))
            return live if all(a is b for a, b in zip(merged, live, strict=True)) else merged
        return self._merge_object(live, saved)

    def _merge_object(self, live: Any, saved: Any) -> Any:
        np = sys.modules.get("numpy")
        if np is not None and type(live) is np.ndarray:
            if (live.shape, live.dtype) != (saved.shape, saved.dtype) or live.dtype == object \
                    or not live.flags.writeable:
                return saved
            np.copyto(live, saved)
            return live
        torch = sys.modules.get("torch")
        if torch is not None and type(live) in (torch.Tensor, torch.nn.Parameter):
            return self._merge_tensor(torch, live, saved)
        ours = self.main is not None and getattr(type(live), "__module__", None) == self.main
        if not ours and not _default_pickled(type(live)):
            return saved  # a library's object with pickling of its own: replaced
        if isinstance(live, (dict, list, set, bytearray, tuple)):
            return saved  # a container subclass: its content is not in its __dict__
        state = getattr(live, "__dict__", None)
        saved_state = getattr(saved, "__dict__", None)
        if not isinstance(state, dict) or not isinstance(saved_state, dict):
            return saved
        self._merge_slots(live, saved)
        self._merge_dict(state, saved_state)
        return live

    def _merge_function(self, live: types.FunctionType, saved: types.FunctionType) -> Any:
        """A function with the same code keeps its closure cells, with their committed
        content (closures that share a cell, and whoever holds the function, see it)."""
        cells, saved_cells = live.__closure__ or (), saved.__closure__ or ()
        if live.__code__ != saved.__code__ or len(cells) != len(saved_cells):
            return saved
        for cell, saved_cell in zip(cells, saved_cells, strict=True):
            try:
                value = saved_cell.cell_contents
            except ValueError:  # an empty cell (a name not bound yet)
                continue
            try:
                current = cell.cell_contents
            except ValueError:
                current = None
            cell.cell_contents = self.merge(current, value)
        live.__defaults__ = self.merge(live.__defaults__, saved.__defaults__)
        live.__kwdefaults__ = self.merge(live.__kwdefaults__, saved.__kwdefaults__)
        self._merge_dict(live.__dict__, saved.__dict__)
        return live

    def _merge_dict(self, live: dict[Any, Any], saved: dict[Any, Any]) -> dict[Any, Any]:
        """live with saved's items, each merged into the one live held under its key."""
        merged = {k: self.merge(live[k], v) if k in live else v for k, v in saved.items()}
        live.clear()
        live.update(merged)
        return live

    def _merge_partial(self, live: functools.partial, saved: functools.partial) -> Any:
        """A partial keeps its identity (a library holds it as a callback): its function,
        arguments and keywords are merged, and set back only where one was replaced."""
        old = (live.func, live.args, live.keywords, live.__dict__)
        new = tuple(self.merge(a, b) for a, b in zip(
            old, (saved.func, saved.args, saved.keywords, saved.__dict__), strict=True))
        if any(a is not b for a, b in zip(new, old, strict=True)):
            live.__setstate__(new)
        return live

    def _merge_slots(self, live: Any, saved: Any) -> None:
        for cls in type(live).__mro__:
            slots = cls.__dict__.get("__slots__", ())
            for slot in (slots,) if isinstance(slots, str) else slots:
                if slot in ("__dict__", "__weakref__"):
                    continue
                try:
                    value = object.__getattribute__(saved, slot)
                except AttributeError:
                    continue
                try:
                    current = object.__getattribute__(live, slot)
                except AttributeError:
                    current = None
                object.__setattr__(live, slot, self.merge(current, value))

    @staticmethod
    def _merge_tensor(torch: Any, live: Any, saved: Any) -> Any:
        if (live.shape, live.dtype, live.device, live.requires_grad) != (
                saved.shape, saved.dtype, saved.device, saved.requires_grad):
            return saved
        with torch.no_grad():
            live.copy_(saved)
        live.grad = saved.grad
        return live
