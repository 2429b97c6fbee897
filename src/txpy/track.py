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

import dis
import functools
import gc
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: Names (globals or attributes) that give code a handle on the whole namespace.
DYNAMIC_NAMES = frozenset({
    "globals", "vars", "locals", "eval", "exec", "execfile", "__import__", "__main__",
    "__globals__", "__builtins__", "f_globals", "f_locals", "f_back", "_getframe",
    "currentframe", "user_ns", "user_global_ns", "user_ns_hidden", "run_path", "run_module",
    "breakpoint",
})

#: IPython shell methods a transformed cell may call with constant arguments.
_SHELL_CALLS = frozenset({"run_line_magic", "run_cell_magic", "system", "getoutput"})

#: Magics whose argument is Python code run in the user namespace.
_CODE_MAGICS = frozenset({"time", "timeit", "prun", "capture"})

#: Magics (and aliases) that cannot touch the user namespace except by binding new names,
#: which the session catches by itself.
_INERT_MAGICS = frozenset({
    "matplotlib", "config", "pwd", "cd", "who", "whos", "who_ls", "lsmagic", "magic", "pinfo",
    "pinfo2", "psearch", "pdoc", "pdef", "psource", "pfile", "precision", "xmode", "colors",
    "history", "hist", "txpy", "pip", "conda", "env", "ls", "ll", "lf", "lk", "lx", "cat",
    "cp", "mv", "mkdir", "rm", "rmdir", "clear", "page", "pprint", "doctest_mode",
    "bash", "sh", "script", "writefile", "html", "javascript", "js", "markdown", "latex",
    "svg", "perl", "ruby", "sx", "system", "timeit_setup",
})

#: Objects walked per call before giving up on precision (see _all_user_code_names).
WALK_BUDGET = 20_000

_ATOMIC = (type(None), bool, int, float, complex, str, bytes, range, types.ModuleType,
           types.BuiltinFunctionType, types.BuiltinMethodType, type(len.__call__),
           types.MethodWrapperType, types.WrapperDescriptorType)


class Dynamic(Exception):
    """The code can reach the namespace in a way static analysis cannot follow."""


@dataclass(frozen=True)
class CodeNames:
    """What one code object (and the code nested in it) mentions."""

    names: frozenset[str]
    dynamic: bool


def candidates(code: types.CodeType, namespace: dict[str, Any]) -> set[str] | None:
    """Names of ``namespace`` that running ``code`` there could read, write or mutate in
    place; None means "anything" (examine every name)."""
    try:
        return _Walker(namespace).run(code)
    except Dynamic:
        return None
    except Exception:  # user code the walk ran raised (a __len__, a __getattr__...)
        return None


def code_names(code: types.CodeType) -> CodeNames:
    """co_names of code and of every code object nested in it, and whether any is dynamic."""
    return _code_names(code)


@functools.lru_cache(maxsize=8192)
def _code_names(code: types.CodeType) -> CodeNames:
    names: set[str] = set()
    dynamic = False
    for c in _nested_code(code):
        names.update(c.co_names)
        if "__main__" in c.co_consts:
            dynamic = True
        if "get_ipython" in c.co_names:
            try:
                names.update(_shell_call_names(c))
            except Dynamic:
                dynamic = True
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


_SKIP_OPS = frozenset({"PRECALL", "CACHE", "NOP", "EXTENDED_ARG", "PUSH_NULL", "KW_NAMES"})


def _shell_call_names(code: types.CodeType) -> set[str]:
    """Names reached by IPython's ``get_ipython().run_line_magic('name', 'args')`` calls in
    code (what ``%magic`` lines become): only calls with constant arguments to magics known
    to run no code, or to run code given as text, can be followed."""
    names: set[str] = set()
    ins = [i for i in dis.get_instructions(code) if i.opname not in _SKIP_OPS]
    for k, i in enumerate(ins):
        if i.argval != "get_ipython" or not i.opname.startswith("LOAD_"):
            continue
        if k + 2 >= len(ins) or not ins[k + 1].opname.startswith("CALL") \
                or ins[k + 2].opname not in ("LOAD_METHOD", "LOAD_ATTR") \
                or ins[k + 2].argval not in _SHELL_CALLS:
            raise Dynamic
        args = []
        for j in ins[k + 3:]:
            if j.opname.startswith("CALL"):
                break
            if j.opname != "LOAD_CONST" or not isinstance(j.argval, (str, int)):
                raise Dynamic
            args.append(j.argval)
        names.update(_magic_names(ins[k + 2].argval, args))
    return names


def _magic_names(method: str, args: list[Any]) -> set[str]:
    if method in ("system", "getoutput"):
        return set()
    magic = args[0] if args else None
    if magic in _INERT_MAGICS:
        return set()
    if magic not in _CODE_MAGICS:
        raise Dynamic
    texts = [a for a in args[1:] if isinstance(a, str)]
    names: set[str] = set()
    for text in texts:
        found = _names_in_source(text, strip_options=True)
        names |= found.names
        if found.dynamic:
            raise Dynamic
    return names


def _names_in_source(text: str, strip_options: bool) -> CodeNames:
    """Names in a magic's code argument; leading ``-n 10``-style options are dropped."""
    words = text.split(" ")
    for k in range(len(words) if strip_options else 1):
        source = " ".join(words[k:])
        try:
            return _code_names(compile(source, "<magic>", "exec"))
        except SyntaxError:
            continue
    raise Dynamic


class _Walker:
    """One candidates() computation: follows names to the user code they can run."""

    def __init__(self, namespace: dict[str, Any]):
        self.ns = namespace
        self.main = namespace.get("__name__", "__main__")
        self.found: set[str] = set()
        self.pending: list[str] = []
        self.seen: set[int] = set()
        self.budget = WALK_BUDGET

    def run(self, code: types.CodeType) -> set[str]:
        self._add_code(code)
        while self.pending:
            name = self.pending.pop()
            value = self.ns[name]
            if value is sys.modules or getattr(value, "__dict__", None) is self.ns:
                raise Dynamic  # a handle on the namespace itself
            try:
                self._walk(value)
            except _OverBudget:
                # too big to walk: every name any notebook code mentions is closed under
                # "the code it can run", so nothing more needs following
                self._add_names(_all_user_code_names(self.ns))
                self.found.update(n for n, v in self.ns.items()
                                  if self._is_user_function(v) or (isinstance(v, type)
                                                                   and self._is_user_class(v)))
                self.pending.clear()
        return self.found

    def _add_code(self, code: types.CodeType) -> None:
        cn = _code_names(code)
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
                    continue  # library code reaches only what it is given
                self._add_code(obj.__code__)
                if self.ns.get(obj.__name__) is obj:
                    self._add_names((obj.__name__,))
                if obj.__closure__:
                    for cell in obj.__closure__:
                        try:
                            stack.append(cell.cell_contents)
                        except ValueError:
                            pass  # empty cell
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
            elif isinstance(obj, type):
                if self._is_user_class(obj):
                    if self.ns.get(obj.__name__) is obj:
                        self._add_names((obj.__name__,))
                    stack.extend(vars(obj).values())
                    stack.extend(obj.__bases__)
                    stack.append(type(obj))  # a notebook metaclass
            else:
                self._walk_instance(obj, t, stack)

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


def _all_user_code_names(namespace: dict[str, Any]) -> set[str]:
    """Every name that any function whose globals are namespace mentions: the sound answer
    when a value is too big to walk. Functions refer to their globals, so the garbage
    collector finds them all, wherever they are kept."""
    names: set[str] = set()
    for ref in gc.get_referrers(namespace):
        if isinstance(ref, types.FunctionType) and ref.__globals__ is namespace:
            cn = _code_names(ref.__code__)
            if cn.dynamic:
                raise Dynamic
            names |= cn.names
    return names
