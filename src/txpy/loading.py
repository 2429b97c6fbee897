"""Loading a tree's values into a live namespace: restore, checkout and rollback.

Components load in dependency order and one that cannot be loaded costs only its own names
(components.load_in_order); names a value holding something unstorable would lose are kept;
a rollback writes committed content back into the live objects (inplace.Merger). What could
not be done is said in one line each, never hidden.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any

from . import globalstate
from .components import (
    decode_manifest,
    load_in_order,
    not_restored_line,
    read_manifests,
    reason_of,
)
from .humanize import size
from .inplace import Merger
from .knowledge import Knowledge
from .model import Tree
from .repo import Repository

#: the component of global state (random generators, library settings) in every tree
RNG_NAME = "<random generators>"
#: Loads and writes at least this big are announced (a pause of about a second or more here).
ANNOUNCE_BYTES = 256 << 20


def announce(notify: Callable[[str], None], verb: str, nbytes: int) -> None:
    """Say so before work on big data, so that a long pause is explained."""
    if nbytes >= ANNOUNCE_BYTES:
        notify(f"{verb} {size(nbytes)}…")


class Loader:
    """Loads values of one repository into one namespace, for one session."""

    def __init__(self, repo: Repository, namespace: dict[str, Any], known: Knowledge,
                 notify: Callable[[str], None]):
        self.repo = repo
        self.namespace = namespace
        self._known = known
        self.notify = notify

    def apply(self, tree: Tree, names: set[str], current: dict[str, Any],
               keep: AbstractSet[str] = frozenset(), *, in_place: bool = False) -> set[str]:
        """Rebind names to their values in tree (whole components, except names in keep),
        delete names tree lacks. in_place (a rollback): a name still bound to the object it
        was bound to at HEAD keeps that object, with the committed content written back into
        it (see inplace.py), so whoever else holds it sees the rollback too.

        Partial: a component that cannot be loaded (a damaged chunk, a package missing here,
        its own code raising) leaves its names as they are, and one line says why; every
        other name is restored. The tree is not changed, so a later restore tries again."""
        keys = {tree.components[n] for n in names if n in tree.components}
        manifests, unreadable = read_manifests(self.repo, tree, keys)
        announce(self.notify, "loading", sum(b.nbytes for m in manifests for b in m.buffers))
        loaded: set[str] = set()

        def bind(values: dict[str, Any]) -> None:
            values = {n: v for n, v in values.items() if n not in keep}
            if in_place:  # one component: its names share objects with each other only
                merger = Merger(self.namespace.get("__name__"))
                merged = {n: self._into_live(merger, n, v, current) for n, v in values.items()}
                values = merged if merger.consistent() else values
            self.namespace.update(values)
            loaded.update(values)

        unreadable.update(load_in_order(self.repo, manifests, self.namespace, bind,
                                        self.notify))
        failed = {names: reason_of(e) for names, e in unreadable.items()}
        unloaded = {n for group in failed for n in group}
        for n in keep:
            self._known.forget(n)  # it may differ from HEAD now: the next commit looks
        for n in names | loaded | unloaded:
            if n in tree.unstored:
                if n not in current:
                    failed[(n,)] = f"never stored: {tree.unstored[n].type_name}"
                continue
            if n not in loaded and n not in unloaded:
                self.namespace.pop(n, None)
            self._known.forget(n)  # what is bound now is examined by the next commit
        kept = sorted(n for n in names if n in tree.unstored and n in current)
        if kept:
            self.notify("kept as they are (never stored, cannot be rolled back): "
                        + ", ".join(kept))
        partial = sorted(n for n in loaded if n in tree.partial)
        if partial:
            self.notify("restored without what txpy cannot store (a placeholder stands in): "
                        + ", ".join(f"{n} ({tree.partial[n]})" for n in partial))
        if failed:
            self.notify(not_restored_line(failed))
        return {n for group in failed for n in group}

    def _into_live(self, merger: Merger, name: str, value: Any, current: dict[str, Any]
                   ) -> Any:
        """value written into the object name is bound to, if that is still HEAD's object."""
        if name in current and self._known.binds(name, current[name]):
            try:
                return merger.merge(current[name], value)
            except RecursionError:  # a structure too deep to walk: rebind it instead
                pass
        return merger.replace(value)

    def restore_globals(self, tree: Tree) -> None:
        """Put the global random generators and library settings back; what cannot be put
        back here is said, and left as it is."""
        if not tree.rng:
            return
        notes: list[str] = []
        try:
            state = decode_manifest(self.repo, self.repo.manifest(tree.rng), {})[RNG_NAME]
            failed, notes = globalstate.restore(state, self.namespace)
        except Exception as e:
            failed = {RNG_NAME: reason_of(e)}
        for note in notes:
            self.notify(note)
        if failed:
            self.notify(not_restored_line({(name,): why for name, why in failed.items()}))
