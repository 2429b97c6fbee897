"""Transactions as every frontend sees them: begin, note code, end (commit) or fail (roll back).

A frontend — a notebook cell, a script's statements, a ``with`` block — only says *when*: a
transaction begins, runs some code, and ends or fails. What happens in between is the same
for all of them and lives here:

* which names a transaction could touch (static: :func:`track.candidates`, with a frontend's
  hook for code only it can read, such as IPython's magics), plus those of earlier
  transactions whose commit failed;
* the sweep policy: one commit in every :data:`SWEEP_EVERY` examines every name, catching
  mutations static tracking cannot see (a library that kept an object and changed it later),
  and a frontend may sweep when idle (:meth:`Transactions.sweep`);
* a commit that failed is retried before the next transaction starts, so that rolling that
  one back does not throw the unsaved results away; if the retry fails too, the rollback is
  refused rather than lose them;
* a rollback also undoes moves of HEAD made inside the transaction (a checkout).

Messages go out through the session's one channel, ``Session.notify``.
"""

from __future__ import annotations

import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from . import track
from .session import Session

#: One commit in this many examines every name. Measured: a sweep costs what a commit of every
#: name costs (a first commit); 1 in 50 keeps it near 2% of commit time in the benchmarks.
SWEEP_EVERY = 50
#: the same where a forked child captures the commit: a sweep costs the cell only the fork
#: there (the child pickles everything on the other core), so mutations made behind the
#: cells' backs are found 5 times sooner
SWEEP_EVERY_IN_BACKGROUND = 10


@dataclass
class Transaction:
    """One transaction while it runs: the code it ran and the HEAD moves before it."""

    #: why the state before it is not committed (its last commit failed twice), or None
    unsaved: BaseException | None
    #: the session's count of HEAD moves when it began (see Session.moves)
    moves: int = 0
    started: float = field(default_factory=time.perf_counter)
    #: names it could touch; None: any
    candidates: set[str] | None = field(default_factory=set)
    codes: list[str] = field(default_factory=list)
    _noted: set[object] = field(default_factory=set)


class Transactions:
    """The transactions of one session.

    unit: what a frontend calls a transaction ("cell", "statement"), for its messages.
    hook: names a frontend's code reaches in ways only it knows (see track.candidates).
    background: commits may be captured by a forked child (with the session's durability
    "background"): their ids are then known later, so a frontend that records ids says no.
    """

    def __init__(self, session: Session, unit: str = "transaction",
                 hook: track.Hook | None = None, errors: list[BaseException] | None = None,
                 background: bool = False):
        self.session = session
        self.background = background
        self.unit = unit
        self.hook = hook
        #: commit and rollback failures, for the curious (a frontend may share its list)
        self.errors: list[BaseException] = [] if errors is None else errors
        self._pending: set[str] | None = set()  # candidates of transactions not committed
        self._unsaved: BaseException | None = None  # why the last commit failed
        self._commits = 0

    @property
    def unsaved(self) -> BaseException | None:
        """Why the namespace's latest changes are not committed (None: they are)."""
        return self._unsaved

    def begin(self, code: types.CodeType | None = None, source: str = "") -> Transaction:
        """A transaction starts (and runs code, when given); a failed commit is retried first."""
        if self._unsaved is not None:
            self.commit(Transaction(None), kind="auto", message="retry")
        s = self.session
        txn = Transaction(self._unsaved, s.moves)
        if code is not None or source:
            self.note(txn, code, source)
        return txn

    def note(self, txn: Transaction, code: types.CodeType | None, source: str) -> None:
        """txn ran code (each code object is analysed once per transaction: a loop notes its
        body at every iteration). code None: it may have touched any name."""
        key = id(code) if code is not None else source
        if key in txn._noted:
            return
        txn._noted.add(key)
        if source and (not txn.codes or txn.codes[-1] != source):
            txn.codes.append(source)
        if txn.candidates is None:
            return
        found = None if code is None else track.candidates(code, self.session.namespace,
                                                             self.hook)
        if found is None:
            txn.candidates = None
        else:
            txn.candidates |= found

    def commit(self, txn: Transaction, *, kind: str, message: str = "",
               full: bool = False) -> str | None:
        """Commit the namespace after txn (and after earlier transactions not committed yet);
        the commit id ("" while a forked child captures it), or None if it failed (said once;
        the next transaction retries it).

        An exception other than Exception (an interrupt) is re-raised after the bookkeeping:
        the commit then either happened whole or not at all."""
        s = self.session
        self._commits += 1
        named = None if txn.candidates is None or self._pending is None \
            else self._pending | txn.candidates
        cand = None if full or self._commits % self.sweep_every() == 0 else named
        before = s.stood
        try:
            cid = s.commit(message, kind=kind, code="\n".join(txn.codes) or None,
                           candidates=cand, duration=time.perf_counter() - txn.started,
                           expected=named if cand is None else None,
                           background=self.background)
        except AssertionError:  # verify mode found a missed change: a bug, never hidden
            raise
        except BaseException as e:
            if s.stood != before:  # interrupted once the commit stood: it is saved
                self.settled()
            else:
                self._failed(cand, e)
            if not isinstance(e, Exception):
                raise
            return None
        self.settled()
        return cid

    def sweep_every(self) -> int:
        """One commit in this many examines every name (see SWEEP_EVERY)."""
        background = self.background and self.session.durability == "background"
        return SWEEP_EVERY_IN_BACKGROUND if background else SWEEP_EVERY

    def commits_since_sweep(self) -> int:
        """Commits since the last one that examined every name (0: that one was)."""
        return self._commits % self.sweep_every()

    def sweep(self) -> str | None:
        """Examine every name between transactions (the kernel is idle): what changed was
        changed behind the transactions' backs (a thread, a library callback). It is
        committed (kind "sweep"; no commit if nothing changed), and its names join the
        session's escape set, examined at every commit from then on."""
        committed = self.commit(self.begin(), kind="sweep", full=True)
        self._commits = 0  # the next periodic sweep counts from this one
        return committed

    def settled(self) -> None:
        """The namespace is what HEAD holds (a commit stood, a restore, a checkout): nothing
        from earlier transactions is waiting to be committed."""
        self._pending, self._unsaved = set(), None

    def _failed(self, cand: set[str] | None, e: BaseException) -> None:
        self.errors.append(e)
        self._pending, self._unsaved = cand, e
        self.session.notify(
            f"could not save this {self.unit} ({type(e).__name__}: {one_line(e)}); its results "
            f"are kept in memory and the next {self.unit} will try again")

    def lost_track(self, e: BaseException) -> None:
        """Something interrupted txpy's own bookkeeping after a transaction: the next commit
        examines every name."""
        self.errors.append(e)
        self._pending = None
        self._unsaved = self._unsaved or e

    def rollback(self, txn: Transaction, error: BaseException) -> list[str] | None:
        """Put the namespace (and HEAD, if txn moved it) back as before txn; the names restored,
        or None if it could not be done (said in one line)."""
        s = self.session
        why = type(error).__name__
        if txn.unsaved is not None:
            self._pending = None if txn.candidates is None or self._pending is None \
                else self._pending | txn.candidates
            s.notify(f"cannot roll back after {why}: the state before this {self.unit} could "
                     f"not be saved ({type(txn.unsaved).__name__}: {one_line(txn.unsaved)}); "
                     f"the namespace is as the failed {self.unit} left it")
            return None
        try:
            was = s.before_move(txn.moves) if s.moves > txn.moves else None
            if was is not None and was.head is not None:
                # it moved HEAD (a checkout) before it failed: undo that too
                s.return_to(was.head, was.branch)
                self.settled()
                s.notify(f"rolled back after {why}: back at commit {was.head.short}"
                         + (f" on branch {was.branch!r}" if was.branch else ""))
                return []
            cand = None if self._pending is None or txn.candidates is None \
                else self._pending | txn.candidates
            restored = s.rollback(cand)
        except (Exception, KeyboardInterrupt) as e:
            self.errors.append(e)
            self._pending = None  # whatever it left half-done, the next commit sees it all
            s.notify(f"could not roll back after {why} ({type(e).__name__}: {one_line(e)}); "
                     f"the namespace is as the failed {self.unit} left it")
            return None
        self._pending = set()
        s.notify(f"rolled back after {why}: " + (", ".join(restored) if restored
                                                  else "nothing had changed"))
        return restored


    @contextmanager
    def block(self, message: str = "") -> Iterator[Session]:
        """A ``with`` block as a transaction: commit on success; on any exception
        (KeyboardInterrupt too) roll back and re-raise. What it touches is unknown: its
        commit examines every name."""
        self.commit(Transaction(None), kind="auto")
        txn = self.begin()
        self.note(txn, None, "")
        try:
            yield self.session
        except BaseException as e:
            self.rollback(txn, e)
            raise
        self.commit(txn, kind="block", message=message)


def one_line(e: BaseException) -> str:
    """The first line of an exception's message."""
    text = str(e).strip().splitlines()
    return text[0] if text else ""
