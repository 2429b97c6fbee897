"""A remote as a hostile or careless world leaves it: tampered unsigned fields, places that are
not txpy remotes, clones killed half-way, unreachable servers, damaged records. Each ends in
one line that says what is wrong, never a traceback, and never in using what was tampered."""

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time

import numpy as np
import pytest

import txpy
from test_remote import TXPY, s3_endpoint, txpy_cmd  # noqa: F401  (a fixture)
from txpy.errors import CorruptStoreError, StoreVersionError
from txpy.remote import Remote, push
from txpy.store.backend import LocalBackend
from txpy.store.chunks import ChunkStore


def quiet(message: str) -> None:
    pass


def _pushed(tmp_path, ns=None):
    """A store with one commit of history h, pushed to a file:// remote: (url, dir, commit)."""
    url = (tmp_path / "remote").as_uri()
    s = txpy.Session(tmp_path / "a" / ".txpy", "h", ns or {"x": list(range(50))},
                     notify=quiet)
    cid = s.commit()
    push(s.repo, Remote(url))
    s.close()
    return url, tmp_path / "remote", cid


def one_line_error(out):
    """The command failed with exactly one line on stderr, and that line."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def _clone(tmp_path, url, *extra, env=None):
    return subprocess.run([TXPY, "clone", url, str(tmp_path / "c"), "--trust", *extra],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)


def _edit_record(remote_dir, cid, edit):
    path = LocalBackend(remote_dir / "commits").path(cid)
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


# --- every field that is used is authenticated ----------------------------------------------
@pytest.mark.parametrize("field, value", [("history", "elsewhere"), ("time", 1.0)])
def test_a_record_whose_unsigned_fields_disagree_with_its_signed_body_is_refused(
        tmp_path, field, value):
    url, remote_dir, cid = _pushed(tmp_path)
    _edit_record(remote_dir, cid, lambda r: r.update({field: value}))
    assert "tampered with; refused" in one_line_error(_clone(tmp_path, url))
    assert not (tmp_path / "c" / ".txpy").exists()


def test_fsck_finds_a_commit_filed_under_another_history_than_it_was_signed_for(tmp_path):
    _, _, cid = _pushed(tmp_path)
    with sqlite3.connect(tmp_path / "a" / ".txpy" / "txpy.db") as db:  # as an old pull did
        db.execute("UPDATE commits SET history='elsewhere' WHERE id=?", (cid,))
    out = txpy_cmd("fsck", cwd=tmp_path / "a")
    assert out.returncode == 1 and "filed under history 'elsewhere', signed as 'h'" in out.stdout


def test_a_ref_claiming_another_history_is_refused(tmp_path):
    url, remote_dir, _ = _pushed(tmp_path)
    (ref,) = (remote_dir / "refs").iterdir()
    body = json.loads(ref.read_text())
    ref.write_text(json.dumps({**body, "history": "elsewhere"}))
    assert "filed under another key" in one_line_error(_clone(tmp_path, url))


def _pushed_twice(tmp_path):
    """A remote whose main moved twice: (url, remote dir, first commit, ref files by version)."""
    url = (tmp_path / "remote").as_uri()
    ns = {"x": 1}
    s = txpy.Session(tmp_path / "a" / ".txpy", "h", ns, notify=quiet)
    first = s.commit()
    push(s.repo, Remote(url))
    ns["x"] = 2
    s.commit()
    push(s.repo, Remote(url))
    s.close()
    refs = sorted((tmp_path / "remote" / "refs").iterdir())
    return url, tmp_path / "remote", first, refs


def test_a_branch_pointed_back_at_an_older_signed_commit_is_refused(tmp_path):
    url, _, first, refs = _pushed_twice(tmp_path)
    body = json.loads(refs[-1].read_text())
    refs[-1].write_text(json.dumps({**body, "commit": first}))  # a real commit of h, signed
    assert "does not match its signature" in one_line_error(_clone(tmp_path, url))


def test_an_old_ref_file_replayed_as_a_newer_version_is_refused(tmp_path):
    url, _, _, refs = _pushed_twice(tmp_path)
    stem = refs[0].name.rpartition(".")[0]
    (refs[0].parent / f"{stem}.{2:012d}").write_bytes(refs[0].read_bytes())
    assert "does not match its signature" in one_line_error(_clone(tmp_path, url))


def test_a_ref_an_older_txpy_wrote_without_a_signature_is_still_read(tmp_path):
    url, _, _, refs = _pushed_twice(tmp_path)
    body = json.loads(refs[-1].read_text())
    refs[-1].write_text(json.dumps({k: body[k] for k in ("history", "branch", "commit")}))
    assert _clone(tmp_path, url).returncode == 0
    assert txpy.load(tmp_path / "c" / ".txpy", "h")["x"] == 2


# --- a remote has a marker ------------------------------------------------------------------
def test_clone_of_what_is_not_a_txpy_remote_says_so(tmp_path):
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "thesis.pdf").write_bytes(b"%PDF")
    for where in (tmp_path / "nothing-here", tmp_path / "papers"):
        line = one_line_error(_clone(tmp_path, where.as_uri()))
        assert "is not a txpy remote" in line
    assert not (tmp_path / "nothing-here").exists()  # reading made nothing


def test_clone_of_a_bucket_that_does_not_exist_says_so(tmp_path, request):
    endpoint = request.getfixturevalue("s3_endpoint")
    line = one_line_error(_clone(tmp_path, "s3://no-such-bucket-here/p", "--endpoint-url",
                                 endpoint))
    assert "not a txpy remote" in line or "not found" in line


def test_push_into_a_directory_of_other_files_refuses_and_mixes_nothing_in(tmp_path):
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "thesis.pdf").write_bytes(b"%PDF")
    s = txpy.Session(tmp_path / "a" / ".txpy", "h", {"x": 1}, notify=quiet)
    s.commit()
    txpy_cmd("remote", "add", "origin", (tmp_path / "papers").as_uri(), cwd=tmp_path / "a")
    assert "push to an empty directory" in one_line_error(txpy_cmd("push", cwd=tmp_path / "a"))
    assert [p.name for p in (tmp_path / "papers").iterdir()] == ["thesis.pdf"]


def test_a_remote_of_a_newer_format_asks_for_an_upgrade(tmp_path):
    url, remote_dir, _ = _pushed(tmp_path)
    (remote_dir / "txpy-remote").write_text('{"format": 99}')
    assert "upgrade txpy" in one_line_error(_clone(tmp_path, url))


# --- a killed clone can be re-run -----------------------------------------------------------
def test_a_clone_killed_midway_is_resumed_by_running_it_again(tmp_path):
    ns = {"a": np.random.default_rng(5).random(8_000_000), "b": np.arange(10)}  # 64 chunks
    url, _, _ = _pushed(tmp_path, ns)
    proc = subprocess.Popen([TXPY, "clone", url, str(tmp_path / "c"), "--trust"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    objects = tmp_path / "c" / ".txpy.partial" / "objects"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(objects.glob("*")) if objects.exists() else []) < 10:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 10 <= len(list(objects.glob("*"))) < 64, "killed too late to test a resume"
    assert not (tmp_path / "c" / ".txpy").exists()  # never a half clone under the real name
    again = _clone(tmp_path, url)
    assert again.returncode == 0, again.stderr
    fetched = int(re.search(r"(\d+)\s+chunks", again.stdout).group(1))
    assert fetched <= 64 + 3 - 10  # what the killed clone had fetched is not fetched again
    fsck = txpy_cmd("fsck", "--store", str(tmp_path / "c" / ".txpy"), cwd=tmp_path)
    assert fsck.returncode == 0 and "1 commits" in fsck.stdout, fsck.stdout
    state = txpy.load(tmp_path / "c" / ".txpy", "h")
    assert all(np.array_equal(state[k], v) for k, v in ns.items())
    assert txpy_cmd("pull", cwd=tmp_path / "c").returncode == 0  # origin recorded


# --- one line, never a traceback ------------------------------------------------------------
@pytest.mark.parametrize("damage", ["empty", "truncated", "no signer"])
def test_a_damaged_commit_record_is_one_line(tmp_path, damage):
    url, remote_dir, cid = _pushed(tmp_path)
    path = LocalBackend(remote_dir / "commits").path(cid)
    if damage == "no signer":
        _edit_record(remote_dir, cid, lambda r: r.pop("signer"))
    else:
        path.write_bytes(b"" if damage == "empty" else path.read_bytes()[:40])
    assert "is damaged" in one_line_error(_clone(tmp_path, url))


def test_a_truncated_ref_is_one_line(tmp_path):
    url, remote_dir, _ = _pushed(tmp_path)
    (ref,) = (remote_dir / "refs").iterdir()
    ref.write_bytes(ref.read_bytes()[:10])
    assert "is damaged" in one_line_error(_clone(tmp_path, url))


def test_a_closed_port_is_one_line(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    line = one_line_error(_clone(tmp_path, "s3://b/p", "--endpoint-url",
                                 f"http://127.0.0.1:{port}", env=env))
    assert "cannot reach s3://b/p" in line and "--endpoint-url" in line


def test_missing_credentials_are_one_line(tmp_path, request):
    endpoint = request.getfixturevalue("s3_endpoint")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")
    line = one_line_error(_clone(tmp_path, "s3://b/p", "--endpoint-url", endpoint, env=env))
    assert "no credentials" in line


def test_push_to_a_bucket_that_does_not_exist_is_one_line(tmp_path, request):
    endpoint = request.getfixturevalue("s3_endpoint")
    s = txpy.Session(tmp_path / "a" / ".txpy", "h", {"x": 1}, notify=quiet)
    s.commit()
    txpy_cmd("remote", "add", "origin", "s3://no-such-bucket-here/p", "--endpoint-url",
             endpoint, cwd=tmp_path / "a")
    assert "no-such-bucket-here" in one_line_error(txpy_cmd("push", cwd=tmp_path / "a"))


def test_a_remote_url_that_is_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    s = txpy.Session(tmp_path / "a" / ".txpy", "h", {"x": 1}, notify=quiet)
    s.commit()
    txpy_cmd("remote", "add", "origin", (tmp_path / "notes.txt").as_uri(), cwd=tmp_path / "a")
    assert "is a file, not a directory" in one_line_error(txpy_cmd("push", cwd=tmp_path / "a"))
    assert "not a directory" in one_line_error(_clone(tmp_path, (tmp_path / "notes.txt").as_uri()))
    assert (tmp_path / "notes.txt").read_text() == "hello"


def test_an_http_remote_is_refused_when_added(tmp_path):
    s = txpy.Session(tmp_path / "a" / ".txpy", "h", {"x": 1}, notify=quiet)
    s.commit()
    line = one_line_error(txpy_cmd("remote", "add", "origin", "http://example.com/r",
                                   cwd=tmp_path / "a"))
    assert "read-only" in line


def test_a_damaged_or_empty_chunk_is_damage_not_a_newer_txpy(tmp_path):
    chunks = ChunkStore(LocalBackend(tmp_path / "s"))
    for body in (b"", b"\x07", b"\xff" + bytes(1000), b"\x02\x00" + bytes(100)):
        with pytest.raises(CorruptStoreError, match="is damaged"):
            chunks.decode("ab" * 32, body)
    with pytest.raises(StoreVersionError, match="upgrade txpy"):
        chunks.decode("ab" * 32, b"\x07" + bytes(1000))
