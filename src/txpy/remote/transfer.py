"""push and pull: copy commits and the chunks the other side lacks, then move branches.

Writes go in dependency order (chunks, then commit records, then refs) so a push killed at any
point leaves the remote valid and re-running it completes it; a pull writes chunks, then
commits in one SQLite transaction, then branches. Chunks travel as stored (verified, not
recompressed), so every copy of a chunk has the same bytes and size.

A ref update that would drop commits pushed by someone else is refused, like git's
non-fast-forward push; refs are never overwritten (`Remote.write_ref`), so of two racing
pushers exactly one wins. Session states do not merge like text, so the loser keeps both
lines of work by publishing its own as a new branch: ``txpy push origin main:alice-main``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import RemoteError, UntrustedError
from ..model import ComponentManifest, Tree
from ..repo import CommitRecord, Repository, check_commit_record
from .check import Repair, heal_chunks, heal_records, verified_body
from .objects import Remote, RemoteRef, reaching

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class Divergence:
    """A local branch and the remote's copy of it each have commits the other lacks; base is
    their last common commit (None: they share none)."""

    history: str
    branch: str
    remote: str
    base: str | None


@dataclass(frozen=True)
class TransferStats:
    """What one push or pull moved, and what it found on the way."""

    commits: int
    objects: int
    bytes: int
    branches: tuple[str, ...]
    diverged: tuple[Divergence, ...] = ()
    repair: Repair = Repair()


@dataclass(frozen=True)
class Update:
    """One branch a push moves: local `branch` of history, published as remote `target`."""

    history: str
    branch: str
    target: str
    commit: str


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


def planned(repo: Repository, histories: Iterable[str] | None, spec: str | None
            ) -> list[Update]:
    """The branches a push moves. spec None: every local branch except copies of remotes'
    (``origin/main``); "BRANCH": only that one; "BRANCH:NEW": BRANCH, published as NEW."""
    src, _, dst = (spec or "").partition(":")
    tracking = tuple(f"{name}/" for name in repo.remotes())
    names = list(histories or repo.histories())
    plan = [Update(history, branch, dst or branch, cid)
            for history in names for branch, cid in repo.refs.branches(history).items()
            if (branch == src if spec else not branch.startswith(tracking))]
    if spec and not plan:
        raise RemoteError(f"no branch {src!r} to push in {', '.join(names) or 'this store'}; "
                          "`txpy branch` lists them")
    return plan


def push(repo: Repository, remote: Remote, histories: Iterable[str] | None = None,
         progress: Progress | None = None, *, spec: str | None = None,
         verify: bool = False) -> TransferStats:
    """Copy the commits of the branches spec names (see `planned`) and the chunks the remote
    lacks, check what the remote already holds (`heal_chunks`), then move the remote's
    branches. Refuses if that would drop commits only the remote has."""
    with reaching(remote.url):
        remote.claim()
        remote_refs = remote.read_refs()
        updates: list[Update] = []
        wanted: list[str] = []  # every commit the pushed branches need
        for u in planned(repo, histories, spec):
            theirs = remote_refs.get((u.history, u.target))
            if theirs is not None and theirs.commit == u.commit and not verify:
                continue
            ours = _ancestors(repo, u.commit)
            if theirs is not None and theirs.commit not in ours:
                raise _diverged(remote, u)
            updates.append(u)
            wanted.extend(ours)
        wanted = list(dict.fromkeys(wanted))
        present = set(remote.commits.keys())
        to_send = [cid for cid in wanted if cid not in present]
        sent, missing, repair = _send(repo, remote, to_send, wanted if verify else None,
                                      progress)
        moved = [u for u in updates if u.commit != getattr(
            remote_refs.get((u.history, u.target)), "commit", None)]
        for u in moved:
            remote.write_ref(u.history, u.target, u.commit, remote_refs.get((u.history, u.target)),
                             repo.signer)
    return TransferStats(len(to_send), missing, sent,
                         tuple(f"{u.history}/{u.target}" for u in moved), repair=repair)


def _diverged(remote: Remote, u: Update) -> RemoteError:
    return RemoteError(
        f"{remote.name}'s branch {u.target!r} of {u.history!r} has commits yours lacks "
        f"(someone else pushed): run `txpy pull` first to get theirs as "
        f"{remote.name}/{u.target}. Session states do not merge like text; to keep both, "
        f"publish yours as a new branch: `txpy push {remote.name} {u.branch}:NEW-NAME`")


def _send(repo: Repository, remote: Remote, to_send: list[str], verify: list[str] | None,
          progress: Progress | None) -> tuple[int, int, Repair]:
    """Chunks, then records (oldest first); returns (bytes sent, chunks sent, what was
    found damaged). verify: every commit whose records and chunks are re-checked."""
    needed = _objects_of(repo, to_send)
    remote_sizes = remote.objects.sizes()
    repair = heal_chunks(repo, remote, remote_sizes,
                         None if verify is None else _objects_of(repo, verify))
    if verify is not None:
        records = heal_records(repo, remote, [c for c in verify if c not in to_send])
        repair = Repair(repair.checked + records.checked, repair.damaged + records.damaged,
                        repair.unrepaired)
    missing = sorted(needed - remote_sizes.keys())
    sent = 0
    for i, key in enumerate(missing):
        if progress:
            progress("chunks", i, len(missing))
        sent += remote.chunks.put_bodies([(key, verified_body(repo, key))])
    if progress:
        progress("chunks", len(missing), len(missing))
    for cid in reversed(to_send):  # oldest first
        sent += remote.write_commit(repo.commit_record(cid))
    return sent, len(missing), repair


def pull(repo: Repository, remote: Remote, remote_name: str, *, trust: bool = False,
         progress: Progress | None = None) -> TransferStats:
    """Fetch the remote's commits this store lacks, verified (hash, signature by a trusted
    key; with trust=True the remote's signers become trusted), then their chunks (verified by
    hash), then record them and move branches: a branch missing here is created, one behind
    is fast-forwarded, a diverged one is left alone with ``REMOTE/BRANCH`` beside it (and
    named in the result)."""
    with reaching(remote.url):
        remote.check_marker()
        refs = remote.read_refs()
        _check_ref_signers(repo, remote, refs, trust)
        remote_refs = {ref: r.commit for ref, r in refs.items()}
        records = _new_records(repo, remote, remote_refs, trust)
        for signer in {rec.signer for rec in records.values()} - repo.trusted_keys().keys():
            repo.trust(signer, f"pulled from {remote.url}")
        with repo.writing():  # a gc meanwhile would delete the chunks no record names yet
            got, received = _fetch_objects(repo, remote, records.values(), progress)
            repo.insert_commits(records.values())
    moved, diverged = _update_branches(repo, remote_refs, remote_name)
    return TransferStats(len(records), got, received, tuple(moved), tuple(diverged))


def _check_ref_signers(repo: Repository, remote: Remote,
                       refs: dict[tuple[str, str], RemoteRef], trust: bool) -> None:
    """A branch moved by a key this store does not trust is refused, as its commits would be
    (with trust, that key is trusted along with the commits' signers)."""
    trusted = repo.trusted_keys()
    for (history, branch), ref in sorted(refs.items()):
        if ref.signer is None or ref.signer in trusted:
            continue
        if not trust:
            raise UntrustedError(
                f"branch {branch!r} of {history!r} on {remote.url} was moved by key "
                f"{ref.signer[:16]}…, which this store does not trust; if you trust who "
                "pushed it, re-run with --trust (or `txpy trust KEY`)")
        repo.trust(ref.signer, f"moved refs on {remote.url}")
        trusted = repo.trusted_keys()


def _new_records(repo: Repository, remote: Remote, remote_refs: dict[tuple[str, str], str],
                 trust: bool) -> dict[str, CommitRecord]:
    """The records of commits the refs reach that this store lacks, each checked (hash,
    signature, and filed under the history its ref names)."""
    records: dict[str, CommitRecord] = {}
    trusted = repo.trusted_keys()
    stack = [(cid, history) for (history, _), cid in remote_refs.items()]
    while stack:
        cid, history = stack.pop()
        if cid in records or repo.has_commit(cid):
            continue
        rec = remote.read_commit(cid)
        if rec.signer not in trusted and not trust:
            raise UntrustedError(
                f"{remote.url} holds commits signed by key {rec.signer[:16]}…, which this "
                "store does not trust. Pickled state runs code when loaded: only if you "
                "trust who pushed it, re-run with --trust (or `txpy trust KEY`).")
        check_commit_record(cid, rec.body, rec.sig, rec.signer, {**trusted, rec.signer: ""})
        if rec.history != history:
            raise RemoteError(f"{remote.url} files commit {cid[:12]} of history "
                              f"{rec.history!r} under history {history!r}: refused")
        records[cid] = rec
        stack.extend((parent, history) for parent in json.loads(rec.body)["parents"])
    return records


def _fetch_objects(repo: Repository, remote: Remote, records: Iterable[CommitRecord],
                   progress: Progress | None) -> tuple[int, int]:
    """Download what the new commits need and the store lacks; each chunk is verified against
    its key before it is stored. Returns (objects, bytes received)."""
    got = received = 0

    def fetch(key: str) -> bytes | bytearray:
        nonlocal got, received
        body = remote.body(key)
        data, _ = remote.chunks.decode(key, body)  # verifies the hash
        if not repo.chunks.has(key):
            repo.chunks.put_bodies([(key, body)])
            got += 1
            received += len(body)
        return data

    trees = [json.loads(rec.body)["tree"] for rec in records]
    components: set[str] = set()
    for i, key in enumerate(trees):
        if progress:
            progress("commits", i, len(trees))
        components |= Tree.from_bytes(fetch(key)).component_keys()
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
                     remote_name: str) -> tuple[list[str], list[Divergence]]:
    """Record each remote branch as REMOTE/BRANCH; create or fast-forward the local branch
    (compare-and-set: a branch a commit moved meanwhile is left alone); give a history
    without a HEAD one. All in one transaction. Returns the branches moved and those that
    diverged from the remote's."""
    moved, diverged = [], []
    with repo.refs.atomic():
        for (history, branch), cid in sorted(remote_refs.items()):
            repo.refs.move(history, f"{remote_name}/{branch}", cid)
            ours = repo.refs.tip(history, branch)
            if ours == cid:
                continue
            theirs = _ancestors(repo, cid)
            if (ours is None or ours in theirs) \
                    and repo.refs.set_if_equals(history, branch, ours, cid):
                moved.append(f"{history}/{branch}")
            elif ours is not None and ours not in theirs and cid not in _ancestors(repo, ours):
                base = next((c for c in _ancestors(repo, ours) if c in set(theirs)), None)
                diverged.append(Divergence(history, branch, remote_name, base))
            if repo.refs.head(history)[1] is None:
                repo.refs.set_head(history, branch, cid)
    return moved, diverged
