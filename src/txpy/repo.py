"""Repository: one store directory holding many histories — commit graph, refs, gc, fsck.

Layout of a store (``.txpy/``)::

    txpy.db      SQLite: commit records (signed), branches, each history's HEAD
    small.db     content-addressed objects under 64 KiB (manifests, trees, small chunks)
    objects/     content-addressed chunks of 64 KiB and more, a file each
    key          this store's Ed25519 signing key (signs commit ids), mode 0600
    lock         flock: writers share it, gc takes it alone; holds gc's epoch (8 bytes), which
                 gc bumps before it deletes anything, so writers know their cache of which
                 chunks exist has gone stale
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import (
    CorruptStoreError,
    NotAStoreError,
    RemoteError,
    StoreBusyError,
    UnknownRefError,
    UntrustedError,
)
from .model import Commit, ComponentManifest, Diff, Tree
from .refs import RefsContainer
from .signing import Signer, verify
from .store.backend import (
    Body,
    Bytes,
    LocalBackend,
    SqliteBackend,
    TieredBackend,
    body_bytes,
    body_size,
)
from .store.chunks import ChunkStore, chunk_key
from .store.meta import MetaDB

STORE_DIR = ".txpy"


def store_for(start: str | os.PathLike[str] = ".") -> Path:
    """The store a session started in start uses: the nearest existing one, else a new
    ``.txpy`` in start."""
    try:
        return find_store(start)
    except NotAStoreError:
        return Path(start).resolve() / STORE_DIR


def find_store(start: str | os.PathLike[str] = ".") -> Path:
    """The nearest ``.txpy`` in start or a parent (like git), or start itself if it is one."""
    here = Path(start).resolve()
    if (here / "txpy.db").is_file():
        return here
    for d in (here, *here.parents):
        if (d / STORE_DIR / "txpy.db").is_file():
            return d / STORE_DIR
    raise NotAStoreError(f"no txpy store in {here} or any parent (looked for {STORE_DIR}/)")


@dataclass(frozen=True)
class Damage:
    """One problem fsck found, with what it affects."""

    commit: str
    history: str
    what: str
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class CommitRecord:
    """A commit as stored and sent to remotes: its canonical body, signed. Only
    `Repository.read_commit` turns it into a Commit, after checking hash and signature."""

    id: str
    history: str
    time: float
    body: bytes
    sig: str
    signer: str


@dataclass(frozen=True)
class ChildChunks:
    """What a forked child wrote of a commit (`Repository.write_in_child`): under which gc
    epoch, every chunk key the commit needs, and the small bodies left for the parent."""

    epoch: int
    keys: tuple[str, ...]
    small: list[tuple[str, bytes]]
    bytes_new: int


@dataclass
class FsckReport:
    commits: int = 0
    chunks: int = 0
    damage: list[Damage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damage


def looks_like_id(ref: str) -> bool:
    """Whether ref could be a commit id or a prefix of one (at least 4 hex digits)."""
    return len(ref) >= 4 and all(c in "0123456789abcdef" for c in ref.lower())


def check_commit_record(commit_id: str, body: bytes, sig: str, signer: str,
                        trusted: dict[str, str]) -> None:
    """Refuse a commit record that does not hash to its id or is not signed by a trusted key."""
    if chunk_key(body) != commit_id:
        raise CorruptStoreError(f"commit {commit_id[:12]}: record does not match its id "
                                "(tampered with or damaged)")
    if signer not in trusted:
        raise UntrustedError(f"commit {commit_id[:12]} is signed by key {signer[:16]}…, which "
                             "this store does not trust; if you trust its author, run "
                             "`txpy trust` (or clone/pull with --trust)")
    if not verify(signer, sig, commit_id):
        raise CorruptStoreError(f"commit {commit_id[:12]}: bad signature; the record was "
                                "tampered with")


def diff_trees(a: Tree, b: Tree) -> Diff:
    """Names added, removed and changed from state a to state b."""
    na, nb = a.names, b.names
    changed = sorted(n for n in na & nb if a.fingerprints.get(n) != b.fingerprints.get(n)
                     or (n in a.unstored) != (n in b.unstored))
    return Diff(tuple(sorted(nb - na)), tuple(sorted(na - nb)), tuple(changed))


class Repository:
    """The store as one object: commits, refs (``repo.refs``), objects, remotes, gc, fsck.

    Callers never reach the SQLite metadata (``meta``) themselves; what they need is a method
    here or on ``refs``.
    """

    def __init__(self, path: Path, meta: MetaDB, signer: Signer):
        self.path = path
        self.meta = meta
        self.refs = RefsContainer(meta)
        self._objects = TieredBackend(SqliteBackend(path / "small.db"),
                                      LocalBackend(path / "objects"))
        self.chunks = ChunkStore(self._objects)
        self.signer = signer
        self._trusted = meta.trusted_keys()
        if signer.key_id not in self._trusted:
            with meta.write() as conn:
                meta.trust_key(conn, signer.key_id, "this store")
            self._trusted = meta.trusted_keys()
        self._lock_fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT, 0o644)

    # opening
    @classmethod
    def open(cls, path: str | os.PathLike[str], create: bool = False) -> Repository:
        """Open the store at path (a ``.txpy`` dir, or a dir containing one); create if asked."""
        p = Path(path)
        if (p / STORE_DIR).is_dir() and not (p / "txpy.db").exists():
            p = p / STORE_DIR
        if not (p / "txpy.db").is_file():
            if not create:
                raise NotAStoreError(f"{p} is not a txpy store (no txpy.db); a session "
                                     "creates one: txpy.Session(store=...)")
            if p.exists() and any(p.iterdir()):
                raise NotAStoreError(f"{p} exists and is not an empty directory or a txpy store")
            p.mkdir(parents=True, exist_ok=True)
            (p / "objects").mkdir(exist_ok=True)
            Signer.create(p / "key")
        try:
            signer = Signer.load(p / "key")
        except (FileNotFoundError, ValueError):
            raise CorruptStoreError(f"{p} has no valid signing key file (key)") from None
        return cls(p.resolve(), MetaDB(p / "txpy.db", create=create), signer)

    def close(self) -> None:
        self.meta.close()
        self.chunks.close()
        self._objects.close()
        os.close(self._lock_fd)

    # locking
    @contextmanager
    def writing(self) -> Iterator[None]:
        """Held while a commit decides which chunks exist, writes the others and publishes
        its record: gc (which needs the lock alone) cannot delete a chunk in between."""
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
        try:
            self.chunks.revalidate(self._gc_epoch())
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def write_in_child(self, chunks: list[tuple[str, Bytes, int]]) -> ChildChunks:
        """In a forked child: store the chunks the store lacks whose body is large (a file
        each); return the small ones' bodies for the parent to store with the record (they
        go to SQLite, which a forked child must not touch). Under a lock descriptor of its
        own: the inherited one is shared with the parent, and unlocking it would unlock both.
        """
        fd = os.open(self.path / "lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            epoch = self._gc_epoch(fd)
            self.chunks.revalidate(epoch)
            large, small = self._objects.large, []
            threshold = self._objects.threshold

            def large_bodies() -> Iterator[tuple[str, Body]]:
                for key, body in self.chunks.bodies_of_new(chunks, large.exists):
                    if body_size(body) < threshold:
                        small.append((key, body_bytes(body)))
                    else:
                        yield key, body

            written = large.put_many(large_bodies())
        finally:
            os.close(fd)
        return ChildChunks(epoch, tuple(k for k, _, _ in chunks), small,
                           written + sum(len(b) for _, b in small))

    def publish_from_child(self, commit: Commit, branch: str | None,
                           written: ChildChunks) -> str:
        """Publish a commit whose chunks a forked child wrote (`write_in_child`): its small
        chunks, record and branch move; the branch used (see `new_commit`). If a gc ran
        since the child wrote, every chunk the commit needs is checked first."""
        with self.writing():
            if self._gc_epoch() != written.epoch:
                small = {k for k, _ in written.small}
                missing = [k for k in written.keys if k not in small and not self.chunks.has(k)]
                if missing:
                    raise CorruptStoreError(f"a gc removed {len(missing)} chunks of this commit "
                                            "before it was recorded")
            self.chunks.put_bodies(written.small)
            self.chunks.remember(written.keys)
            _, used = self.new_commit(commit, branch)
        return used

    def _gc_epoch(self, fd: int | None = None) -> int:
        """The gc epoch in the lock file, read through fd (the store's own by default)."""
        raw = os.pread(self._lock_fd if fd is None else fd, 8, 0)
        return struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreBusyError("another txpy process is writing to this store; try again when "
                                 "it is idle") from None
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # trust
    def trusted_keys(self) -> dict[str, str]:
        return dict(self._trusted)

    def trust(self, key_id: str, label: str) -> None:
        with self.meta.write() as conn:
            self.meta.trust_key(conn, key_id, label)
        self._trusted = self.meta.trusted_keys()

    # remotes
    def remotes(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """{name: (url, fsspec storage options)} of the remotes this store remembers."""
        return {name: (url, json.loads(options))
                for name, (url, options) in self.meta.remotes().items()}

    def set_remote(self, name: str, url: str, options: dict[str, Any]) -> None:
        with self.meta.write() as conn:
            self.meta.set_remote(conn, name, url, json.dumps(options))

    # commits
    def new_commit(self, commit: Commit, branch: str | None) -> tuple[Commit, str]:
        """Publish a sealed commit (`Commit.sealed`) on branch of its history: its signed
        record and the ref move are one transaction. Returns it and the branch used, which
        is a new one if branch moved meanwhile or HEAD is detached (`RefsContainer.advance`).
        """
        if not commit.id:
            raise ValueError("new_commit needs a sealed commit (Commit.sealed())")
        parent = commit.parents[0] if commit.parents else None
        with self.meta.write() as conn:
            self.meta.insert_commit(conn, commit.id, commit.history, commit.time, commit.body(),
                                    self.signer.sign(commit.id), self.signer.key_id)
            used = self.refs.advance(commit.history, branch, parent, commit.id)
        return commit, used

    def insert_commits(self, records: Iterable[CommitRecord]) -> None:
        """Store records made elsewhere (a pull), in one transaction. They are checked when
        read (`read_commit`), like every record."""
        with self.meta.write() as conn:
            for r in records:
                self.meta.insert_commit(conn, r.id, r.history, r.time, r.body, r.sig, r.signer)

    def has_commit(self, commit_id: str) -> bool:
        return self.meta.has_commit(commit_id)

    def commit_record(self, commit_id: str) -> CommitRecord:
        """The stored record of a commit, as it is (for sending it elsewhere)."""
        row = self.meta.commit_row(commit_id)
        if row is None:
            raise UnknownRefError(f"unknown commit {commit_id[:12]}")
        return CommitRecord(commit_id, *row)

    def read_commit(self, commit_id: str) -> Commit:
        """A commit by full id, verified (hash and signature) before anything uses it."""
        r = self.commit_record(commit_id)
        check_commit_record(commit_id, r.body, r.sig, r.signer, self._trusted)
        return Commit.from_body(commit_id, r.body)

    def resolve(self, history: str | None, ref: str | None = None) -> Commit:
        """A commit from a ref: None/"HEAD" (that history's HEAD), a branch, an id or prefix."""
        if ref is None or ref == "HEAD":
            if history is None:
                raise UnknownRefError("HEAD needs a history name")
            _, cid = self.refs.head(history)
            if cid is None:
                raise UnknownRefError(f"history {history!r} has no commits in {self.path}")
            return self.read_commit(cid)
        if history is not None:
            cid = self.refs.tip(history, ref)
            if cid is not None:
                return self.read_commit(cid)
        if looks_like_id(ref):
            matches = self.meta.commit_ids_with_prefix(ref.lower())
            if len(matches) == 1:
                return self.read_commit(matches[0])
            if len(matches) > 1:
                raise UnknownRefError(f"commit prefix {ref!r} is ambiguous; give more digits")
        where = f" in history {history!r}" if history else ""
        raise UnknownRefError(f"unknown commit or branch {ref!r}{where}")

    # refs, as session.py moves them (RefsContainer has the rest)
    def log(self, history: str) -> list[Commit]:
        """Every commit of a history, newest first."""
        return [self.read_commit(cid) for cid in reversed(self.meta.commit_ids(history))]

    def histories(self) -> list[str]:
        return self.meta.histories()

    def disk_usage(self) -> int:
        """Bytes the store takes on disk."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    # objects
    def tree(self, commit: Commit) -> Tree:
        return Tree.from_bytes(self.chunks.get(commit.tree))

    def manifest(self, key: str) -> ComponentManifest:
        return ComponentManifest.from_bytes(self.chunks.get(key))

    def value_size(self, manifest: ComponentManifest) -> int:
        """Bytes of a component as pickled: its buffers plus its pickle stream (read: the
        manifest records only the buffers' sizes)."""
        return (sum(b.nbytes for b in manifest.buffers)
                + sum(len(self.chunks.get(k)) for k in manifest.stream))

    def diff(self, a: Commit, b: Commit) -> Diff:
        return diff_trees(self.tree(a), self.tree(b))

    # maintenance
    def _reachable(self) -> set[str]:
        """Every chunk key some commit refers to; damaged records keep what they can."""
        keys: set[str] = set()
        for cid in self.meta.commit_ids():
            commit = self.read_commit(cid)
            keys.add(commit.tree)
            try:
                tree = self.tree(commit)
            except CorruptStoreError:
                continue
            for comp in tree.component_keys():
                keys.add(comp)
                try:
                    keys.update(self.manifest(comp).chunk_keys())
                except CorruptStoreError:
                    pass
        return keys

    def gc(self) -> tuple[int, int]:
        """Delete chunks no commit refers to; return (chunks removed, bytes freed)."""
        with self.exclusive():
            # first: a writer that saw a chunk exist before this gc must look again
            os.pwrite(self._lock_fd, struct.pack("<Q", self._gc_epoch() + 1), 0)
            live = self._reachable()
            removed = freed = 0
            backend = self._objects
            backend.remove_temp_files()
            for key in list(self.chunks.keys()):
                if key not in live:
                    freed += backend.size(key)
                    self.chunks.delete(key)
                    removed += 1
            return removed, freed

    def fsck(self, progress: Callable[[int, int], None] | None = None) -> FsckReport:
        """Verify every commit, tree, manifest and chunk; report what any damage affects.
        progress(i, n) is called before commit i of n is checked."""
        return check_commits(self.meta.commit_ids(), self._read_filed_commit, self.chunks,
                             progress)

    def _read_filed_commit(self, cid: str) -> tuple[Commit, list[Damage]]:
        commit = self.read_commit(cid)
        filed = self.commit_record(cid).history
        if filed != commit.history:  # log and HEAD go by where a record is filed
            return commit, [Damage(cid, commit.history, f"filed under history {filed!r}, "
                                   f"signed as {commit.history!r}")]
        return commit, []


def check_commits(ids: list[str], read: Callable[[str], tuple[Commit, list[Damage]]],
                  chunks: ChunkStore, progress: Callable[[int, int], None] | None,
                  report: FsckReport | None = None) -> FsckReport:
    """fsck of a store or a remote: each commit read and verified by read (its damage, or
    CorruptStoreError/RemoteError for a record that cannot be trusted), then everything it
    refers to, each chunk verified once; progress(i, n) before commit i of n."""
    report = report or FsckReport()
    check = ChunkChecker(chunks)
    for i, cid in enumerate(ids):
        if progress:
            progress(i, len(ids))
        report.commits += 1
        try:
            commit, damage = read(cid)
        except (CorruptStoreError, RemoteError) as e:
            report.damage.append(Damage(cid, "?", str(e)))
            continue
        report.damage.extend(damage)
        report.damage.extend(commit_damage(commit, chunks, check))
    report.chunks = len(check.verified)
    return report


class ChunkChecker:
    """Verifies each chunk once (fsck of a store or of a remote): a problem, or None."""

    def __init__(self, chunks: ChunkStore):
        self.chunks = chunks
        self.verified: dict[str, str | None] = {}  # key -> problem or None

    def __call__(self, key: str) -> str | None:
        if key not in self.verified:
            try:
                self.chunks.get(key)
                self.verified[key] = None
            except CorruptStoreError as e:
                self.verified[key] = str(e)
        return self.verified[key]


def commit_damage(commit: Commit, chunks: ChunkStore, check: Callable[[str], str | None]
                  ) -> list[Damage]:
    """What is wrong with everything a (verified) commit refers to, by the names affected."""
    problem = check(commit.tree)
    if problem:
        return [Damage(commit.id, commit.history, f"tree: {problem}")]
    tree = Tree.from_bytes(chunks.get(commit.tree))
    by_component: dict[str, list[str]] = {}
    for name, comp in tree.components.items():
        by_component.setdefault(comp, []).append(name)
    if tree.rng:
        by_component.setdefault(tree.rng, []).append("<random generators and settings>")
    damage = []
    for comp, names in by_component.items():
        problem = check(comp)
        if problem is None:
            manifest = ComponentManifest.from_bytes(chunks.get(comp))
            problem = next(filter(None, map(check, manifest.chunk_keys())), None)
        if problem:
            damage.append(Damage(commit.id, commit.history, problem, tuple(sorted(names))))
    return damage
