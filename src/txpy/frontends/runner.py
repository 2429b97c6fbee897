"""`txpy run script.py | notebook.ipynb`: top-level statements are transactions; a crashed run
resumes after its last commit.

* The script runs as ``__main__`` in a real module whose ``__dict__`` is the session's
  namespace. Each top-level statement is compiled once and executed on its own; small
  consecutive statements are grouped so a commit happens at most every ``commit_interval``
  seconds of work (0: at every boundary).
* A top-level ``for`` loop is run by the runner: each iteration is a boundary. Its iterable is
  kept in the namespace as ``__txpy_loop__`` (committed with the state, sharing objects with the
  names that hold it), so a resume continues over the same object. Only iterables whose
  iteration is a pure function of their committed value (range, list, tuple, dict and its
  views, str, bytes, numpy/pandas/torch arrays) are resumed mid-loop; a loop over anything else
  (generator, file, iterator, set, DataLoader) commits only when it ends, and says so.
* Where a run stands is kept in a small ledger, ``<store>/runs/<history>.json``, written
  atomically after each commit is durable: the statement hashes of the program, its
  arguments, and for each position the commit holding the state there. A resume uses only
  ledger entries whose commits exist in the store (signed and verified), restores the newest
  one within the unchanged prefix of the program, and runs on from there.
* A checkpoint whose state lacks a value the rest of the program reads (it could not be
  stored: a generator, a socket) is skipped for an earlier one, back to the beginning if need
  be: a resume re-runs what is needed rather than continue without it.
* Process-wide settings are redone on resume: working directory, sys.path and environment
  variables the program changed. Others (logging/warnings configuration, torch thread counts,
  open files) are not: statements before the resume point do not run again.
* ``txpy.checkpoint()`` commits from inside a statement (a ``main()`` call, a ``while`` loop);
  a resume restores those globals and runs that statement again from its start.
"""

from __future__ import annotations
import __future__

import ast
import builtins
import collections
import gc
import hashlib
import itertools
import json
import linecache
import operator
import os
import sys
import time
import tokenize
import types
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TxpyError, TxpyWarning
from ..model import Tree
from ..repo import STORE_DIR, find_store
from ..session import Session, default_notify, is_dunder

LOOP_NAME = "__txpy_loop__"
_ITEM = "__txpy_item__"
_BROKE = "__txpy_broke__"
LEDGER_VERSION = 1
#: with a commit interval > 0, a commit that took c seconds delays the next one to at least
#: this many times c of work, so commit cost stays a small share of the run
_OVERHEAD_FACTOR = 20
#: every this many commits, examine every name, not only a statement's static candidates:
#: catches mutations through objects a library kept from an earlier statement
_FULL_SWEEP_EVERY = 16
#: a loop's iterations run natively in chunks lasting about this long (or a tenth of the
#: commit interval, if less); a commit can only happen between chunks
_CHUNK_SECONDS = 0.05
#: names whose use means any global may be read
_DYNAMIC = frozenset({"globals", "vars", "locals", "eval", "exec", "__import__"})


class RunError(TxpyError):
    """A script or notebook cannot be run or resumed as asked; the message says why."""


# --- the program ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LoopCode:
    """A top-level ``for`` loop, compiled in parts so the runner drives its iterations."""

    iterable: types.CodeType  # eval: the iterable expression
    body: types.CodeType  # exec with __txpy_item__ = (item,): assigns the target, runs the body
    orelse: types.CodeType | None
    native: types.CodeType  # the whole loop over __txpy_item__, for iterables not resumed
    #: `for ... in enumerate(a) / zip(a, b)`: the builtin's name and its arguments' code, so
    #: the runner can see the iterables inside and resume them too
    call: str | None = None
    args: tuple[types.CodeType, ...] = ()
    kwargs: tuple[tuple[str, types.CodeType], ...] = ()


@dataclass(frozen=True)
class Statement:
    """One top-level statement of the program, compiled once."""

    number: int  # 1-based, across the whole program
    where: str  # "line 12" or "cell 3, line 2"
    digest: str  # of the AST: whitespace and comments do not count as edits
    source: str
    code: types.CodeType | None  # None for a loop
    loop: LoopCode | None
    reads: frozenset[str] | None  # global names it may read; None: any (globals(), eval, ...)
    def_reads: frozenset[str] | None  # those read inside functions/classes it defines


@dataclass(frozen=True)
class Program:
    """A script or a notebook's code cells as a sequence of top-level statements."""

    path: Path
    kind: str  # "script" | "notebook"
    statements: tuple[Statement, ...]
    doc: str | None

    @property
    def digests(self) -> list[str]:
        return [s.digest for s in self.statements]

    def needed_from(self, index: int) -> set[str] | None:
        """Global names the program may read when it runs on from statement ``index``: what
        the rest reads, plus what functions defined earlier read (the rest may call them)."""
        needed: set[str] = set()
        for s in self.statements[index:]:
            if s.reads is None:
                return None
            needed |= s.reads
        for s in self.statements[:index]:
            if s.def_reads is None:
                return None
            needed |= s.def_reads
        return needed


def _future_flags(tree: ast.Module) -> int:
    flags = 0
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            for alias in node.names:
                feature = getattr(__future__, alias.name, None)
                if feature is not None:
                    flags |= feature.compiler_flag
    return flags


def _reads(node: ast.AST) -> frozenset[str] | None:
    names: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            if not isinstance(n.ctx, ast.Store):
                names.add(n.id)
        elif isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name):
            names.add(n.target.id)
        elif isinstance(n, ast.Attribute) and n.attr == "modules" \
                and isinstance(n.value, ast.Name) and n.value.id == "sys":
            return None
    return None if names & _DYNAMIC else frozenset(names)


def _def_reads(node: ast.AST) -> frozenset[str] | None:
    names: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            inner = _reads(n)
            if inner is None:
                return None
            names |= inner
    return frozenset(names)


def _compile_loop(node: ast.For, filename: str, flags: int) -> LoopCode:
    iterable = compile(ast.Expression(node.iter), filename, "eval", flags=flags,
                       dont_inherit=True)
    # `for TARGET in __txpy_item__: BODY else: __txpy_broke__ = False` runs a chunk of
    # iterations with the loop's own semantics: target unpacking, `continue`, and `break`
    # (which skips the else)
    once = ast.For(target=node.target, iter=ast.Name(_ITEM, ast.Load()), body=node.body,
                   orelse=[ast.Assign(targets=[ast.Name(_BROKE, ast.Store())],
                                      value=ast.Constant(False))], type_comment=None)
    ast.copy_location(once, node)
    ast.copy_location(once.orelse[0], node)
    body = compile(ast.fix_missing_locations(ast.Module([once], [])), filename, "exec",
                   flags=flags, dont_inherit=True)
    orelse = None
    if node.orelse:
        orelse = compile(ast.Module(node.orelse, []), filename, "exec", flags=flags,
                         dont_inherit=True)
    whole = ast.For(target=node.target, iter=ast.Name(_ITEM, ast.Load()), body=node.body,
                    orelse=node.orelse, type_comment=None)
    ast.copy_location(whole, node)
    native = compile(ast.fix_missing_locations(ast.Module([whole], [])), filename, "exec",
                     flags=flags, dont_inherit=True)
    call, args, kwargs = _builtin_call(node.iter, filename, flags)
    return LoopCode(iterable, body, orelse, native, call, args, kwargs)


def _builtin_call(expr: ast.expr, filename: str, flags: int
                  ) -> tuple[str | None, tuple[types.CodeType, ...],
                             tuple[tuple[str, types.CodeType], ...]]:
    allowed = {"enumerate": {"start"}, "zip": {"strict"}}
    if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name)
            and expr.func.id in allowed and expr.args
            and not any(isinstance(a, ast.Starred) for a in expr.args)
            and all(k.arg in allowed[expr.func.id] for k in expr.keywords)):
        return None, (), ()

    def code(e: ast.expr) -> types.CodeType:
        return compile(ast.Expression(e), filename, "eval", flags=flags, dont_inherit=True)

    return (expr.func.id, tuple(code(a) for a in expr.args),
            tuple((k.arg, code(k.value)) for k in expr.keywords if k.arg))


def _statements(tree: ast.Module, source: str, filename: str, first: int, where: str,
                display_last: bool) -> list[Statement]:
    flags = _future_flags(tree)
    out = []
    for i, node in enumerate(tree.body):
        code = loop = None
        if isinstance(node, ast.For):
            loop = _compile_loop(node, filename, flags)
        elif display_last and i == len(tree.body) - 1 and isinstance(node, ast.Expr):
            # a notebook shows the value of a cell's last expression, like Jupyter
            code = compile(ast.Interactive([node]), filename, "single", flags=flags,
                           dont_inherit=True)
        else:
            code = compile(ast.Module([node], []), filename, "exec", flags=flags,
                           dont_inherit=True)
        text = ast.get_source_segment(source, node) or ast.unparse(node)
        digest = hashlib.sha256(ast.dump(node).encode()).hexdigest()[:32]
        out.append(Statement(first + len(out), f"{where}line {node.lineno}", digest, text,
                             code, loop, _reads(node), _def_reads(node)))
    return out


def _print_syntax_error(e: SyntaxError) -> None:
    import traceback

    traceback.print_exception(type(e), e, None)


def load_program(path: Path) -> Program:
    """Parse and compile a script or notebook (SyntaxError propagates, like python's)."""
    if path.suffix == ".ipynb":
        return _load_notebook(path)
    with tokenize.open(path) as f:  # honours a coding cookie, like python
        source = f.read()
    filename = str(path)
    tree = ast.parse(source, filename)
    return Program(path, "script", tuple(_statements(tree, source, filename, 1, "", False)),
                   ast.get_docstring(tree, clean=False))


def _load_notebook(path: Path) -> Program:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = [c for c in nb["cells"] if c.get("cell_type") == "code"]
    except (ValueError, KeyError, TypeError) as e:
        raise RunError(f"{path} is not a readable notebook: {e}") from None
    statements: list[Statement] = []
    for n, cell in enumerate(cells, 1):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        filename = f"{path}#cell{n}"
        # tracebacks show the cell's lines, as for a file
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        try:
            tree = ast.parse(source, filename)
        except SyntaxError:
            magic = [ln for ln in source.splitlines() if ln.lstrip().startswith(("%", "!"))]
            if magic:
                raise RunError(f"code cell {n} of {path.name} uses IPython syntax "
                               f"({magic[0].strip()!r}), which `txpy run` cannot execute; run "
                               "the notebook in Jupyter with `%load_ext txpy`") from None
            raise
        show = not source.rstrip().endswith(";")
        statements += _statements(tree, source, filename, len(statements) + 1, f"cell {n}, ",
                                  show)
    return Program(path, "notebook", tuple(statements), None)


# --- loops -----------------------------------------------------------------------------------
_VIEWS = {type({}.keys()): "keys", type({}.values()): "values", type({}.items()): "items"}


@dataclass(frozen=True)
class LoopSource:
    """The iterable of a running top-level loop, kept in the namespace so it is committed with
    (and shares objects with) the state. Only types whose iteration order is a function of
    their committed value are wrapped, so skipping k items after a restore is exact."""

    value: Any  # with combine: the LoopSource (enumerate) or tuple of them (zip) it combines
    view: str | None = None  # iterate value.keys()/values()/items() of a dict
    combine: str | None = None  # "enumerate" | "zip"
    start: int = 0
    strict: bool = False

    @classmethod
    def wrap(cls, iterable: Any) -> LoopSource | None:
        kind = type(iterable)
        if kind in (range, list, tuple, str, bytes, bytearray, dict):
            return cls(iterable)
        if kind in _VIEWS:
            owners = [o for o in gc.get_referents(iterable) if type(o) is dict]
            return cls(owners[0], _VIEWS[kind]) if len(owners) == 1 else None
        for module, names in (("numpy", ("ndarray",)), ("torch", ("Tensor",)),
                              ("pandas", ("Series", "DataFrame", "Index"))):
            lib = sys.modules.get(module)
            if lib is not None and any(kind is getattr(lib, n, None) for n in names):
                return cls(iterable)
        return None

    def iterate(self, skip: int) -> Iterator[Any]:
        if self.combine == "enumerate":
            return enumerate(self.value.iterate(skip), self.start + skip)
        if self.combine == "zip":
            return zip(*(s.iterate(skip) for s in self.value), strict=self.strict)
        it = iter(getattr(self.value, self.view)() if self.view else self.value)
        collections.deque(itertools.islice(it, skip), maxlen=0)
        return it


_first = operator.itemgetter(0)


def _describe(iterable: Any) -> str:
    kind = type(iterable)
    if isinstance(iterable, types.GeneratorType):
        return "a generator"
    if hasattr(iterable, "readline"):
        return "a file"
    if iter(iterable) is iterable:
        return f"an iterator ({kind.__name__})"
    return f"a {kind.__name__}"


# --- where a run stands ----------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    """A commit holding the state at one position of a run.

    Position: statements before ``next`` are done; if ``iters`` > 0, that many iterations of
    loop ``next`` are done too. ``inside``: committed by txpy.checkpoint() in the middle of
    statement ``next`` (iteration ``iters``), which a resume runs again from its start."""

    commit: str
    next: int  # 0-based index of the next statement
    iters: int = 0
    inside: bool = False
    work: float = 0.0  # seconds of the program's work done up to here
    process: dict[str, Any] = field(default_factory=dict)  # cwd, sys.path, environment changes

    @property
    def position(self) -> tuple[int, int, bool]:
        return (self.next, self.iters, self.inside)

    @property
    def slot(self) -> str:
        return f"{self.next}:{'inside' if self.inside else 'iter' if self.iters else 'stmt'}"


@dataclass
class Ledger:
    """What ``<store>/runs/<history>.json`` holds: the program a history last ran, with what
    arguments, and the newest checkpoint per slot (a statement boundary, a loop, a
    txpy.checkpoint() inside a statement). Written only after the commits it names are
    durable, atomically (temp file, fsync, rename)."""

    path: Path
    argv: list[str]
    kind: str
    digests: list[str]
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)
    complete: bool = False

    @classmethod
    def file_for(cls, store: Path, history: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in history)
        tag = hashlib.sha256(history.encode()).hexdigest()[:8]
        return store / "runs" / f"{safe}-{tag}.json"

    @classmethod
    def read(cls, path: Path) -> Ledger | None:
        try:
            raw = json.loads(path.read_text())
            if raw.get("version") != LEDGER_VERSION:
                return None
            return cls(path, raw["argv"], raw["kind"], raw["digests"],
                       {k: Checkpoint(**c) for k, c in raw["checkpoints"].items()},
                       raw["complete"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self) -> None:
        self.path.parent.mkdir(exist_ok=True)
        data = json.dumps({"version": LEDGER_VERSION, "argv": self.argv, "kind": self.kind,
                           "digests": self.digests, "complete": self.complete,
                           "checkpoints": {k: asdict(c) for k, c in self.checkpoints.items()}})
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def drop_after(self, position: tuple[int, int, bool]) -> None:
        self.checkpoints = {k: c for k, c in self.checkpoints.items()
                            if c.position <= position}

    def record(self, c: Checkpoint) -> None:
        self.drop_after(c.position)
        self.checkpoints[c.slot] = c


def _process_state(env0: dict[str, str]) -> dict[str, Any]:
    """Process-wide settings a skipped statement may have changed and a resume must redo."""
    env = os.environ
    return {"cwd": os.getcwd(), "path": list(sys.path),
            "env": {k: v for k, v in env.items() if env0.get(k) != v},
            "unset": sorted(env0.keys() - env.keys())}


def _apply_process_state(state: dict[str, Any]) -> None:
    if not state:
        return
    try:
        os.chdir(state["cwd"])
    except OSError:
        pass
    sys.path[:] = state["path"]
    os.environ.update(state["env"])
    for k in state["unset"]:
        os.environ.pop(k, None)


# --- running ---------------------------------------------------------------------------------
_current: Runner | None = None


def _track_candidates() -> Callable[[types.CodeType, dict[str, Any]], set[str] | None] | None:
    try:
        from ..track import candidates  # type: ignore[attr-defined]
    except ImportError:
        return None
    return candidates


class _Failed(Exception):
    """A statement raised; carries the exception and the statement."""

    def __init__(self, error: BaseException, statement: Statement):
        self.error, self.statement = error, statement


class Runner:
    """Runs a Program in a Session, committing at boundaries and recording checkpoints."""

    def __init__(self, program: Program, session: Session, ledger: Ledger,
                 commit_interval: float, notify: Callable[[str], None]):
        self.program = program
        self.session = session
        self.namespace = session.namespace
        self.ledger = ledger
        self.interval = commit_interval
        self.notify = notify
        self._track = _track_candidates()
        self._env0 = dict(os.environ)
        self._cand: set[str] | None = set()
        self._codes: list[str] = []
        self._noted: set[object] = set()
        self._commits = 0
        self._commit_seconds = 0.0
        self._last_commit_cost = 0.0
        self._started = time.perf_counter()
        self._since = self._started  # end of the last commit
        self._work0 = 0.0
        self._position: tuple[int, int] = (0, 0)  # statement index, iteration
        self._loop_resumable = False
        self._counter: itertools.count[int] | None = None
        self._warned: set[str] = set()
        self.has_base = False  # HEAD holds a state of this run (restored or committed)
        self._running: tuple[types.CodeType | None, str] = (None, "")  # code executing now

    # work accounting
    @property
    def work(self) -> float:
        return self._work0 + time.perf_counter() - self._started - self._commit_seconds

    def _note_code(self, code: types.CodeType | None, text: str) -> None:
        """Remember what ran since the last commit: its text, and the names it may touch
        (each code object once per commit: loops note their body again at every chunk)."""
        key = id(code) if code is not None else text
        if key in self._noted:
            return
        self._noted.add(key)
        if not self._codes or self._codes[-1] != text:
            self._codes.append(text)
        if self._cand is None:
            return
        found = None if self._track is None or code is None else self._track(code,
                                                                             self.namespace)
        if found is None:
            self._cand = None
        else:
            self._cand |= set(found)

    # committing
    def _due(self) -> bool:
        if self.interval <= 0:
            return True
        wait = max(self.interval, _OVERHEAD_FACTOR * self._last_commit_cost)
        return time.perf_counter() - self._since >= wait

    def commit(self, next_index: int, iters: int = 0, *, inside: bool = False,
               full: bool = False, message: str | None = None) -> str | None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()  # output of committed work is never lost with the process
            except Exception:
                pass
        started = time.perf_counter()
        self._commits += 1
        cand = self._cand
        if full or self._commits % _FULL_SWEEP_EVERY == 0:
            cand = None
        if message is None:
            message = self._message(next_index, iters)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", TxpyWarning)
                cid = self.session.commit(message, kind="stmt", code="\n".join(self._codes),
                                          candidates=cand, duration=started - self._since)
            self._relay(caught)
        except AssertionError:  # verify mode found a missed change: a bug, never hidden
            raise
        except Exception as e:  # never fail the user's program because a commit failed
            self.notify(f"could not commit ({type(e).__name__}: {e}); the run goes on and the "
                        "next boundary tries again")
            return None
        finally:
            cost = time.perf_counter() - started
            self._commit_seconds += cost
            if self._commits > 1:  # the first one pays one-time costs of the process
                self._last_commit_cost = cost
        self.ledger.record(Checkpoint(cid, next_index, iters, inside, round(self.work, 6),
                                      _process_state(self._env0)))
        self.ledger.save()
        self._commit_seconds += time.perf_counter() - started - cost
        self._since = time.perf_counter()
        self._cand, self._codes, self._noted = set(), [], set()
        self.has_base = True
        return cid

    def _relay(self, caught: list[warnings.WarningMessage]) -> None:
        """The session's warnings as one clean line each (not pointing into txpy's code)."""
        for w in caught:
            if issubclass(w.category, TxpyWarning):
                text = str(w.message)
                if text not in self._warned:
                    self._warned.add(text)
                    self.notify(text)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)

    def _message(self, next_index: int, iters: int) -> str:
        name = self.program.path.name
        if iters:
            s = self.program.statements[next_index]
            return f"{name}: statement {s.number} ({s.where}), iteration {iters}"
        if next_index == 0:
            return f"{name}: start"
        s = self.program.statements[next_index - 1]
        return f"{name}: after statement {s.number} ({s.where})"

    def checkpoint(self, message: str) -> str | None:
        index, iters = self._position
        if not self._loop_resumable:
            iters = 0
        elif self._counter is not None:  # items the running chunk took, this one included
            iters += int(repr(self._counter)[6:-1]) - 1
        s = self.program.statements[index]
        text = message or f"{self.program.path.name}: txpy.checkpoint() in statement {s.number}"
        cid = self.commit(index, iters, inside=True, message=text)
        # the statement goes on after this commit: what it touches from here on is the next
        # commit's to examine
        self._note_code(*self._running)
        return cid

    # executing
    def run(self, start: Checkpoint | None) -> None:
        """Run from start (None: the beginning), committing at boundaries; raise _Failed."""
        statements = self.program.statements
        first, skip, resuming = 0, 0, False
        if start is not None:
            first, skip, resuming = start.next, start.iters, True
            self._work0 = start.work
        for index in range(first, len(statements)):
            s = statements[index]
            self._position = (index, 0)
            try:
                if s.loop is not None:
                    self._run_loop(index, s, skip, resuming and index == first)
                else:
                    self._running = (s.code, s.source)
                    self._note_code(s.code, s.source)
                    exec(s.code, self.namespace)  # noqa: S102
            except BaseException as e:
                raise _Failed(e, s) from None
            if self._due():
                self.commit(index + 1)
        self.commit(len(statements), full=True)

    def _evaluate(self, loop: LoopCode) -> tuple[Any, LoopSource | None, Any]:
        """The loop's iterable, evaluated as python would; its LoopSource if resumable, else
        the part of it that is not."""
        ns = self.namespace
        builtin = getattr(builtins, loop.call) if loop.call else None
        if builtin is None or ns.get(loop.call, builtin) is not builtin:  # type: ignore[arg-type]
            iterable = eval(loop.iterable, ns)  # noqa: S307
            return iterable, LoopSource.wrap(iterable), iterable
        args = [eval(c, ns) for c in loop.args]  # noqa: S307
        kwargs = {k: eval(c, ns) for k, c in loop.kwargs}  # noqa: S307
        iterable = builtin(*args, **kwargs)
        inner = args if loop.call == "zip" else args[:1]
        parts = [LoopSource.wrap(a) for a in inner]
        for a, p in zip(inner, parts, strict=True):
            if p is None:
                return iterable, None, a
        if loop.call == "enumerate":
            start = args[1] if len(args) > 1 else kwargs.get("start", 0)
            return iterable, LoopSource(parts[0], combine="enumerate", start=start), None
        return iterable, LoopSource(tuple(parts), combine="zip",
                                    strict=bool(kwargs.get("strict", False))), None

    def _run_loop(self, index: int, s: Statement, skip: int, resuming: bool) -> None:
        ns = self.namespace
        loop = s.loop
        assert loop is not None
        source = ns.get(LOOP_NAME) if resuming else None
        if not isinstance(source, LoopSource):
            skip = 0
            self._note_code(loop.iterable, s.source)
            iterable, source, culprit = self._evaluate(loop)
            if source is None:
                ns.pop(LOOP_NAME, None)
                self.notify(f"the loop at {s.where} iterates over {_describe(culprit)}, whose "
                            "position cannot be restored: it is committed when it ends, and a "
                            "resume runs it again from its start")
                del culprit
                self._running = (loop.native, s.source)
                self._note_code(loop.native, s.source)
                ns[_ITEM] = iterable
                del iterable
                try:  # python runs it as it is, at full speed
                    exec(loop.native, ns)  # noqa: S102
                finally:
                    ns.pop(_ITEM, None)
                return
            del iterable, culprit
            ns[LOOP_NAME] = source
        it = source.iterate(skip)
        done, size = skip, 1
        self._loop_resumable = True
        try:
            while True:
                # a chunk of iterations runs natively (break/continue/target as python does);
                # zip counts how many items it took, in C, so tracebacks stay the user's
                counter = itertools.count()
                ns[_ITEM] = map(_first, zip(itertools.islice(it, size), counter, strict=False))
                ns[_BROKE] = True
                self._position, self._counter = (index, done), counter
                self._running = (loop.body, s.source)
                self._note_code(loop.body, s.source)
                started = time.perf_counter()
                try:
                    exec(loop.body, ns)  # noqa: S102
                finally:
                    ns.pop(_ITEM, None)
                    broke = ns.pop(_BROKE, True)
                took = time.perf_counter() - started
                count = next(counter)
                done += count
                if broke:
                    break
                if count < size:  # the iterable is exhausted
                    if loop.orelse is not None:
                        self._running = (loop.orelse, s.source)
                        self._note_code(loop.orelse, s.source)
                        exec(loop.orelse, ns)  # noqa: S102
                    break
                if self._due():
                    self.commit(index, done)
                size = self._chunk_size(size, took / max(count, 1))
        finally:
            self._loop_resumable = False
            self._counter = None
        ns.pop(LOOP_NAME, None)

    def _chunk_size(self, size: int, per_item: float) -> int:
        """Iterations per native chunk: one when every iteration may commit; else as many as
        fill a small share of the commit interval (doubling at most, so a slow iteration
        after fast ones does not delay a commit much)."""
        if self.interval <= 0:
            return 1
        target = min(_CHUNK_SECONDS, self.interval / 10)
        return max(1, min(size * 2, int(target / per_item) if per_item > 0 else size * 2))


# --- choosing where to resume ----------------------------------------------------------------
def _usable(session: Session, program: Program, c: Checkpoint,
            notify: Callable[[str], None]) -> bool:
    """Whether the state at c can be restored and run on from: its commit exists in this
    history, a mid-loop position has its loop stored, and nothing the rest needs is unstored."""
    try:
        commit = session.repo.commit(c.commit)
        tree: Tree = session.repo.tree(commit)
    except TxpyError as e:
        notify(f"ignoring checkpoint {c.commit[:12]}: {e}")
        return False
    if commit.history != session.name:
        return False
    where = _describe_position(program, c)
    if c.iters and LOOP_NAME not in tree.components:
        notify(f"cannot resume {where}: the loop's iterable was not stored")
        return False
    needed = program.needed_from(c.next)
    missing = sorted(n for n in tree.unstored if n != LOOP_NAME
                     and (needed is None or n in needed))
    if missing:
        names = ", ".join(f"{n} ({tree.unstored[n].type_name})" for n in missing)
        notify(f"cannot resume {where}: {names} could not be stored and the rest of the "
               "program uses it; going back to an earlier point")
        return False
    return True


def _describe_position(program: Program, c: Checkpoint) -> str:
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


def _resume_points(session: Session, program: Program, ledger: Ledger, prefix: int,
                   notify: Callable[[str], None]) -> Iterator[Checkpoint]:
    """Usable checkpoints within the unchanged prefix of statements, newest first."""
    def valid(c: Checkpoint) -> bool:
        # a mid-statement position needs that statement unchanged too
        return c.next < prefix if (c.iters or c.inside) else c.next <= prefix

    for c in sorted(ledger.checkpoints.values(), key=lambda c: c.position, reverse=True):
        if valid(c) and _usable(session, program, c, notify):
            yield c


def _restore(session: Session, c: Checkpoint, notify: Callable[[str], None]) -> None:
    head = session.head
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TxpyWarning)
        session.restore(None if head is not None and head.id == c.commit else c.commit)
    for w in caught:
        notify(str(w.message))
    _apply_process_state(c.process)


# --- the command -----------------------------------------------------------------------------
def history_name(script: Path, store: Path) -> str:
    rel = os.path.relpath(script, store.parent)
    return Path(script).as_posix() if rel.startswith("..") else Path(rel).as_posix()


def _store_for(store: str | os.PathLike[str] | None) -> Path:
    if store is not None:
        return Path(store).resolve()
    try:
        return find_store(Path.cwd())
    except TxpyError:
        return Path.cwd() / STORE_DIR


def run(script: str | os.PathLike[str], args: Iterable[str] = (), *,
        store: str | os.PathLike[str] | None = None, fresh: bool = False,
        commit_interval: float = 2.0, notify: Callable[[str], None] = default_notify) -> int:
    """Run a script or notebook durably (see the module docstring); return the exit status."""
    given = str(script)
    path = Path(script).resolve()
    if not path.is_file():
        raise RunError(f"can't open file {given!r}: no such file")
    try:
        program = load_program(path)
    except SyntaxError as e:
        _print_syntax_error(e)
        return 1
    args = list(args)
    store_path = _store_for(store)
    history = history_name(path, store_path)

    module = types.ModuleType("__main__", program.doc)
    ns = module.__dict__
    ns.update(__file__=str(path), __builtins__=builtins, __cached__=None)
    saved = (sys.argv, list(sys.path), sys.modules.get("__main__"))
    sys.argv = [given, *args]
    sys.path[0:0] = [str(Path(os.path.realpath(path)).parent)]
    sys.modules["__main__"] = module
    session = Session(store_path, history, ns, notify=notify,
                      ignore=lambda n: is_dunder(n) and n != LOOP_NAME)
    global _current
    runner = None
    try:
        ledger_path = Ledger.file_for(session.repo.path, history)
        old = None if fresh else Ledger.read(ledger_path)
        ledger = Ledger(ledger_path, args, program.kind, program.digests)
        start = None
        if old is not None and old.argv == args and old.kind == program.kind:
            prefix = _common_prefix(old.digests, program.digests)
            unchanged = prefix == len(program.statements) == len(old.digests)
            for c in _resume_points(session, program, old, prefix, notify):
                if unchanged and old.complete and c.next == len(program.statements):
                    notify(f"{given} already ran to completion with these arguments (commit "
                           f"{c.commit[:12]}); nothing to do — use --fresh to run it again")
                    return 0
                try:
                    _restore(session, c, notify)
                except TxpyError as e:
                    notify(f"cannot restore the state {_describe_position(program, c)} ({e}); "
                           "going back to an earlier point")
                    for name in [n for n in ns if not is_dunder(n) or n == LOOP_NAME]:
                        del ns[name]
                    continue
                start = c
                ledger.checkpoints = dict(old.checkpoints)
                ledger.drop_after(start.position)
                break
            if start is None and old.checkpoints:
                notify("no earlier state of this run can be used; starting from the beginning")
        elif old is not None and old.argv != args:
            notify("the arguments differ from the last run's; starting from the beginning")
        runner = Runner(program, session, ledger, commit_interval, notify)
        if start is not None:
            notify(f"resumed {_describe_position(program, start)}, skipped "
                   f"{start.work:.1f} s of work")
            if start.inside:
                s = program.statements[start.next]
                notify(f"statement {s.number} ({s.where}) runs again from its start with the "
                       "globals of its last txpy.checkpoint()")
        else:
            # nothing of this run is committed before its first boundary: a failure there
            # leaves the store as it was, and a resume starts from the beginning
            ledger.checkpoints = {}
        runner.has_base = start is not None
        ledger.save()  # a --fresh or edited run that dies early must not resume the old one
        _current = runner
        try:
            runner.run(start)
        except _Failed as failed:
            return _report_failure(runner, failed)
        ledger.complete = True
        ledger.save()
        return 0
    finally:
        _current = None
        session.close()
        sys.argv = saved[0]
        sys.path[:] = saved[1]
        if saved[2] is not None:
            sys.modules["__main__"] = saved[2]


def _rollback(runner: Runner) -> list[str] | None:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TxpyWarning)
            restored = runner.session.rollback()
        runner._relay(caught)
        return restored
    except Exception as err:
        runner.notify(f"could not roll back ({type(err).__name__}: {err}); the store still "
                      "holds the last commit, which a resume starts from")
        return None


def _report_failure(runner: Runner, failed: _Failed) -> int:
    e = failed.error
    if isinstance(e, SystemExit) and e.code in (None, 0):
        # a successful sys.exit() ends the program like its last statement
        runner.commit(failed.statement.number, full=True)
        runner.ledger.complete = True
        runner.ledger.save()
        return 0
    if not runner.has_base:
        runner.notify("the run failed before its first commit; the store is unchanged")
        restored = None
    else:
        restored = _rollback(runner)
    if restored is not None:
        s = failed.statement
        what = ", ".join(restored) if restored else "nothing had changed"
        runner.notify(f"statement {s.number} ({s.where}) failed; rolled back to the last "
                      f"commit: {what}")
    if isinstance(e, SystemExit):
        code = e.code
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    sys.excepthook(type(e), e.with_traceback(tb), tb)
    return 130 if isinstance(e, KeyboardInterrupt) else 1


# --- inside the program ----------------------------------------------------------------------
def checkpoint(message: str = "") -> str | None:
    """Commit the script's globals now, from inside a function or a long statement.

    Under ``txpy run``: returns the commit id. If the process dies later, the next run
    restores these globals and runs the interrupted top-level statement (or loop iteration)
    again **from its start**; code that calls checkpoint() must therefore continue from what
    the globals say (e.g. keep the epoch counter in a global). Local variables of functions
    are not stored. Elsewhere it does nothing but warn, and returns None.
    """
    runner = _current
    if runner is None:
        warnings.warn("txpy.checkpoint() does nothing outside `txpy run`", TxpyWarning,
                      stacklevel=2)
        return None
    return runner.checkpoint(message)


__all__ = ["Checkpoint", "Ledger", "LoopSource", "Program", "RunError", "Runner", "checkpoint",
           "history_name", "load_program", "run"]
