"""The `txpy` command as a user runs it: real subprocesses in a directory holding a store."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import txpy
from conftest import corrupt_object

TXPY = str(Path(sys.executable).with_name("txpy"))


def txpy_cmd(*args, cwd, stdin=None):
    return subprocess.run([TXPY, *args], cwd=cwd, input=stdin, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def project(tmp_path):
    ns: dict = {}
    s = txpy.Session(tmp_path / ".txpy", "nb", ns, notify=lambda m: None)
    ns["model"] = {"w": [0.0, 0.0]}
    c1 = s.commit("init")
    ns["model"]["w"][0] = 1.5
    ns["extra"] = "hello"
    c2 = s.commit("train")
    s.close()
    (tmp_path / "sub").mkdir()
    return tmp_path, c1, c2


def test_log_show_diff_branch_from_a_subdirectory(project):
    root, c1, c2 = project
    cwd = root / "sub"  # the store is found in a parent, like git
    log = txpy_cmd("log", cwd=cwd)
    assert log.returncode == 0 and c1[:12] in log.stdout and "HEAD -> main" in log.stdout
    assert "+extra" in log.stdout and "~model" in log.stdout  # what each commit changed
    assert "history nb" in txpy_cmd("log", "nb", cwd=cwd).stdout
    unknown = txpy_cmd("log", "other.py", cwd=cwd)
    assert unknown.returncode == 1 and "no history 'other.py'" in unknown.stderr
    show = txpy_cmd("show", c2[:8], cwd=cwd)
    assert show.returncode == 0 and "extra" in show.stdout and "model" in show.stdout
    diff = txpy_cmd("diff", c1[:8], "HEAD", cwd=cwd)
    assert "added: extra" in diff.stdout and "changed: model" in diff.stdout
    assert "* main" in txpy_cmd("branch", cwd=cwd).stdout
    status = txpy_cmd("status", cwd=cwd).stdout
    assert str(root / ".txpy") in status and "branch:  main" in status and c2[:12] in status


def test_fsck_and_gc(project):
    root, _, _ = project
    fsck = txpy_cmd("fsck", cwd=root)
    assert fsck.returncode == 0 and "ok" in fsck.stdout
    assert "removed 0" in txpy_cmd("gc", cwd=root).stdout


def test_fsck_exits_nonzero_on_damage(project):
    root, _, _ = project
    corrupt_object(root / ".txpy")
    fsck = txpy_cmd("fsck", cwd=root)
    assert fsck.returncode == 1 and "damaged" in fsck.stdout


def test_shell_opens_the_state_of_a_commit(project):
    root, c1, _ = project
    out = txpy_cmd("shell", c1[:10], cwd=root, stdin="print('W=', model['w'])\nexit()\n")
    assert out.returncode == 0 and "W= [0.0, 0.0]" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["log"], "no txpy store"),
    (["show", "HEAD", "--store", "nowhere"], "not a txpy store"),
])
def test_user_mistakes_are_one_line_errors(tmp_path, args, message):
    out = txpy_cmd(*args, cwd=tmp_path)
    assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr


def test_unknown_commit_is_one_line(project):
    root, _, _ = project
    out = txpy_cmd("show", "deadbeef", cwd=root)
    assert out.returncode == 1 and "unknown commit" in out.stderr and "Traceback" not in out.stderr


def test_demo_runs_and_reads_well_at_80_columns(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out = txpy_cmd("demo", "--dir", str(tmp_path / "d"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "rolled back" in out.stdout + out.stderr and "checkout" in out.stdout
    assert re.search(r"w is still \[-?\d\.\d+, -?\d\.\d+\]", out.stdout)  # not cut in two
    assert "HEAD -> main" in out.stdout
    too_wide = [ln for ln in out.stdout.splitlines() if len(ln) > 80 and str(tmp_path) not in ln]
    assert too_wide == []
