"""The program a run executes: a script or a notebook's code cells as top-level statements,
each compiled once, with the global names it may read (to judge on resume whether a
checkpoint holds everything the rest of the program needs)."""

from __future__ import annotations
import __future__

import ast
import hashlib
import json
import linecache
import tokenize
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...errors import TxpyError
from ...track import DYNAMIC_NAMES

#: a chunk of a loop's iterations: the body runs as ``for TARGET in __txpy_item__: BODY``
ITEM = "__txpy_item__"
#: set to False by that chunk's ``else``, i.e. when it ran without ``break``
BROKE = "__txpy_broke__"

#: compile() with a file's name and __future__ flags: (tree, mode) -> code
_Compile = Callable[[ast.mod, str], types.CodeType]


class RunError(TxpyError):
    """A script or notebook cannot be run or resumed as asked; the message says why."""


@dataclass(frozen=True)
class LoopCode:
    """A top-level ``for`` loop, compiled in parts so the runner drives its iterations."""

    iterable: types.CodeType  # eval: the iterable expression
    body: types.CodeType  # exec with ITEM = an iterator of items: runs them as the loop would
    orelse: types.CodeType | None
    native: types.CodeType  # the whole loop over ITEM, for iterables not resumed
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


def _statements(tree: ast.Module, source: str, filename: str, first: int, where: str,
                display_last: bool) -> list[Statement]:
    flags = _future_flags(tree)

    def compiled(node: ast.mod, mode: str) -> types.CodeType:
        return compile(node, filename, mode, flags=flags, dont_inherit=True)

    out = []
    for i, node in enumerate(tree.body):
        code = loop = None
        if isinstance(node, ast.For):
            loop = _compile_loop(node, compiled)
        elif display_last and i == len(tree.body) - 1 and isinstance(node, ast.Expr):
            # a notebook shows the value of a cell's last expression, like Jupyter
            code = compiled(ast.Interactive([node]), "single")
        else:
            code = compiled(ast.Module([node], []), "exec")
        text = ast.get_source_segment(source, node) or ast.unparse(node)
        digest = hashlib.sha256(ast.dump(node).encode()).hexdigest()[:32]
        out.append(Statement(first + len(out), f"{where}line {node.lineno}", digest, text,
                             code, loop, _reads(node), _def_reads(node)))
    return out


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
    """Global names node may read; None if it can reach the whole namespace (one of
    track.DYNAMIC_NAMES, the same list commits use, or sys.modules)."""
    names: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            if not isinstance(n.ctx, ast.Store):
                names.add(n.id)
        elif isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name):
            names.add(n.target.id)
        elif isinstance(n, ast.Attribute) and (n.attr in DYNAMIC_NAMES or (
                n.attr == "modules" and isinstance(n.value, ast.Name) and n.value.id == "sys")):
            return None
        elif isinstance(n, ast.ImportFrom) and n.module in DYNAMIC_NAMES:
            return None  # from __main__ import x
    return None if names & DYNAMIC_NAMES else frozenset(names)


def _def_reads(node: ast.AST) -> frozenset[str] | None:
    names: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            inner = _reads(n)
            if inner is None:
                return None
            names |= inner
    return frozenset(names)


def _compile_loop(node: ast.For, compiled: _Compile) -> LoopCode:
    def loop_over_item(orelse: list[ast.stmt]) -> types.CodeType:
        loop = ast.copy_location(ast.For(target=node.target, iter=ast.Name(ITEM, ast.Load()),
                                         body=node.body, orelse=orelse, type_comment=None), node)
        return compiled(ast.fix_missing_locations(ast.Module([loop], [])), "exec")

    # a chunk of iterations runs with the loop's own semantics: target unpacking, `continue`,
    # and `break` (which skips the chunk's else, so BROKE stays True)
    not_broken = ast.Assign(targets=[ast.Name(BROKE, ast.Store())], value=ast.Constant(False))
    body = loop_over_item([ast.copy_location(not_broken, node)])
    orelse = compiled(ast.Module(node.orelse, []), "exec") if node.orelse else None
    call, args, kwargs = _builtin_call(node.iter, compiled)
    return LoopCode(compiled(ast.Expression(node.iter), "eval"), body, orelse,
                    loop_over_item(node.orelse), call, args, kwargs)


def _builtin_call(expr: ast.expr, compiled: _Compile
                  ) -> tuple[str | None, tuple[types.CodeType, ...],
                             tuple[tuple[str, types.CodeType], ...]]:
    allowed = {"enumerate": {"start"}, "zip": {"strict"}}
    if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name)
            and expr.func.id in allowed and expr.args
            and not any(isinstance(a, ast.Starred) for a in expr.args)
            and all(k.arg in allowed[expr.func.id] for k in expr.keywords)):
        return None, (), ()
    return (expr.func.id, tuple(compiled(ast.Expression(a), "eval") for a in expr.args),
            tuple((k.arg, compiled(ast.Expression(k.value), "eval"))
                  for k in expr.keywords if k.arg))
