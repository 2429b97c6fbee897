"""Session: binds one namespace (a plain dict) to one history of a Repository.

commit → which names to examine → encode + fingerprint → co-variable groups → stage changed
components → one durable batch → signed commit record. rollback / checkout / restore run the
same pipeline backwards. Frontends only decide *when* to call these, and which names a
transaction could have touched (``candidates``); without candidates every name is examined.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

from . import capture, env, escapes, interrupts, usermodules
from .background import Background, Published
from .components import (
    ComponentWriter,
    digest_of,
)
from .errors import CommitFailedError, RestoreError, TxpyError
from .examination import Captured, Examination
from .knowledge import Knowledge
from .loading import Loader, announce
from .model import Commit, Diff, Tree, Unstored
from .repo import Repository
from .store.backend import Bytes

#: sync: a transaction returns once its commit is on disk; async: captured in process, written
#: while the next one runs; background: captured and written by a forked copy-on-write child
#: (where fork exists) while the next one runs
DURABILITIES = ("sync", "async", "background")
DEFAULT_DURABILITY = "background" if capture.AVAILABLE else "sync"


def default_notify(message: str) -> None:
    print(f"txpy: {message}", file=sys.stderr)


def is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


class Session:
    """A namespace made durable, atomic and versioned in a store.

    ``Session(store=".txpy", name="demo", namespace=ns)`` opens (or creates) the store and
    the history ``name`` in it. The namespace is used as is: it stays a plain dict.
    """

    def __init__(self, store: str | os.PathLike[str] = ".txpy", name: str = "default",
                 namespace: dict[str, Any] | None = None, *, verify: bool | None = None,
                 durability: str | None = None, ignore: Callable[[str], bool] = is_dunder,
                 notify: Callable[[str], None] = default_notify):
        durability = durability or os.environ.get("TXPY_DURABILITY") or DEFAULT_DURABILITY
        if durability not in DURABILITIES:
            raise TxpyError(f"durability is one of {', '.join(DURABILITIES)}, not {durability!r}")
        self.durability = durability
        self._pool: ThreadPoolExecutor | None = None
        self._writing: tuple[Future[None], Published] | None = None
        self.repo = Repository.open(store, create=True)
        self.name = name
        self.namespace: dict[str, Any] = {} if namespace is None else namespace
        self.verify = os.environ.get("TXPY_VERIFY") == "1" if verify is None else verify
        self.ignore = ignore
        self.notify = notify
        self._writer = ComponentWriter(self.repo.chunks)
        self._known = Knowledge()
        self._components: dict[tuple[tuple[str, ...], str], str] = {}  # (names, digest) -> key
        self._warned: set[tuple[str, str]] = set()
        self._blocks: Any = None  # Transactions of `with session.transaction():` blocks
        #: names something outside the namespace changes (see commit's expected)
        self.escaped: set[str] = set()
        self._branch, head = self.repo.refs.head(name)
        self._head: Commit | None = self.repo.read_commit(head) if head else None
        self._tree: Tree | None = self.repo.tree(self._head) if self._head else None
        self._background = Background(self)
        #: in-process commits that stood: whether a commit call did, whatever merges of
        #: background captures moved HEAD meanwhile
        self.stood = 0
        self._moves: list[Published] = []  # HEAD before each checkout, restore, return_to

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._background.close()
            if self._pool is not None:
                self._pool.shutdown()
            self.repo.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading state -------------------------------------------------------------------
    @property
    def head(self) -> Commit | None:
        return self._head

    @property
    def branch(self) -> str | None:
        """The branch HEAD is on; None when an older commit is checked out (detached)."""
        return self._branch

    @property
    def unstored(self) -> dict[str, Unstored]:
        """Names not stored in HEAD, and why."""
        return dict(self._tree.unstored) if self._tree else {}

    def _tracked(self) -> dict[str, Any]:
        return {n: v for n, v in self.namespace.items() if not self.ignore(n)}

    # --- commit --------------------------------------------------------------------------
    def commit(self, message: str = "", *, kind: str = "api", code: str | None = None,
               candidates: Iterable[str] | None = None, duration: float = 0.0,
               expected: Iterable[str] | None = None, background: bool = False) -> str:
        """Store the namespace's state; return the commit id (HEAD's if nothing changed).

        background (with durability "background"): capture in a forked copy-on-write child
        when that is cheaper than capturing here; the commit id is then "" (known once
        `wait()` returns, or at the next commit).

        candidates: names the transaction could have read or written; None examines all.
        expected (with candidates None, a sweep): the names the transactions since HEAD named;
        a name that changed outside them was changed from outside the namespace (a library
        callback, a thread) and joins `escaped`, examined at every commit from then on, like
        the names that bind a user module's global (its functions change them unnamed).
        With async durability, this commit is encoded while the previous one is still being
        written; it waits for that write only before publishing itself.

        All or nothing, for the store and for this session's own bookkeeping: whatever
        exception lands wherever (an interrupt included), either the commit is published and
        HEAD, known digests and sharing index all describe it, or none of them changed.
        """
        started = time.perf_counter()
        cand = self._with_always_examined(candidates)
        scanned = background and self._background.start(
            cand, expected, kind=kind, message=message, code=code, duration=duration,
            started=started)
        if scanned is True:
            return ""
        if self._background.pending:
            self._background.drain(failures="forget")  # what in-process capture builds on
        try:
            current, examine = scanned if isinstance(scanned, tuple) else (self._tracked(), None)
            if examine is None:
                examine = self._known.to_examine(current, cand, self._tree)
            c = self._capture(current, examine, cand, expected)
        except BaseException:
            self._writer.discard()
            raise
        self._escaped_now(c.escaping, c.gone)
        tree, learned, gone = c.tree, c.learned, c.gone
        if self._head is not None and c.tree_key == self._head.tree:
            self._writer.discard()
            with interrupts.held():
                self._known.adopt(learned, gone)
                self.stood += 1
            if self.verify and cand is not None:
                self._verify_against(tree)
            return self._head.id
        try:
            self.wait()
        except BaseException:
            self._writer.discard()
            raise
        # a transaction's capture cheaper than a fork is written in the background too
        background = self.durability == "async" or (background and
                                                    self.durability == "background")
        chunks, live = self._writer.take(private=background)
        new_bytes = sum(len(d) for k, d, _ in chunks if k not in live and not
                        self.repo.chunks.has(k))
        if not background:
            announce(self.notify, "writing", new_bytes)
        commit = Commit(
            id="", history=self.name, parents=(self._head.id,) if self._head else (),
            tree=c.tree_key, time=time.time(), kind=kind, message=message, code=code,
            reads=c.reads, writes=c.writes, env=env.fingerprint(), duration=duration,
            stats={"examined": c.examined, "bytes_new": new_bytes,
                   "commit_seconds": round(time.perf_counter() - started, 6)},
        ).sealed()
        before = Published(self._head, self._tree, self._branch)
        if background:
            with interrupts.held():  # the writer may not start without its way back
                self._head, self._tree = commit, tree
                self._known.adopt(learned, gone)
                self.stood += 1
                self._writing = (self.writer_thread().submit(
                    self._publish, commit, chunks, live, c.staged, before, self._on_branch),
                    before)
        else:
            def adopt(branch: str) -> None:
                self._head, self._tree, self._branch = commit, tree, branch
                self._known.adopt(learned, gone)
                self.stood += 1
            self._publish(commit, chunks, live, c.staged, before, adopt)
        if self.verify and cand is not None:
            self._verify_against(tree)
        return commit.id

    def _with_always_examined(self, candidates: Iterable[str] | None) -> set[str] | None:
        """candidates, and the names examined at every commit and rollback whatever the
        transaction named: those a sweep found changed from outside (escaped), those bound
        to a user module's globals, and those the notebook code libraries hold (a logging
        handler) could touch; None: every name."""
        if candidates is None:
            return None
        held = escapes.held_names(self.namespace)
        if held is None:
            return None
        return set(candidates) | self.escaped | usermodules.aliased(self.namespace) | held

    def _capture(self, current: dict[str, Any], examine: set[str], cand: set[str] | None,
                 expected: Iterable[str] | None) -> Captured:
        """Examine names of current (see examination.Examination): in this process, or in a
        forked child whose memory is this process's at the fork."""
        return Examination(self._known, self._tree, self._writer, self._components,
                           self.namespace, self._say_once).capture(current, examine, cand,
                                                                   expected)

    def writer_thread(self) -> ThreadPoolExecutor:
        """The one thread that writes this session's commits in the background, in order."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="txpy-writer")
        return self._pool

    def _escaped_now(self, escaping: set[str], gone: Iterable[str]) -> None:
        self.escaped.difference_update(gone)
        for n in sorted(escaping - self.escaped):
            self.escaped.add(n)
            self.notify(f"{n!r} changed outside the cells that name it (a library callback or "
                        "a thread?); txpy now examines it at every commit")

    def _publish(self, commit: Commit, chunks: list[tuple[str, Bytes, int]], live: set[str],
                 staged: dict[tuple[tuple[str, ...], str], str], before: Published,
                 adopt: Callable[[str], None]) -> None:
        """Write a commit's new chunks, then its record and branch move (one SQLite txn).

        Under the store lock, so that a gc cannot delete a chunk between the check that it
        exists and the record that relies on it. The record and `adopt(branch)` (the session
        taking the commit as its HEAD) happen with signals held: both or neither.
        """
        with self.repo.writing():
            self.repo.chunks.put_many(chunks, recheck=live)
            with interrupts.held():
                _, branch = self.repo.new_commit(commit, before.branch)
                self._components.update(staged)
                adopt(branch)
        if branch != before.branch and before.head is not None:
            self.notify(self._branch_message(branch, before))

    def _on_branch(self, branch: str) -> None:
        self._branch = branch

    def _back_to(self, before: Published) -> None:
        """A commit failed to be written: HEAD is what it was, and nothing examined since is
        trusted (the next commit examines every name)."""
        self._head, self._tree, self._branch = before.head, before.tree, before.branch
        self._known.forget()

    def wait(self) -> None:
        """Wait for the commit being written in the background (async durability); if it
        failed, the session goes back to the last written commit and this raises.

        Interrupted while waiting, the write stays pending: it may still succeed, and the
        session must not go back to a HEAD the store has already moved past.

        With background durability: wait for every capture and merge it (CommitFailedError if
        the latest one failed)."""
        if self._background.pending:
            self._background.drain(failures="raise")
        pending = self._writing
        if pending is None:
            return
        future, before = pending
        try:
            future.result()
        except BaseException as e:
            if not future.done():
                raise
            self._writing = None
            if future.exception() is None:
                raise
            with interrupts.held():
                self._back_to(before)
            failure = future.exception()
            raise CommitFailedError(
                f"the last commit could not be written ({type(failure).__name__}: {failure}); "
                "HEAD is back at the last commit that was") from e
        self._writing = None

    @property
    def moves(self) -> int:
        """How many times HEAD was moved by checkout, restore or return_to."""
        return len(self._moves)

    def before_move(self, count: int) -> Published:
        """HEAD just before move number count (0: the first), its captures all merged: where
        a failed transaction that moved HEAD goes back to."""
        return self._moves[count]

    def capturing(self) -> int:
        """How many transactions forked children are still capturing: not yet durable."""
        return self._background.capturing()

    def sweep_cost(self) -> float:
        """Seconds a sweep (every name examined) would hold this process: nearly none where a
        forked child captures it, else what examining each name took last time (inf for one
        never examined)."""
        return self._background.sweep_cost()

    def resume_background(self) -> None:
        """Capture in the background again after a failure turned it off."""
        self._background.off = None

    def _branch_message(self, branch: str, before: Published) -> str:
        if before.branch is None:
            return (f"HEAD was at older commit {before.head.short}; new commits go on branch "  # type: ignore[union-attr]
                    f"{branch!r} (nothing is lost)")
        return (f"branch {before.branch!r} of history {self.name!r} moved in another process; "
                f"this session continues on branch {branch!r}")

    def _say_once(self, name: str, message: str) -> None:
        if (name, message) not in self._warned:
            self._warned.add((name, message))
            self.notify(message)

    def _verify_against(self, tree: Tree) -> None:
        """Verify mode: every name, examined or not, must match what was committed."""
        n = self._unexamined_change(tree)
        if n is not None:
            raise AssertionError(f"txpy verify: {n!r} changed but was not examined")

    def _unexamined_change(self, tree: Tree) -> str | None:
        """A name whose value differs from what tree holds of it (None: none does)."""
        for n, value in self._tracked().items():
            if n not in tree.unstored and tree.fingerprints.get(n) != digest_of(value,
                                                                                self.namespace):
                return n
        return None

    # --- transactions --------------------------------------------------------------------
    def transaction(self, message: str = "") -> AbstractContextManager[Session]:
        """Commit on success; on any exception (KeyboardInterrupt too) roll back, re-raise."""
        if self._blocks is None:
            from .transaction import Transactions  # the layer above this one

            self._blocks = Transactions(self, "block")
        return self._blocks.block(message)

    def rollback(self, candidates: Iterable[str] | None = None) -> list[str]:
        """Put the namespace back to HEAD; return the names that were restored or removed."""
        self.wait()
        if self._head is None or self._tree is None:
            raise RestoreError("nothing to roll back to: this history has no commit yet")
        cand = self._with_always_examined(candidates)
        current = self._tracked()
        tree = self._tree
        changed = set(tree.names - current.keys())
        for n, v in current.items():
            known = self._known.get(n)
            if known is None or known.obj_id != id(v):
                changed.add(n)
            elif known.digest is not None and (cand is None or n in cand):
                try:
                    same = digest_of(v, self.namespace) == known.digest
                except Exception:  # user code in a __reduce__ raised: restore it to be sure
                    same = False
                if not same:
                    changed.add(n)
        # values holding what txpy cannot store (a generator) are rolled back in place, that
        # part kept as it is; one rebound since would come back without it: kept whole
        partial = {n for n in changed & current.keys() if n in tree.partial}
        keep = {n for n in partial if not self._known.binds(n, current[n])}
        if keep:
            self.notify("kept as they are (they hold what txpy cannot store, so they cannot be "
                        "rolled back): " + ", ".join(f"{n} ({tree.partial[n]})"
                                                     for n in sorted(keep)))
        if partial - keep:
            self.notify("rolled back except what txpy cannot store, kept as it is: "
                        + ", ".join(f"{n} ({tree.partial[n]})" for n in sorted(partial - keep)))
        failed = self._apply(tree, changed - keep, current, keep, in_place=True)
        self._restore_rng(tree)
        return sorted(changed - failed - keep)

    # --- checkout / restore --------------------------------------------------------------
    def checkout(self, ref: str) -> Commit:
        """Make the namespace exactly as at ref (commit id, prefix or branch); the current state
        is committed first, so nothing is lost. Loads only what differs."""
        self.wait()
        target = self.repo.resolve(self.name, ref)
        self._moves.append(Published(self._head, self._tree, self._branch))
        self.commit(message=f"before checkout of {ref}", kind="auto")
        branch = ref if self.repo.refs.tip(self.name, ref) == target.id else None
        self._move_to(target, branch)
        return target

    def restore(self, ref: str | None = None, *, on_branch: str | None = None) -> Commit:
        """Bring back a committed state (HEAD by default) into this namespace, e.g. in a new
        process after a crash. Unlike checkout, the current namespace is not committed first.

        on_branch: go on committing on this branch (moved to the restored commit) rather than
        on ref's: a kernel sharing a history with a live one keeps off the live one's branch."""
        self.wait()
        target = self.repo.resolve(self.name, ref)
        self._moves.append(Published(self._head, self._tree, self._branch))
        if on_branch is not None:
            self.repo.refs.move(self.name, on_branch, target.id)
            branch: str | None = on_branch
        else:
            branch = self._branch if ref is None else (
                ref if self.repo.refs.tip(self.name, ref) == target.id else None)
        self._known.forget()
        self._move_to(target, branch)
        return target

    def return_to(self, head: Commit, branch: str | None) -> None:
        """Put HEAD, its branch and the namespace back where they were before a transaction
        that moved them and then failed (a checkout inside a cell that raised): the branch
        ref goes back too, so the failed transaction leaves no trace but commits in the log."""
        self.wait()
        self._moves.append(Published(self._head, self._tree, self._branch))
        if branch is not None:
            self.repo.refs.move(self.name, branch, head.id)
        self._known.forget()  # the failed transaction may have mutated anything after its moves
        self._move_to(head, branch)

    def _move_to(self, target: Commit, branch: str | None) -> None:
        differences = env.mismatches(target.env)
        if differences:
            self.notify(f"commit {target.short} was made elsewhere: " + "; ".join(differences))
        gone = env.add_import_paths(target.env)  # before anything is unpickled
        if gone:
            self.notify(f"commit {target.short} imported from directories that no longer exist: "
                        + ", ".join(gone))
        tree = self.repo.tree(target)
        current = self._tracked()
        changed = set(current.keys() ^ tree.names)
        for n in current.keys() & tree.names:
            known = self._known.get(n)
            same = (self._tree is not None and known is not None and known.obj_id == id(current[n])
                    and self._tree.components.get(n) == tree.components.get(n)
                    and (n in self._tree.unstored) == (n in tree.unstored))
            if not same:
                changed.add(n)
        self._apply(tree, changed, current)
        self._restore_rng(tree)
        self.repo.refs.set_head(self.name, branch, target.id)
        self._branch, self._head, self._tree = branch, target, tree

    def _apply(self, tree: Tree, names: set[str], current: dict[str, Any],
               keep: AbstractSet[str] = frozenset(), *, in_place: bool = False) -> set[str]:
        """Load names of tree into the namespace (see loading.Loader.apply); the names that
        could not be."""
        return Loader(self.repo, self.namespace, self._known, self.notify).apply(
            tree, names, current, keep, in_place=in_place)

    def _restore_rng(self, tree: Tree) -> None:
        Loader(self.repo, self.namespace, self._known, self.notify).restore_globals(tree)

    # --- history -------------------------------------------------------------------------
    def log(self) -> list[Commit]:
        self.wait()
        return self.repo.log(self.name)

    def diff(self, a: str, b: str | None = None) -> Diff:
        """Names added, removed, changed from a to b (b defaults to HEAD)."""
        self.wait()
        return self.repo.diff(self.repo.resolve(self.name, a), self.repo.resolve(self.name, b))

    def branches(self) -> dict[str, str]:
        self.wait()
        return self.repo.refs.branches(self.name)

    def create_branch(self, name: str, ref: str | None = None) -> None:
        """A new branch at ref (HEAD by default); HEAD moves onto it."""
        self.wait()
        target = self.repo.resolve(self.name, ref)
        self.repo.refs.create(self.name, name, target.id)
        if ref is None or target.id == (self._head.id if self._head else None):
            self.repo.refs.set_head(self.name, name, target.id)
            self._branch = name
