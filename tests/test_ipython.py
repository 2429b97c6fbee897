"""The IPython frontend in a real InteractiveShell: every cell is a transaction, %txpy shows
and moves through history, and unloading leaves the shell as it was."""

import types

import pytest

from txpy.frontends import ipython as front


def run(ip, source, *, settle=True):
    """Run a cell. The session's verify mode (on in tests) checks every name after each
    commit; the extension keeps a failed commit's error instead of raising it, so look.

    settle: then wait for the cell's commit, which a forked child captures in the background
    (the default durability), as a person reading the cell's output would; test_background
    and the kernel tests run cells while children capture."""
    result = ip.run_cell(source)
    ext = front.extension(ip)
    if ext is not None:
        if settle and ext.session is not None:
            ext.session.wait()
        assert not [e for e in ext.errors if isinstance(e, AssertionError)], ext.errors
    return result


def txpy_lines(capsys):
    captured = capsys.readouterr()
    return [ln for ln in (captured.out + captured.err).splitlines() if ln.startswith("txpy:")]


def loaded(ip, capsys=None):
    run(ip, "%load_ext txpy")
    ext = front.extension(ip)
    assert ext is not None and ext.session.verify
    return ext


def test_failing_cell_rolls_back_and_says_so_in_one_line(ip, capsys):
    ext = loaded(ip)
    run(ip, "import numpy as np\nxs = [1, 2]\ncfg = {'lr': 0.1}\narr = np.arange(4)")
    run(ip, "def grow(v):\n    xs.append(v)")
    capsys.readouterr()
    result = run(ip, "grow(3)\ncfg['lr'] = 9\narr *= 2\nnew = 1\n1/0")
    assert not result.success
    assert ip.user_ns["xs"] == [1, 2] and ip.user_ns["cfg"] == {"lr": 0.1}
    assert ip.user_ns["arr"].tolist() == [0, 1, 2, 3] and "new" not in ip.user_ns
    assert txpy_lines(capsys) == ["txpy: rolled back after ZeroDivisionError: arr, cfg, new, xs"]
    assert ext.errors == []


def test_interrupted_cell_rolls_back(ip, capsys):
    loaded(ip)
    run(ip, "state = {'step': 0}")
    run(ip, "state['step'] = 1\nraise KeyboardInterrupt")
    assert ip.user_ns["state"] == {"step": 0}
    assert txpy_lines(capsys) == ["txpy: rolled back after KeyboardInterrupt: state"]


def test_successful_cells_are_commits_with_their_source(ip, capsys):
    ext = loaded(ip)
    run(ip, "a = 1")
    run(ip, "b = [a]")
    log = ext.session.log()
    assert [c.code for c in log[:2]] == ["b = [a]", "a = 1"]
    assert all(c.kind == "cell" for c in log[:2])
    assert "In" not in ext.session.repo.tree(log[0]).names
    assert ext.errors == []


def test_mutation_through_notebook_class_and_magic_cell(ip, capsys):
    ext = loaded(ip)
    run(ip, "seen = []\nclass Tracker:\n    def hit(self):\n        seen.append(1)\nt = Tracker()")
    run(ip, "%time t.hit()")
    assert ip.user_ns["seen"] == [1]
    run(ip, "t.hit()\n%time t.hit()\n1/0")
    assert ip.user_ns["seen"] == [1]
    assert ext.errors == []


def test_syntax_error_changes_nothing_and_says_nothing_from_txpy(ip, capsys):
    ext = loaded(ip)
    run(ip, "a = 1")
    n = len(ext.session.log())
    capsys.readouterr()
    run(ip, "a = (")
    assert txpy_lines(capsys) == [] and len(ext.session.log()) == n


def test_magics_log_diff_checkout_branch_status(ip, capsys):
    ext = loaded(ip)
    run(ip, "a = 1")
    first = ext.session.head.short
    run(ip, "a = 2\nb = 'x'")
    run(ip, "lock = __import__('threading').Lock()")
    capsys.readouterr()
    run(ip, "%txpy log")
    out = capsys.readouterr().out
    assert "a = 2" in out and first in out and out.splitlines()[0].startswith("*")
    run(ip, f"%txpy diff {first} HEAD")
    out = capsys.readouterr().out
    assert "added: b, lock" in out and "changed: a" in out
    run(ip, "%txpy status")
    out = capsys.readouterr().out
    assert str(ext.session.repo.path) in out and "history: ipython" in out
    assert "not stored: lock (lock)" in out
    run(ip, f"%txpy checkout {first}")
    assert ip.user_ns["a"] == 1 and "b" not in ip.user_ns
    run(ip, "%txpy branch")
    assert "detached" in capsys.readouterr().out
    run(ip, "%txpy branch experiment")
    run(ip, "%txpy branch")
    assert "* experiment" in capsys.readouterr().out
    assert ext.errors == []


@pytest.mark.parametrize("line", ["%txpy", "%txpy frobnicate", "%txpy checkout nope",
                                  "%txpy diff", "%txpy restore deadbeef", "%txpy log x y z",
                                  "%txpy session 'unclosed"])
def test_bad_input_gives_one_line_not_a_traceback(ip, capsys, line):
    loaded(ip)
    run(ip, "a = 1")
    capsys.readouterr()
    result = run(ip, line)
    captured = capsys.readouterr()
    assert result.success, captured
    text = (captured.out + captured.err).strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1 and text.startswith("txpy:")


def test_off_and_on(ip, capsys):
    ext = loaded(ip)
    run(ip, "a = [1]")
    run(ip, "%txpy off")
    run(ip, "a.append(2)\n1/0")
    assert ip.user_ns["a"] == [1, 2]
    run(ip, "%txpy on")
    run(ip, "a.append(3)\n1/0")
    assert ip.user_ns["a"] == [1, 2]
    assert ext.errors == []


def test_session_name_switches_history(ip, capsys):
    ext = loaded(ip)
    run(ip, "a = 1")
    run(ip, "%txpy session other")
    run(ip, "a = 2")
    assert ext.session.name == "other"
    assert ext.session.repo.histories() == ["ipython", "other"]


def test_restore_in_a_new_kernel_brings_back_functions_classes_and_imports(ip, capsys):
    loaded(ip)
    run(ip, "import numpy as np\nimport collections\n"
            "class Point:\n    def __init__(self, x):\n        self.x = x\n"
            "    def norm(self):\n        return abs(self.x) * SCALE\n"
            "SCALE = 2\np = Point(-3)\ndef twice(v):\n    return np.array([v, v]) * SCALE\n"
            "counts = collections.Counter('abca')")
    run(ip, "%unload_ext txpy")
    ip.reset()  # a new kernel: nothing in the namespace
    capsys.readouterr()
    run(ip, "%load_ext txpy")
    assert any("%txpy restore" in ln for ln in txpy_lines(capsys))
    run(ip, "%txpy restore")
    ns = ip.user_ns
    assert ns["p"].norm() == 6 and isinstance(ns["p"], ns["Point"])
    assert ns["twice"](2).tolist() == [4, 4] and ns["np"].__name__ == "numpy"
    assert ns["counts"] == {"a": 2, "b": 1, "c": 1}
    run(ip, "SCALE = 10")
    assert ns["p"].norm() == 30  # restored functions read the live namespace


def test_fresh_kernel_failing_first_cell_removes_what_it_created(ip, capsys):
    loaded(ip)
    run(ip, "keep = 1")
    run(ip, "%unload_ext txpy")
    ip.reset()
    run(ip, "%load_ext txpy")
    capsys.readouterr()
    run(ip, "made = 1\n1/0")
    assert "made" not in ip.user_ns
    assert txpy_lines(capsys) == ["txpy: rolled back after ZeroDivisionError: removed made"]


def test_commit_failure_keeps_cell_and_retries_next_cell(ip, capsys, monkeypatch):
    ext = loaded(ip)
    run(ip, "xs = []")
    real = ext.session.commit
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(ext.session, "commit", flaky)
    capsys.readouterr()
    assert run(ip, "xs.append(1)").success
    lines = txpy_lines(capsys)
    assert len(lines) == 1 and "could not save" in lines[0] and "disk full" in lines[0]
    run(ip, "y = 2")  # the retry must also see the earlier cell's in-place change
    assert ext.session.repo.tree(ext.session.head).names >= {"xs", "y"}
    assert front.extension(ip).errors[1:] == []
    import txpy
    assert txpy.load(ext.session.repo.path, "ipython")["xs"] == [1]


def test_second_kernel_on_same_history_gets_its_own_branch(ip, capsys):
    ext = loaded(ip)
    run(ip, "a = 1")
    other = types.SimpleNamespace(user_ns={"__name__": "__main__", "b": 2}, user_ns_hidden={},
                                  transform_cell=lambda s: s)
    capsys.readouterr()
    second = front.Extension(other, store=ext.store)
    try:
        assert not second.lease.held
        assert second.session.branch.startswith("main-kernel")
        assert any("another kernel" in ln for ln in txpy_lines(capsys))
        run(ip, "a = 2")
        assert ext.session.branch == "main" and ext.errors == [] and second.errors == []
    finally:
        second.detach()


def test_unload_leaves_the_shell_as_before(ip):
    before_events = {k: list(v) for k, v in ip.events.callbacks.items()}
    before_magics = dict(ip.magics_manager.magics["line"])
    before_registry = set(ip.magics_manager.registry)
    run(ip, "%load_ext txpy")
    assert "txpy" in ip.magics_manager.magics["line"]
    run(ip, "%unload_ext txpy")
    assert {k: list(v) for k, v in ip.events.callbacks.items()} == before_events
    assert dict(ip.magics_manager.magics["line"]) == before_magics
    assert set(ip.magics_manager.registry) == before_registry
    assert front.extension(ip) is None


def test_enable_is_load_ext(ip):
    from IPython.core import getipython

    import txpy
    assert getipython.get_ipython() is ip
    ext = txpy.enable()
    assert front.extension(ip) is ext and txpy.enable() is ext


def test_async_durability_from_the_magic(ip, capsys):
    run(ip, "%load_ext txpy")
    run(ip, "%txpy durability async")
    assert "durability: async" in capsys.readouterr().out
    run(ip, "xs = [1, 2]")
    run(ip, "xs.append(3); 1/0")
    assert ip.user_ns["xs"] == [1, 2]
    run(ip, "%txpy durability fast")
    assert "sync" in "".join(txpy_lines(capsys))
    run(ip, "%txpy status")
    assert "durability async" in capsys.readouterr().out


def test_history_is_named_after_the_notebook_jupyter_reports(ip, capsys, monkeypatch, tmp_path):
    (tmp_path / "work").mkdir()
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "work" / "churn.ipynb"))
    run(ip, "%load_ext txpy")
    run(ip, "a = 1")
    assert front.extension(ip).session.name == "work/churn.ipynb"


def test_status_shows_cells_not_yet_durable_and_wait_makes_them_durable(ip, capsys,
                                                                        monkeypatch):
    from txpy import background

    monkeypatch.setattr(background, "FORK_COST", 0.0)
    ext = loaded(ip)

    class Slow:
        def __reduce__(self):
            import time
            time.sleep(0.5)
            return Slow, ()

    ip.user_ns["Slow"] = Slow
    run(ip, "slow = Slow()\nx = 1", settle=False)
    run(ip, "%txpy status", settle=False)
    out = capsys.readouterr().out
    assert "not yet durable: 1 cell being captured in the background" in out
    assert "txpy's time per cell: median" in out
    run(ip, "%txpy wait", settle=False)
    assert "every cell is durable (waited for 1 being captured)" in capsys.readouterr().out
    assert ext.session.capturing() == 0 and "slow" in ext.session.repo.tree(
        ext.session.head).names
