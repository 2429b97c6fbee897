"""Co-variables: names whose values reach a common mutable object form one component.

They must be pickled together so that after a restore ``model.parameters()`` and the
optimizer's param groups are still the same objects and ``a = b = []`` stays one list.
"""

from __future__ import annotations

import gc
import pickle
import sys
import types
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from itertools import compress
from typing import Any

#: Types whose instances are immutable or global, so sharing one between two names does not
#: make those names co-variables. Anything not listed counts as shareable (examine too much
#: rather than split a real co-variable), except library globals (see library_globals).
_NOT_SHARED: tuple[type, ...] = (
    str, bytes, tuple, frozenset, int, float, complex, bool, type(None), range, slice, type,
    types.ModuleType, types.BuiltinFunctionType, types.CodeType, pickle.PickleBuffer,
    types.MethodWrapperType, types.WrapperDescriptorType, types.MethodDescriptorType,
    types.GetSetDescriptorType, types.MemberDescriptorType, type(Ellipsis), type(NotImplemented),
)
#: Library value types that are immutable descriptors (dtypes, devices), by module. Libraries
#: cache and hand out one instance of each (pandas' ``StringDtype("python")``): counted as
#: shared, every DataFrame with a string column would join every other into one component.
_LIBRARY_VALUE_TYPES = {"numpy": ("dtype",), "torch": ("dtype", "device", "layout",
                                                       "memory_format"),
                        "pandas.core.dtypes.base": ("ExtensionDtype",)}
_library_objects: dict[int, Any] = {}
_scanned_modules: set[str] = set()
#: classes whose attributes were registered, held so that their ids stay theirs
_scanned_classes: set[type] = set()
#: [len(sys.modules), packages whose modules were all scanned while it had that many]
_packages_scanned: list[Any] = [-1, set()]
_not_shared_types: tuple[type, ...] = _NOT_SHARED


def library_globals(kinds: Iterable[type]) -> tuple[dict[int, Any], tuple[type, ...]]:
    """(objects, types) never shared between names.

    objects: bound at module level in imported modules, the attributes of the classes of
    ``kinds`` and of their bases (class-level defaults like pandas' ``_metadata``, which every
    instance reaches), and the modules' dicts, by id: every pickle reaches them, so they must
    not join unrelated names. Holding them keeps their ids from being reused by user objects.
    types: _NOT_SHARED plus library descriptor types (numpy/torch dtypes).

    Only the modules of the packages of ``kinds`` (the types of the objects a value reached)
    are scanned, each once: a value reaches library objects through its own types' code, and
    scanning every module a Jupyter kernel imported costs ~30 ms; scanning the members of
    every class of those packages too cost 12 of torch's 18 ms. A library object missed this
    way joins names needlessly (slower, never wrong).
    """
    global _not_shared_types
    kinds = set(kinds)
    if _packages_scanned[0] != len(sys.modules):  # modules came or went: look again
        _packages_scanned[:] = [len(sys.modules), set()]
    stale = {_package_of(t) for t in kinds} - _packages_scanned[1]
    if stale:
        for name in sys.modules.keys() - _scanned_modules:
            if name.partition(".")[0] in stale:
                _scanned_modules.add(name)
                module = sys.modules.get(name)
                if name != "__main__" and module is not None:
                    _scan_module(module)
        _packages_scanned[1].update(stale)
        _not_shared_types = _NOT_SHARED + tuple(
            getattr(sys.modules[m], t) for m, names in _LIBRARY_VALUE_TYPES.items()
            if m in sys.modules for t in names if hasattr(sys.modules[m], t))
    for kind in kinds - _scanned_classes:
        _scan_classes(kind)
    return _library_objects, _not_shared_types


def _package_of(kind: type) -> str:
    module = getattr(kind, "__module__", None)
    return module.partition(".")[0] if isinstance(module, str) else ""


def _scan_module(module: Any) -> None:
    try:
        attrs = vars(module)
    except TypeError:
        return
    values = list(attrs.values())
    objects = _library_objects
    objects[id(attrs)] = attrs
    objects.update(zip(map(id, values), values, strict=True))


def _scan_classes(kind: type) -> None:
    """Register the attributes of kind and its bases that a library defines: classes its
    module holds (importable, so pickled by reference), not the user's own (``__main__``,
    or made by exec in a namespace: pickled by value, their attributes are user state)."""
    for cls in type.__getattribute__(kind, "__mro__"):  # skips metaclass hooks, which can warn
        if cls in _scanned_classes:
            continue
        _scanned_classes.add(cls)
        namespace = type.__getattribute__(cls, "__dict__")
        module = namespace.get("__module__")
        if module != "__main__" and _held_by_module(cls, module):
            members = list(namespace.values())
            _library_objects.update(zip(map(id, members), members, strict=True))


def _held_by_module(cls: type, module_name: Any) -> bool:
    """Whether cls is what its module holds under its qualified name (plain dict lookups:
    attribute access can run hooks)."""
    holder: Any = sys.modules.get(module_name) if isinstance(module_name, str) else None
    for part in type.__getattribute__(cls, "__qualname__").split("."):
        try:
            holder = (vars(holder) if isinstance(holder, types.ModuleType)
                      else type.__getattribute__(holder, "__dict__")).get(part)
        except TypeError:  # holder is not a module or class
            return False
        if holder is None:
            return False
    return holder is cls


def _foreign_function(obj: Any, namespace: Mapping[str, Any] | None) -> bool:
    return isinstance(obj, types.FunctionType) and obj.__globals__ is not namespace


def shared_in_memo(memo: dict[int, tuple[int, Any]], namespace: Mapping[str, Any] | None
                   ) -> dict[int, Any]:
    """The shareable objects a pickler memoized (exact pickle semantics; for small pickles)."""
    library, not_shared = library_globals(type(o) for _, o in memo.values())
    return {i: o for i, (_, o) in memo.items()
            if i not in library and not isinstance(o, not_shared)
            and not _foreign_function(o, namespace)}


def reachable_shared(value: Any, namespace: Mapping[str, Any] | None) -> dict[int, Any]:
    """The shareable objects reachable from value, by a breadth-first walk of the garbage
    collector's references done level by level in C (for big object graphs, where copying a
    pickler's memo would cost seconds). Elements of numpy object arrays are walked too."""
    library, not_shared = library_globals((type(value),))
    np = sys.modules.get("numpy")
    found: dict[int, Any] = {}
    frontier = [value] if not isinstance(value, not_shared) else []
    found.update((id(o), o) for o in frontier)
    while frontier:
        refs = gc.get_referents(*frontier)
        if np is not None:
            for o in frontier:
                if isinstance(o, np.ndarray) and o.dtype.hasobject:
                    refs.extend(o.ravel(order="K").tolist())
        kinds = list(map(type, refs))
        library, not_shared = library_globals(kinds)
        shareable = {t for t in set(kinds) if not issubclass(t, not_shared)}
        candidates = list(compress(refs, map(shareable.__contains__, kinds)))
        by_id = dict(zip(map(id, candidates), candidates, strict=True))
        by_id.pop(id(namespace), None)
        # membership tests, not `by_id.keys() - found.keys()`: a set difference walks the
        # whole of found and library at every level, quadratic on a 200k-node linked list
        frontier = [o for i, o in by_id.items() if i not in found and i not in library
                    and not _foreign_function(o, namespace)]
        found.update((id(o), o) for o in frontier)
    return found


#: up to this many examined names, pairs of them are compared as sets (C speed); beyond,
#: their ids are walked once (pairs grow as the square)
PAIRWISE_UP_TO = 16


class SharingIndex:
    """Which names reach each shareable object (by id), kept up to date one name at a time.

    Grouping a commit's names then costs what its examined names reached, mostly in set
    operations, not the whole session: recomputed from every name's ids, a session holding
    a list of 100k dicts spent 52 ms grouping names on every commit, whatever the cell did.
    """

    def __init__(self) -> None:
        self._ids: dict[str, AbstractSet[int]] = {}
        self._owner: dict[int, str] = {}  # each id to one name reaching it
        self._owners: dict[int, set[str]] = {}  # ids two or more names reach: all of them
        self._links: dict[tuple[str, str], int] = {}  # (a, b), a < b: how many ids they share

    def set(self, name: str, ids: AbstractSet[int]) -> None:
        """name now reaches exactly ids, a set the caller no longer changes (kept, not copied;
        only the difference from what name reached before is worked through)."""
        new, old = ids, self._ids.get(name, frozenset())
        for i in old - new:
            self._remove_owner(i, name)
        for i in new - old:
            self._add_owner(i, name)
        self._ids[name] = new

    def discard(self, name: str) -> None:
        """Forget name (deleted, or no longer stored)."""
        for i in self._ids.pop(name, ()):
            self._remove_owner(i, name)

    def clear(self) -> None:
        for table in (self._ids, self._owner, self._owners, self._links):
            table.clear()

    def _add_owner(self, i: int, name: str) -> None:
        other = self._owner.setdefault(i, name)
        if other != name:
            owners = self._owners.setdefault(i, {other})
            for o in owners:
                self._link(name, o, 1)
            owners.add(name)

    def _remove_owner(self, i: int, name: str) -> None:
        owners = self._owners.get(i)
        if owners is None:
            del self._owner[i]
            return
        owners.discard(name)
        for o in owners:
            self._link(name, o, -1)
        if self._owner[i] == name:
            self._owner[i] = next(iter(owners))
        if len(owners) == 1:
            del self._owners[i]

    def _link(self, a: str, b: str, change: int) -> None:
        pair = (a, b) if a < b else (b, a)
        count = self._links.get(pair, 0) + change
        if count:
            self._links[pair] = count
        else:
            del self._links[pair]

    def groups(self, names: Iterable[str], fresh: Mapping[str, set[int]]
               ) -> list[tuple[str, ...]]:
        """Names grouped by shared objects (union-find); each group sorted, groups sorted.

        fresh: the ids of the names examined now (the index may hold older ids of theirs);
        the other names are as the index knows them.
        """
        parent: dict[str, str] = {name: name for name in names}

        def find(name: str) -> str:
            root = name
            while parent[root] != root:
                root = parent[root]
            while parent[name] != root:
                parent[name], name = root, parent[name]
            return root

        def union(a: str, b: str) -> None:
            if a in parent and b in parent:
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)

        partners: dict[str, set[str]] = {}  # linked names, for the examined ones
        for a, b in self._links:
            if a not in fresh and b not in fresh:
                union(a, b)
            else:
                partners.setdefault(a, set()).add(b)
                partners.setdefault(b, set()).add(a)
        examined = list(fresh.items())
        if len(examined) <= PAIRWISE_UP_TO:  # a few names: set operations in C
            for index, (name, ids) in enumerate(examined):
                for other, other_ids in examined[:index]:
                    if not ids.isdisjoint(other_ids):
                        union(name, other)
        else:  # many names: one pass over their ids
            first: dict[int, str] = {}
            for name, ids in examined:
                for i in ids:
                    other = first.setdefault(i, name)
                    if other != name:
                        union(name, other)
        for name, ids in examined:
            # names not examined now that it reaches: through ids the index links them by,
            # or through ids new to it
            # (membership tests only: `x - fresh.keys()` would walk all of fresh each time)
            others = {o for o in partners.get(name, ())
                      if o not in fresh and not ids.isdisjoint(self._ids[o])}
            for i in ids - self._ids.get(name, frozenset()):
                owners = self._owners.get(i)
                if owners is not None:
                    others.update(owners)
                elif i in self._owner:
                    others.add(self._owner[i])
            for o in others:
                if o not in fresh:
                    union(name, o)
        groups: dict[str, list[str]] = {}
        for name in parent:
            groups.setdefault(find(name), []).append(name)
        return sorted(tuple(sorted(g)) for g in groups.values())
