"""IPython/Jupyter frontend: every cell is a transaction.

``%load_ext txpy`` (or ``txpy.enable()``) commits each cell that finishes and rolls back each
cell that raises or is interrupted; ``%txpy`` (:mod:`.ipython_magics`) shows and moves through
the history. The user namespace stays IPython's own plain dict: which names a cell could touch
is found statically (:mod:`txpy.track`).
"""

from __future__ import annotations

import dis
import fcntl
import hashlib
import os
import re
import time
import types
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..compat import forget_line_magic
from ..errors import TxpyError
from ..humanize import when
from ..model import Commit
from ..repo import store_for
from ..session import Session, is_dunder
from ..transaction import Transaction, Transactions
from .idle import IN_PROCESS_MOST, IdleSweeps
from .ipython_calls import shell_calls
from .ipython_magics import TxpyMagics, notify

DEFAULT_HISTORY = "ipython"

#: Names IPython itself puts in (and keeps updating in) the user namespace.
_IPYTHON_NAME = re.compile(r"_(i{1,3}|i\d+|\d+|oh|ih|dh|exit_code|sh)?|__|___|In|Out|exit|quit|"
                           r"get_ipython")
#: names a cell may bind that txpy never stores, other than those IPython rebinds by itself
#: (_, __, _12, _i12) or that a notebook's module has anyway (__name__, __doc__...)
_NEVER_STORED = re.compile(r"__(?!(name|doc|builtins|builtin|package|loader|spec|file|cached|"
                           r"annotations)__)\w+__|_(sh|oh|ih|dh|exit_code)|In|Out|exit|quit|"
                           r"get_ipython")
def notebook_history(ip: Any, store: Path) -> str:
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
        #: seconds each of the last cells waited for txpy after it ran (what a user feels)
        self.costs: deque[float] = deque(maxlen=1000)
        self.store = Path(store) if store is not None else store_for(os.getcwd())
        self.session: Session | None = None
        self.lease: _Lease | None = None
        self._hidden = dict(getattr(ip, "user_ns_hidden", {}))
        self.txns: Transactions | None = None
        #: cells running now, outermost first: a cell may run cells (run_cell) or none may
        #: have started (an empty cell gets a post_run_cell only)
        self._running: list[tuple[Any, _Cell | None]] = []
        self._fresh: set[str] | None = None  # names before the first cell of a fresh kernel
        self._told: set[str] = set()  # names we said are never stored
        #: HEAD a fresh kernel found: what `%txpy restore` brings back, even after this
        #: kernel has committed cells of its own (on a branch of their own)
        self.saved: tuple[Commit, str | None] | None = None
        self.idle: IdleSweeps | None = None  # set by load_ipython_extension in a kernel
        if attach:
            self.attach(history or notebook_history(ip, self.store))

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
        self.txns = Transactions(self.session, "cell", shell_calls, self.errors, background=True)
        self.lease = _Lease(self.session.repo.path, history)
        head, found_on = self.session.head, self.session.branch
        if not self.lease.held:
            self._own_branch()
        self.saved = None
        if any(not self.ignore(n) for n in self.ip.user_ns):
            self.save_all("txpy enabled")
            self._fresh = None
        else:
            # a fresh kernel: HEAD holds the last kernel's state; this kernel's own commits
            # go on a branch of their own, so that %txpy restore still finds it
            self._fresh = set()
            if head is not None:
                self.saved = (head, found_on)
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
        name = s.repo.refs.free_name(s.name, f"{s.branch or 'main'}-kernel{os.getpid()}")
        s.create_branch(name)
        return name

    def _leave_saved_state(self) -> None:
        """Before a fresh kernel's first commit: keep the saved state where it is."""
        s = self.session
        assert s is not None and self.saved is not None
        head, branch = self.saved
        if s.head is None or s.head.id != head.id or branch is None or s.branch != branch:
            return  # not on the saved state's branch (a kernel of its own already)
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
        if self.idle is not None:
            self.idle.cell_started()
        if self._running:  # a cell run by a cell: part of the outer one's transaction
            self._running.append((info, None))
            return
        cell = None
        try:
            cell = self._begin(info)
        except BaseException as e:  # still a transaction: one that may have touched anything
            self.errors.append(e)
            if self.txns is not None and self.enabled:
                cell = _Cell(self.txns.begin(None, info.raw_cell or ""), False)
            if not isinstance(e, Exception):
                raise
        finally:  # whatever failed above, the cell is known to have started
            self._running.append((info, cell))

    def _begin(self, info: Any) -> _Cell | None:
        if not self.enabled or self.txns is None:
            return None
        raw = info.raw_cell or ""
        try:
            code = compile(self.ip.transform_cell(raw), "<cell>", "exec")
        except (SyntaxError, ValueError, OverflowError):
            code = None  # IPython will report it; nothing will run
        if self._fresh is not None:
            self._fresh = {n for n in self.ip.user_ns if not self.ignore(n)}
        if _only_txpy_magic(raw):  # %txpy commits by itself
            return _Cell(Transaction(None, self.txns.session.moves), True)
        if code is not None:
            self._tell_ignored(code)
        return _Cell(self.txns.begin(code, raw), False)

    def _tell_ignored(self, code: Any) -> None:
        """Say once of each name a cell binds that txpy never stores (dunder names, names
        IPython uses such as _sh or Out): a user's variable must not vanish unannounced."""
        if not any(_NEVER_STORED.fullmatch(n) for n in code.co_names):
            return
        bound = {i.argval for i in dis.get_instructions(code)
                 if i.opname in ("STORE_NAME", "STORE_GLOBAL")
                 and _NEVER_STORED.fullmatch(i.argval)}
        for name in sorted(bound - self._told):
            self._told.add(name)
            notify(f"{name!r} is not stored: txpy leaves dunder names and the names IPython "
                   "uses alone; rename it to keep it")

    def post_run_cell(self, result: Any) -> None:
        try:
            self._end(result)
        except BaseException as e:  # interrupted in txpy's own time (or a txpy bug)
            if self.txns is not None:
                self.txns.lost_track(e)
            notify(f"interrupted while saving this cell ({type(e).__name__}); the next cell "
                   "saves everything")
            if not isinstance(e, (Exception, KeyboardInterrupt)):
                raise
        finally:
            if self.idle is not None and not self._running:
                self.idle.cell_ended()

    def idle_sweep(self) -> None:
        """Examine every name while the kernel is idle (see frontends.idle): never inside a
        cell, nor in a fresh kernel that has committed nothing yet, nor where examining
        in process would keep the next cell waiting (see idle.IN_PROCESS_MOST)."""
        if self._running or not self.enabled or self.txns is None or self._fresh is not None \
                or self.txns.session.sweep_cost() > IN_PROCESS_MOST:
            return
        try:
            self.txns.sweep()
        except BaseException as e:  # an interrupt between requests: the next cell saves all
            self.txns.lost_track(e)

    def _end(self, result: Any) -> None:
        info = getattr(result, "info", None)
        cell = None
        if self._running and self._running[-1][0] is info:
            _, cell = self._running.pop()
            if self._running:
                return  # a nested cell: the outer cell commits or rolls back all of it
        else:
            self._running.clear()
        if not self.enabled or self.txns is None:
            return
        if cell is None:  # the cell that loaded us, an empty one, or one run while we were off
            if self._fresh is None:
                self.save_all("")
            return
        if cell.txpy_magic or result.error_before_exec is not None:
            return  # %txpy does its own committing; or nothing ran
        if result.error_in_exec is not None:
            self._rollback(cell.txn, result.error_in_exec)
        else:
            self._commit(cell.txn, kind="cell")

    def _commit(self, txn: Transaction, *, kind: str, message: str = "") -> None:
        assert self.txns is not None
        if self.saved is not None and self._fresh is not None:
            self._leave_saved_state()
        started = time.perf_counter()
        committed = self.txns.commit(txn, kind=kind, message=message)
        self.costs.append(time.perf_counter() - started)
        if committed is not None:
            self._fresh = None

    def save_all(self, message: str) -> None:
        """Commit every name (when txpy starts watching, or after %txpy moved the state)."""
        assert self.txns is not None
        txn = self.txns.begin()
        self.txns.note(txn, None, "")
        self._commit(txn, kind="auto", message=message)

    @property
    def fresh(self) -> bool:
        """A new kernel that has neither committed nor restored anything yet."""
        return self._fresh is not None

    def moved(self) -> None:
        """%txpy made the namespace what HEAD holds (restore, checkout)."""
        assert self.txns is not None
        self.saved = self._fresh = None
        self.txns.settled()

    def _rollback(self, txn: Transaction, error: BaseException) -> None:
        if self._fresh is None:
            assert self.txns is not None
            self.txns.rollback(txn, error)
            return
        created = sorted(n for n in self.ip.user_ns if not self.ignore(n) and n not in self._fresh)
        for n in created:
            del self.ip.user_ns[n]
        notify(f"rolled back after {type(error).__name__}: "
               + (f"removed {', '.join(created)}" if created else "nothing had changed"))


@dataclass(frozen=True)
class _Cell:
    """A top-level cell as it started."""

    txn: Transaction
    txpy_magic: bool


_MISSING = object()


def _only_txpy_magic(raw: str) -> bool:
    lines = [ln.strip() for ln in raw.strip().splitlines() if ln.strip()]
    return bool(lines) and all(ln.startswith("%txpy") for ln in lines)


_extensions: dict[int, tuple[Extension, Any, Any]] = {}


def load_ipython_extension(ip: Any) -> Extension:
    """Make every cell of this shell a transaction (``%load_ext txpy``)."""
    if id(ip) in _extensions:
        return _extensions[id(ip)][0]
    ext = Extension(ip, attach=False)
    try:
        ext.attach(notebook_history(ip, ext.store))
    except (TxpyError, OSError) as e:
        ext.errors.append(e)
        notify(f"{e}. This notebook is NOT being saved: nothing is committed or rolled back "
               "until that is fixed and %txpy session NAME attaches a history")
    pre = types.MethodType(Extension.pre_run_cell, ext)
    post = types.MethodType(Extension.post_run_cell, ext)
    ip.events.register("pre_run_cell", pre)
    ip.events.register("post_run_cell", post)
    ip.register_magics(TxpyMagics(ip, ext))
    ext.idle = IdleSweeps.of_kernel(ip, ext.idle_sweep)
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
    forget_line_magic(ip, "txpy", TxpyMagics.__name__)
    if ext.idle is not None:
        ext.idle.stop()
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
