"""Co-variables: names whose values reach a common mutable object form one component.

They must be pickled together so that after a restore ``model.parameters()`` and the
optimizer's param groups are still the same objects and ``a = b = []`` stays one list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def components(reached: Mapping[str, Iterable[int]]) -> list[tuple[str, ...]]:
    """Group names by shared object ids (union-find); each group sorted, groups sorted."""
    parent: dict[str, str] = {name: name for name in reached}

    def find(name: str) -> str:
        root = name
        while parent[root] != root:
            root = parent[root]
        while parent[name] != root:
            parent[name], name = root, parent[name]
        return root

    owner: dict[int, str] = {}
    for name, ids in reached.items():
        for i in ids:
            other = owner.setdefault(i, name)
            if other != name:
                a, b = find(name), find(other)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    groups: dict[str, list[str]] = {}
    for name in reached:
        groups.setdefault(find(name), []).append(name)
    return sorted(tuple(sorted(g)) for g in groups.values())
