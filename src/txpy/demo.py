"""`txpy demo`: a scripted tour on a tiny logistic-regression model (pure Python)."""

from __future__ import annotations

import sys
import tempfile
import textwrap
from pathlib import Path

from rich.console import Console

from . import load
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
    root = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="txpy-demo-"))
    store = root / ".txpy"
    console.print(f"[bold]txpy demo[/bold] — store in {store}\n")
    ns: dict[str, object] = {}
    commits = []
    with Session(store=store, name="demo", namespace=ns,
                 notify=lambda m: console.print(f"[yellow]txpy: {m}[/yellow]")) as s:
        for title, cell in CELLS:
            code = textwrap.dedent(cell)
            exec(code, ns)
            commits.append(s.commit(title, kind="cell", code=code))
            console.print(f"[green]committed[/green] {commits[-1][:12]}  {title}: "
                          f"w = {_fmt(ns['w'])}, {len(ns['history'])} epochs")

        console.print("\n[bold]A failing step inside a transaction is rolled back:[/bold]")
        try:
            with s.transaction():
                exec(textwrap.dedent(FAILING_CELL), ns)
        except FloatingPointError as e:
            console.print(f"  the cell raised {e!r}; w is still {_fmt(ns['w'])}, "
                          f"{len(ns['history'])} epochs in history")

        console.print("\n[bold]log[/bold]")
        for c in s.log():
            console.print(f"  {c.short}  {c.kind:5} {c.message}")
        d = s.diff(commits[0], commits[-1])
        console.print(f"\n[bold]diff[/bold] {commits[0][:12]} → {commits[-1][:12]}: "
                      f"added {list(d.added)}, changed {list(d.changed)}")

        console.print(f"\n[bold]checkout[/bold] {commits[0][:12]} (before training):")
        s.checkout(commits[0])
        console.print(f"  w = {_fmt(ns['w'])}, history = {ns['history']}, "
                      f"'step' defined: {'step' in ns}")
        s.checkout("main")
        console.print(f"  back on main: w = {_fmt(ns['w'])}, {len(ns['history'])} epochs")

    state = load(store, "demo")
    names = sorted(n for n in state if not n.startswith("__"))
    console.print(f"\n[bold]txpy.load[/bold] in a fresh dict: names {names}; "
                  f"the restored step() still trains: accuracy {state['step'](0.5):.2f}")
    txpy = Path(sys.executable).with_name("txpy")
    console.print(f"\nTry: cd {root} && {txpy} log && {txpy} shell HEAD")


def _fmt(w: object) -> str:
    return "[" + ", ".join(f"{x:.3f}" for x in w) + "]"  # type: ignore[attr-defined]
