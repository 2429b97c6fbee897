"""`txpy run script.py | notebook.ipynb`: top-level statements are transactions; a crashed run
resumes after its last commit.

* The script runs as ``__main__`` in a real module whose ``__dict__`` is the session's
  namespace. Each top-level statement is compiled once and executed on its own
  (:mod:`.program`); small consecutive statements are grouped so a commit happens at most
  every ``commit_interval`` seconds of work (0: at every boundary) (:mod:`.runner`).
* A top-level ``for`` loop is run by the runner: each iteration is a boundary, and a loop
  over an iterable whose position can be restored resumes mid-loop (:mod:`.loops`).
* Where a run stands is kept in a small ledger, ``<store>/runs/<history>.json``, written
  atomically after each commit is durable (:mod:`.ledger`). A resume uses only ledger
  entries whose commits exist in the store (signed and verified), restores the newest one
  within the unchanged prefix of the program, and runs on from there (:mod:`.resume`).
* A checkpoint whose state lacks a value the rest of the program reads (it could not be
  stored: a generator, a socket) is skipped for an earlier one, back to the beginning if need
  be: a resume re-runs what is needed rather than continue without it.
* Process-wide settings are redone on resume: working directory, sys.path and environment
  variables the program changed. Others (logging/warnings configuration, torch thread counts,
  open files) are not: statements before the resume point do not run again.
* ``txpy.checkpoint()`` commits from inside a statement (a ``main()`` call, a ``while`` loop);
  a resume restores those globals and runs that statement again from its start.
* A failing statement is rolled back and reported as python would (traceback, exit status);
  the command is :func:`run` (:mod:`.command`).
"""

from .command import run, script_history
from .ledger import Checkpoint, Ledger
from .loops import LoopSource
from .program import Program, RunError, load_program
from .runner import Runner, checkpoint

__all__ = ["Checkpoint", "Ledger", "LoopSource", "Program", "RunError", "Runner", "checkpoint",
           "load_program", "run", "script_history"]
