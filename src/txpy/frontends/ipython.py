"""IPython/Jupyter frontend: every cell is a transaction.

``%load_ext txpy`` (or ``txpy.enable()``) commits each cell that finishes and rolls back each
cell that raises or is interrupted; ``%txpy`` shows and moves through the history. The user
namespace stays IPython's own plain dict: which names a cell could touch is found statically
(:mod:`txpy.track`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shlex
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

from .. import track
from ..errors import NotAStoreError, TxpyError
from ..humanize import size, when
from ..model import Commit
from ..repo import STORE_DIR, find_store
from ..session import Session, is_dunder

DEFAULT_HISTORY = "ipython"
#: Every this many cells a commit examines every name, catching what static tracking cannot
#: see (a library that kept a notebook object from an earlier cell and mutated it later).
SWEEP_EVERY = 50

#: Names IPython itself puts in (and keeps updating in) the user namespace.
_IPYTHON_NAME = re.compile(r"_(i{1,3}|i\d+|\d+|oh|ih|dh|exit_code|sh)?|__|___|In|Out|exit|quit|"
                           r"get_ipython")
_USAGE = ("usage: %txpy restore [COMMIT] | log | diff A [B] | checkout COMMIT|BRANCH | "
          "branch [NAME] | status | off | on | session NAME | durability sync|async")


def notify(message: str) -> None:
    print(f"txpy: {message}", file=sys.stderr, flush=True)


def history_name(ip: Any, store: Path) -> str:
    """The notebook's path relative to the store's directory when Jupyter tells us which
    notebook this is, else "ipython"."""
    path = os.environ.get("JPY_SESSION_NAME") or ip.user_ns.get("__vsc_ipynb_file__")
    if not path:
        return DEFAULT_HISTORY
    p = Path(path)
    try:
        return p.resolve().relative_to(store.parent.resolve()).as_posix()
    except ValueError:
        return p.name


def open_store_path(cwd: str | os.PathLike[str] = ".") -> Path:
    try:
        return find_store(cwd)
    except NotAStoreError:
        return Path(cwd).resolve() / STORE_DIR


class _Lease:
    """An flock held while this kernel is attached to a history: a second kernel can tell."""

    def __init__(self, store: Path, history: str):
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", history)[:60]
        digest = hashlib.sha256(history.encode()).hexdigest()[:8]
        (store / "leases").mkdir(exist_ok=True)
        self.path = store / "leases" / f"{safe}-{digest}.lock"
        self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.held = True
        except BlockingIOError:
            self.held = False

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


class Extension:
    """txpy attached to one IPython shell."""

    def __init__(self, ip: Any, history: str | None = None,
                 store: str | os.PathLike | None = None, *, attach: bool = True):
        self.ip = ip
        self.enabled = True
        self.errors: list[BaseException] = []  # commit failures, for the curious and for tests
        self.store = Path(store) if store is not None else open_store_path(os.getcwd())
        self.session: Session | None = None
        self.lease: _Lease | None = None
        self._hidden = dict(getattr(ip, "user_ns_hidden", {}))
        #: cells running now, outermost first: a cell may run cells (run_cell) or none may
        #: have started (an empty cell gets a post_run_cell only)
        self._running: list[tuple[Any, _Cell | None]] = []
        self._uncommitted: set[str] | None = set()  # candidates of cells not yet committed
        self._unsaved: BaseException | None = None  # why the last commit failed
        self._fresh: set[str] | None = None  # names before the first cell of a fresh kernel
        #: HEAD a fresh kernel found: what `%txpy restore` brings back, even after this
        #: kernel has committed cells of its own (on a branch of their own)
        self.saved: tuple[Commit, str | None] | None = None
        self._cells = 0
        if attach:
            self.attach(history or history_name(ip, self.store))

    # --- session ------------------------------------------------------------------------
    def ignore(self, name: str) -> bool:
        if is_dunder(name) or _IPYTHON_NAME.fullmatch(name):
            return True
        hidden = self._hidden.get(name, _MISSING)
        return hidden is not _MISSING and self.ip.user_ns.get(name, _MISSING) is hidden

    def attach(self, history: str) -> None:
        """Bind the shell's namespace to history (the current one is detached first)."""
        self.detach()
        self.session = Session(self.store, history, self.ip.user_ns, ignore=self.ignore,
                               notify=notify)
        self.lease = _Lease(self.session.repo.path, history)
        if not self.lease.held:
            self._own_branch()
        self._uncommitted = set()
        head = self.session.head
        self.saved = None
        if any(not self.ignore(n) for n in self.ip.user_ns):
            self._commit(None, kind="auto", message="txpy enabled", code=None)
            self._fresh = None
        else:
            # a fresh kernel: HEAD holds the last kernel's state; this kernel's own commits
            # go on a branch of their own, so that %txpy restore still finds it
            self._fresh = set()
            if head is not None:
                self.saved = (head, self.session.branch)
                notify(f"history {history!r} has a saved state (commit {head.short}, "
                       f"{when(head.time)}); %txpy restore brings it back")

    def _own_branch(self) -> None:
        s = self.session
        assert s is not None
        if s.head is None:
            notify(f"another kernel is using history {s.name!r}; this kernel's commits go on "
                   "their own branch")
            return
        name = self._kernel_branch()
        notify(f"another kernel is using history {s.name!r}; this kernel commits on branch "
               f"{name!r}")

    def _kernel_branch(self) -> str:
        """Start a branch of this kernel's own at HEAD; its name."""
        s = self.session
        assert s is not None
        base = s.branch or "main"
        name = f"{base}-kernel{os.getpid()}"
        n = 2
        while name in s.branches():
            name = f"{base}-kernel{os.getpid()}-{n}"
            n += 1
        s.create_branch(name)
        return name

    def _leave_saved_state(self) -> None:
        """Before a fresh kernel's first commit: keep the saved state where it is."""
        s = self.session
        assert s is not None and self.saved is not None
        head, branch = self.saved
        if s.head is None or s.head.id != head.id or branch is None:
            return
        name = self._kernel_branch()
        notify(f"this kernel's cells are saved on branch {name!r}; the saved state (commit "
               f"{head.short}) stays on {branch!r}: %txpy restore brings it back")

    def detach(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None
        if self.session is not None:
            self.session.close()
            self.session = None

    # --- cells --------------------------------------------------------------------------
    def pre_run_cell(self, info: Any) -> None:
        if self._running:  # a cell run by a cell: part of the outer one's transaction
            self._running.append((info, None))
            return
        cell = None
        try:
            cell = self._begin(info)
        except BaseException as e:  # still a transaction: one that may have touched anything
            self.errors.append(e)
            s = self.session
            if s is not None and self.enabled:
                cell = _Cell(info.raw_cell or "", None, time.perf_counter(), False, s.head,
                             s.branch, self._unsaved)
            if not isinstance(e, Exception):
                raise
        finally:  # whatever failed above, the cell is known to have started
            self._running.append((info, cell))

    def _begin(self, info: Any) -> _Cell | None:
        if not self.enabled or self.session is None:
            return None
        s = self.session
        raw = info.raw_cell or ""
        try:
            code = compile(self.ip.transform_cell(raw), "<cell>", "exec")
            candidates = track.candidates(code, self.ip.user_ns)
        except (SyntaxError, ValueError, OverflowError):
            candidates = None  # IPython will report it; nothing will run
        if self._fresh is not None:
            self._fresh = {n for n in self.ip.user_ns if not self.ignore(n)}
        elif self._unsaved is not None and not _only_txpy_magic(raw):
            # the last cell's results are only in memory: a rollback of this cell must
            # not throw them away, so they are saved first
            self._commit(set(), kind="auto", message="retry", code=None)
        return _Cell(raw, candidates, time.perf_counter(), _only_txpy_magic(raw),
                     s.head, s.branch, self._unsaved)

    def post_run_cell(self, result: Any) -> None:
        try:
            self._end(result)
        except BaseException as e:  # interrupted in txpy's own time (or a txpy bug)
            self.errors.append(e)
            self._uncommitted = None  # the next commit examines every name
            self._unsaved = self._unsaved or e
            notify(f"interrupted while saving this cell ({type(e).__name__}); the next cell "
                   "saves everything")
            if not isinstance(e, (Exception, KeyboardInterrupt)):
                raise

    def _end(self, result: Any) -> None:
        info = getattr(result, "info", None)
        cell = None
        if self._running and self._running[-1][0] is info:
            _, cell = self._running.pop()
            if self._running:
                return  # a nested cell: the outer cell commits or rolls back all of it
        else:
            self._running.clear()
        if not self.enabled or self.session is None:
            return
        if cell is None:  # the cell that loaded us, an empty one, or one run while we were off
            if self._fresh is None:
                self._commit(None, kind="auto", message="", code=None)
            return
        if cell.txpy_magic:
            return  # %txpy does its own committing
        error = result.error_in_exec
        if result.error_before_exec is not None:
            return  # nothing ran
        if error is not None:
            self._rollback(cell, error)
            return
        self._cells += 1
        candidates = cell.candidates
        if self._cells % SWEEP_EVERY == 0:
            candidates = None
        self._commit(candidates, kind="cell", code=cell.source, message="",
                     duration=time.perf_counter() - cell.started)

    def _commit(self, candidates: set[str] | None, *, kind: str, code: str | None,
                message: str, duration: float = 0.0) -> str | None:
        s = self.session
        assert s is not None
        if self._uncommitted is None or candidates is None:
            cand = None
        else:
            cand = self._uncommitted | candidates
        if self.saved is not None and self._fresh is not None:
            self._leave_saved_state()
        before = s.head
        try:
            cid = s.commit(message, kind=kind, code=code, candidates=cand, duration=duration)
        except (Exception, KeyboardInterrupt) as e:
            self.errors.append(e)
            if s.head is not before:  # interrupted after the commit was made: it stands
                self._saved_now()
                notify(f"interrupted ({type(e).__name__}) just after this cell was saved")
                return s.head.id if s.head else None
            self._uncommitted = cand
            self._unsaved = e
            notify(f"could not save this cell ({type(e).__name__}: {_one_line(e)}); its "
                   "results are kept in memory and the next cell will try again")
            return None
        self._saved_now()
        return cid

    def _saved_now(self) -> None:
        self._uncommitted = set()
        self._unsaved = None
        self._fresh = None

    def _rollback(self, cell: _Cell, error: BaseException) -> None:
        s = self.session
        assert s is not None
        why = type(error).__name__
        if self._fresh is not None:
            created = sorted(n for n in self.ip.user_ns
                             if not self.ignore(n) and n not in self._fresh)
            for n in created:
                del self.ip.user_ns[n]
            notify(f"rolled back after {why}: " + (f"removed {', '.join(created)}"
                                                   if created else "nothing had changed"))
            return
        if cell.unsaved is not None:
            if cell.candidates is None:
                self._uncommitted = None
            elif self._uncommitted is not None:
                self._uncommitted |= cell.candidates
            notify(f"cannot roll back after {why}: the state before this cell could not be "
                   f"saved ({type(cell.unsaved).__name__}: {_one_line(cell.unsaved)}); the "
                   "namespace is as the failed cell left it")
            return
        try:
            if cell.head is not None and s.head is not None and s.head.id != cell.head.id:
                # the cell moved HEAD (%txpy checkout) before it failed: undo that too
                s.return_to(cell.head, cell.branch)
                self._saved_now()
                notify(f"rolled back after {why}: back at commit {cell.head.short}"
                       + (f" on branch {cell.branch!r}" if cell.branch else ""))
                return
            cand = None if self._uncommitted is None or cell.candidates is None \
                else self._uncommitted | cell.candidates
            restored = s.rollback(cand)
        except (Exception, KeyboardInterrupt) as e:
            self.errors.append(e)
            notify(f"could not roll back after {why} ({type(e).__name__}: {_one_line(e)}); "
                   "the namespace is as the failed cell left it")
            return
        self._uncommitted = set()
        notify(f"rolled back after {why}: " + (", ".join(restored) if restored
                                                else "nothing had changed"))


@dataclass(frozen=True)
class _Cell:
    """A top-level cell as it started: its code, and where HEAD was."""

    source: str
    candidates: set[str] | None
    started: float
    txpy_magic: bool
    head: Commit | None
    branch: str | None
    #: why the state before it is not committed (the last commit failed twice), or None
    unsaved: BaseException | None


_MISSING = object()


def _only_txpy_magic(raw: str) -> bool:
    lines = [ln.strip() for ln in raw.strip().splitlines() if ln.strip()]
    return bool(lines) and all(ln.startswith("%txpy") for ln in lines)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else ""


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
        notify(f"%txpy {command} failed ({type(e).__name__}: {_one_line(e)})")

    @property
    def session(self) -> Session:
        if self.ext.session is None:
            raise TxpyError("txpy is not attached to a history; %txpy session NAME attaches it")
        return self.ext.session

    def _do_restore(self, ref: str | None = None) -> None:
        ext, s = self.ext, self.session
        kept: dict[str, Any] = {}
        if ref is None and ext.saved is not None:
            # a fresh kernel: the state found at start, not the cells this kernel committed
            head, branch = ext.saved
            ref = branch if branch is not None and s.branches().get(branch) == head.id \
                else head.id
            tree = s.repo.tree(head)
            kept = {n: v for n, v in ext.ip.user_ns.items()
                    if not ext.ignore(n) and n not in tree.names}
        commit = s.restore(ref)
        ext.saved = None
        ext.ip.user_ns.update(kept)
        ext._saved_now()
        names = sorted(s.repo.tree(commit).names - s.unstored.keys())
        print(f"restored {len(names)} names from commit {commit.short} ({when(commit.time)}): "
              + ", ".join(names))
        if kept:
            ext._commit(None, kind="auto", message="restored", code=None)
            print("kept from this kernel (not in the saved state): " + ", ".join(sorted(kept)))

    def _do_log(self, count: str = "20") -> None:
        if not count.isdigit():
            raise TxpyError(f"%txpy log N shows the last N commits; {count!r} is not a number")
        limit = int(count)
        s = self.session
        head = s.head.id if s.head else None
        tips: dict[str, list[str]] = {}
        for b, cid in s.branches().items():
            tips.setdefault(cid, []).append(b)
        commits = s.log()
        if not commits:
            print(f"history {s.name!r} has no commits yet")
            return
        for c in commits[:limit]:
            mark = "*" if c.id == head else " "
            refs = f" ({', '.join(tips[c.id])})" if c.id in tips else ""
            text = (c.code or c.message or "").strip().splitlines()
            what = text[0][:60] + (" …" if len(text) > 1 or len(text[0]) > 60 else "") \
                if text else ""
            print(f"{mark} {c.short} {when(c.time)} {c.kind:<5}{refs} {what}")
        if len(commits) > limit:
            print(f"  ... {len(commits) - limit} older commits (%txpy log N shows more)")

    def _do_diff(self, a: str, b: str | None = None) -> None:
        d = self.session.diff(a, b)
        if not d:
            print("no differences")
            return
        for label, names in (("added", d.added), ("removed", d.removed),
                             ("changed", d.changed)):
            if names:
                print(f"{label}: {', '.join(names)}")

    def _do_checkout(self, ref: str) -> None:
        commit = self.session.checkout(ref)
        self.ext.saved = None
        self.ext._saved_now()
        where = f"branch {self.session.branch!r}" if self.session.branch else \
            "a detached commit (new cells start a new branch)"
        print(f"checked out {commit.short} ({when(commit.time)}); now on {where}")

    def _do_branch(self, name: str | None = None) -> None:
        s = self.session
        if name is not None:
            s.create_branch(name)
            print(f"created branch {name!r}; HEAD is on it")
            return
        for b, cid in s.branches().items():
            print(f"{'*' if b == s.branch else ' '} {b} {cid[:12]}")
        if s.branch is None and s.head is not None:
            print(f"* (detached at {s.head.short})")

    def _do_status(self) -> None:
        ext = self.ext
        s = self.session
        print(f"store:   {s.repo.path} ({size(s.repo.disk_usage())})")
        print(f"history: {s.name}" + ("" if ext.lease and ext.lease.held
                                      else " (shared with another kernel)"))
        print(f"branch:  {s.branch or '(detached)'}")
        print(f"tracking: {'on' if ext.enabled else 'off (%txpy on resumes)'}, "
              f"durability {s.durability}")
        h = s.head
        print(f"last commit: {h.short} {when(h.time)} {h.kind}" if h else "last commit: none")
        if ext._fresh is not None and h is not None:
            print("  (not restored in this kernel: %txpy restore brings it back)")
        for n, u in sorted(s.unstored.items()):
            print(f"not stored: {n} ({u.type_name}): {u.reason}")

    def _do_off(self) -> None:
        self.ext.enabled = False
        print("txpy is off: cells are neither saved nor rolled back (%txpy on resumes)")

    def _do_on(self) -> None:
        ext = self.ext
        if ext.enabled:
            print("txpy is already on")
            return
        ext.enabled = True
        if ext._fresh is None:
            ext._commit(None, kind="auto", message="txpy on", code=None)
        print("txpy is on")

    def _do_durability(self, level: str) -> None:
        s = self.session
        if level not in ("sync", "async"):
            raise TxpyError("durability is sync (a cell returns once its commit is on disk) or "
                            "async (the commit is written while the next cell runs)")
        s.wait()
        s.durability = level
        print(f"durability: {level}")

    def _do_session(self, name: str) -> None:
        self.ext.attach(name)
        print(f"now on history {name!r}")


_extensions: dict[int, tuple[Extension, Any, Any]] = {}


def load_ipython_extension(ip: Any) -> Extension:
    """Make every cell of this shell a transaction (``%load_ext txpy``)."""
    if id(ip) in _extensions:
        return _extensions[id(ip)][0]
    ext = Extension(ip, attach=False)
    try:
        ext.attach(history_name(ip, ext.store))
    except (TxpyError, OSError) as e:
        ext.errors.append(e)
        notify(f"{e}. This notebook is NOT being saved: nothing is committed or rolled back "
               "until that is fixed and %txpy session NAME attaches a history")
    pre = types.MethodType(Extension.pre_run_cell, ext)
    post = types.MethodType(Extension.post_run_cell, ext)
    ip.events.register("pre_run_cell", pre)
    ip.events.register("post_run_cell", post)
    ip.register_magics(TxpyMagics(ip, ext))
    _extensions[id(ip)] = (ext, pre, post)
    return ext


def unload_ipython_extension(ip: Any) -> None:
    """Undo load_ipython_extension: callbacks and the magic go, the store is closed."""
    entry = _extensions.pop(id(ip), None)
    if entry is None:
        return
    ext, pre, post = entry
    ip.events.unregister("pre_run_cell", pre)
    ip.events.unregister("post_run_cell", post)
    manager = ip.magics_manager
    manager.magics["line"].pop("txpy", None)
    manager.registry.pop(TxpyMagics.__name__, None)
    ext.detach()


def enable() -> Extension:
    """``%load_ext txpy`` for the running IPython shell."""
    from IPython import get_ipython
    ip = get_ipython()
    if ip is None:
        raise TxpyError("txpy.enable() needs IPython or Jupyter; in a script use "
                        "`txpy run script.py` or txpy.Session")
    return load_ipython_extension(ip)


def extension(ip: Any) -> Extension | None:
    entry = _extensions.get(id(ip))
    return entry[0] if entry else None


__all__ = ["Extension", "TxpyMagics", "enable", "extension", "load_ipython_extension",
           "unload_ipython_extension"]
