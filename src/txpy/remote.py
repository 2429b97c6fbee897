"""Replicability: push / pull / clone histories between a store and a remote.

A remote is plain objects under one URL (any fsspec URL; S3-compatible object storage is the
target), no database file::

    objects/ab/cdef…        chunks, exactly as in a local store (verified by hash on arrival)
    commits/ab/cdef…        commit records: JSON {history, time, body, sig, signer}
    refs/ab/cdef….N         version N of a (history, branch): JSON {history, branch, commit}

Writes go in dependency order — chunks, then commit records, then refs — so a push killed at
any point leaves the remote valid (re-running it completes it), and a pull writes chunks, then
commits in one SQLite transaction, then branches. A ref update that would drop commits pushed
by someone else is refused, like git's non-fast-forward push. Refs are never overwritten: a
push creates version N+1 of the ref it read at version N, with a create-only write, so of two
pushers racing from the same version exactly one wins and the other is told to pull.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RemoteError, TxpyError, UntrustedError
from .model import ComponentManifest, Tree
from .repo import STORE_DIR, CommitRecord, Repository, check_commit_record
from .store.backend import Backend, backend_for
from .store.chunks import ChunkStore, chunk_key

Progress = Callable[[str, int, int], None]  # (what, done, total)


def _ref_key(history: str, branch: str) -> str:
    return chunk_key(json.dumps([history, branch]).encode())


@dataclass(frozen=True)
class RemoteRef:
    """A ref on a remote: the commit it names, and its version (how many moves it had)."""

    commit: str
    version: int


@dataclass(frozen=True)
class TransferStats:
    """What one push or pull moved."""

    commits: int
    objects: int
    bytes: int
    branches: tuple[str, ...]


class Remote:
    """The objects of one remote URL."""

    def __init__(self, url: str, options: dict[str, Any] | None = None):
        self.url = url.rstrip("/")
        options = options or {}
        try:
            self.objects: Backend = backend_for(f"{self.url}/objects", **options)
            self.commits: Backend = backend_for(f"{self.url}/commits", **options)
            self.refs: Backend = backend_for(f"{self.url}/refs", **options)
        except (ImportError, ValueError) as e:
            raise RemoteError(f"cannot use remote {url}: {e}") from None
        self.chunks = ChunkStore(self.objects)

    def read_refs(self) -> dict[tuple[str, str], RemoteRef]:
        """The newest version of every ref."""
        newest: dict[str, tuple[int, str]] = {}
        for key in self.refs.keys():
            ref, _, version = key.rpartition(".")
            if version.isdigit() and int(version) > newest.get(ref, (-1, ""))[0]:
                newest[ref] = (int(version), key)
        out = {}
        for version, key in newest.values():
            rec = json.loads(self.refs.get(key))
            out[(rec["history"], rec["branch"])] = RemoteRef(rec["commit"], version)
        return out

    def write_ref(self, history: str, branch: str, commit_id: str, after: RemoteRef | None
                  ) -> None:
        """Move a ref from the version `after` (None: it does not exist yet) to commit_id."""
        body = json.dumps({"history": history, "branch": branch, "commit": commit_id})
        version = after.version + 1 if after else 0
        if not self.refs.create(f"{_ref_key(history, branch)}.{version:012d}", body.encode()):
            raise RemoteError(f"someone pushed to branch {branch!r} of {history!r} meanwhile; "
                              "run `txpy pull` first, then push again")

    def read_commit(self, commit_id: str) -> CommitRecord:
        """The record of a commit as pushed, not yet checked (`check_commit_record`)."""
        try:
            rec = json.loads(self.commits.get(commit_id))
        except FileNotFoundError:
            raise RemoteError(f"the remote lacks commit record {commit_id[:12]} that a ref or "
                              "parent names; it is incomplete (an interrupted push?)") from None
        return CommitRecord(commit_id, rec["history"], rec["time"], rec["body"].encode(),
                            rec["sig"], rec["signer"])

    def write_commit(self, r: CommitRecord) -> int:
        """Store a commit record (after the chunks it needs); the bytes written."""
        record = json.dumps({"history": r.history, "time": r.time, "body": r.body.decode(),
                             "sig": r.sig, "signer": r.signer}).encode()
        return self.commits.put_many([(r.id, record)])


def _ancestors(repo: Repository, tip: str) -> list[str]:
    """tip and every commit before it, newest first (parents before their parents)."""
    seen: list[str] = []
    stack, visited = [tip], set()
    while stack:
        cid = stack.pop()
        if cid in visited:
            continue
        visited.add(cid)
        seen.append(cid)
        stack.extend(repo.read_commit(cid).parents)
    return seen


def _objects_of(repo: Repository, commit_ids: Iterable[str]) -> set[str]:
    keys: set[str] = set()
    for cid in commit_ids:
        commit = repo.read_commit(cid)
        keys.add(commit.tree)
        for comp in repo.tree(commit).component_keys():
            if comp not in keys:
                keys.add(comp)
                keys.update(repo.manifest(comp).chunk_keys())
    return keys


def push(repo: Repository, remote: Remote, histories: Iterable[str] | None = None,
         progress: Progress | None = None) -> TransferStats:
    """Copy the commits of histories (all by default) and the chunks the remote lacks; then
    move the remote's branches. Refuses if that would drop commits only the remote has."""
    remote_refs = remote.read_refs()
    tracking = tuple(f"{name}/" for name in repo.remotes())
    updates: list[tuple[str, str, str]] = []
    wanted: list[str] = []
    for history in histories or repo.histories():
        for branch, cid in repo.refs.branches(history).items():
            if branch.startswith(tracking):  # e.g. origin/main: a copy of a remote's branch
                continue
            theirs = remote_refs.get((history, branch))
            if theirs is not None and theirs.commit == cid:
                continue
            ours = _ancestors(repo, cid)
            if theirs is not None and theirs.commit not in ours:
                raise RemoteError(
                    f"the remote's branch {branch!r} of {history!r} has commits this store does "
                    f"not have (someone else pushed); run `txpy pull` first, then push again")
            updates.append((history, branch, cid))
            wanted.extend(ours)
    present = set(remote.commits.keys())
    to_send = [cid for cid in dict.fromkeys(wanted) if cid not in present]
    needed = _objects_of(repo, to_send)
    missing = sorted(needed - set(remote.objects.keys()))
    sent = 0
    for i, key in enumerate(missing):
        if progress:
            progress("chunks", i, len(missing))
        data, width = repo.chunks.read(key)  # verified: damage here must not spread
        sent += remote.chunks.put_many([(key, data, width)])
    if progress:
        progress("chunks", len(missing), len(missing))
    for cid in reversed(to_send):  # oldest first
        sent += remote.write_commit(repo.commit_record(cid))
    for history, branch, cid in updates:
        remote.write_ref(history, branch, cid, remote_refs.get((history, branch)))
    return TransferStats(len(to_send), len(missing), sent,
                         tuple(f"{h}/{b}" for h, b, _ in updates))


def pull(repo: Repository, remote: Remote, remote_name: str, *, trust: bool = False,
         progress: Progress | None = None) -> TransferStats:
    """Fetch the remote's commits this store lacks, verified (hash, signature by a trusted
    key; with trust=True the remote's signers become trusted), then their chunks (verified by
    hash), then record them and move branches: a branch missing here is created, one behind
    is fast-forwarded, a diverged one is left alone with ``REMOTE/BRANCH`` beside it."""
    remote_refs = {ref: r.commit for ref, r in remote.read_refs().items()}
    records: dict[str, CommitRecord] = {}
    stack = list(remote_refs.values())
    trusted = repo.trusted_keys()
    new_signers: set[str] = set()
    while stack:
        cid = stack.pop()
        if cid in records or repo.has_commit(cid):
            continue
        rec = remote.read_commit(cid)
        if rec.signer not in trusted:
            if not trust:
                raise UntrustedError(
                    f"{remote.url} holds commits signed by key {rec.signer[:16]}…, which this "
                    "store does not trust. Pickled state runs code when loaded: only if you "
                    "trust who pushed it, re-run with --trust (or `txpy trust KEY`).")
            new_signers.add(rec.signer)
        check_commit_record(cid, rec.body, rec.sig, rec.signer, {**trusted, rec.signer: ""})
        records[cid] = rec
        stack.extend(json.loads(rec.body)["parents"])
    for signer in new_signers:
        repo.trust(signer, f"pulled from {remote.url}")
    with repo.writing():  # a gc meanwhile would delete the chunks no record names yet
        got, received = _fetch_objects(repo, remote, records.values(), progress)
        repo.insert_commits(records.values())
    moved = _update_branches(repo, remote_refs, remote_name)
    return TransferStats(len(records), got, received, tuple(moved))


def _fetch_objects(repo: Repository, remote: Remote, records: Iterable[CommitRecord],
                   progress: Progress | None) -> tuple[int, int]:
    """Download what the new commits need and the store lacks; each chunk is verified against
    its key before it is stored. Returns (objects, bytes received)."""
    got = received = 0

    def fetch(key: str) -> bytes:
        nonlocal got, received
        data, width = remote.chunks.read(key)  # verifies the hash
        if not repo.chunks.has(key):
            repo.chunks.put_many([(key, data, width)])
            got += 1
            received += len(data)
        return data

    trees = [json.loads(rec.body)["tree"] for rec in records]
    components: set[str] = set()
    for i, key in enumerate(trees):
        if progress:
            progress("commits", i, len(trees))
        tree = Tree.from_bytes(fetch(key))
        components |= tree.component_keys()
    chunk_keys: list[str] = []
    for key in components:
        chunk_keys.extend(ComponentManifest.from_bytes(fetch(key)).chunk_keys())
    todo = [k for k in dict.fromkeys(chunk_keys) if not repo.chunks.has(k)]
    for i, key in enumerate(todo):
        if progress:
            progress("chunks", i, len(todo))
        fetch(key)
    if progress:
        progress("chunks", len(todo), len(todo))
    return got, received


def _update_branches(repo: Repository, remote_refs: dict[tuple[str, str], str],
                     remote_name: str) -> list[str]:
    """Record each remote branch as REMOTE/BRANCH; create or fast-forward the local branch
    (compare-and-set: a branch a commit moved meanwhile is left alone); give a history
    without a HEAD one. All in one transaction."""
    moved = []
    with repo.refs.atomic():
        for (history, branch), cid in sorted(remote_refs.items()):
            repo.refs.move(history, f"{remote_name}/{branch}", cid)
            ours = repo.refs.tip(history, branch)
            if ours == cid:
                continue
            if (ours is None or ours in _ancestors(repo, cid)) \
                    and repo.refs.set_if_equals(history, branch, ours, cid):
                moved.append(f"{history}/{branch}")
            if repo.refs.head(history)[1] is None:
                repo.refs.set_head(history, branch, cid)
    return moved


def add_remote(repo: Repository, name: str, url: str, options: dict[str, Any] | None = None
               ) -> None:
    """Remember a remote under name (options: fsspec storage options, e.g. an endpoint)."""
    if "://" not in url:
        url = "file://" + str(Path(url).resolve())
    Remote(url, options)  # fails early on an unknown protocol or a missing driver
    repo.set_remote(name, url, options or {})


def get_remote(repo: Repository, name: str | None) -> tuple[str, Remote]:
    """The remote called name, or the only/``origin`` one when name is None."""
    remotes = repo.remotes()
    if name is None:
        if "origin" in remotes or len(remotes) != 1:
            name = "origin"
        else:
            name = next(iter(remotes))
    if name not in remotes:
        known = ", ".join(remotes) or "none"
        raise RemoteError(f"no remote {name!r} (known: {known}); add one with "
                          "`txpy remote add NAME URL`")
    url, options = remotes[name]
    return name, Remote(url, options)


def clone(url: str, dest: Path, *, trust: bool, options: dict[str, Any] | None = None,
          progress: Progress | None = None) -> tuple[Path, TransferStats]:
    """A new store at dest/.txpy with the remote as ``origin`` and all its histories."""
    store = dest / STORE_DIR
    if store.exists():
        raise TxpyError(f"{store} already exists; clone into a new directory")
    repo = Repository.open(store, create=True)
    try:
        add_remote(repo, "origin", url, options)
        _, remote = get_remote(repo, "origin")
        stats = pull(repo, remote, "origin", trust=trust, progress=progress)
    except BaseException:
        repo.close()
        shutil.rmtree(store)
        raise
    repo.close()
    return store, stats
