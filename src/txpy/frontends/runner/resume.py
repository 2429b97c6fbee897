"""Choosing where a run resumes: the newest checkpoint of the last run that is still good.

A checkpoint is good if the program is unchanged up to its position, its commit exists in
this history (signed and verified), a mid-loop position has its loop stored, and nothing the
rest of the program reads is missing from its state (a value that could not be stored, such
as a generator or a socket): then an earlier one is used, back to the beginning if need be,
since re-running what is needed beats running on without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ...errors import TxpyError
from ...session import Session
from .ledger import Checkpoint, Ledger, apply_process_state
from .loops import LOOP_NAME
from .program import Program


@dataclass(frozen=True)
class Start:
    """Where a run goes on from: after ``checkpoint``, whose state is restored (None: from
    the beginning); or nowhere, when the same program already ran to its end (``finished``)."""

    checkpoint: Checkpoint | None = None
    finished: bool = False


def choose_start(session: Session, program: Program, old: Ledger | None,
                 argv: list[str]) -> Start:
    """Where to run program from, given the ledger of the history's last run (None: none);
    the state there is restored into the session."""
    if old is None:
        return Start()
    if old.argv != argv:
        session.notify("the arguments differ from the last run's; starting from the beginning")
        return Start()
    if old.kind != program.kind:
        return Start()
    prefix = _common_prefix(old.digests, program.digests)
    end = len(program.statements)
    finished = old.complete and prefix == end == len(old.digests)
    for c in _resume_points(session, program, old, prefix):
        if finished and c.next == end:
            return Start(c, finished=True)
        if _restore(session, program, c):
            return Start(c)
    if old.checkpoints:
        session.notify("no earlier state of this run can be used; starting from the beginning")
    return Start()


def describe_position(program: Program, c: Checkpoint) -> str:
    """Where c stands in the program, for people."""
    if c.next >= len(program.statements):
        return "at the end"
    s = program.statements[c.next]
    if c.inside:
        it = f", iteration {c.iters + 1}" if c.iters else ""
        return f"at txpy.checkpoint() in statement {s.number} ({s.where}{it})"
    if c.iters:
        return f"after statement {s.number} ({s.where}) / iteration {c.iters}"
    if c.next == 0:
        return "at the start"
    prev = program.statements[c.next - 1]
    return f"after statement {prev.number} ({prev.where})"


def _common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _resume_points(session: Session, program: Program, ledger: Ledger, prefix: int
                   ) -> Iterator[Checkpoint]:
    """Usable checkpoints within the unchanged prefix of statements, newest first."""
    def valid(c: Checkpoint) -> bool:
        # a mid-statement position needs that statement unchanged too
        return c.next < prefix if (c.iters or c.inside) else c.next <= prefix

    for c in sorted(ledger.checkpoints.values(), key=lambda c: c.position, reverse=True):
        if valid(c) and _usable(session, program, c):
            yield c


def _usable(session: Session, program: Program, c: Checkpoint) -> bool:
    """Whether the state at c can be restored and run on from: its commit exists in this
    history, a mid-loop position has its loop stored, and nothing the rest needs is unstored."""
    try:
        commit = session.repo.read_commit(c.commit)
        tree = session.repo.tree(commit)
    except TxpyError as e:
        session.notify(f"ignoring checkpoint {c.commit[:12]}: {e}")
        return False
    if commit.history != session.name:
        return False
    where = describe_position(program, c)
    if c.iters and LOOP_NAME not in tree.components:
        session.notify(f"cannot resume {where}: the loop's iterable was not stored")
        return False
    needed = program.needed_from(c.next)
    missing = sorted(n for n in tree.unstored if n != LOOP_NAME
                     and (needed is None or n in needed))
    if missing:
        names = ", ".join(f"{n} ({tree.unstored[n].type_name})" for n in missing)
        session.notify(f"cannot resume {where}: {names} could not be stored and the rest of "
                       "the program uses it; going back to an earlier point")
        return False
    return True


def _restore(session: Session, program: Program, c: Checkpoint) -> bool:
    """Make the namespace and the process as at c; False (said) if the state cannot be read,
    leaving the namespace empty for an earlier checkpoint."""
    head = session.head
    try:
        session.restore(None if head is not None and head.id == c.commit else c.commit)
    except TxpyError as e:
        session.notify(f"cannot restore the state {describe_position(program, c)} ({e}); "
                       "going back to an earlier point")
        ns = session.namespace
        for name in [n for n in ns if not session.ignore(n)]:
            del ns[name]
        return False
    apply_process_state(c.process)
    return True
