"""Resumable loops: a top-level ``for`` loop whose position survives the process.

Its iterable is kept in the namespace as ``__txpy_loop__`` (committed with the state, sharing
objects with the names that hold it), so a resume continues over the same object, skipping
the iterations done. Only iterables whose iteration is a pure function of their committed
value (range, list, tuple, dict and its views, str, bytes, numpy/pandas/torch arrays, and
enumerate/zip of those) are resumed mid-loop; a loop over anything else (generator, file,
iterator, set, DataLoader) commits only when it ends.
"""

from __future__ import annotations

import builtins
import collections
import gc
import itertools
import operator
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .program import LoopCode

LOOP_NAME = "__txpy_loop__"
#: a loop's iterations run natively in chunks lasting about this long (or a tenth of the
#: commit interval, if less); a commit can only happen between chunks
CHUNK_SECONDS = 0.05

_VIEWS = {type({}.keys()): "keys", type({}.values()): "values", type({}.items()): "items"}
_first = operator.itemgetter(0)


@dataclass(frozen=True)
class LoopSource:
    """The iterable of a running top-level loop, kept in the namespace so it is committed with
    (and shares objects with) the state. Only types whose iteration order is a function of
    their committed value are wrapped, so skipping k items after a restore is exact."""

    value: Any  # with combine: the LoopSource (enumerate) or tuple of them (zip) it combines
    view: str | None = None  # iterate value.keys()/values()/items() of a dict
    combine: str | None = None  # "enumerate" | "zip"
    start: int = 0
    strict: bool = False

    @classmethod
    def wrap(cls, iterable: Any) -> LoopSource | None:
        kind = type(iterable)
        if kind in (range, list, tuple, str, bytes, bytearray, dict):
            return cls(iterable)
        if kind in _VIEWS:
            owners = [o for o in gc.get_referents(iterable) if type(o) is dict]
            return cls(owners[0], _VIEWS[kind]) if len(owners) == 1 else None
        for module, names in (("numpy", ("ndarray",)), ("torch", ("Tensor",)),
                              ("pandas", ("Series", "DataFrame", "Index"))):
            lib = sys.modules.get(module)
            if lib is not None and any(kind is getattr(lib, n, None) for n in names):
                return cls(iterable)
        return None

    def iterate(self, skip: int) -> Iterator[Any]:
        """Its items, after the first skip."""
        if self.combine == "enumerate":
            return enumerate(self.value.iterate(skip), self.start + skip)
        if self.combine == "zip":
            return zip(*(s.iterate(skip) for s in self.value), strict=self.strict)
        it = iter(getattr(self.value, self.view)() if self.view else self.value)
        collections.deque(itertools.islice(it, skip), maxlen=0)
        return it


def evaluate(loop: LoopCode, ns: dict[str, Any]) -> tuple[Any, LoopSource | None, Any]:
    """The loop's iterable, evaluated as python would; its LoopSource if resumable, else the
    part of it that is not (to name in a message)."""
    builtin = getattr(builtins, loop.call) if loop.call else None
    if builtin is None or ns.get(loop.call, builtin) is not builtin:  # type: ignore[arg-type]
        iterable = eval(loop.iterable, ns)  # noqa: S307
        return iterable, LoopSource.wrap(iterable), iterable
    args = [eval(c, ns) for c in loop.args]  # noqa: S307
    kwargs = {k: eval(c, ns) for k, c in loop.kwargs}  # noqa: S307
    iterable = builtin(*args, **kwargs)
    inner = args if loop.call == "zip" else args[:1]
    parts = [LoopSource.wrap(a) for a in inner]
    for a, p in zip(inner, parts, strict=True):
        if p is None:
            return iterable, None, a
    if loop.call == "enumerate":
        start = args[1] if len(args) > 1 else kwargs.get("start", 0)
        return iterable, LoopSource(parts[0], combine="enumerate", start=start), None
    return iterable, LoopSource(tuple(parts), combine="zip",
                                strict=bool(kwargs.get("strict", False))), None


class Chunk:
    """At most size items of an iterator, for the loop's body to run natively, counting the
    items it took. The count is kept in C (a one-slot deque appended to by zip, which takes
    an item only after its source gave one), so no frame of txpy's shows in the user's
    tracebacks and a txpy.checkpoint() in the middle of the chunk can read it."""

    def __init__(self, it: Iterator[Any], size: int):
        self._taken: collections.deque[int] = collections.deque([0], maxlen=1)
        counts = map(self._taken.append, itertools.count(1))
        self.items: Iterator[Any] = map(_first, zip(itertools.islice(it, size), counts,
                                                    strict=False))

    @property
    def taken(self) -> int:
        """Items handed to the loop so far, the one running included."""
        return self._taken[0]


def chunk_size(size: int, per_item: float, interval: float) -> int:
    """Iterations per native chunk: one when every iteration may commit (interval 0); else
    as many as fill a small share of the commit interval (doubling at most, so a slow
    iteration after fast ones does not delay a commit much)."""
    if interval <= 0:
        return 1
    target = min(CHUNK_SECONDS, interval / 10)
    return max(1, min(size * 2, int(target / per_item) if per_item > 0 else size * 2))


def describe(iterable: Any) -> str:
    """What an iterable is, for a message saying why its loop cannot resume mid-way."""
    kind = type(iterable)
    if isinstance(iterable, types.GeneratorType):
        return "a generator"
    if hasattr(iterable, "readline"):
        return "a file"
    if iter(iterable) is iterable:
        return f"an iterator ({kind.__name__})"
    return f"a {kind.__name__}"
