"""`txpy run` as a user runs it: real processes, killed with SIGKILL and run again."""

import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import nbformat
import pytest

import txpy
from txpy.errors import TxpyWarning
from txpy.frontends.runner import checkpoint, load_program, run

TXPY = str(Path(sys.executable).with_name("txpy"))

#: the script's helpers: `mark(tag)` appends tag to side.txt (one line per executed piece of
#: work); `maybe_die(tag)` SIGKILLs the process when $DIE_AT == tag
PRELUDE = """\
import os
def mark(tag):
    with open("side.txt", "a") as f:
        f.write(f"{tag}\\n")
def maybe_die(tag):
    if os.environ.get("DIE_AT") == tag:
        os.kill(os.getpid(), 9)
"""

TRAIN = PRELUDE + """\
import random
import sys
random.seed(0)
mark("setup")
epochs = int(sys.argv[1])
weights = [0.0, 0.0]
history = []
for epoch in range(epochs):
    maybe_die(f"epoch{epoch}")
    mark(f"epoch{epoch}")
    weights = [w + random.random() for w in weights]
    history.append(round(sum(weights), 6))
    print("epoch", epoch, history[-1])
mark("report")
best = max(history)
print("best", best)
"""


def txpy_run(cwd, *args, die_at=None, timeout=60):
    env = dict(os.environ)
    env.pop("DIE_AT", None)
    if die_at is not None:
        env["DIE_AT"] = die_at
    return subprocess.run([TXPY, "run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def side(cwd):
    path = Path(cwd) / "side.txt"
    return path.read_text().split() if path.exists() else []


def state(cwd, history):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TxpyWarning)
        s = txpy.load(Path(cwd) / ".txpy", history)
    return {k: v for k, v in s.items() if not k.startswith("__") and not callable(v)}


def write(path, text):
    Path(path).write_text(textwrap.dedent(text) if not text.startswith(PRELUDE) else text)


@pytest.fixture
def reference(tmp_path):
    """An uninterrupted run of TRAIN, to compare with."""
    ref = tmp_path / "ref"
    ref.mkdir()
    write(ref / "train.py", TRAIN)
    done = txpy_run(ref, "--commit-interval", "0", "train.py", "5")
    assert done.returncode == 0, done.stderr
    return done, state(ref, "train.py")


def test_killed_script_resumes_where_it_died_without_redoing_work(tmp_path, reference):
    ref_run, ref_state = reference
    work = tmp_path / "work"
    work.mkdir()
    write(work / "train.py", TRAIN)

    killed = txpy_run(work, "--commit-interval", "0", "train.py", "5", die_at="epoch3")
    assert killed.returncode == -signal.SIGKILL
    assert side(work) == ["setup", "epoch0", "epoch1", "epoch2"]

    resumed = txpy_run(work, "--commit-interval", "0", "train.py", "5")
    assert resumed.returncode == 0, resumed.stderr
    assert "txpy: resumed after statement 11 (line 15) / iteration 3, skipped" in resumed.stderr
    # every piece of work ran exactly once over both processes
    assert side(work) == ["setup", "epoch0", "epoch1", "epoch2", "epoch3", "epoch4", "report"]
    # the same result as an uninterrupted run: state, and output (flushed at each commit)
    assert state(work, "train.py") == ref_state
    assert killed.stdout + resumed.stdout == ref_run.stdout


def test_a_completed_run_is_not_repeated_unless_fresh(tmp_path):
    write(tmp_path / "train.py", TRAIN)
    assert txpy_run(tmp_path, "train.py", "2").returncode == 0
    again = txpy_run(tmp_path, "train.py", "2")
    assert again.returncode == 0 and "nothing to do" in again.stderr and again.stdout == ""
    assert side(tmp_path).count("setup") == 1

    fresh = txpy_run(tmp_path, "--fresh", "train.py", "2")
    assert fresh.returncode == 0 and "best" in fresh.stdout
    assert side(tmp_path).count("setup") == 2 and side(tmp_path).count("epoch1") == 2

    # a fresh run that dies before its first commit does not resume the old run
    assert txpy_run(tmp_path, "--fresh", "train.py", "2",
                    die_at="epoch0").returncode == -signal.SIGKILL
    after_death = txpy_run(tmp_path, "train.py", "2")
    assert after_death.returncode == 0 and "nothing to do" not in after_death.stderr
    assert side(tmp_path).count("setup") == 4

    other_args = txpy_run(tmp_path, "train.py", "3")
    assert other_args.returncode == 0 and "arguments differ" in other_args.stderr
    assert side(tmp_path).count("setup") == 5
    assert len(state(tmp_path, "train.py")["history"]) == 3


def test_edited_script_reruns_only_from_the_first_changed_statement(tmp_path):
    script = tmp_path / "train.py"
    write(script, TRAIN)
    assert txpy_run(tmp_path, "--commit-interval", "0", "train.py", "3").returncode == 0
    before = state(tmp_path, "train.py")

    write(script, TRAIN.replace("best = max(history)", "best = min(history)  # edited"))
    edited = txpy_run(tmp_path, "--commit-interval", "0", "train.py", "3")
    assert edited.returncode == 0, edited.stderr
    assert "resumed after statement 12 (line 21)" in edited.stderr
    assert side(tmp_path) == ["setup", "epoch0", "epoch1", "epoch2", "report"]
    assert edited.stdout == f"best {min(before['history'])}\n"
    after = state(tmp_path, "train.py")
    assert after["best"] == min(before["history"]) and after["weights"] == before["weights"]


def test_grouped_statements_and_edit_inside_a_group_reruns_from_the_last_commit(tmp_path):
    script = tmp_path / "s.py"
    write(script, PRELUDE + "a = 1\nmark('a')\nb = a + 1\nmark('b')\nc = b + 1\nmark('c')\n")
    assert txpy_run(tmp_path, "s.py").returncode == 0  # default interval: one group
    write(script, PRELUDE + "a = 1\nmark('a')\nb = a + 1\nmark('b')\nc = b + 10\nmark('c')\n")
    rerun = txpy_run(tmp_path, "s.py")
    assert rerun.returncode == 0, rerun.stderr
    # no commit inside the group: everything runs again, correctly
    assert side(tmp_path) == ["a", "b", "c", "a", "b", "c"]
    assert state(tmp_path, "s.py")["c"] == 12


NOTEBOOK_CELLS = [
    PRELUDE,
    "import random\nrandom.seed(1)\ntotals = []\nmark('cell2')",
    "for step in range(4):\n    maybe_die(f'step{step}')\n    mark(f'step{step}')\n"
    "    totals.append(random.randint(0, 100))",
    "mark('cell4')\nsum(totals)",
]


def make_notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# title")] + [
        nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, str(path))


def test_killed_notebook_resumes_in_the_cell_and_iteration_where_it_died(tmp_path):
    ref, work = tmp_path / "ref", tmp_path / "work"
    for d in (ref, work):
        d.mkdir()
        make_notebook(d / "analysis.ipynb", NOTEBOOK_CELLS)
    full = txpy_run(ref, "--commit-interval", "0", "analysis.ipynb")
    assert full.returncode == 0, full.stderr
    assert full.stdout.strip().isdigit()  # the last expression of a cell is shown

    killed = txpy_run(work, "--commit-interval", "0", "analysis.ipynb", die_at="step2")
    assert killed.returncode == -signal.SIGKILL
    resumed = txpy_run(work, "--commit-interval", "0", "analysis.ipynb")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed after statement" in resumed.stderr and "cell 3" in resumed.stderr
    assert "/ iteration 2" in resumed.stderr
    assert side(work) == ["cell2", "step0", "step1", "step2", "step3", "cell4"]
    assert resumed.stdout == full.stdout
    assert state(work, "analysis.ipynb") == state(ref, "analysis.ipynb")


GENERATOR_LOOP = PRELUDE + """\
def numbers(n):
    for i in range(n):
        yield i * i
seen = []
squares = numbers(5)
for x in squares:
    maybe_die(f"x{x}")
    mark(f"x{x}")
    seen.append(x)
print("seen", seen)
"""


def test_loop_over_a_generator_is_rerun_from_its_start_never_skipped_wrongly(tmp_path):
    write(tmp_path / "g.py", GENERATOR_LOOP)
    killed = txpy_run(tmp_path, "--commit-interval", "0", "g.py", die_at="x9")
    assert killed.returncode == -signal.SIGKILL
    assert "iterates over a generator, whose position cannot be restored" in killed.stderr
    resumed = txpy_run(tmp_path, "--commit-interval", "0", "g.py")
    assert resumed.returncode == 0, resumed.stderr
    # the generator is not stored, so the run goes back to before it was made
    assert "squares (generator) could not be stored" in resumed.stderr
    assert "resumed after statement 5 (line 11)" in resumed.stderr
    assert resumed.stdout == "seen [0, 1, 4, 9, 16]\n"
    assert state(tmp_path, "g.py")["seen"] == [0, 1, 4, 9, 16]


FILE_LOOP = PRELUDE + """\
f = open("data.txt")
header = f.readline().strip()
rows = []
for line in f:
    maybe_die(line.strip())
    rows.append(int(line))
f.close()
print(header, sum(rows))
"""


def test_loop_over_a_file_is_rerun_from_its_start(tmp_path):
    (tmp_path / "data.txt").write_text("total\n1\n2\n3\n4\n")
    write(tmp_path / "r.py", FILE_LOOP)
    assert txpy_run(tmp_path, "--commit-interval", "0", "r.py",
                    die_at="3").returncode == -signal.SIGKILL
    resumed = txpy_run(tmp_path, "--commit-interval", "0", "r.py")
    assert resumed.returncode == 0, resumed.stderr
    assert "iterates over a file" in resumed.stderr
    # an open file is not stored (it is not a snapshot of its content): the run goes back to
    # before it was opened
    assert "f (TextIOWrapper) could not be stored" in resumed.stderr
    assert "resumed after statement 3 (line 5)" in resumed.stderr
    assert resumed.stdout == "total 10\n"
    assert state(tmp_path, "r.py")["rows"] == [1, 2, 3, 4]


def test_loop_semantics_break_continue_else_and_dict_items(tmp_path):
    code = """\
        out = []
        for i in range(10):
            if i % 2:
                continue
            if i == 6:
                break
            out.append(i)
        else:
            out.append("else-1")
        for k, v in {"a": 1, "b": 2}.items():
            out.append(k * v)
        else:
            out.append("else-2")
        for c in "xy":
            pass
        print(out, i, k, v, c)
    """
    write(tmp_path / "loops.py", code)
    python = subprocess.run([sys.executable, "loops.py"], cwd=tmp_path, capture_output=True,
                            text=True)
    assert python.stdout == "[0, 2, 4, 'a', 'bb', 'else-2'] 6 b 2 y\n"
    for interval in ("0", "2"):  # one iteration at a time, or in native chunks
        ours = txpy_run(tmp_path, "--fresh", "--commit-interval", interval, "loops.py")
        assert ours.returncode == 0, ours.stderr
        assert ours.stdout == python.stdout


FAILING = """\
    import sys
    x = 1
    y = [1]
    def grow():
        y.append(2)
        raise ValueError("boom")
    z = 3
    grow()
    print("never")
"""


def test_failing_statement_is_rolled_back_and_reported_like_python(tmp_path):
    write(tmp_path / "bad.py", FAILING)
    python = subprocess.run([sys.executable, "bad.py"], cwd=tmp_path, capture_output=True,
                            text=True)
    ours = txpy_run(tmp_path, "--commit-interval", "0", "bad.py")
    assert ours.returncode == python.returncode == 1
    assert ours.stdout == python.stdout == ""
    traceback = ours.stderr[ours.stderr.index("Traceback"):]
    assert traceback == python.stderr
    assert "rolled back" in ours.stderr
    after = state(tmp_path, "bad.py")
    assert after["y"] == [1] and after["z"] == 3  # the failed statement left no trace

    # fixed, the run resumes at the failed statement
    write(tmp_path / "bad.py", FAILING.replace('raise ValueError("boom")', 'pass'))
    fixed = txpy_run(tmp_path, "--commit-interval", "0", "bad.py")
    assert fixed.returncode == 0 and fixed.stdout == "never\n"
    assert state(tmp_path, "bad.py")["y"] == [1, 2]


def test_script_runs_as_main_with_argv_path_and_exit_codes(tmp_path):
    (tmp_path / "helper.py").write_text("VALUE = 42\n")
    write(tmp_path / "m.py", """\
        '''the doc'''
        import sys
        import helper
        print(__name__, __doc__, sys.argv, sys.modules["__main__"].__file__ == __file__,
              helper.VALUE)
        if __name__ == "__main__":
            sys.exit(int(sys.argv[1]))
    """)
    ok = txpy_run(tmp_path, "m.py", "0")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "__main__ the doc ['m.py', '0'] True 42\n"
    assert txpy_run(tmp_path, "m.py", "3").returncode == 3
    syntax = tmp_path / "syn.py"
    syntax.write_text("x = (\n")
    bad = txpy_run(tmp_path, "syn.py")
    assert bad.returncode == 1 and "SyntaxError" in bad.stderr


CHECKPOINTED = PRELUDE + """\
import txpy.frontends.runner as runner
progress = {"epoch": 0, "loss": 100.0}
def main():
    while progress["epoch"] < 4:
        maybe_die(f"e{progress['epoch']}")
        mark(f"e{progress['epoch']}")
        progress["loss"] /= 2
        progress["epoch"] += 1
        runner.checkpoint()
    progress["done"] = True  # after the last checkpoint, in the same statement
if __name__ == "__main__":
    main()
print(progress)
"""


def test_checkpoint_inside_a_function_resumes_from_its_globals(tmp_path):
    write(tmp_path / "c.py", CHECKPOINTED)
    assert txpy_run(tmp_path, "c.py", die_at="e2").returncode == -signal.SIGKILL
    resumed = txpy_run(tmp_path, "c.py")
    assert resumed.returncode == 0, resumed.stderr
    assert "at txpy.checkpoint() in statement" in resumed.stderr
    assert side(tmp_path) == ["e0", "e1", "e2", "e3"]
    assert resumed.stdout == "{'epoch': 4, 'loss': 6.25, 'done': True}\n"
    assert state(tmp_path, "c.py")["progress"]["done"] is True


def test_checkpoint_outside_txpy_run_only_warns():
    with pytest.warns(TxpyWarning, match="outside `txpy run`"):
        assert checkpoint() is None


ENUMERATED = PRELUDE + """\
names = ["a", "b", "c", "d"]
scores = {"a": 1, "b": 2, "c": 3, "d": 4}
out = []
for i, (name, score) in enumerate(zip(names, scores.values()), 1):
    maybe_die(f"i{i}")
    mark(f"i{i}")
    out.append((i, name * score))
print(out)
"""


def killed_then_resumed(tmp_path, script, die_at):
    """(python's run, the resumed txpy run) of a script first killed by SIGKILL at die_at."""
    python = subprocess.run([sys.executable, script], cwd=tmp_path, capture_output=True,
                            text=True)
    assert txpy_run(tmp_path, "--commit-interval", "0", script,
                    die_at=die_at).returncode == -signal.SIGKILL
    return python, txpy_run(tmp_path, "--commit-interval", "0", script)


def test_enumerate_and_zip_of_lists_resume_mid_loop(tmp_path):
    write(tmp_path / "e.py", ENUMERATED.replace(
        "i, (name, score) in enumerate(zip(names, scores.values()), 1)",
        "i, name, score in zip(range(1, 5), names, scores.values())"))
    python, resumed = killed_then_resumed(tmp_path, "e.py", die_at="i3")
    assert "/ iteration 2" in resumed.stderr
    assert resumed.stdout == python.stdout
    assert side(tmp_path) == ["i1", "i2", "i3", "i4"] * 2 and resumed.returncode == 0
    # zip inside enumerate is an iterator the runner cannot see into: rerun from the start
    (tmp_path / "side.txt").unlink()
    write(tmp_path / "e.py", ENUMERATED)
    assert txpy_run(tmp_path, "--commit-interval", "0", "e.py",
                    die_at="i3").returncode == -signal.SIGKILL
    resumed = txpy_run(tmp_path, "--commit-interval", "0", "e.py")
    assert "iterates over an iterator (zip)" in resumed.stderr
    assert resumed.stdout == python.stdout and resumed.returncode == 0


def test_small_statements_are_grouped_into_few_commits(tmp_path):
    write(tmp_path / "many.py", "".join(f"v{i} = {i}\n" for i in range(40)) +
          "for i in range(1000):\n    v0 += i\n")
    assert txpy_run(tmp_path, "many.py").returncode == 0
    repo = txpy.Repository.open(tmp_path / ".txpy")
    try:
        commits = repo.log("many.py")
    finally:
        repo.close()
    assert len(commits) <= 3  # a run that took well under 2 s: about one commit, at its end
    assert state(tmp_path, "many.py")["v0"] == sum(range(1000))


def test_process_settings_of_skipped_statements_are_redone_on_resume(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "extra.py").write_text("def f():\n    return 7\n")
    (tmp_path / "data").mkdir()
    write(tmp_path / "p.py", PRELUDE + """\
import sys
sys.path.append(os.path.join(os.getcwd(), "lib"))
os.environ["MY_SETTING"] = "on"
os.chdir("data")
from extra import f
for step in range(3):
    maybe_die(f"s{step}")
print(os.path.basename(os.getcwd()), os.environ["MY_SETTING"], f())
""")
    assert txpy_run(tmp_path, "--commit-interval", "0", "p.py",
                    die_at="s1").returncode == -signal.SIGKILL
    # the resumed run keeps them for its own checkpoints: a second crash loses nothing
    assert txpy_run(tmp_path, "--commit-interval", "0", "p.py",
                    die_at="s2").returncode == -signal.SIGKILL
    resumed = txpy_run(tmp_path, "--commit-interval", "0", "p.py")
    assert resumed.returncode == 0, resumed.stderr
    assert "/ iteration 2" in resumed.stderr
    assert resumed.stdout == "data on 7\n"


def test_checkpoint_inside_a_loop_iteration_reruns_that_iteration_only(tmp_path):
    write(tmp_path / "ci.py", PRELUDE + """\
import txpy.frontends.runner as runner
done = []
for epoch in range(3):
    for part in ("a", "b"):
        if part == "b":
            maybe_die(f"{epoch}{part}")
        if f"{epoch}{part}" not in done:
            mark(f"{epoch}{part}")
            done.append(f"{epoch}{part}")
        runner.checkpoint()
print(done)
""")
    # a long commit interval: only checkpoint() and the end commit
    assert txpy_run(tmp_path, "--commit-interval", "100", "ci.py",
                    die_at="1b").returncode == -signal.SIGKILL
    resumed = txpy_run(tmp_path, "--commit-interval", "100", "ci.py")
    assert resumed.returncode == 0, resumed.stderr
    assert "at txpy.checkpoint() in statement 6 (line 10, iteration 2)" in resumed.stderr
    assert side(tmp_path) == ["0a", "0b", "1a", "1b", "2a", "2b"]
    assert resumed.stdout == "['0a', '0b', '1a', '1b', '2a', '2b']\n"


def test_notebook_with_ipython_syntax_is_refused_clearly(tmp_path):
    make_notebook(tmp_path / "m.ipynb", ["x = 1", "%timeit x + 1"])
    done = txpy_run(tmp_path, "m.ipynb")
    assert done.returncode == 1
    assert "code cell 2 of m.ipynb uses IPython syntax ('%timeit x + 1')" in done.stderr


def test_ctrl_c_rolls_back_the_statement_and_exits_130(tmp_path):
    write(tmp_path / "i.py", """\
        import os, signal
        items = [1]
        def grow():
            items.append(2)
            os.kill(os.getpid(), signal.SIGINT)
        grow()
    """)
    done = txpy_run(tmp_path, "--commit-interval", "0", "i.py")
    assert done.returncode == 130
    assert done.stderr.rstrip().endswith("KeyboardInterrupt")
    assert state(tmp_path, "i.py")["items"] == [1]


NUMPY_WALK = """\
import os
import numpy as np
np.random.seed(3)
walk = np.zeros(5)
for step in range(6):
    if os.environ.get("DIE_AT") == f"s{step}":
        os.kill(os.getpid(), 9)
    walk += np.random.standard_normal(5)
print(np.round(walk, 6).tolist())
"""


def test_resumed_numpy_random_stream_matches_an_uninterrupted_run(tmp_path):
    write(tmp_path / "w.py", NUMPY_WALK)
    python, resumed = killed_then_resumed(tmp_path, "w.py", die_at="s4")
    assert "/ iteration 4" in resumed.stderr
    assert resumed.stdout == python.stdout


def test_a_failed_commit_does_not_stop_the_run_and_the_next_boundary_saves_its_work(
        tmp_path, monkeypatch):
    script = tmp_path / "f.py"
    write(script, "xs = []\nys = []\nxs.append(1)\nys.append(2)\n")
    real = txpy.Session.commit
    calls = []

    def disk_full_once(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the commit after `xs.append(1)`
            raise OSError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(txpy.Session, "commit", disk_full_once)
    said = []
    assert run(script, store=tmp_path / ".txpy", commit_interval=0, notify=said.append) == 0
    assert [m for m in said if "could not save" in m] == [
        "could not save this statement (OSError: disk full); its results are kept in memory "
        "and the next statement will try again"]
    repo = txpy.Repository.open(tmp_path / ".txpy")
    try:
        commits = {c.message: c.id for c in repo.log("f.py")}
    finally:
        repo.close()
    assert "f.py: after statement 3 (line 3)" not in commits
    # the next commit, after a statement that did not touch xs, holds xs's change too
    after = txpy.load(tmp_path / ".txpy", "f.py", commits["f.py: after statement 4 (line 4)"])
    assert after["xs"] == [1] and after["ys"] == [2]


def test_statements_that_reach_the_namespace_dynamically_may_read_any_name(tmp_path):
    """A resume keeps a checkpoint only if what the rest reads was stored: code that can
    reach every global (the same dynamic names commits watch for) reads them all."""
    write(tmp_path / "d.py", """\
        import sys
        def f():
            pass
        a = f.__globals__["f"]
        b = globals()["f"]
        c = sys.modules["__main__"]
        d = f
    """)
    program = load_program(tmp_path / "d.py")
    assert [s.reads for s in program.statements[2:]] == [None, None, None, frozenset({"f"})]
