"""Refs: each history's branches and HEAD. The only code that moves them (dulwich's
RefsContainer).

Every move that could overwrite someone else's is a compare-and-set inside one SQLite
IMMEDIATE transaction (``set_if_equals``, ``add_if_new``): of two processes moving a branch
from the same commit, exactly one wins and the other learns it, so it can start a branch of
its own instead of silently dropping the winner's commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .errors import BranchExistsError
from .store.meta import MetaDB

DEFAULT_BRANCH = "main"


class RefsContainer:
    """Branches ``(history, name) -> commit id`` and each history's HEAD (a branch, or a
    commit when detached) of one store."""

    def __init__(self, meta: MetaDB):
        self._meta = meta

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """Moves made inside happen together or not at all (one transaction, one fsync)."""
        with self._meta.write():
            yield

    # reading
    def branches(self, history: str) -> dict[str, str]:
        """{branch: commit id} of history, by name."""
        return self._meta.branches(history)

    def tip(self, history: str, branch: str) -> str | None:
        """The commit branch points at; None if there is no such branch."""
        return self._meta.branch_commit(history, branch)

    def head(self, history: str) -> tuple[str | None, str | None]:
        """(branch, commit id) of history's HEAD: branch is None when HEAD is detached; both
        are None for a history without commits."""
        return self._meta.head(history)

    def free_name(self, history: str, base: str) -> str:
        """base if history has no such branch, else the first of base-2, base-3… it lacks."""
        taken = self.branches(history)
        name, n = base, 2
        while name in taken:
            name, n = f"{base}-{n}", n + 1
        return name

    # moving
    def set_head(self, history: str, branch: str | None, commit_id: str) -> None:
        """HEAD follows branch, or is detached at commit_id when branch is None."""
        with self._meta.write() as conn:
            self._meta.set_head(conn, history, branch, commit_id)

    def move(self, history: str, branch: str, commit_id: str) -> None:
        """Point branch at commit_id whatever it pointed at (created if absent): for moves
        that are the user's own decision, such as putting back a branch a failed
        transaction moved."""
        with self._meta.write() as conn:
            self._meta.set_branch(conn, history, branch, commit_id)

    def set_if_equals(self, history: str, branch: str, old: str | None, new: str) -> bool:
        """Point branch at new only if it points at old now (old None: only if it does not
        exist yet); whether it moved."""
        with self._meta.write() as conn:
            if self._meta.branch_commit(history, branch) != old:
                return False
            self._meta.set_branch(conn, history, branch, new)
            return True

    def add_if_new(self, history: str, branch: str, commit_id: str) -> bool:
        """Create branch at commit_id unless it exists; whether it was created."""
        return self.set_if_equals(history, branch, None, commit_id)

    def create(self, history: str, branch: str, commit_id: str) -> None:
        """A new branch at commit_id; BranchExistsError if the name is taken."""
        if not self.add_if_new(history, branch, commit_id):
            raise BranchExistsError(f"branch {branch!r} already exists in history {history!r}; "
                                    f"pick another name, or check it out: checkout {branch}")

    def advance(self, history: str, branch: str | None, parent: str | None,
                commit_id: str) -> str:
        """Move branch from parent to its child commit_id and HEAD onto it; return the
        branch used.

        If the branch moved since parent (another process committed there), or HEAD was
        detached (branch None), commit_id starts a new branch instead: no one's history is
        lost. Inside a caller's write() this joins its transaction (the commit record).
        """
        with self._meta.write():
            used = branch
            if used is None or not (self.set_if_equals(history, used, parent, commit_id)
                                    or self.add_if_new(history, used, commit_id)):
                used = self.free_name(history, used or DEFAULT_BRANCH)
                self.move(history, used, commit_id)
            self.set_head(history, used, commit_id)
        return used
