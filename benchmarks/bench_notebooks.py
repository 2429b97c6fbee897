"""Overhead of %load_ext txpy on small tutorial-like notebooks, run in a real kernel.

    python benchmarks/bench_notebooks.py [--think SECONDS]

Each notebook (generated data only, modeled on the pandas "10 minutes", scikit-learn
"getting started" and PyTorch "quickstart" tutorials) runs in a fresh kernel without txpy,
with each durability (sync, async, and background: the default, a forked child captures),
interleaved in the same run; we print the best total time of each, the overheads, txpy's time
per cell (median and p95 of the time from a cell's end to the prompt, all runs), the store
size and the time
``%txpy restore`` takes in a new kernel. A last run measures a training-loop-like cell reading
globals in a tight loop, where a tracking namespace would hurt most. With ``--think``, the
kernel idles after each cell as when a person reads the output (see execute).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

PANDAS = [
    "import numpy as np, pandas as pd\nrng = np.random.default_rng(0)",
    "dates = pd.date_range('2024-01-01', periods=200_000, freq='min')\n"
    "df = pd.DataFrame(rng.standard_normal((200_000, 4)), index=dates, columns=list('ABCD'))",
    "df['E'] = np.where(df['A'] > 0, 'up', 'down')\ndf.head()",
    "summary = df.describe()\nsummary",
    "df.loc[df['B'] > 1, 'C'] = 0\nhourly = df[['A', 'B', 'C', 'D']].resample('h').mean()",
    "pivot = df.groupby('E')[['A', 'B']].agg(['mean', 'std'])\npivot",
    "df = df.sort_values('A')\nranked = df['D'].rank()",
    "merged = hourly.join(hourly.rolling(5).mean(), rsuffix='_roll')\nmerged.tail()",
]

SKLEARN = [
    "import numpy as np\nfrom sklearn.datasets import make_classification\n"
    "from sklearn.model_selection import train_test_split\n"
    "X, y = make_classification(n_samples=20_000, n_features=30, random_state=0)",
    "X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)",
    "from sklearn.preprocessing import StandardScaler\nscaler = StandardScaler().fit(X_train)\n"
    "X_train_s, X_test_s = scaler.transform(X_train), scaler.transform(X_test)",
    "from sklearn.linear_model import LogisticRegression\n"
    "clf = LogisticRegression(max_iter=500).fit(X_train_s, y_train)\nclf.score(X_test_s, y_test)",
    "from sklearn.ensemble import RandomForestClassifier\n"
    "rf = RandomForestClassifier(n_estimators=50, random_state=0).fit(X_train, y_train)\n"
    "rf.score(X_test, y_test)",
    "from sklearn.model_selection import cross_val_score\n"
    "scores = cross_val_score(clf, X_train_s, y_train, cv=3)\nscores.mean()",
]

TORCH = [
    "import torch\nfrom torch import nn\ntorch.manual_seed(0)\n"
    "X = torch.randn(8192, 784)\ny = torch.randint(0, 10, (8192,))",
    "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
    "        self.layers = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))\n"
    "    def forward(self, x):\n        return self.layers(x)\n"
    "model = Net()\nopt = torch.optim.Adam(model.parameters(), lr=1e-3)\n"
    "loss_fn = nn.CrossEntropyLoss()",
    "def train_epoch():\n    for i in range(0, len(X), 256):\n        opt.zero_grad()\n"
    "        loss = loss_fn(model(X[i:i + 256]), y[i:i + 256])\n        loss.backward()\n"
    "        opt.step()\n    return loss.item()\nhistory = []",
    "for epoch in range(3):\n    history.append(train_epoch())\nhistory",
    "history.append(train_epoch())\nhistory[-1]",
    "with torch.no_grad():\n    acc = (model(X).argmax(1) == y).float().mean().item()\nacc",
]

TIGHT_LOOP = [
    "import numpy as np\nw = np.zeros(10)\nlr = 0.01\ncount = 0\nlosses = []\n"
    "def step(i):\n    global count\n    count += 1\n    return lr * (i % 7)",
    "for i in range(2_000_000):\n    w[0] += step(i)\nlosses.append(float(w[0]))",
]


def setup_cells(durability: str | None) -> list[str]:
    """The cells that turn txpy on (None: without txpy); they are not timed."""
    if durability is None:
        return []
    return ["%load_ext txpy", f"%txpy durability {durability}"]


REPORT = ("#report\nimport json\nfrom txpy.frontends.ipython import extension\n"
          "print(json.dumps(list(extension(get_ipython()).costs)))")


def notebook(cells: list[str], durability: str | None) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    report = [REPORT] if durability else []
    nb.cells = [nbformat.v4.new_code_cell(c) for c in setup_cells(durability) + cells + report]
    return nb


def execute(nb: nbformat.NotebookNode, cwd: str, think: float = 0.0
            ) -> tuple[float, list[float]]:
    """Seconds spent in the notebook's own cells (the kernel start and txpy's setup excluded),
    and txpy's seconds after each cell as its extension measured them.

    think: seconds of idle time after each cell, not counted, as a person reading the output
    leaves: async durability writes a commit then; run back to back, it competes with the
    next cell for the machine's cores."""
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": cwd}})
    client.km = client.create_kernel_manager()
    client.km.kernel_spec.argv[0] = sys.executable
    costs: list[float] = []
    with client.setup_kernel(cwd=cwd):
        total = 0.0
        for index, cell in enumerate(nb.cells):
            started = time.perf_counter()
            client.execute_cell(cell, index)
            if cell.source.startswith("#report"):
                text = "".join(o.get("text", "") for o in cell.outputs
                               if o.get("name") == "stdout")
                costs = json.loads(text)
            elif not cell.source.startswith("%"):
                total += time.perf_counter() - started
                time.sleep(think)
            errors = [o for o in cell.get("outputs", ()) if o.get("output_type") == "error"
                      or (o.get("name") == "stderr" and "could not" in o.get("text", ""))]
            if errors:
                raise RuntimeError(f"cell {index} failed: {errors}")
    return total, costs


def restore_seconds(cwd: str) -> float:
    nb = nbformat.v4.new_notebook()
    # the clock lives in builtins: restore removes names the saved state lacks
    nb.cells = [nbformat.v4.new_code_cell("%load_ext txpy"),
                nbformat.v4.new_code_cell("import builtins, time\n"
                                          "builtins.started = time.perf_counter()"),
                nbformat.v4.new_code_cell("%txpy restore"),
                nbformat.v4.new_code_cell("import builtins, time\n"
                                          "print(time.perf_counter() - builtins.started)")]
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": cwd}})
    client.km = client.create_kernel_manager()
    client.km.kernel_spec.argv[0] = sys.executable
    client.execute(cwd=cwd)
    text = "".join(o.get("text", "") for o in nb.cells[3].outputs if o.get("name") == "stdout")
    return float(text.strip().splitlines()[-1])


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench(name: str, cells: list[str], repeat: int = 3, think: float = 0.0) -> None:
    """Runs without txpy and with each durability, interleaved; best of repeat."""
    modes = (None, "sync", "async", "background")
    runs: dict[str | None, list[float]] = {m: [] for m in modes}
    costs: dict[str | None, list[float]] = {m: [] for m in modes}
    store_size = restore = 0.0
    for _ in range(repeat):
        for durability in modes:
            with tempfile.TemporaryDirectory() as d:
                total, cell_costs = execute(notebook(cells, durability), d, think)
                runs[durability].append(total)
                costs[durability] += cell_costs
                if durability == "background":
                    store_size = size(Path(d) / ".txpy")
                    restore = restore_seconds(d)
    plain = min(runs[None])
    print(f"{name:<12} cells={len(cells):>2}  plain={plain:6.2f}s  store={store_size / 2**20:6.1f}"
          f" MB  restore={restore:5.2f}s", flush=True)
    for mode in modes[1:]:
        best, per_cell = min(runs[mode]), sorted(costs[mode])
        median, p95 = (per_cell[int(q * (len(per_cell) - 1))] for q in (0.5, 0.95))
        print(f"  {mode:<10} {best:6.2f}s ({100 * (best - plain) / plain:+5.1f}%)   txpy per cell:"
              f" median {1000 * median:6.1f} ms  p95 {1000 * p95:6.1f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--think", type=float, default=0.0, metavar="SECONDS",
                        help="idle time after each cell, not counted (default: 0, back to back)")
    think = parser.parse_args().think
    os.environ.pop("TXPY_VERIFY", None)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; best of 3 runs each"
          + (f"; {think:g} s idle after each cell" if think else "; cells back to back"))
    bench("pandas", PANDAS, think=think)
    if importlib.util.find_spec("sklearn"):
        bench("scikit-learn", SKLEARN, think=think)
    else:
        print("scikit-learn: not installed, skipped")
    bench("pytorch", TORCH, think=think)
    bench("tight-loop", TIGHT_LOOP, think=think)


if __name__ == "__main__":
    main()
