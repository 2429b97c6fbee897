"""A notebook user doing things at the wrong moment: hostile objects in the namespace, cells
that run cells, checkouts inside failing cells, failed commits, fresh kernels, broken stores.
Nothing is lost, every failing cell still rolls back, and every problem is one line."""

import sqlite3
import types

import pytest

import txpy
from test_ipython import loaded, run, txpy_lines
from txpy.frontends import ipython as front

HOSTILE = '''
class Grumpy(dict):
    def __len__(self):
        raise RuntimeError("len")
    def __iter__(self):
        raise RuntimeError("iter")
    def keys(self):
        raise RuntimeError("keys")
    def values(self):
        raise RuntimeError("values")

class Touchy:
    def __init__(self):
        self.items = [1]
    def __getattr__(self, name):
        if name.startswith("__"):  # pickle asks for __setstate__: see the restore tests
            raise AttributeError(name)
        raise RuntimeError(f"getattr {name}")
    def __eq__(self, other):
        raise RuntimeError("eq")
    def __hash__(self):
        raise RuntimeError("hash")

g = Grumpy(a=1)
t = Touchy()
xs = [0]
'''


def test_failing_cells_roll_back_whatever_user_objects_raise(ip, capsys):
    ext = loaded(ip)
    run(ip, HOSTILE)
    for cell in ("g['a'] = 2\nxs.append(1)\n1/0",
                 "t.items.append(2)\nxs.append(1)\nraise KeyError('x')",
                 "g2 = Grumpy(b=1)\ng['a'] = 3\n1/0"):
        capsys.readouterr()
        assert not run(ip, cell).success
        lines = txpy_lines(capsys)
        assert any("rolled back after" in line for line in lines), (lines, ext.errors)
        ns = ip.user_ns
        assert dict.__getitem__(ns["g"], "a") == 1 and ns["xs"] == [0]
        assert object.__getattribute__(ns["t"], "items") == [1] and "g2" not in ns
    assert not [e for e in ext.errors if isinstance(e, AssertionError)]


def test_a_cell_that_runs_a_cell_then_fails_is_rolled_back_whole(ip, capsys):
    loaded(ip)
    run(ip, "xs = [1]")
    capsys.readouterr()
    assert not run(ip, "get_ipython().run_cell('xs.append(2)')\nxs.append(3)\n1/0").success
    assert ip.user_ns["xs"] == [1]
    assert txpy_lines(capsys) == ["txpy: rolled back after ZeroDivisionError: xs"]
    run(ip, "get_ipython().run_cell('xs.append(4)')")  # and a nested cell that works commits
    assert txpy.load(front.extension(ip).session.repo.path, "ipython")["xs"] == [1, 4]


def test_a_checkout_inside_a_failing_cell_is_undone(ip, capsys):
    ext = loaded(ip)
    run(ip, "a = 1")
    first = ext.session.head.short
    run(ip, "a = 2\nb = [1]")
    head, branch = ext.session.head.id, ext.session.branch
    capsys.readouterr()
    assert not run(ip, f"b.append(2)\n%txpy checkout {first}\nc = 3\n1/0").success
    ns = ip.user_ns
    assert ns["a"] == 2 and ns["b"] == [1] and "c" not in ns
    assert (ext.session.head.id, ext.session.branch) == (head, branch)
    assert ext.session.repo.refs.branches("ipython")[branch] == head
    run(ip, "d = 4")  # the history goes on from where it was
    assert ext.session.branch == branch and ext.errors == []


def _failing_commits(ext, monkeypatch, failures):
    real = ext.session.commit
    left = [failures]

    def flaky(*args, **kwargs):
        if left[0] > 0:
            left[0] -= 1
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(ext.session, "commit", flaky)


def test_a_failing_cell_after_a_failed_commit_keeps_that_cells_results(ip, capsys, monkeypatch):
    ext = loaded(ip)
    run(ip, "xs = []")
    _failing_commits(ext, monkeypatch, 1)
    run(ip, "xs.append(1)")  # could not be saved: kept in memory
    assert not run(ip, "xs.append(2)\n1/0").success
    assert ip.user_ns["xs"] == [1]
    assert txpy.load(ext.session.repo.path, "ipython")["xs"] == [1]


def test_when_the_state_cannot_be_saved_a_rollback_throws_nothing_away(ip, capsys,
                                                                       monkeypatch):
    ext = loaded(ip)
    run(ip, "xs = []")
    _failing_commits(ext, monkeypatch, 2)
    run(ip, "xs.append(1)")
    capsys.readouterr()
    assert not run(ip, "xs.append(2)\n1/0").success
    assert ip.user_ns["xs"] == [1, 2]
    lines = txpy_lines(capsys)
    assert any("cannot roll back" in line and "disk full" in line for line in lines), lines
    run(ip, "y = 1")  # the store works again: everything is saved
    assert txpy.load(ext.session.repo.path, "ipython")["xs"] == [1, 2]


def test_a_fresh_kernel_that_ran_cells_still_restores_the_saved_state(ip, capsys):
    loaded(ip)
    run(ip, "import math\ndata = [1, 2, 3]\nmodel = {'w': 0.5}")
    run(ip, "%unload_ext txpy")
    ip.reset()  # the kernel died; a new one
    run(ip, "%load_ext txpy")
    run(ip, "import math\nscratch = 7")  # the user re-runs a cell before restoring
    capsys.readouterr()
    run(ip, "%txpy restore")
    out = capsys.readouterr().out
    ns = ip.user_ns
    assert ns["data"] == [1, 2, 3] and ns["model"] == {"w": 0.5} and ns["math"].pi > 3
    assert ns["scratch"] == 7 and "kept from this kernel" in out and "scratch" in out
    ext = front.extension(ip)
    assert ext.session.branch == "main"
    state = txpy.load(ext.session.repo.path, "ipython")
    assert state["data"] == [1, 2, 3] and state["scratch"] == 7


@pytest.mark.parametrize("damage", ["garbage", "newer format"])
def test_a_store_that_cannot_be_opened_says_so_and_the_notebook_goes_on(ip, capsys, damage):
    run(ip, "%load_ext txpy")
    run(ip, "a = 1")
    path = front.extension(ip).session.repo.path
    run(ip, "%unload_ext txpy")
    if damage == "garbage":
        (path / "txpy.db").write_bytes(b"not a database" * 100)
        for wal in path.glob("txpy.db-*"):
            wal.unlink()
    else:
        conn = sqlite3.connect(path / "txpy.db")
        conn.execute("UPDATE info SET value='99' WHERE key='format'")
        conn.commit()
        conn.close()
    capsys.readouterr()
    result = run(ip, "%load_ext txpy")
    captured = capsys.readouterr()
    text = (captured.out + captured.err).strip()
    assert result.success and "Traceback" not in text
    assert len(text.splitlines()) == 1 and "NOT being saved" in text, text
    assert run(ip, "b = 2\n").success
    run(ip, "%txpy status")
    status = capsys.readouterr()
    assert "Traceback" not in status.out + status.err
    assert "not attached" in status.out + status.err


class _Kernel:
    """Another kernel on the same history, driven through the extension's cell hooks."""

    def __init__(self):
        self.ext = front.Extension(types.SimpleNamespace(
            user_ns={"__name__": "__main__"}, user_ns_hidden={}, transform_cell=lambda s: s))

    def cell(self, source):
        info = types.SimpleNamespace(raw_cell=source)
        self.ext.pre_run_cell(info)
        exec(source, self.ext.ip.user_ns)
        self.ext.post_run_cell(types.SimpleNamespace(info=info, error_in_exec=None,
                                                     error_before_exec=None))
        self.ext.session.wait()  # its commit, captured in the background, is in the store


def test_a_third_kernel_restores_without_taking_over_a_live_kernels_branch(ip, capsys):
    first = _Kernel()  # live, holds the history
    second = _Kernel()  # live too, on a branch of its own
    try:
        first.cell("x = 1")
        second.cell("y = 2")
        main_tip = first.ext.session.repo.refs.tip("ipython", "main")
        run(ip, "%load_ext txpy")
        capsys.readouterr()
        run(ip, "%txpy restore")
        out = capsys.readouterr().out
        assert "another kernel is live" in out and "restored" in out
        mine = front.extension(ip).session.branch
        assert mine not in ("main", second.ext.session.branch)
        run(ip, "z = 3")
        refs = first.ext.session.repo.refs
        assert refs.tip("ipython", "main") == main_tip
        first.cell("x = 4")  # the live kernels go on where they were, unmoved
        second.cell("y = 5")
        assert first.ext.session.branch == "main" and refs.tip("ipython", mine) is not None
        assert first.ext.errors == [] and second.ext.errors == []
        assert len(set(refs.branches("ipython"))) == 3
    finally:
        first.ext.detach()
        second.ext.detach()


def test_warnings_turned_into_errors_do_not_break_a_commit(ip, capsys):
    ext = loaded(ip)
    run(ip, "import warnings, threading\nwarnings.filterwarnings('error')")
    capsys.readouterr()
    assert run(ip, "lock = threading.Lock()\nkept = [1, 2]").success
    assert any("'lock' is not stored" in line for line in txpy_lines(capsys))
    tree = ext.session.repo.tree(ext.session.head)
    assert "kept" in tree.components and "lock" in tree.unstored and ext.errors == []
    run(ip, "warnings.resetwarnings()")


def test_a_variable_txpy_never_stores_is_announced_once(ip, capsys):
    loaded(ip)
    capsys.readouterr()
    run(ip, "__meta__ = {'run': 1}\n_sh = 2\nfor _ in range(2):\n    pass\nx = __name__")
    lines = txpy_lines(capsys)
    assert len(lines) == 2 and "'__meta__' is not stored" in lines[0] and "'_sh'" in lines[1]
    run(ip, "__meta__ = {'run': 2}")
    assert txpy_lines(capsys) == []
