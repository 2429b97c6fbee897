"""Notebook code that libraries hold, and the names it can touch behind a cell's back.

A cell that only says ``logging.getLogger("nb").warning("x")`` runs the ``emit`` of a
notebook handler the logger keeps, which appends to ``records``; the cell names neither. The
static walk (track.py) starts from what a cell names, so it cannot see this. Libraries keep
such code in a few well-known places — logging's handlers and filters, warnings' and sys's
hooks, numpy's error callback, torch's global hooks, signal handlers, weakref finalizers,
running threads — and those are read at every commit (no user code runs: attributes and
lists only). Where they hold notebook code, the names that code mentions and the names bound
to the objects it holds (a handler's target list) are examined at every commit and rollback.
A sweep still catches what is kept anywhere else.
"""

from __future__ import annotations

import functools
import signal
import sys
import types
from typing import Any

from . import track

#: signals whose handler a notebook may set (SIGINT: "interrupt kernel")
_SIGNALS = tuple(getattr(signal, name) for name in
                 ("SIGINT", "SIGTERM", "SIGALRM", "SIGUSR1", "SIGUSR2", "SIGHUP")
                 if hasattr(signal, name))
#: torch's global module hooks (torch.nn.modules.module), each a dict of callables
_TORCH_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks",
                "_global_backward_hooks", "_global_backward_pre_hooks",
                "_global_module_registration_hooks", "_global_parameter_registration_hooks",
                "_global_buffer_registration_hooks")


def library_held() -> list[Any]:
    """What libraries keep to call later, from the modules already imported."""
    held: list[Any] = [sys.excepthook, sys.displayhook, sys.breakpointhook,
                       sys.unraisablehook, sys.gettrace(), sys.getprofile()]
    held += [signal.getsignal(s) for s in _SIGNALS]
    logging = sys.modules.get("logging")
    if logging is not None:
        loggers = [logging.root, *(lg for lg in list(logging.root.manager.loggerDict.values())
                                   if isinstance(lg, logging.Logger))]
        for logger in loggers:
            held += logger.filters
            for handler in logger.handlers:
                held.append(handler)
                held += handler.filters
    warnings = sys.modules.get("warnings")
    if warnings is not None:
        held += [warnings.showwarning, warnings.formatwarning]
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        held.append(numpy.geterrcall())
    module = sys.modules.get("torch.nn.modules.module")
    if module is not None:
        for name in _TORCH_HOOKS:
            held += list(getattr(module, name, {}).values())
    threading = sys.modules.get("threading")
    if threading is not None:
        held += threading.enumerate()
    weakref = sys.modules.get("weakref")
    registry = getattr(getattr(weakref, "finalize", None), "_registry", None)
    if isinstance(registry, dict):
        held += [getattr(info, "func", None) for info in list(registry.values())]
    return held


def _notebook_code(obj: Any, namespace: dict[str, Any], main: str, depth: int = 0) -> bool:
    """Whether obj is, or directly wraps, code of the namespace (or an instance of one of
    its classes): a function, a bound method, a partial, a thread's target."""
    if depth > 3 or obj is None:
        return False
    if isinstance(obj, types.FunctionType):
        return obj.__globals__ is namespace or \
            _notebook_code(obj.__dict__.get("__wrapped__"), namespace, main, depth + 1)
    if getattr(type(obj), "__module__", None) == main:
        return True
    if isinstance(obj, types.MethodType):
        return _notebook_code(obj.__func__, namespace, main, depth + 1) or \
            _notebook_code(obj.__self__, namespace, main, depth + 1)
    if isinstance(obj, functools.partial):
        return _notebook_code(obj.func, namespace, main, depth + 1)
    target = getattr(obj, "_target", None)  # threading.Thread(target=...)
    return target is not None and _notebook_code(target, namespace, main, depth + 1)


def held_names(namespace: dict[str, Any]) -> set[str] | None:
    """Names the notebook code that libraries hold could touch: what its code mentions
    (through track's walk) and the names bound to objects it holds; None: anything."""
    main = namespace.get("__name__", "__main__")
    roots = [obj for obj in library_held() if _notebook_code(obj, namespace, main)]
    if not roots:
        return set()
    return track.reachable_names(roots, namespace)
