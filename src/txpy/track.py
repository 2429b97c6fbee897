"""Which names a transaction could touch, found statically from its code (DESIGN.md, "Change
detection", rule 2).

``candidates(code, namespace)`` returns the names a transaction running ``code`` in
``namespace`` could read, write or mutate in place, or None when it cannot tell (``globals()``,
``eval``, ``exec``, a handle on ``__main__``, a magic that runs arbitrary code...), which means
"examine everything". Names whose *binding* changes are caught by the session itself, so this
module only has to over-approximate in-place mutation:

* the names the code mentions (``co_names``, through nested code objects);
* for every such name bound to something that can run user code later — a function defined in
  the namespace, a notebook class or an instance of one, a bound method, a closure, a
  ``functools.partial``, a lambda kept in a container or in an object's attributes — the names
  *that* code mentions, transitively.

The namespace stays a plain dict: nothing here intercepts lookups.
"""

from __future__ import annotations

import functools
import gc
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

#: Names (globals or attributes) that give code a handle on the whole namespace.
DYNAMIC_NAMES = frozenset({
    "globals", "vars", "locals", "eval", "exec", "execfile", "__import__", "__main__",
    "__globals__", "__builtins__", "f_globals", "f_locals", "f_back", "_getframe",
    "currentframe", "run_path", "run_module", "breakpoint",
})

#: A frontend's reader of code only it understands (IPython's magics and shell calls): the
#: names a code object reaches that way, or None if it cannot tell (examine every name).
Hook = Callable[[types.CodeType], "frozenset[str] | None"]

#: Objects walked per call before giving up on precision (see _all_user_code_names).
WALK_BUDGET = 20_000

_ATOMIC = (type(None), bool, int, float, complex, str, bytes, range, types.ModuleType,
           types.BuiltinFunctionType, types.BuiltinMethodType, type(len.__call__),
           types.MethodWrapperType, types.WrapperDescriptorType)


#: Objects whose code is suspended and resumes later (next(gen), await, a later cell).
_SUSPENDED = (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)
#: Lazy builtins that call a function when consumed; their __reduce__ gives it (public API).
_LAZY_CALLS = frozenset({map, filter})


def _frame_of(suspended: Any) -> types.FrameType | None:
    for attribute in ("gi_frame", "cr_frame", "ag_frame"):
        frame = getattr(suspended, attribute, None)
        if frame is not None:
            return frame
    return None


def _closed_over(func: types.FunctionType) -> list[Any]:
    """The values in a function's closure cells (empty cells skipped)."""
    values = []
    for cell in func.__closure__ or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    return values


class Dynamic(Exception):
    """The code can reach the namespace in a way static analysis cannot follow."""


@dataclass(frozen=True)
class CodeNames:
    """What one code object (and the code nested in it) mentions."""

    names: frozenset[str]
    dynamic: bool


def candidates(code: types.CodeType, namespace: dict[str, Any], hook: Hook | None = None
               ) -> set[str] | None:
    """Names of ``namespace`` that running ``code`` there could read, write or mutate in
    place; None means "anything" (examine every name). hook: see Hook."""
    try:
        return _Walker(namespace, hook).run(code)
    except Dynamic:
        return None
    except Exception:  # user code the walk ran raised (a __len__, a __getattr__...)
        return None


def reachable_names(roots: list[Any], namespace: dict[str, Any]) -> set[str] | None:
    """Names of ``namespace`` that code held by roots (objects kept outside it: a library's
    callbacks) could read, write or mutate in place: what that code mentions, transitively,
    and the names bound to objects the roots hold; None means "anything"."""
    try:
        return _Walker(namespace, None).from_roots(roots)
    except Dynamic:
        return None
    except Exception:  # user code the walk ran raised
        return None


@functools.lru_cache(maxsize=8192)
def code_names(code: types.CodeType, hook: Hook | None = None) -> CodeNames:
    """co_names of code and of every code object nested in it (and what hook finds in them),
    and whether any is dynamic."""
    names: set[str] = set()
    dynamic = False
    for c in _nested_code(code):
        names.update(c.co_names)
        if "__main__" in c.co_consts:
            dynamic = True
        if hook is not None:
            found = hook(c)
            if found is None:
                dynamic = True
            else:
                names.update(found)
    if not dynamic:
        dynamic = not DYNAMIC_NAMES.isdisjoint(names) or (
            "modules" in names and "sys" in names)
    return CodeNames(frozenset(names), dynamic)


def _nested_code(code: types.CodeType) -> Iterator[types.CodeType]:
    stack = [code]
    while stack:
        c = stack.pop()
        yield c
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))


class _Walker:
    """One candidates() computation: follows names to the user code they can run."""

    def __init__(self, namespace: dict[str, Any], hook: Hook | None):
        self.ns = namespace
        self.hook = hook
        self.main = namespace.get("__name__", "__main__")
        self.found: set[str] = set()
        self.pending: list[str] = []
        self.seen: set[int] = set()
        self.budget = WALK_BUDGET

    def run(self, code: types.CodeType) -> set[str]:
        self._add_code(code)
        self._follow()
        return self.found

    def from_roots(self, roots: list[Any]) -> set[str]:
        for root in roots:
            self._walk_within_budget(root)
        self._add_names([n for n, v in self.ns.items() if id(v) in self.seen])
        self._follow()
        return self.found

    def _follow(self) -> None:
        """Walk the values of the names found, until no new name is."""
        while self.pending:
            name = self.pending.pop()
            value = self.ns[name]
            if value is sys.modules or getattr(value, "__dict__", None) is self.ns:
                raise Dynamic  # a handle on the namespace itself
            self._walk_within_budget(value)

    def _walk_within_budget(self, value: Any) -> None:
        try:
            self._walk(value)
        except _OverBudget:
            # too big to walk: every name any notebook code mentions is closed under
            # "the code it can run", so nothing more needs following
            self._add_names(_all_user_code_names(self.ns, self.hook))
            self.found.update(n for n, v in self.ns.items()
                              if self._is_user_function(v) or (isinstance(v, type)
                                                               and self._is_user_class(v)))
            self.pending.clear()

    def _add_code(self, code: types.CodeType) -> None:
        cn = code_names(code, self.hook)
        if cn.dynamic:
            raise Dynamic
        self._add_names(cn.names)

    def _add_names(self, names: Any) -> None:
        ns = self.ns
        for n in names:
            if n not in self.found and n in ns:
                self.found.add(n)
                self.pending.append(n)

    def _is_user_function(self, f: Any) -> bool:
        return isinstance(f, types.FunctionType) and f.__globals__ is self.ns

    def _is_user_class(self, cls: type) -> bool:
        module = getattr(cls, "__module__", None)
        if module == self.main:
            return True
        if module in sys.modules:
            return False  # a library's class (a notebook function patched onto it: see sweep)
        return any(self._is_user_function(v) for v in vars(cls).values())

    def _walk(self, root: Any) -> None:
        stack = [root]
        seen = self.seen
        while stack:
            obj = stack.pop()
            if isinstance(obj, _ATOMIC) or id(obj) in seen:
                continue
            seen.add(id(obj))
            self._charge(1)
            t = type(obj)
            if t is dict or isinstance(obj, dict):
                self._charge(len(obj))
                stack.extend(obj.values())
                stack.extend(k for k in obj.keys() if not isinstance(k, _ATOMIC))
            elif t in (list, tuple, set, frozenset) or isinstance(obj, (list, tuple, set,
                                                                         frozenset)):
                self._charge(len(obj))
                stack.extend(obj)
            elif isinstance(obj, types.FunctionType):
                if obj.__globals__ is not self.ns:
                    # library code reaches what it is given and what it closes over: the
                    # wrapper a library decorator returns calls the notebook function in it
                    stack.extend(_closed_over(obj))
                    stack.append(obj.__dict__.get("__wrapped__"))
                    continue
                self._add_code(obj.__code__)
                if self.ns.get(obj.__name__) is obj:
                    self._add_names((obj.__name__,))
                stack.extend(_closed_over(obj))
                stack.extend(obj.__defaults__ or ())
                stack.extend((obj.__kwdefaults__ or {}).values())
                stack.append(obj.__dict__)
            elif isinstance(obj, types.MethodType):
                stack.append(obj.__func__)
                stack.append(obj.__self__)
            elif isinstance(obj, functools.partial):
                stack.append(obj.func)
                stack.extend(obj.args)
                stack.extend(obj.keywords.values())
            elif isinstance(obj, (staticmethod, classmethod)):
                stack.append(obj.__func__)
            elif isinstance(obj, property):
                stack.extend((obj.fget, obj.fset, obj.fdel))
            elif isinstance(obj, _SUSPENDED):
                self._walk_frame(_frame_of(obj), stack)
            elif type(obj) in _LAZY_CALLS:  # map(f, xs), filter(f, xs): f runs when consumed
                stack.extend(obj.__reduce__()[1])
            elif isinstance(obj, type):
                if self._is_user_class(obj):
                    if self.ns.get(obj.__name__) is obj:
                        self._add_names((obj.__name__,))
                    stack.extend(vars(obj).values())
                    stack.extend(obj.__bases__)
                    stack.append(type(obj))  # a notebook metaclass
            else:
                self._walk_instance(obj, t, stack)

    def _walk_frame(self, frame: types.FrameType | None, stack: list[Any]) -> None:
        """A suspended generator or coroutine: the rest of its body runs when it resumes."""
        if frame is None:  # finished: nothing more runs
            return
        if frame.f_globals is self.ns:
            self._add_code(frame.f_code)
        stack.extend(frame.f_locals.values())

    def _walk_instance(self, obj: Any, t: type, stack: list[Any]) -> None:
        stack.append(t)
        module = t.__module__
        if module == "numpy":
            if getattr(obj, "dtype", None) is not None and obj.dtype.kind == "O":
                self._charge(obj.size)
                stack.extend(obj.ravel().tolist())
            return
        if module.startswith("torch") and t.__name__ in ("Tensor", "Parameter"):
            return  # numbers only
        try:
            d = object.__getattribute__(obj, "__dict__")
        except Exception:
            d = None
        if isinstance(d, dict):
            stack.append(d)
        for klass in t.__mro__:
            slots = klass.__dict__.get("__slots__", ())
            for slot in (slots,) if isinstance(slots, str) else slots:
                try:
                    stack.append(object.__getattribute__(obj, slot))
                except Exception:
                    pass
        if module == "collections" and not isinstance(obj, dict):
            try:
                items = list(obj)
            except Exception:
                return
            self._charge(len(items))
            stack.extend(items)  # deque and friends

    def _charge(self, n: int) -> None:
        self.budget -= n
        if self.budget < 0:
            raise _OverBudget


class _OverBudget(Exception):
    pass


def _all_user_code_names(namespace: dict[str, Any], hook: Hook | None) -> set[str]:
    """Every name that any function whose globals are namespace mentions: the sound answer
    when a value is too big to walk. Functions refer to their globals, so the garbage
    collector finds them all, wherever they are kept."""
    names: set[str] = set()
    for ref in gc.get_referrers(namespace):
        if isinstance(ref, types.FunctionType) and ref.__globals__ is namespace:
            cn = code_names(ref.__code__, hook)
            if cn.dynamic:
                raise Dynamic
            names |= cn.names
    return names
