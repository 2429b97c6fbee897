"""State outside the namespace that a session's results depend on: the global random
generators and library settings (numpy's error handling and print options, torch's default
dtype and grad mode, scikit-learn's config, pandas options, warnings filters, logging
levels).

A rolled-back or restored session must go on as an uninterrupted one would: the same random
stream, the same dtype for new tensors, the same warnings turned into errors. Each provider
captures a small state, only from a module the user already imported (nothing is imported to
capture it), and puts it back; they are stored together as one component, next to the
namespace's. A provider whose state cannot be put back here is reported; the others are
restored. Logging handlers and formatters hold streams and are not captured. The data
globals of the user's own modules are captured alongside (see usermodules).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import usermodules
from .compat import pandas_changed_options, pandas_set_options
from .encode import Encoded, UnpicklableError, encode

USER_MODULES = "user modules"


@dataclass(frozen=True)
class Provider:
    """One piece of global state: where it lives and how to read and set it."""

    name: str  # its key in the stored state (the first three predate the others)
    module: str  # captured only once this module is imported
    capture: Callable[[Any], Any]
    restore: Callable[[Any, Any], None]


def _warnings_filters(warnings: Any) -> list[Any]:
    # a filter on a notebook-defined warning class would not unpickle elsewhere: left out
    return [f for f in warnings.filters if getattr(f[2], "__module__", "") != "__main__"]


def _set_warnings_filters(warnings: Any, filters: list[Any]) -> None:
    """The filters exactly as captured, and the caches of warnings already shown dropped, as
    catch_warnings does (through filterwarnings, the plain module string of a filter Python
    installs would come back as a regex, and every first rollback changed the state)."""
    ours = [f for f in warnings.filters if getattr(f[2], "__module__", "") == "__main__"]
    mutated = getattr(warnings, "_filters_mutated", None)
    if mutated is not None:
        warnings.filters[:] = ours + list(filters)
        mutated()
        return
    warnings.resetwarnings()  # a Python without it: through the public API
    for action, message, category, module, lineno in ours + list(filters):
        if message is None and module is None:
            warnings.simplefilter(action, category, lineno, append=True)
        else:
            warnings.filterwarnings(action, _pattern(message), category, _pattern(module),
                                    lineno, append=True)


def _pattern(regex: Any) -> str:
    """A filter's message or module: a compiled regex, a plain string (some filters Python
    or pytest install), or None (any)."""
    return getattr(regex, "pattern", regex) or ""


def _logging_levels(logging_module: Any) -> dict[str, int]:
    loggers = logging_module.root.manager.loggerDict
    levels = {name: lg.level for name, lg in list(loggers.items())
              if isinstance(lg, logging_module.Logger) and lg.level != logging_module.NOTSET}
    levels[""] = logging_module.root.level
    return levels


def _set_logging_levels(logging_module: Any, levels: dict[str, int]) -> None:
    """Loggers not created yet are created with their level (a library's getLogger later
    finds them set), the others not captured go back to NOTSET (inherit)."""
    for name, lg in list(logging_module.root.manager.loggerDict.items()):
        if isinstance(lg, logging_module.Logger) and name not in levels:
            lg.setLevel(logging_module.NOTSET)
    for name, level in levels.items():
        (logging_module.getLogger(name) if name else logging_module.root).setLevel(level)


def _torch_rng(torch: Any) -> Any:
    return torch.get_rng_state() if hasattr(torch, "get_rng_state") else None


PROVIDERS = (
    Provider("random", "random", lambda m: m.getstate(), lambda m, s: m.setstate(s)),
    Provider("numpy", "numpy.random", lambda m: m.get_state(), lambda m, s: m.set_state(s)),
    Provider("torch", "torch", _torch_rng, lambda m, s: m.set_rng_state(s)),
    Provider("numpy errors", "numpy", lambda m: m.geterr(), lambda m, s: m.seterr(**s)),
    Provider("numpy print options", "numpy", lambda m: m.get_printoptions(),
             lambda m, s: m.set_printoptions(**s)),
    Provider("torch default dtype", "torch", lambda m: m.get_default_dtype(),
             lambda m, s: m.set_default_dtype(s)),
    Provider("torch grad mode", "torch", lambda m: m.is_grad_enabled(),
             lambda m, s: m.set_grad_enabled(s)),
    Provider("scikit-learn config", "sklearn", lambda m: m.get_config(),
             lambda m, s: m.set_config(**s)),
    Provider("pandas options", "pandas", pandas_changed_options, pandas_set_options),
    Provider("warnings filters", "warnings", _warnings_filters, _set_warnings_filters),
    Provider("logging levels", "logging", _logging_levels, _set_logging_levels),
)


def encoded(namespace: dict[str, Any]) -> Encoded:
    """capture(namespace), pickled: once, and again without the user modules' globals that
    cannot be pickled only when one could not, or would come back as a placeholder or a new
    lock (checking each one first doubled the cost)."""
    try:
        whole = encode(capture(namespace, checked=False), None, collect_shared=False)
    except UnpicklableError:
        pass
    else:
        if not whole.placeholders and not whole.notes:
            return whole
    return encode(capture(namespace), None, collect_shared=False)


def capture(namespace: dict[str, Any] | None = None, *, checked: bool = True
            ) -> dict[str, Any]:
    """The state of every provider whose module is imported, and of the user's modules the
    namespace uses (checked: without their globals that cannot be pickled)."""
    state: dict[str, Any] = {}
    for p in PROVIDERS:
        module = sys.modules.get(p.module)  # not hasattr(numpy, ...): that imports it
        if module is not None:
            value = p.capture(module)
            if value is not None:
                state[p.name] = value
    modules = usermodules.capture(namespace or {}, checked=checked)
    if modules:
        state[USER_MODULES] = modules
    return state


def restore(state: dict[str, Any], namespace: dict[str, Any]
            ) -> tuple[dict[str, str], list[str]]:
    """Put captured state back (namespace: already restored, for the user modules' globals
    that are its objects); return {provider: why} for those that could not be, and notes to
    say (user modules whose source changed since)."""
    failed = {}
    for p in PROVIDERS:
        if p.name in state:
            try:
                p.restore(importlib.import_module(p.module), state[p.name])
            except Exception as e:  # one setting that no longer applies costs only itself
                failed[p.name] = f"{type(e).__name__}: {e}"
    notes = []
    if USER_MODULES in state:
        try:
            changed = usermodules.restore(state[USER_MODULES], namespace)
        except Exception as e:
            failed[USER_MODULES] = f"{type(e).__name__}: {e}"
        else:
            notes += [f"module {name!r} changed since this commit: its stored values were put "
                      "back over the new code" for name in changed]
    return failed, notes

