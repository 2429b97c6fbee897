"""`txpy demo`: a scripted tour on a tiny logistic-regression model (pure Python)."""

from __future__ import annotations

import sys
import tempfile
import textwrap
from pathlib import Path

from rich.console import Console

from . import load, porcelain
from .cli import echo
from .humanize import wrap
from .session import Session

CELLS = [
    ("make data and a model", """
        import random
        random.seed(0)
        X = [[random.gauss(0, 1), random.gauss(0, 1)] for _ in range(200)]
        y = [1 if a + 2 * b > 0 else 0 for a, b in X]
        w = [0.0, 0.0]
        history = []
    """),
    ("train 20 epochs", """
        import math
        def step(lr):
            grad = [0.0, 0.0]
            for (a, b), t in zip(X, y):
                p = 1 / (1 + math.exp(-(w[0] * a + w[1] * b)))
                grad[0] += (p - t) * a
                grad[1] += (p - t) * b
            for i in range(2):
                w[i] -= lr * grad[i] / len(X)
            return sum((1 / (1 + math.exp(-(w[0] * a + w[1] * b))) > 0.5) == t
                       for (a, b), t in zip(X, y)) / len(X)
        for _ in range(20):
            history.append(step(0.5))
    """),
    ("train 20 more epochs", """
        for _ in range(20):
            history.append(step(0.5))
    """),
]

FAILING_CELL = """
    history.append(step(50.0))      # a bad learning rate wrecks w ...
    raise FloatingPointError("loss diverged")   # ... and the step fails
"""


def run(directory: Path | None, console: Console) -> None:
    """The tour, in lines that fit 80 columns (porcelain's listings and short narration)."""
    root = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="txpy-demo-"))
    store = root / ".txpy"
    console.print(f"[bold]txpy demo[/bold] — store in {store}\n")
    ns: dict[str, object] = {}
    with Session(store=store, name="demo", namespace=ns,
                 notify=lambda m: echo(wrap(f"txpy: {m}".split()))) as s:
        commits = _train(s, ns, console)
        _fail(s, ns, console)
        s.wait()
        console.print("\n[bold]txpy log[/bold]")
        echo(porcelain.log(s.repo, "demo", title=False))
        console.print(f"\n[bold]txpy diff[/bold] {commits[0][:12]} {commits[-1][:12]}")
        echo(porcelain.diff(s.repo, "demo", commits[0], commits[-1]))
        _checkout(s, ns, console, commits[0])
    state = load(store, "demo")
    console.print("\n[bold]txpy.load[/bold] in a fresh dict brings back:")
    echo(wrap(sorted(n for n in state if not n.startswith("__")), lead="   ", sep=","))
    console.print(f"and the restored step() still trains: accuracy {state['step'](0.5):.2f}")
    txpy = Path(sys.executable).with_name("txpy")
    console.print(f"\nTry:\n  cd {root}\n  {txpy} log\n  {txpy} shell HEAD")


def _train(s: Session, ns: dict[str, object], console: Console) -> list[str]:
    commits = []
    for title, cell in CELLS:
        code = textwrap.dedent(cell)
        exec(code, ns)
        commits.append(s.commit(title, kind="cell", code=code))
        console.print(f"[green]committed[/green] {commits[-1][:12]}  {title}:")
        console.print(f"    w = {_fmt(ns['w'])}, {len(ns['history'])} epochs")
    return commits


def _fail(s: Session, ns: dict[str, object], console: Console) -> None:
    console.print("\n[bold]A failing step inside a transaction is rolled back:[/bold]")
    try:
        with s.transaction():
            exec(textwrap.dedent(FAILING_CELL), ns)
    except FloatingPointError as e:
        console.print(f"  the cell raised {e!r}")
        console.print(f"  w is still {_fmt(ns['w'])}, "
                      f"{len(ns['history'])} epochs in history")


def _checkout(s: Session, ns: dict[str, object], console: Console, first: str) -> None:
    console.print(f"\n[bold]checkout[/bold] {first[:12]} (before training):")
    s.checkout(first)
    console.print(f"  w = {_fmt(ns['w'])}, history = {ns['history']}, "
                  f"'step' defined: {'step' in ns}")
    s.checkout("main")
    console.print(f"  back on main: w = {_fmt(ns['w'])}, "
                  f"{len(ns['history'])} epochs")


def _fmt(w: object) -> str:
    return "[" + ", ".join(f"{x:.3f}" for x in w) + "]"  # type: ignore[attr-defined]
