"""The engine: runs a Program's statements in a Session, one transaction per commit interval.

The runner only says *when*: which code ran (noted on the current transaction), where a
boundary is (after a statement, between chunks of a loop's iterations, at a
txpy.checkpoint()), and whether enough work was done since the last commit to commit there.
What a commit examines, its retries and rollbacks are the transaction layer's
(:mod:`txpy.transaction`). After each commit the runner records the position in the ledger.
"""

from __future__ import annotations

import os
import sys
import time
import types
import warnings
from collections.abc import Iterator

from ...errors import TxpyWarning
from ...session import Session
from ...transaction import Transactions
from .ledger import Checkpoint, Ledger, process_state
from .loops import LOOP_NAME, Chunk, LoopSource, chunk_size, describe, evaluate
from .program import BROKE, ITEM, Program, Statement

#: with a commit interval > 0, a commit that took c seconds delays the next one to at least
#: this many times c of work, so commit cost stays a small share of the run
OVERHEAD_FACTOR = 20

_current: Runner | None = None  # the runner of `txpy run`, for txpy.checkpoint()


class Failed(Exception):
    """A statement raised; carries the exception and the statement."""

    def __init__(self, error: BaseException, statement: Statement):
        super().__init__(error, statement)
        self.error, self.statement = error, statement


class Runner:
    """Runs a Program in a Session, committing at boundaries and recording checkpoints."""

    def __init__(self, program: Program, session: Session, ledger: Ledger,
                 commit_interval: float, start: Checkpoint | None = None,
                 environ: dict[str, str] | None = None):
        """start: the checkpoint whose state the session holds, to run on from (None: run
        from the beginning). environ: the environment the process started with, before a
        resume redid the run's settings (default: the current one)."""
        self.program = program
        self.session = session
        self.namespace = session.namespace
        self.notify = session.notify
        self.ledger = ledger
        self.interval = commit_interval
        self.txns = Transactions(session, "statement")
        self.txn = self.txns.begin()  # the work since the last commit
        self.start = start
        self.has_base = start is not None  # HEAD holds a state of this run
        self._env0 = dict(os.environ if environ is None else environ)
        self._commits = 0
        self._commit_seconds = 0.0
        self._last_commit_cost = 0.0
        self._started = time.perf_counter()
        self._since = self._started  # end of the last commit
        self._work0 = 0.0 if start is None else start.work
        self._position: tuple[int, int] = (0, 0)  # statement index, iterations done
        self._chunk: Chunk | None = None  # of the loop running now, if it resumes mid-way
        self._running: tuple[types.CodeType | None, str] = (None, "")  # code executing now

    @property
    def work(self) -> float:
        """Seconds of the program's own work (commits excluded), earlier runs included."""
        return self._work0 + time.perf_counter() - self._started - self._commit_seconds

    # --- committing -------------------------------------------------------------------------
    def _due(self) -> bool:
        if self.interval <= 0:
            return True
        wait = max(self.interval, OVERHEAD_FACTOR * self._last_commit_cost)
        return time.perf_counter() - self._since >= wait

    def commit(self, next_index: int, iters: int = 0, *, inside: bool = False,
               full: bool = False, message: str | None = None) -> str | None:
        """Commit the state at a position and record it in the ledger; the commit id, or None
        if it failed (the transaction layer said so; the next boundary tries again)."""
        _flush_output()  # output of committed work is never lost with the process
        started = time.perf_counter()
        try:
            cid = self.txns.commit(self.txn, kind="stmt", full=full,
                                   message=message or self._message(next_index, iters))
        finally:
            cost = time.perf_counter() - started
            self._commit_seconds += cost
            self._commits += 1
            if self._commits > 1:  # the first one pays one-time costs of the process
                self._last_commit_cost = cost
        if cid is None:
            return None
        self.ledger.record(Checkpoint(cid, next_index, iters, inside, round(self.work, 6),
                                      process_state(self._env0)))
        self.ledger.save()
        self._commit_seconds += time.perf_counter() - started - cost
        self._since = time.perf_counter()
        self.txn = self.txns.begin()
        self.has_base = True
        return cid

    def finish(self, next_index: int) -> None:
        """The program ended after statement next_index - 1: commit every name, mark it done."""
        self.commit(next_index, full=True)
        self.ledger.complete = True
        self.ledger.save()

    def rollback(self, failed: Failed) -> None:
        """Undo the failed statement (and anything else not committed) in the namespace."""
        s = failed.statement
        if not self.has_base:
            self.notify("the run failed before its first commit; the store is unchanged")
            return
        self.notify(f"statement {s.number} ({s.where}) failed; rolling back to the last commit")
        self.txns.rollback(self.txn, failed.error)

    def _message(self, next_index: int, iters: int) -> str:
        name = self.program.path.name
        if iters:
            s = self.program.statements[next_index]
            return f"{name}: statement {s.number} ({s.where}), iteration {iters}"
        s = self.program.statements[next_index - 1]
        return f"{name}: after statement {s.number} ({s.where})"

    def checkpoint(self, message: str) -> str | None:
        """txpy.checkpoint() from inside the statement running now."""
        index, iters = self._position
        if self._chunk is not None:  # the iteration running is redone: count those before it
            iters += self._chunk.taken - 1
        s = self.program.statements[index]
        text = message or f"{self.program.path.name}: txpy.checkpoint() in statement {s.number}"
        cid = self.commit(index, iters, inside=True, message=text)
        # the statement goes on after this commit: what it touches from here on is the next
        # commit's to examine
        self.txns.note(self.txn, *self._running)
        return cid

    # --- executing --------------------------------------------------------------------------
    def run(self) -> None:
        """Run the program on from its start, committing at boundaries; raise Failed."""
        global _current
        statements, start = self.program.statements, self.start
        first, skip = (0, 0) if start is None else (start.next, start.iters)
        _current = self
        try:
            for index in range(first, len(statements)):
                s = statements[index]
                self._position = (index, 0)
                try:
                    if s.loop is not None:
                        self._run_loop(index, s, skip, start is not None and index == first)
                    else:
                        assert s.code is not None  # a statement is code or a loop
                        self._exec(s.code, s.source)
                except BaseException as e:
                    raise Failed(e, s) from None
                if self._due():
                    self.commit(index + 1)
        finally:
            _current = None
        self.finish(len(statements))

    def _exec(self, code: types.CodeType, source: str) -> None:
        self._running = (code, source)
        self.txns.note(self.txn, code, source)
        exec(code, self.namespace)  # noqa: S102

    def _run_loop(self, index: int, s: Statement, skip: int, resuming: bool) -> None:
        ns = self.namespace
        assert s.loop is not None
        source = ns.get(LOOP_NAME) if resuming else None
        if not isinstance(source, LoopSource):
            skip = 0
            self.txns.note(self.txn, s.loop.iterable, s.source)
            iterable, source, culprit = evaluate(s.loop, ns)
            if source is None:
                ns.pop(LOOP_NAME, None)
                ns[ITEM] = iterable  # the namespace holds it, as python's loop would
                what = describe(culprit)
                del iterable, culprit
                self._run_native(s, what)
                return
            del iterable, culprit
            ns[LOOP_NAME] = source
        self._run_chunks(index, s, source.iterate(skip), skip)
        ns.pop(LOOP_NAME, None)

    def _run_native(self, s: Statement, what: str) -> None:
        """A loop over ITEM whose position cannot be restored: python runs it as it is."""
        assert s.loop is not None
        self.notify(f"the loop at {s.where} iterates over {what}, whose position cannot be "
                    "restored: it is committed when it ends, and a resume runs it again from "
                    "its start")
        try:
            self._exec(s.loop.native, s.source)
        finally:
            self.namespace.pop(ITEM, None)

    def _run_chunks(self, index: int, s: Statement, it: Iterator[object], done: int) -> None:
        """Run a loop's iterations from it in native chunks (done: iterations run before),
        committing between chunks when due."""
        ns = self.namespace
        loop = s.loop
        assert loop is not None
        size = 1
        while True:
            chunk = self._chunk = Chunk(it, size)
            self._position = (index, done)
            ns[ITEM], ns[BROKE] = chunk.items, True
            started = time.perf_counter()
            try:
                self._exec(loop.body, s.source)
            finally:
                ns.pop(ITEM, None)
                broke = ns.pop(BROKE, True)
                taken, self._chunk = chunk.taken, None
            took = time.perf_counter() - started
            done += taken
            self._position = (index, done)
            if broke:
                return
            if taken < size:  # the iterable is exhausted
                if loop.orelse is not None:
                    self._exec(loop.orelse, s.source)
                return
            if self._due():
                self.commit(index, done)
            size = chunk_size(size, took / max(taken, 1), self.interval)


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or replaced stream: nothing to keep
            pass


def checkpoint(message: str = "") -> str | None:
    """Commit the script's globals now, from inside a function or a long statement.

    Under ``txpy run``: returns the commit id. If the process dies later, the next run
    restores these globals and runs the interrupted top-level statement (or loop iteration)
    again **from its start**; code that calls checkpoint() must therefore continue from what
    the globals say (e.g. keep the epoch counter in a global). Local variables of functions
    are not stored. Elsewhere it does nothing but warn, and returns None.
    """
    if _current is None:
        warnings.warn("txpy.checkpoint() does nothing outside `txpy run`", TxpyWarning,
                      stacklevel=2)
        return None
    return _current.checkpoint(message)
