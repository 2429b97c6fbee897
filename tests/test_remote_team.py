"""A team on one remote, over file:// and a loopback S3 server: two clones racing to push, the
loser keeping its work as a branch; a damaged remote noticed and healed by the next push."""

import threading

import fsspec
import numpy as np
import pytest

import txpy
from test_remote import bucket, s3_endpoint, txpy_cmd  # noqa: F401  (fixtures)
from txpy.errors import RemoteError
from txpy.remote import Remote, add_remote, pull, push
from txpy.repo import Repository

ROUNDS = 20


def quiet(message: str) -> None:
    pass


def _remote(kind, tmp_path, request):
    """(url, fsspec options, extra CLI arguments) of an empty remote of that kind."""
    if kind == "file":
        return (tmp_path / "remote").as_uri(), {}, []
    url, endpoint = request.getfixturevalue("bucket")
    return url, {"client_kwargs": {"endpoint_url": endpoint}}, ["--endpoint-url", endpoint]


def _member(tmp_path, who, url, options):
    """A clone of the remote with its own session on history h."""
    repo = Repository.open(tmp_path / who / ".txpy", create=True)
    add_remote(repo, "origin", url, options)
    pull(repo, Remote(url, options), "origin", trust=True)
    repo.close()
    session = txpy.Session(tmp_path / who / ".txpy", "h", {}, notify=quiet)
    session.restore()
    return session


def _at_once(*calls):
    """Run calls in threads released together; each one's exception, or None."""
    start = threading.Barrier(len(calls))
    outcomes = [None] * len(calls)

    def run(i, call):
        start.wait()
        try:
            call()
        except RemoteError as e:
            outcomes[i] = e

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_the_loser_of_each_push_race_publishes_its_work_as_a_branch(tmp_path, kind, request):
    url, options, extra = _remote(kind, tmp_path, request)
    first = txpy.Session(tmp_path / "seed" / ".txpy", "h", {"start": 0}, notify=quiet)
    first.commit()
    push(first.repo, Remote(url, options))
    team = {"alice": _member(tmp_path, "alice", url, options),
            "bob": _member(tmp_path, "bob", url, options)}
    expected = {}  # commit id -> (name, round) it holds
    for r in range(ROUNDS):
        for who, s in team.items():
            s.namespace[who] = np.full(1000, r)
            s.commit()
            expected[s.head.id] = (who, r)
        lost = _at_once(*[lambda s=s: push(s.repo, Remote(url, options)) for s in team.values()])
        assert sum(e is None for e in lost) == 1, lost  # exactly one winner
        loser = [who for who, e in zip(team, lost, strict=True) if e is not None][0]
        assert "push origin main:NEW-NAME" in str(lost[list(team).index(loser)])
        s = team[loser]
        told = pull(s.repo, Remote(url, options), "origin", trust=True)
        assert [(d.branch, d.remote) for d in told.diverged] == [("main", "origin")]
        push(s.repo, Remote(url, options), spec=f"main:{loser}-{r}")
        s.restore("origin/main", on_branch="main")  # and goes on from the team's main
    refs = Remote(url, options).read_refs()
    assert len(refs) == 1 + ROUNDS
    out = txpy_cmd("clone", url, str(tmp_path / "newcomer"), "--trust", *extra, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    store = tmp_path / "newcomer" / ".txpy"
    for cid, (who, r) in expected.items():  # every commit of both parties arrived, intact
        assert txpy.load(store, "h", cid)[who][0] == r
    assert txpy_cmd("fsck", "--store", str(store), cwd=tmp_path).returncode == 0


def test_a_diverged_pull_says_so_and_names_the_way_out(tmp_path):
    url = (tmp_path / "remote").as_uri()
    a = txpy.Session(tmp_path / "a" / ".txpy", "h", {"v": 0}, notify=quiet)
    a.commit()
    assert txpy_cmd("remote", "add", "origin", url, cwd=tmp_path / "a").returncode == 0
    assert txpy_cmd("push", cwd=tmp_path / "a").returncode == 0
    b = _member(tmp_path, "b", url, {})
    b.namespace["v"] = 2
    b.commit()
    push(b.repo, Remote(url))
    a.namespace["v"] = 1
    a.commit()
    refused = txpy_cmd("push", "origin", "main", cwd=tmp_path / "a")
    assert refused.returncode == 1 and "txpy push origin main:NEW-NAME" in refused.stderr
    pulled = txpy_cmd("pull", "--trust", cwd=tmp_path / "a")
    said = " ".join(pulled.stdout.split())
    assert f"your main and origin/main (h) diverged at {a.head.parents[0][:12]}" in said
    assert "do not merge like text" in said and "txpy push origin main:NAME" in said
    published = txpy_cmd("push", "origin", "main:alice-main", cwd=tmp_path / "a")
    assert published.returncode == 0 and "h/alice-main" in published.stdout
    assert {b for _, b in Remote(url).read_refs()} == {"main", "alice-main"}


def _damage_largest_chunk(url, options, how):
    fs, root = fsspec.core.url_to_fs(url, **options)
    files = fs.find(f"{root}/objects", detail=True)
    path = max(files, key=lambda p: files[p]["size"])
    body = fs.cat_file(path)
    fs.pipe_file(path, body[:-1] + bytes([body[-1] ^ 1]) if how == "flip" else body[:100])


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_push_verify_heals_a_damaged_remote_and_a_clean_clone_follows(tmp_path, kind, request):
    url, options, extra = _remote(kind, tmp_path, request)
    ns = {"x": np.random.default_rng(3).random(300_000)}  # 2.4 MB: 3 chunks
    s = txpy.Session(tmp_path / "a" / ".txpy", "h", ns, notify=quiet)
    s.commit()
    add_remote(s.repo, "origin", url, options)
    push(s.repo, Remote(url, options))
    _damage_largest_chunk(url, options, "flip")  # same size: only re-hashing notices
    checked = txpy_cmd("fsck", "--remote", "origin", cwd=tmp_path / "a")
    assert checked.returncode == 1 and "hash mismatch" in checked.stdout, checked
    assert "affects x" in " ".join(checked.stdout.split())
    healed = txpy_cmd("push", "--verify", cwd=tmp_path / "a")
    assert healed.returncode == 0 and "the remote was damaged: 1 of" in healed.stdout
    assert txpy_cmd("fsck", "--remote", "origin", cwd=tmp_path / "a").returncode == 0
    out = txpy_cmd("clone", url, str(tmp_path / "c"), "--trust", *extra, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert np.array_equal(txpy.load(tmp_path / "c" / ".txpy", "h")["x"], ns["x"])


def test_every_push_notices_a_truncated_chunk_and_resends_it(tmp_path):
    url = (tmp_path / "remote").as_uri()
    ns = {"x": np.random.default_rng(4).random(300_000)}
    s = txpy.Session(tmp_path / "a" / ".txpy", "h", ns, notify=quiet)
    s.commit()
    push(s.repo, Remote(url))
    _damage_largest_chunk(url, {}, "truncate")
    ns["y"] = 1
    s.commit()
    stats = push(s.repo, Remote(url))  # a plain push, nothing asked
    assert stats.repair.damaged == 1 and stats.repair.unrepaired == 0
    assert txpy_cmd("clone", url, str(tmp_path / "c"), "--trust", cwd=tmp_path).returncode == 0
    assert np.array_equal(txpy.load(tmp_path / "c" / ".txpy", "h")["x"], ns["x"])


def test_a_chunk_an_older_txpy_recompressed_is_checked_once_then_matches(tmp_path):
    url = (tmp_path / "remote").as_uri()
    ns = {"x": np.arange(300_000, dtype=np.float64)}  # compressible: stored by byte planes
    s = txpy.Session(tmp_path / "a" / ".txpy", "h", ns, notify=quiet)
    s.commit()
    push(s.repo, Remote(url))
    remote = Remote(url)
    key = max(remote.objects.sizes().items(), key=lambda kv: kv[1])[0]
    data, _ = remote.chunks.read(key)
    remote.objects.put_many([(key, b"\x00" + bytes(data))], replace=True)  # raw: sound, bigger
    first = push(s.repo, Remote(url))
    assert first.repair.damaged == 0 and remote.body(key) == s.repo.chunks.body(key)
