"""Examining a namespace for a commit: which values changed, their fingerprints, the
co-variable groups, the tree, and the components to stage.

The same code runs in the session's process and in a forked child (background capture):
it reads the session's knowledge and writer as they are, stages chunks in the writer, and
returns what the session learns once the commit stands; it changes nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from . import globalstate
from .components import ComponentWriter, Fingerprint, fingerprint
from .describe import describe
from .encode import Reductions, UnpicklableError, encode
from .knowledge import Knowledge, Known
from .loading import RNG_NAME
from .model import ANY_NAME, Tree, Unstored


@dataclass
class Captured:
    """What examining the namespace found: the tree to commit, its changed components
    (staged in the writer), and what the session learns once the commit stands."""

    tree: Tree
    tree_key: str
    staged: dict[tuple[tuple[str, ...], str], str]
    learned: dict[str, Known]
    escaping: set[str]
    gone: set[str]
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    examined: int


class Examination:
    """One examination of a namespace against what a session knows as of its HEAD.

    say_once(name, message): the session's channel for what cannot be stored."""

    def __init__(self, known: Knowledge, tree: Tree | None, writer: ComponentWriter,
                 components: dict[tuple[tuple[str, ...], str], str],
                 namespace: dict[str, Any], say_once: Callable[[str, str], None]):
        self._known, self._tree, self._writer = known, tree, writer
        self._components = components
        self.namespace = namespace
        self._say_once = say_once
        self._reductions: Reductions = {}

    def capture(self, current: dict[str, Any], examine: set[str], cand: set[str] | None,
                expected: Iterable[str] | None) -> Captured:
        """Examine names of current (encode, fingerprint, group, stage what changed): in
        this process, or in a forked child whose memory is this process's at the fork."""
        prints, unstored, costs = self._encode_names(current, examine)
        escaping = set() if cand is not None or expected is None \
            else self._escapees(current, prints, set(expected))
        tree, staged = self._tree_of(current, examine, prints, unstored)
        return Captured(
            tree, self._writer.stage_object(tree.to_bytes()), staged,
            Knowledge.learned(current, examine, prints, costs), escaping,
            set(self._known.names() - current.keys()),
            ANY_NAME if cand is None else tuple(sorted(cand & current.keys())),
            self._writes(tree, current, examine), len(examine))

    def _escapees(self, current: dict[str, Any], prints: dict[str, Fingerprint],
                  expected: set[str]) -> set[str]:
        """Names whose content changed although no transaction since HEAD named them (nor a
        name sharing objects with them) and their binding is the same."""
        explained = self._known.to_examine(current, expected, self._tree)
        found = set()
        for n, fp in prints.items():
            known = self._known.get(n)
            if (n not in explained and known is not None and known.digest is not None
                    and known.obj_id == id(current[n]) and fp.digest != known.digest):
                found.add(n)
        return found

    def _tree_of(self, current: dict[str, Any], examine: set[str],
                 prints: dict[str, Fingerprint], unstored: dict[str, Unstored]
                 ) -> tuple[Tree, dict[tuple[tuple[str, ...], str], str]]:
        """The tree of the namespace now, its changed components staged in the writer."""
        fresh = {n: set(fp.encoded.shared) | fp.encoded.storages for n, fp in prints.items()}
        stored = list(fresh)
        for n in current.keys() - examine:
            if self._known[n].digest is None:
                unstored[n] = self._tree.unstored[n] if self._tree else Unstored("?", "?")
            else:
                stored.append(n)
        groups = self._known.groups(stored, fresh)
        return self._build_tree(current, examine, prints, groups, unstored)

    def _encode_names(self, current: dict[str, Any], examine: set[str]
                      ) -> tuple[dict[str, Fingerprint], dict[str, Unstored], dict[str, float]]:
        prints: dict[str, Fingerprint] = {}
        unstored: dict[str, Unstored] = {}
        costs: dict[str, float] = {}
        for n in sorted(examine):
            value = current[n]
            began = time.perf_counter()
            try:
                prints[n] = fingerprint(encode(value, self.namespace, collect_shared=True,
                                                  reductions=self._reductions))
                held = prints[n].encoded.placeholders
                if held:
                    self._say_once(n, f"{n!r} is stored without the {', '.join(sorted(set(held)))}"
                                      " it holds (a restore puts a placeholder there)")
            except UnpicklableError as e:
                unstored[n] = Unstored(type(value).__name__, str(e))
                self._say_once(n, f"{n!r} is not stored ({type(value).__name__}: {e}); "
                                   "a restore will not bring it back")
            costs[n] = time.perf_counter() - began
        return prints, unstored, costs

    def _build_tree(self, current: dict[str, Any], examine: set[str],
                    prints: dict[str, Fingerprint], groups: list[tuple[str, ...]],
                    unstored: dict[str, Unstored]
                    ) -> tuple[Tree, dict[tuple[tuple[str, ...], str], str]]:
        components: dict[str, str] = {}
        digests: dict[str, str] = {}
        staged: dict[tuple[tuple[str, ...], str], str] = {}

        def key_for(names: tuple[str, ...], fp: Fingerprint) -> str:
            k = (names, fp.digest)
            if k not in self._components and k not in staged:
                staged[k] = self._writer.stage(names, fp)
            return self._components.get(k) or staged[k]

        for group in groups:
            if not examine.intersection(group):
                for n in group:
                    components[n] = self._tree.components[n]  # type: ignore[union-attr]
                    digests[n] = self._known[n].digest  # type: ignore[assignment]
                continue
            for n in group:
                digests[n] = prints[n].digest if n in prints else self._known[n].digest  # type: ignore[assignment]
            if len(group) == 1:
                fp = prints[group[0]]
            else:
                values = tuple(current[n] for n in group)
                fp = fingerprint(encode(values, self.namespace, collect_shared=False,
                                        reductions=self._reductions))
            key = key_for(group, fp)
            for n in group:
                components[n] = key
        rng_key = key_for((RNG_NAME,), fingerprint(globalstate.encoded(current)))
        earlier = self._tree or Tree({}, {})
        kinds = {n: describe(current[n]) if n in examine else earlier.kinds[n]
                 for n in current if n in examine or n in earlier.kinds}
        partial = {n: ", ".join(sorted(set(prints[n].encoded.placeholders)))
                   if n in examine else earlier.partial[n]
                   for n in components if (n in prints and prints[n].encoded.placeholders)
                   or (n not in examine and n in earlier.partial)}
        return Tree(components, digests, unstored, rng_key, kinds, partial), staged

    def _writes(self, tree: Tree, current: dict[str, Any], examine: set[str]
                ) -> tuple[str, ...]:
        """The transaction's write set: names added, removed, rebound, or whose content
        changed since HEAD (names not examined cannot have changed)."""
        parent = self._tree
        if parent is None:
            return tuple(sorted(tree.names))
        changed = tree.names ^ parent.names
        for n in examine:
            known = self._known.get(n)
            if (tree.fingerprints.get(n) != parent.fingerprints.get(n)
                    or (n in tree.unstored) != (n in parent.unstored)
                    or (known is not None and known.obj_id != id(current[n]))):
                changed.add(n)
        return tuple(sorted(changed))
