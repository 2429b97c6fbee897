"""Commits captured in the background by forked copy-on-write children (durability
"background", the default where fork exists).

When a transaction ends, the session does only what must happen then: which names could have
changed (the binding scan and the candidates) and a fork, a few milliseconds. The child
examines and encodes the state as it was at the fork, writes the chunks and reports; a writer
thread of the parent publishes the records in order; the session takes what the children
learned at its next commit (or at `wait()`, which a rollback, checkout or log calls first).

Captures run one at a time. When they fall behind, a transaction that ends while one child
works and another still waits replaces the waiting one: the new capture covers both (commits
coalesce, and their stats say how many transactions they cover). A capture that is cheaper
than a fork (what its names cost to encode last time) runs in process.

A child that fails, dies or hangs past the deadline costs no data: the session forgets what
it knew, so the next commit, in process, examines every name; background capture is then off
for the session, said once. CUDA memory cannot be touched in a forked child: with CUDA in use,
commits are captured in process, said once.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import capture, env, interrupts, usermodules
from .compat import cloudpickle_track_classes
from .errors import CommitFailedError
from .model import Commit, Tree

if TYPE_CHECKING:
    from .examination import Captured
    from .repo import ChildChunks
    from .session import Session

#: seconds a child may work on one capture before it is killed (a user's __reduce__ waiting
#: for a lock another thread held at the fork would wait forever)
DEADLINE = float(os.environ.get("TXPY_CAPTURE_DEADLINE", "600"))

#: seconds: a capture whose names took less than this to encode last time runs in process,
#: because a fork costs about this much here (7–12 ms for a 1.3 GB kernel, ~1 ms for a small
#: one); 0 sends every capture to a child
FORK_COST = float(os.environ.get("TXPY_FORK_COST", "0.005"))
#: seconds an in-process commit costs per name of the namespace, whatever it examines (the
#: binding scan, the tree and its groups): measured 6–9 µs here, from 1,000 to 20,000 names,
#: so a namespace of 5,000 names is cheaper to fork for than to capture in process
PER_NAME_COST = 7e-6


_SCALARS = frozenset({int, float, complex, bool, type(None)})


def _guess(value: Any) -> float | None:
    """Seconds encoding value takes, for scalars, short strings and small containers of them
    (exact builtin types only: no user code runs); None when it cannot be told cheaply."""
    kind = type(value)
    if kind in _SCALARS:
        return 0.0
    if kind is str or kind is bytes:
        return len(value) * 1e-9 if len(value) < 1 << 20 else None
    if kind in (list, tuple, set, frozenset, dict) and len(value) <= 64:
        items = [*value.keys(), *value.values()] if kind is dict else value
        if all(type(x) in _SCALARS or (type(x) is str and len(x) < 1024) for x in items):
            return 1e-5
    return None


@dataclass
class Report:
    """What a child hands back: only txpy's own data, never a user object."""

    captured: Captured  # its learned knowledge holds ids, not objects
    chunks: ChildChunks
    keys: list[tuple[tuple[bytes, int], str]]
    warned: set[tuple[str, str]]  # (name, message) it would have said once
    unexamined: str | None  # verify mode: a name that changed but was not examined
    seconds: float


@dataclass
class _Capture:
    child: capture.Child
    cand: set[str] | None
    #: the values at the fork, held until merged: their ids are in what the child learns
    held: dict[str, Any]
    kind: str
    message: str
    codes: list[str]
    duration: float
    covers: int = 1
    foreground: float = 0.0
    future: Future[_Outcome] | None = None
    started: bool = False
    superseded: bool = False


@dataclass
class _Outcome:
    report: Report | None = None
    commit: Commit | None = None
    tree: Tree | None = None
    branch: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Published:
    """HEAD as it was before a commit: where a session goes back if writing it fails."""

    head: Commit | None
    tree: Tree | None
    branch: str | None


@dataclass
class Background:
    """The background captures of one session, in order."""

    session: Session
    #: why background capture is off for this session (None: it is not)
    off: str | None = None
    _flight: deque[_Capture] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _published: Published | None = None
    _said_cuda: bool = False
    #: (name, message) said by the writer thread for a child, not yet merged into the session
    _said: set[tuple[str, str]] = field(default_factory=set)

    @property
    def pending(self) -> bool:
        """Captures started and not yet merged into the session."""
        return bool(self._flight)

    def capturing(self) -> int:
        """Transactions whose capture is not published yet (merging those that are)."""
        self.collect()
        return sum(c.covers for c in self._flight if not c.superseded and not
                   (c.future is not None and c.future.done()))

    def start(self, cand: set[str] | None, expected: Iterable[str] | None, *, kind: str,
              message: str, code: str | None, duration: float, started: float
              ) -> bool | tuple[dict[str, Any], set[str]]:
        """Capture the namespace in a forked child (True); else it should be captured in
        process: False (fork missing or off, CUDA in use), or, for a capture cheaper than a
        fork, the namespace and the names to examine it worked out, for that capture."""
        s = self.session
        if not self.forks():
            return False
        self.collect()
        flying = [c.cand for c in self._flight]
        every = None if cand is None or None in flying else cand.union(*flying)  # type: ignore[arg-type]
        if expected is not None:  # one in flight that could touch any name explains all
            expected = None if None in flying else set(expected).union(*flying)  # type: ignore[arg-type]
        current = s._tracked()
        examine = s._known.to_examine(current, every, s._tree)
        if not self._flight and self._predicted_cost(current, examine) < FORK_COST:
            return current, examine  # nothing in flight: every is cand
        usermodules.warm(current)  # worked out once here, not in every child
        cloudpickle_track_classes((current[n] for n in examine), s.namespace.get("__name__"))
        with interrupts.held():  # the child and its record in the queue: both or neither
            child = capture.fork(lambda: self._in_child(current, examine, every, expected))
            cap = _Capture(child, every, current, kind, message, [code or ""], duration)
            with self._lock:
                last = self._flight[-1] if self._flight else None
                if last is not None and not last.started and not last.superseded:
                    last.superseded = True  # this capture covers its transactions too
                    cap.codes[:0] = last.codes
                    cap.covers += last.covers
                    cap.duration += last.duration
                    cap.kind, cap.message = (kind, message) if message else \
                        (last.kind, last.message)
            if not self._flight:
                self._published = Published(s._head, s._tree, s._branch)
            self._flight.append(cap)
            # the session's writer thread: after any commit it is writing in process
            cap.future = s.writer_thread().submit(self._finish, cap)
        cap.foreground = time.perf_counter() - started
        return True

    def forks(self) -> bool:
        """Whether a capture now would be forked (background durability, fork available and
        not turned off by a failure, no CUDA in use)."""
        return self.session.durability == "background" and self.off is None and \
            capture.can_fork() and not self._cuda_in_use()

    def sweep_cost(self) -> float:
        """Seconds a sweep would hold this process: a fork's, or examining every name here."""
        if self.forks():
            return 0.0
        current = self.session._tracked()
        return self._predicted_cost(current, set(current))

    def _predicted_cost(self, current: dict[str, Any], examine: set[str]) -> float:
        """Seconds a capture examining examine would take in process: what a commit costs
        per name of the namespace (the tree, its groups), plus encoding examine: guessed for
        small plain values, else what the name took last time (inf for one never examined)."""
        total = len(current) * PER_NAME_COST
        for n in examine:
            guess = _guess(current[n])
            if guess is None:
                known = self.session._known.get(n)
                if known is None:
                    return float("inf")
                guess = known.cost
            total += guess
        return total

    def _cuda_in_use(self) -> bool:
        torch = sys.modules.get("torch")
        try:
            cuda = torch is not None and bool(torch.cuda.is_initialized())
        except Exception:
            cuda = True
        if cuda and not self._said_cuda:
            self._said_cuda = True
            self.session.notify("CUDA is in use: commits are captured in this process (a "
                                "forked child cannot read CUDA memory)")
        return cuda

    # --- in the child ----------------------------------------------------------------------
    def _in_child(self, current: dict[str, Any], examine: set[str], cand: set[str] | None,
                  expected: Iterable[str] | None) -> Report:  # pragma: no cover - child only
        s = self.session
        began = time.perf_counter()
        s.notify = lambda message: None  # the child's copy: what it says is in `warned`
        warned = set(s._warned)
        mark = s._writer.keys_known()
        c = s._capture(current, examine, cand, expected)
        c.learned = {n: k.by_ids() for n, k in c.learned.items()}
        unexamined = s._unexamined_change(c.tree) if s.verify and cand is not None else None
        chunks, _ = s._writer.take(private=False)
        written = s.repo.write_in_child(chunks)
        return Report(c, written, s._writer.keys_since(mark), s._warned - warned,
                      unexamined, time.perf_counter() - began)

    # --- in the writer thread --------------------------------------------------------------
    def _finish(self, cap: _Capture) -> _Outcome:
        """Let the child work, wait for its report and publish its commit."""
        with self._lock:
            if cap.superseded:
                cap.child.kill()
                return _Outcome()
            cap.started = True
        cap.child.go()
        try:
            report = cap.child.result(DEADLINE)
        except capture.ChildFailed as e:
            return _Outcome(error=str(e))
        s, c, was = self.session, report.captured, self._published
        assert was is not None
        if was.head is not None and not s.repo.has_commit(was.head.id):
            return _Outcome(error="the commit before it could not be written")
        if report.unexamined is not None or (was.head is not None
                                             and c.tree_key == was.head.tree):
            self._say(report)
            return _Outcome(report)
        commit = Commit(
            id="", history=s.name, parents=(was.head.id,) if was.head else (),
            tree=c.tree_key, time=time.time(), kind=cap.kind, message=cap.message,
            code="\n".join(x for x in cap.codes if x) or None, reads=c.reads, writes=c.writes,
            env=env.fingerprint(), duration=cap.duration,
            stats={"examined": c.examined, "bytes_new": report.chunks.bytes_new,
                   "commit_seconds": round(cap.foreground, 6),
                   "capture_seconds": round(report.seconds, 6), "covers": cap.covers},
        ).sealed()
        branch = s.repo.publish_from_child(commit, was.branch, report.chunks)
        self._published = Published(commit, c.tree, branch)
        self._say(report)
        return _Outcome(report, commit, c.tree, branch)

    def _say(self, report: Report) -> None:
        """What the child had to say (a value not stored…), said now: in a notebook it shows
        under the cell that is running, or under the last one if the kernel is idle. Once per
        session, like in process: children forked before the last merge share `_said`."""
        for (name, message) in sorted(report.warned - self._said - self.session._warned):
            self._said.add((name, message))
            self.session.notify(message)

    # --- back in the session ---------------------------------------------------------------
    def collect(self) -> None:
        """Merge the captures that are done (in order), without waiting."""
        while self._flight and self._flight[0].future.done():  # type: ignore[union-attr]
            self._merge_first()

    def drain(self, *, failures: str) -> None:
        """Wait for every capture and merge it. failures "raise": CommitFailedError if the
        latest one failed (the state before now is not committed); "forget": the session
        already forgot what it knew, so the next commit examines every name."""
        error = None
        while self._flight:
            superseded = self._flight[0].superseded
            merged = self._merge_first()
            if not superseded:
                error = merged
        if error is not None and failures == "raise":
            raise CommitFailedError(f"the last commit could not be captured in the background "
                                    f"({error}); HEAD is at the last commit that was")

    def _merge_first(self) -> str | None:
        """Merge the oldest capture into the session; its error, if it failed."""
        cap = self._flight[0]
        try:
            outcome = cap.future.result()  # type: ignore[union-attr]
        except Exception as e:  # publishing failed (a full disk)
            outcome = _Outcome(error=f"{type(e).__name__}: {e}")
        s = self.session
        with interrupts.held():
            self._flight.popleft()
            if cap.superseded:
                return None
            if outcome.error is not None or outcome.report is None:
                s._known.forget()
                self.off = outcome.error or "it reported nothing"
            else:
                self._take(outcome)
        if outcome.error is not None:
            s.notify(f"could not capture in the background ({self.off}); the state is captured "
                     "in this process from the next commit on")
            return self.off
        report = outcome.report
        assert report is not None
        if report.unexamined is not None:
            s._known.forget()
            raise AssertionError(f"txpy verify: {report.unexamined!r} changed but was not "
                                 "examined")
        return None

    def _take(self, outcome: _Outcome) -> None:
        s, report = self.session, outcome.report
        assert report is not None
        c = report.captured
        s._warned |= report.warned
        self._said -= report.warned
        s._writer.learn_keys(report.keys)
        s._escaped_now(c.escaping, c.gone)
        if report.unexamined is not None:
            return
        if outcome.commit is not None:
            before = Published(s._head, s._tree, s._branch)
            s._components.update(c.staged)
            s._head, s._tree, s._branch = outcome.commit, outcome.tree, outcome.branch
            if outcome.branch != before.branch and before.head is not None:
                s.notify(s._branch_message(outcome.branch, before))  # type: ignore[arg-type]
        s._known.adopt(c.learned, c.gone)

    def close(self) -> None:
        """Stop children still waiting or working (the session is closing)."""
        for cap in self._flight:
            with self._lock:
                cap.superseded = True
            cap.child.kill()
        self._flight.clear()
