"""Is a remote intact? A push skips every chunk the remote lists, so it checks what it relies
on: cheaply on every push (the size of each chunk both sides hold, which transfers copy byte
for byte, plus a random sample re-hashed), all of it with ``push --verify``; what is damaged
is re-sent. ``txpy fsck --remote`` checks every record and chunk of a remote.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import CorruptStoreError, RemoteError
from ..model import Commit
from ..repo import (
    Damage,
    FsckReport,
    Repository,
    check_commit_record,
    check_commits,
)
from .objects import Remote, reaching, record_bytes

#: chunks re-hashed on every push, besides those whose size differs
SAMPLE = 8


@dataclass(frozen=True)
class Repair:
    """What a push found damaged on the remote: how many objects it checked, how many were
    damaged, and how many of those it could not re-send (this store lacks them)."""

    checked: int = 0
    damaged: int = 0
    unrepaired: int = 0


def verified_body(repo: Repository, key: str) -> bytes:
    """The stored bytes of a local chunk, checked against its key: damage must not spread."""
    body = repo.chunks.body(key)
    repo.chunks.decode(key, body)
    return body


def heal_chunks(repo: Repository, remote: Remote, remote_sizes: dict[str, int],
                relied: Iterable[str] | None) -> Repair:
    """Check the remote's chunks a push relies on and re-send the damaged ones.

    relied None: the cheap check (sizes of every chunk both sides hold, empty objects, a
    sample re-hashed); else exactly those keys, each re-hashed (``--verify``). A chunk whose
    size differs but which is sound (an older txpy recompressed it in transit) is replaced by
    this store's bytes too, so the next push finds the sizes equal and checks nothing."""
    local_sizes = repo.chunks.backend.sizes()
    if relied is None:
        common = sorted(remote_sizes.keys() & local_sizes.keys())
        resized = {k for k in common if remote_sizes[k] != local_sizes[k]}
        suspects = resized | set(random.sample(common, min(SAMPLE, len(common))))
        suspects |= {k for k, n in remote_sizes.items() if n == 0}
    else:
        resized, suspects = set(), set(relied) & remote_sizes.keys()
    damaged = {k for k in suspects if _chunk_problem(remote, k)}
    resend = sorted((damaged | resized) & local_sizes.keys())
    remote.chunks.put_bodies(((key, verified_body(repo, key)) for key in resend), replace=True)
    return Repair(len(suspects), len(damaged), len(damaged - local_sizes.keys()))


def _chunk_problem(remote: Remote, key: str) -> bool:
    try:
        remote.chunks.read(key)
    except CorruptStoreError:
        return True
    return False


def heal_records(repo: Repository, remote: Remote, commit_ids: Iterable[str]) -> Repair:
    """Check the commit records a push relies on (``--verify``); rewrite the damaged ones."""
    checked = damaged = 0
    for cid in commit_ids:
        checked += 1
        try:
            rec = remote.read_commit(cid)
            check_commit_record(cid, rec.body, rec.sig, rec.signer, {rec.signer: ""})
        except (CorruptStoreError, RemoteError):
            damaged += 1
            remote.commits.put_many([(cid, record_bytes(repo.commit_record(cid)))],
                                    replace=True)
    return Repair(checked, damaged)


def fsck_remote(remote: Remote, progress: Callable[[int, int], None] | None = None
                ) -> FsckReport:
    """Check every ref, commit record (hash and signature, whoever signed it) and every chunk
    those commits need; progress(i, n) before commit i of n."""
    report = FsckReport()
    with reaching(remote.url):
        remote.check_marker()
        try:
            tips = {ref.commit for ref in remote.read_refs().values()}
        except CorruptStoreError as e:
            report.damage.append(Damage("(refs)", remote.url, str(e)))
            tips = set()
        def read(cid: str) -> tuple[Commit, list[Damage]]:
            rec = remote.read_commit(cid)
            check_commit_record(cid, rec.body, rec.sig, rec.signer, {rec.signer: ""})
            return Commit.from_body(cid, rec.body), []

        return check_commits(sorted(set(remote.commits.keys()) | tips), read, remote.chunks,
                             progress, report)
