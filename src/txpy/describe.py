"""What a value is, in a few words for people (`txpy show`): "ndarray float64 (1000, 3)",
"list len 12", "Model".

Recorded at commit time for the names a commit examines. It must never run user code (a
``__len__`` or ``__getattr__`` may raise or have side effects): lengths come only from
builtin containers, shapes and dtypes only from the array libraries' own types.
"""

from __future__ import annotations

from typing import Any

_SIZED = (list, tuple, dict, set, frozenset, str, bytes, bytearray)
#: packages whose array-like types report .shape and .dtype without user code
_ARRAY_PACKAGES = frozenset({"numpy", "pandas", "torch", "scipy"})


def describe(value: Any) -> str:
    """A short description of value: its type, and its length or shape where known safely."""
    kind = type(value)
    name = kind.__qualname__
    if kind in _SIZED:
        return f"{name} len {len(value)}"
    package = kind.__module__.partition(".")[0] if isinstance(kind.__module__, str) else ""
    if package in _ARRAY_PACKAGES:
        return _array_like(value, name)
    return name


def _array_like(value: Any, name: str) -> str:
    try:
        shape = tuple(int(d) for d in value.shape)
    except Exception:  # not every type of those libraries has a shape
        return name
    dtype = getattr(value, "dtype", None)
    dtypes = getattr(value, "dtypes", None)  # a DataFrame: one per column
    if dtype is not None:
        return f"{name} {dtype} {shape}"
    if dtypes is not None:
        kinds = sorted({str(d) for d in dtypes})
        return f"{name} {'/'.join(kinds[:3])}{'…' if len(kinds) > 3 else ''} {shape}"
    return f"{name} {shape}"
