"""What a user reads from `txpy log/show/diff/branch/status/fsck` and the %txpy magics: the
porcelain verbs' lines, which every face prints as they are."""

import re
import threading
from dataclasses import replace

import numpy as np
import pytest

import txpy
from txpy import porcelain
from txpy.errors import TxpyError
from txpy.humanize import wrap
from txpy.store.chunks import chunk_key


@pytest.fixture
def nb(tmp_path):
    s = txpy.Session(tmp_path / ".txpy", "nb", {}, notify=lambda m: None)
    yield s
    s.close()


def line_of(lines, text):
    [line] = [ln for ln in lines if text in ln]
    return line


def test_log_marks_head_and_shows_each_branch_at_its_commit(nb):
    nb.namespace["a"] = 1
    first = nb.commit("load the data")
    nb.namespace.update(a=2, b="x")
    second = nb.commit("clean it")
    nb.create_branch("raw", first)
    lines = porcelain.log(nb.repo, "nb")
    assert lines[0] == "history nb"
    top = lines[1]
    assert top.startswith(f"* {second[:12]}") and top.endswith("HEAD -> main")
    assert line_of(lines, first[:12]).startswith(f"  {first[:12]}")  # not HEAD
    assert line_of(lines, first[:12]).endswith("raw")
    assert "    clean it" in lines and "    +b ~a" in lines
    assert porcelain.log(nb.repo, "nb", title=False)[0] == top


def test_detached_head_is_marked_in_log_and_branches(nb):
    nb.namespace["a"] = 1
    first = nb.commit()
    nb.namespace["a"] = 2
    nb.commit()
    nb.create_branch("keep", first)
    nb.checkout(first)
    log = porcelain.log(nb.repo, "nb", title=False)
    assert line_of(log, first[:12]).startswith(f"* {first[:12]}")
    assert line_of(log, first[:12]).endswith("HEAD, keep")
    branches = porcelain.branches(nb.repo, "nb", title=False)
    assert f"* (HEAD detached at {first[:12]})" in branches
    assert not [b for b in branches if b.startswith("* keep") or b.startswith("* main")]
    assert "branch:  (detached)" in porcelain.status(nb.repo, "nb")


def test_log_limit_says_how_many_older_commits_it_left_out(nb):
    for i in range(5):
        nb.namespace["i"] = i
        nb.commit(f"step {i}")
    lines = porcelain.log(nb.repo, "nb", limit=2, title=False)
    assert "    step 4" in lines and "    step 3" in lines and "    step 2" not in lines
    assert lines[-1] == "  ... 3 older commits not shown"


def test_show_gives_each_variable_its_type_shape_and_size(nb):
    ns = nb.namespace
    ns["arr"] = np.zeros((1000, 3))
    ns["items"] = list(range(12))
    ns["index"] = {"all": ns["items"]}  # shares the list: one component for both
    ns["lock"] = threading.Lock()
    nb.commit("data")
    lines = porcelain.show(nb.repo, "nb", "HEAD")
    arr = line_of(lines, "  arr ")
    assert "ndarray float64 (1000, 3)" in arr
    assert re.search(r"23\.\d KB$", arr)  # 24,000 bytes of buffer plus a small pickle stream
    items = line_of(lines, "  items ")
    assert "list len 12" in items and items.endswith("with index")
    assert line_of(lines, "not stored: lock").startswith("not stored: lock (lock):")
    assert lines[2] == "data"  # the message, under the header
    assert line_of(lines, "environment:").startswith("environment: python ")


def test_show_of_a_commit_from_before_kinds_names_each_component(nb):
    nb.namespace["a"] = [1, 2]
    nb.commit()
    head = nb.repo.resolve("nb")
    tree = replace(nb.repo.tree(head), kinds={})  # as txpy wrote trees before it had kinds
    data = tree.to_bytes()
    key = chunk_key(data)
    nb.repo.chunks.put_many([(key, data, 1)])
    old = replace(head, id="", tree=key, parents=(head.id,), message="older").sealed()
    nb.repo.new_commit(old, "main")
    row = line_of(porcelain.show(nb.repo, "nb", old.id), "  a ")
    assert f"component {tree.components['a'][:12]}" in row


def test_long_lists_of_names_wrap_at_80_columns_between_names(nb):
    names = [f"feature_column_number_{i:02d}" for i in range(40)]
    nb.namespace.update({n: i for i, n in enumerate(names)})
    first = nb.commit()
    for n in names:
        nb.namespace[n] += 1
    nb.commit()
    for lines in (porcelain.diff(nb.repo, "nb", first), porcelain.log(nb.repo, "nb"),
                  porcelain.show(nb.repo, "nb", "HEAD")):
        assert all(len(ln) <= 80 for ln in lines), [ln for ln in lines if len(ln) > 80]
    diff = porcelain.diff(nb.repo, "nb", first)
    assert diff[0].startswith("changed: feature_column_number_00,")
    assert all(ln.startswith("    feature_column_number_") for ln in diff[1:])
    shown = {w.rstrip(",") for ln in diff for w in ln.split()}
    assert set(names) <= shown  # every name whole, none cut in two


def test_wrap_keeps_a_word_wider_than_a_line_whole():
    long = "x" * 90
    assert wrap(["a", long, "b"], lead="names:", sep=",") == ["names: a,", f"    {long},", "    b"]


def test_diff_of_equal_commits_and_fsck_with_progress(nb):
    nb.namespace["a"] = 1
    nb.commit()
    assert porcelain.diff(nb.repo, "nb", "HEAD", "HEAD") == ["no differences"]
    seen = []
    checked = porcelain.fsck(nb.repo, lambda i, n: seen.append((i, n)))
    assert checked.ok and seen == [(0, 1)]
    assert checked.lines()[-1].endswith("checked: ok")


def test_a_ref_in_a_store_of_several_histories_needs_a_history(tmp_path):
    for name in ("one", "two"):
        with txpy.Session(tmp_path / ".txpy", name, {"v": name}, notify=lambda m: None) as s:
            s.commit()
    repo = txpy.Repository.open(tmp_path / ".txpy")
    with pytest.raises(TxpyError, match="ambiguous"):
        porcelain.show(repo, None, "HEAD")
    assert [ln for ln in porcelain.log(repo) if ln.startswith("history")] == [
        "history one", "history two"]
    repo.close()


def test_an_empty_store_says_it_has_no_commits(tmp_path):
    repo = txpy.Repository.open(tmp_path / ".txpy", create=True)
    assert porcelain.log(repo) == ["the store has no commits yet"]
    assert porcelain.log(repo, "nb") == ["history 'nb' has no commits yet"]
    with pytest.raises(TxpyError, match="no commits yet"):
        porcelain.show(repo, None, "HEAD")
    repo.close()


def test_commit_ids_are_what_the_caller_sealed(nb):
    nb.namespace["a"] = 1
    nb.commit()
    head = nb.repo.resolve("nb")
    child = replace(head, id="", parents=(head.id,), message="by hand").sealed()
    assert nb.repo.new_commit(child, "main") == (child, "main")
    assert nb.repo.read_commit(child.id) == child
    with pytest.raises(ValueError, match="sealed"):
        nb.repo.new_commit(replace(child, id=""), "main")
