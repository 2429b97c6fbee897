"""Where a run stands: the ledger ``<store>/runs/<history>.json``.

It holds the statement hashes of the program a history last ran, its arguments, and for each
position the commit holding the state there, with the process-wide settings (working
directory, sys.path, environment) a resume must redo because the statements that made them
do not run again. It is written atomically, and only after the commits it names are durable.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LEDGER_VERSION = 1


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
    process: dict[str, Any] = field(default_factory=dict)  # see process_state

    @property
    def position(self) -> tuple[int, int, bool]:
        return (self.next, self.iters, self.inside)

    @property
    def slot(self) -> str:
        return f"{self.next}:{'inside' if self.inside else 'iter' if self.iters else 'stmt'}"


@dataclass
class Ledger:
    """What the ledger file holds: the program a history last ran, with what arguments, and
    the newest checkpoint per slot (a statement boundary, a loop, a txpy.checkpoint() inside
    a statement)."""

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
        """The ledger at path; None if there is none or it cannot be read (start afresh)."""
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
        """Write it atomically: a crash leaves the old ledger or the new one, never a mix."""
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

    def continue_from(self, old: Ledger, position: tuple[int, int, bool]) -> None:
        """This run resumes old's at position: its checkpoints up to there still hold."""
        self.checkpoints = dict(old.checkpoints)
        self._drop_after(position)

    def record(self, c: Checkpoint) -> None:
        """c is the newest position: later ones (of an earlier run) no longer hold."""
        self._drop_after(c.position)
        self.checkpoints[c.slot] = c

    def _drop_after(self, position: tuple[int, int, bool]) -> None:
        self.checkpoints = {k: c for k, c in self.checkpoints.items()
                            if c.position <= position}


def process_state(env0: dict[str, str]) -> dict[str, Any]:
    """Process-wide settings a skipped statement may have changed and a resume must redo
    (env0: the environment when the run started)."""
    env = os.environ
    return {"cwd": os.getcwd(), "path": list(sys.path),
            "env": {k: v for k, v in env.items() if env0.get(k) != v},
            "unset": sorted(env0.keys() - env.keys())}


def apply_process_state(state: dict[str, Any]) -> None:
    """Redo what process_state recorded."""
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
