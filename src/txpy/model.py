"""The data model that crosses module boundaries: commits, trees, component manifests, diffs."""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .store.chunks import chunk_key


def canonical_json(value: Any) -> bytes:
    """One byte string per value, so equal records hash equal."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class BufferRef:
    """An out-of-band pickle buffer, split into chunks."""

    chunks: tuple[str, ...]
    nbytes: int
    readonly: bool


@dataclass(frozen=True)
class ComponentManifest:
    """How to rebuild one co-variable: the names it binds, its pickle stream and its buffers.

    notes: what the encoder could not keep exactly (e.g. an autograd graph), shown on restore.
    """

    names: tuple[str, ...]
    stream: tuple[str, ...]
    buffers: tuple[BufferRef, ...]
    notes: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        return canonical_json(asdict(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> ComponentManifest:
        raw = json.loads(data)
        return cls(
            names=tuple(raw["names"]),
            stream=tuple(raw["stream"]),
            buffers=tuple(
                BufferRef(tuple(b["chunks"]), b["nbytes"], b["readonly"]) for b in raw["buffers"]
            ),
            notes=tuple(raw.get("notes", ())),
        )

    def chunk_keys(self) -> list[str]:
        return [*self.stream, *(k for b in self.buffers for k in b.chunks)]


@dataclass(frozen=True)
class Unstored:
    """A name whose value could not be serialized, and why."""

    type_name: str
    reason: str


@dataclass(frozen=True)
class Tree:
    """The whole state of a commit: each name's component and fingerprint, plus what was not
    stored and the component of global state (random generators, library settings)."""

    components: dict[str, str]  # name -> component (manifest) key
    fingerprints: dict[str, str]  # name -> fingerprint of that name's value alone
    unstored: dict[str, Unstored] = field(default_factory=dict)
    rng: str | None = None
    #: name -> what it is, for people (`txpy show`): "ndarray float64 (1000, 3)", "list len 12"
    kinds: dict[str, str] = field(default_factory=dict)
    #: name -> what it holds that could not be stored ("generator"): stored with placeholders
    partial: dict[str, str] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        raw: dict[str, Any] = {
            "components": self.components,
            "fingerprints": self.fingerprints,
            "unstored": {n: [u.type_name, u.reason] for n, u in self.unstored.items()},
            "rng": self.rng,
        }
        # absent from trees written before they existed; an older txpy ignores them
        if self.kinds:
            raw["kinds"] = self.kinds
        if self.partial:
            raw["partial"] = self.partial
        return canonical_json(raw)

    @classmethod
    def from_bytes(cls, data: bytes) -> Tree:
        raw = json.loads(data)
        return cls(
            components=raw["components"],
            fingerprints=raw["fingerprints"],
            unstored={n: Unstored(*u) for n, u in raw["unstored"].items()},
            rng=raw["rng"],
            kinds=raw.get("kinds", {}),
            partial=raw.get("partial", {}),
        )

    @property
    def names(self) -> set[str]:
        return set(self.components) | set(self.unstored)

    @functools.cached_property
    def members(self) -> dict[str, list[str]]:
        """component key -> the names stored in it (worked out once per tree)."""
        found: dict[str, list[str]] = {}
        for n, key in self.components.items():
            found.setdefault(key, []).append(n)
        return found

    def component_keys(self) -> set[str]:
        keys = set(self.components.values())
        if self.rng:
            keys.add(self.rng)
        return keys


@dataclass(frozen=True)
class Commit:
    """One committed state of a history. id = blake3 of the canonical body."""

    id: str
    history: str
    parents: tuple[str, ...]
    tree: str
    time: float
    kind: str  # "api", "block", "cell", "stmt"
    message: str = ""
    code: str | None = None
    #: names the transaction could have read; ("*",) when it could have read any
    reads: tuple[str, ...] = ()
    #: names it added, removed, rebound or changed the content of
    writes: tuple[str, ...] = ()
    env: dict[str, Any] = field(default_factory=dict)
    duration: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    def body(self) -> bytes:
        # shallow: asdict deep-copies env (a thousand package versions) on every commit
        return canonical_json({f.name: getattr(self, f.name) for f in fields(self)
                               if f.name != "id"})

    def sealed(self) -> Commit:
        """This commit with its id, the hash of its body: the one place commit ids are made."""
        return replace(self, id=chunk_key(self.body()))

    @classmethod
    def from_body(cls, commit_id: str, body: bytes) -> Commit:
        raw = json.loads(body)
        for k in ("parents", "reads", "writes"):
            raw[k] = tuple(raw[k])
        return cls(id=commit_id, **raw)

    @property
    def short(self) -> str:
        return self.id[:12]


#: a commit's read set when its transaction could have read any name
ANY_NAME = ("*",)


@dataclass(frozen=True)
class Diff:
    """Names added, removed and changed between two commits."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)
