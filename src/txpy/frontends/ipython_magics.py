"""``%txpy SUBCOMMAND``: the magics of the IPython frontend (restore, log, diff, checkout,
branch, status, wait, off/on, durability, session), printing what porcelain returns."""

from __future__ import annotations

import math
import shlex
import statistics
import sys
from typing import TYPE_CHECKING, Any

from IPython.core.magic import Magics, line_magic, magics_class

from .. import porcelain
from ..errors import TxpyError
from ..humanize import when
from ..session import DURABILITIES, Session
from ..transaction import one_line

if TYPE_CHECKING:
    from .ipython import Extension

_USAGE = ("usage: %txpy restore [COMMIT] | log | diff A [B] | checkout COMMIT|BRANCH | "
          "branch [NAME] | status | wait | off | on | session NAME | "
          "durability sync|async|background")


def notify(message: str) -> None:
    print(f"txpy: {message}", file=sys.stderr, flush=True)


def _say(lines: list[str]) -> None:
    print("\n".join(lines))


@magics_class
class TxpyMagics(Magics):
    """``%txpy SUBCOMMAND``: look at and move through this notebook's history."""

    def __init__(self, shell: Any, ext: Extension):
        super().__init__(shell)
        self.ext = ext

    @line_magic
    def txpy(self, line: str) -> None:
        try:
            words = shlex.split(line)
        except ValueError as e:
            notify(f"{e}; {_USAGE}")
            return
        if not words:
            notify(_USAGE)
            return
        command, args = words[0], words[1:]
        handler = getattr(self, f"_do_{command}", None)
        if handler is None:
            notify(f"unknown command {command!r}; {_USAGE}")
            return
        try:
            handler(*args)
        except TypeError as e:
            if "positional argument" not in str(e):
                self._failed(command, e)
            else:
                notify(f"wrong arguments for {command!r}; {_USAGE}")
        except TxpyError as e:
            notify(str(e))
        except Exception as e:  # a notebook shows one line, never a traceback from txpy
            self._failed(command, e)

    def _failed(self, command: str, e: Exception) -> None:
        self.ext.errors.append(e)
        notify(f"%txpy {command} failed ({type(e).__name__}: {one_line(e)})")

    @property
    def session(self) -> Session:
        if self.ext.session is None:
            raise TxpyError("txpy is not attached to a history; %txpy session NAME attaches it")
        return self.ext.session

    def _do_restore(self, ref: str | None = None) -> None:
        ext, s = self.ext, self.session
        kept: dict[str, Any] = {}
        source = ref
        if ref is None and ext.saved is not None:
            # a fresh kernel: the state found at start, not the cells this kernel committed
            head, source = ext.saved
            ref = source if source is not None and s.branches().get(source) == head.id \
                else head.id
            tree = s.repo.tree(head)
            kept = {n: v for n, v in ext.ip.user_ns.items()
                    if not ext.ignore(n) and n not in tree.names}
        live = ext.lease is not None and not ext.lease.held
        own = s.branch if live else None  # never move onto the branch of a live kernel
        commit = s.restore(ref, on_branch=own)
        ext.ip.user_ns.update(kept)
        ext.moved()
        names = sorted(s.repo.tree(commit).names - s.unstored.keys())
        tip = f", tip of branch {source!r}" if source and s.branches().get(source) == commit.id \
            and source != own else ""
        print(f"restored {len(names)} names from commit {commit.short} ({when(commit.time)}"
              f"{tip}): " + ", ".join(names))
        if live:
            print(f"another kernel is live on history {s.name!r}: this kernel goes on on its "
                  f"own branch {own!r}")
        if kept:
            ext.save_all("restored")
            print("kept from this kernel (not in the saved state): " + ", ".join(sorted(kept)))

    def _do_log(self, count: str = "20") -> None:
        if not count.isdigit():
            raise TxpyError(f"%txpy log N shows the last N commits; {count!r} is not a number")
        s = self._waited()
        lines = porcelain.log(s.repo, s.name, limit=int(count), title=False, at=self._at(s))
        _say(lines)
        if lines and lines[-1].endswith("not shown"):
            print("  (%txpy log N shows more)")

    def _do_diff(self, a: str, b: str | None = None) -> None:
        s = self._waited()
        _say(porcelain.diff(s.repo, s.name, a, b))

    def _waited(self) -> Session:
        """The session, once its last commit is written (async durability)."""
        s = self.session
        s.wait()
        return s

    @staticmethod
    def _at(s: Session) -> porcelain.Head:
        return s.branch, s.head.id if s.head else None

    def _do_checkout(self, ref: str) -> None:
        commit = self.session.checkout(ref)
        self.ext.moved()
        where = f"branch {self.session.branch!r}" if self.session.branch else \
            "a detached commit (new cells start a new branch)"
        print(f"checked out {commit.short} ({when(commit.time)}); now on {where}")

    def _do_branch(self, name: str | None = None) -> None:
        s = self._waited()
        if name is not None:
            s.create_branch(name)
            print(f"created branch {name!r}; HEAD is on it")
            return
        _say(porcelain.branches(s.repo, s.name, title=False, at=self._at(s)))

    def _do_status(self) -> None:
        ext = self.ext
        s = self.session
        capturing = s.capturing()
        lines = porcelain.status(s.repo, s.name, at=self._at(s))
        if capturing:
            lines.append(f"not yet durable: {capturing} cell{'s' if capturing > 1 else ''} "
                         "being captured in the background")
        if ext.costs:
            costs = sorted(ext.costs)
            p95 = costs[math.ceil(0.95 * len(costs)) - 1]
            lines.append(f"txpy's time per cell: median {1000 * statistics.median(costs):.1f} "
                         f"ms, p95 {1000 * p95:.1f} ms (last {len(costs)} cells)")
        if not (ext.lease and ext.lease.held):
            lines.append("(this history is shared with another kernel)")
        lines.append(f"tracking: {'on' if ext.enabled else 'off (%txpy on resumes)'}, "
                     f"durability {s.durability}")
        if ext.fresh and s.head is not None:
            lines.append("(not restored in this kernel: %txpy restore brings it back)")
        _say(lines)

    def _do_wait(self) -> None:
        s = self.session
        capturing = s.capturing()
        s.wait()
        print(f"every cell is durable (waited for {capturing} being captured)" if capturing
              else "every cell is durable")

    def _do_off(self) -> None:
        self.ext.enabled = False
        print("txpy is off: cells are neither saved nor rolled back (%txpy on resumes)")

    def _do_on(self) -> None:
        ext = self.ext
        if ext.enabled:
            print("txpy is already on")
            return
        ext.enabled = True
        if not ext.fresh:
            ext.save_all("txpy on")
        print("txpy is on")

    def _do_durability(self, level: str) -> None:
        s = self.session
        if level not in DURABILITIES:
            raise TxpyError("durability is sync (a cell returns once its commit is on disk), "
                            "async (the commit is written while the next cell runs) or "
                            "background (a forked copy of the kernel captures and writes it)")
        s.wait()
        s.durability = level
        if level == "background":
            s.resume_background()
        print(f"durability: {level}")

    def _do_session(self, name: str) -> None:
        self.ext.attach(name)
        print(f"now on history {name!r}")
