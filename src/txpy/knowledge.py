"""What a session knows of each name's value as of HEAD.

If a name's binding is unchanged and the transaction could not have touched it, its value
is unchanged: its digest and component are reused, and it is not pickled again. Which
shareable objects each name reached is kept too (a graph.SharingIndex), to group names into
co-variables without walking every name at every commit.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, KeysView, Mapping
from dataclasses import dataclass
from typing import Any

from .components import Fingerprint
from .graph import SharingIndex
from .model import Tree


@dataclass
class Known:
    """What is known of one name's value as of HEAD."""

    obj_id: int
    digest: str | None  # None: not stored
    #: the shareable objects it reached, held (not just their ids) until it is examined
    #: again: an id remembered for a dead object is soon another object's, and would join
    #: names that share nothing (seen in a pandas notebook: four frames became one component)
    shared: dict[int, Any]
    storages: frozenset[int]
    #: seconds encoding it took: whether capturing it is cheaper in process than a fork
    cost: float = 0.0

    def by_ids(self) -> Known:
        """This knowledge holding ids only (what a forked child can report): an id of an
        object that dies is not reused before the name is examined again, because the name
        still holds it unless it changed, which makes it a candidate."""
        return Known(self.obj_id, self.digest, dict.fromkeys(self.shared), self.storages,
                     self.cost)


def persistent(shared: dict[int, Any]) -> dict[int, Any]:
    """The objects in shared that outlive it, by id; empties it.

    A pickler's memo also holds temporaries its reducers made (state dicts, argument lists);
    once the memo is gone, only `shared` holds those. Keeping them would pin memory for no
    use: no other name can reach them.
    """
    while True:  # until a pass frees nothing: a temporary may hold other temporaries
        survivors = {}
        freed = False
        for i in list(shared):
            obj = shared.pop(i)
            if sys.getrefcount(obj) > 2:  # more than `obj` and the call's argument
                survivors[i] = obj
            else:
                freed = True
            del obj
        if not freed:
            return survivors
        shared = survivors


class Knowledge:
    """Known values of a session's names, and which objects each reached."""

    def __init__(self) -> None:
        self._known: dict[str, Known] = {}
        self._sharing = SharingIndex()

    def get(self, name: str) -> Known | None:
        return self._known.get(name)

    def __getitem__(self, name: str) -> Known:
        return self._known[name]

    def binds(self, name: str, value: Any) -> bool:
        """Whether name is known bound to value's very object (not rebound since)."""
        known = self._known.get(name)
        return known is not None and known.obj_id == id(value)

    def names(self) -> KeysView[str]:
        return self._known.keys()

    def to_examine(self, current: Mapping[str, Any], cand: set[str] | None,
                   tree: Tree | None) -> set[str]:
        """The names a commit must examine: new or rebound ones, the candidates (all if
        None), and every name sharing a component with those (a mutation reaches other names
        only through shared objects)."""
        if cand is None:
            return set(current)
        examine = set()
        for n, v in current.items():
            known = self._known.get(n)
            if known is None or known.obj_id != id(v) or n in cand:
                examine.add(n)
        if tree is not None and examine:
            members = tree.members
            for n in list(examine):
                key = tree.components.get(n)
                if key is not None:
                    examine.update(m for m in members[key] if m in current)
        return examine

    def groups(self, names: Iterable[str], fresh: Mapping[str, set[int]]
               ) -> list[tuple[str, ...]]:
        """names grouped into co-variables (see SharingIndex.groups)."""
        return self._sharing.groups(names, fresh)

    @staticmethod
    def learned(current: Mapping[str, Any], examine: set[str],
                prints: Mapping[str, Fingerprint], costs: Mapping[str, float]
                ) -> dict[str, Known]:
        """What examining names taught, ready to be adopted when the commit is."""
        learned = {}
        for n in examine:
            fp = prints.get(n)
            if fp is None:
                learned[n] = Known(id(current[n]), None, {}, frozenset(), costs.get(n, 0.0))
                continue
            shared = fp.encoded.shared
            learned[n] = Known(id(current[n]), fp.digest,
                               persistent(shared) if fp.encoded.from_memo else shared,
                               frozenset(fp.encoded.storages), costs.get(n, 0.0))
        return learned

    def adopt(self, learned: Mapping[str, Known], gone: Iterable[str]) -> None:
        """Take what a commit learned as known. Knowledge only saves work: if taking it fails
        half-way, all of it is dropped (the next commit examines every name)."""
        try:
            for n in gone:
                self.forget(n)
            for n, known in learned.items():
                self._known[n] = known
                self._sharing.set(n, known.shared.keys() | known.storages)
        except Exception:
            self.forget()
            raise

    def forget(self, name: str | None = None) -> None:
        """Know nothing more of name (of every name if None): it will be examined."""
        if name is None:
            self._known.clear()
            self._sharing.clear()
        else:
            self._known.pop(name, None)
            self._sharing.discard(name)
