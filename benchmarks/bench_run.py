"""Overhead of `txpy run` over `python` on two training scripts (generated data):

* logistic regression, scikit-learn style (``SGDClassifier.partial_fit`` per epoch when
  scikit-learn is installed, else the same loop in numpy),
* a PyTorch MLP trained with Adam over mini-batches, one epoch per top-level iteration
  (skipped when torch is missing).

Each script runs as ``python script.py`` and as ``txpy run --fresh script.py`` (default commit
interval, or --commit-interval), alternately, several times; the median wall times, the
overhead and the time spent in commits (from the commits' own stats) are printed. Nothing
else should run on the machine meanwhile: the numbers are wall-clock.

    python benchmarks/bench_run.py [--repeat 3] [--scale 1.0] [--commit-interval 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from txpy import Repository

DATA = """\
import numpy as np
rng = np.random.default_rng(0)
n, d = {n}, 100
X = rng.standard_normal((n, d))
w_true = rng.standard_normal(d)
y = (X @ w_true + 0.5 * rng.standard_normal(n) > 0).astype({label})
"""

SKLEARN = DATA.replace("{label}", "int") + """\
from sklearn.linear_model import SGDClassifier
clf = SGDClassifier(loss="log_loss", alpha=1e-4, random_state=0)
scores = []
for epoch in range({epochs}):
    for start in range(0, n, 1000):
        clf.partial_fit(X[start:start + 1000], y[start:start + 1000], classes=[0, 1])
    scores.append(clf.score(X, y))
print("accuracy", round(scores[-1], 4))
"""

NUMPY_LOGREG = DATA.replace("{label}", "float") + """\
w = np.zeros(d)
b = 0.0
lr, alpha = 0.1, 1e-4
losses = []
def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))
for epoch in range({epochs}):
    for start in range(0, n, 1000):
        xb, yb = X[start:start + 1000], y[start:start + 1000]
        p = sigmoid(xb @ w + b)
        w -= lr * (xb.T @ (p - yb) / len(yb) + alpha * w)
        b -= lr * float(np.mean(p - yb))
    p = sigmoid(X @ w + b)
    losses.append(float(-np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12))))
print("loss", round(losses[-1], 4), "accuracy", float(np.mean((p > 0.5) == y)))
"""

TORCH_MLP = """\
import torch
from torch import nn
torch.manual_seed(0)
torch.set_num_threads(1)  # steadier timings on a shared 2-core machine
n = {n}
X = torch.randn(n, 784)
y = torch.randint(0, 10, (n,))
model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                      nn.Linear(512, 10))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()
history = []
for epoch in range({epochs}):
    perm = torch.randperm(n)
    total = 0.0
    for i in range(0, n, 128):
        idx = perm[i:i + 128]
        optimizer.zero_grad()
        loss = loss_fn(model(X[idx]), y[idx])
        loss.backward()
        optimizer.step()
        total += loss.item()
    history.append(total)
    print("epoch", epoch, round(total, 3))
"""


def scripts(scale: float) -> dict[str, str]:
    out = {}
    if importlib.util.find_spec("sklearn"):
        out["sklearn SGD logistic regression"] = SKLEARN.format(n=int(100_000 * scale),
                                                                epochs=10)
    else:
        out["numpy logistic regression (sklearn not installed)"] = NUMPY_LOGREG.format(
            n=int(100_000 * scale), epochs=40)
    if importlib.util.find_spec("torch"):
        out["torch MLP 784-512-512-10 + Adam"] = TORCH_MLP.format(n=int(6_000 * scale),
                                                                  epochs=8)
    return out


def timed(cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="data size multiplier")
    parser.add_argument("--commit-interval", default="2",
                        help="passed to txpy run (0: commit every statement and epoch)")
    opts = parser.parse_args()
    txpy = str(Path(sys.executable).with_name("txpy"))
    env_note = os.environ.get("TXPY_VERIFY")
    if env_note == "1":
        print("warning: TXPY_VERIFY=1 makes every commit verify all names; unset it to measure")
    root = Path(tempfile.mkdtemp(prefix="txpy-bench-run-"))
    try:
        for title, source in scripts(opts.scale).items():
            work = root / title.split()[0]
            work.mkdir()
            (work / "train.py").write_text(source)
            plain, durable = [], []
            for _ in range(opts.repeat):
                plain.append(timed([sys.executable, "train.py"], work))
                durable.append(timed([txpy, "run", "--fresh", "--commit-interval",
                                     opts.commit_interval, "train.py"], work))
            p, d = statistics.median(plain), statistics.median(durable)
            repo = Repository.open(work / ".txpy")
            log = repo.log("train.py")
            commits = len(log) / opts.repeat
            commit_s = sum(c.stats.get("commit_seconds", 0.0) for c in log) / opts.repeat
            repo.close()
            store = sum(f.stat().st_size for f in (work / ".txpy").rglob("*") if f.is_file())
            print(f"{title}: python {p:.2f} s, txpy run {d:.2f} s, overhead "
                  f"{100 * (d - p) / p:+.1f}% (median of {opts.repeat}); per run "
                  f"{commits:.0f} commits taking {commit_s:.2f} s; store after "
                  f"{opts.repeat} runs: {store / 2**20:.1f} MiB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
