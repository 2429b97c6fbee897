"""The ``txpy run`` command: set the program up as ``__main__``, resume or start it, and end
as python would (exit status, traceback) after a failure, rolled back."""

from __future__ import annotations

import builtins
import os
import sys
import traceback
import types
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ...repo import store_for
from ...session import Session, default_notify, is_dunder
from .ledger import Checkpoint, Ledger
from .loops import LOOP_NAME
from .program import Program, RunError, load_program
from .resume import choose_start, describe_position
from .runner import Failed, Runner

_PACKAGE = os.path.dirname(__file__)  # as code objects of its modules name their file


def script_history(script: Path, store: Path) -> str:
    """The history a script's runs commit to: its path relative to the store's directory
    (absolute if it lies outside), so the same script finds its runs from any directory."""
    rel = os.path.relpath(script, store.parent)
    return Path(script).as_posix() if rel.startswith("..") else Path(rel).as_posix()


def run(script: str | os.PathLike[str], args: Iterable[str] = (), *,
        store: str | os.PathLike[str] | None = None, fresh: bool = False,
        commit_interval: float = 2.0, notify: Callable[[str], None] = default_notify) -> int:
    """Run a script or notebook durably (see the package docstring); return the exit status."""
    given = str(script)
    path = Path(script).resolve()
    if not path.is_file():
        raise RunError(f"can't open file {given!r}: no such file")
    try:
        program = load_program(path)
    except SyntaxError as e:
        traceback.print_exception(type(e), e, None)
        return 1
    argv = list(args)
    store_path = Path(store).resolve() if store is not None else store_for(Path.cwd())
    with _as_main(program, given, argv) as ns:
        session = Session(store_path, script_history(path, store_path), ns, notify=notify,
                          ignore=lambda n: is_dunder(n) and n != LOOP_NAME)
        try:
            return _run_in(session, program, given, argv, fresh, commit_interval)
        finally:
            session.close()


@contextmanager
def _as_main(program: Program, given: str, argv: list[str]) -> Iterator[dict[str, Any]]:
    """The namespace of a fresh ``__main__`` module for the program, with sys.argv, sys.path
    and sys.modules as python sets them for a script, put back afterwards."""
    module = types.ModuleType("__main__", program.doc)
    ns = module.__dict__
    ns.update(__file__=str(program.path), __builtins__=builtins, __cached__=None)
    saved = (sys.argv, list(sys.path), sys.modules.get("__main__"))
    sys.argv = [given, *argv]
    sys.path[0:0] = [str(Path(os.path.realpath(program.path)).parent)]
    sys.modules["__main__"] = module
    try:
        yield ns
    finally:
        sys.argv = saved[0]
        sys.path[:] = saved[1]
        if saved[2] is not None:
            sys.modules["__main__"] = saved[2]


def _run_in(session: Session, program: Program, given: str, argv: list[str], fresh: bool,
            commit_interval: float) -> int:
    ledger_path = Ledger.file_for(session.repo.path, session.name)
    old = None if fresh else Ledger.read(ledger_path)
    environ = dict(os.environ)  # the settings a resume redoes must be recorded again
    start = choose_start(session, program, old, argv)
    c = start.checkpoint
    if start.finished:
        assert c is not None
        session.notify(f"{given} already ran to completion with these arguments (commit "
                       f"{c.commit[:12]}); nothing to do — use --fresh to run it again")
        return 0
    # without a checkpoint, nothing of this run is committed before its first boundary: a
    # failure there leaves the store as it was, and a resume starts from the beginning
    ledger = Ledger(ledger_path, argv, program.kind, program.digests)
    if c is not None:
        assert old is not None
        ledger.continue_from(old, c.position)
        _say_resumed(session, program, c)
    runner = Runner(program, session, ledger, commit_interval, c, environ)
    ledger.save()  # a --fresh or edited run that dies early must not resume the old one
    try:
        runner.run()
    except Failed as failed:
        return _failed(runner, failed)
    return 0


def _say_resumed(session: Session, program: Program, c: Checkpoint) -> None:
    session.notify(f"resumed {describe_position(program, c)}, skipped {c.work:.1f} s of work")
    if c.inside:
        s = program.statements[c.next]
        session.notify(f"statement {s.number} ({s.where}) runs again from its start with the "
                       "globals of its last txpy.checkpoint()")


def _failed(runner: Runner, failed: Failed) -> int:
    """End the run after a statement raised, as python would end the script; the status."""
    e = failed.error
    if isinstance(e, SystemExit) and e.code in (None, 0):
        # a successful sys.exit() ends the program like its last statement
        runner.finish(failed.statement.number)
        return 0
    runner.rollback(failed)
    if isinstance(e, SystemExit):
        if isinstance(e.code, int):
            return e.code
        print(e.code, file=sys.stderr)
        return 1
    tb = e.__traceback__
    while tb is not None and os.path.dirname(tb.tb_frame.f_code.co_filename) == _PACKAGE:
        tb = tb.tb_next  # the user's traceback starts where their code does
    sys.excepthook(type(e), e.with_traceback(tb), tb)
    return 130 if isinstance(e, KeyboardInterrupt) else 1
