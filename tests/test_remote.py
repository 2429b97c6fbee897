"""Replicability against real remotes: a directory (file://) and an S3 server on loopback
(moto's standalone server), with clones restored in separate Python processes."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import txpy
from txpy import env
from txpy.errors import CorruptStoreError, RemoteError, UntrustedError
from txpy.remote import Remote, get_remote, pull, push
from txpy.repo import Repository
from txpy.store.backend import LocalBackend

TXPY = str(Path(sys.executable).with_name("txpy"))
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def bucket(s3_endpoint, request):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    name = "b" + str(abs(hash(request.node.name)))[:12]
    fs.mkdir(name)
    return f"s3://{name}/projects/churn", s3_endpoint


def txpy_cmd(*args, cwd):
    out = subprocess.run([TXPY, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    return out


ORIGIN_CELLS = """
    import numpy as np, pandas as pd, torch
    torch.manual_seed(0)
    X = np.random.default_rng(0).random((200_000, 4))          # 6.4 MB
    df = pd.DataFrame({"a": np.arange(1000), "s": [f"r{i}" for i in range(1000)]})
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    def train():
        opt.zero_grad()
        loss = model(torch.as_tensor(X[:64], dtype=torch.float32)).pow(2).mean()
        loss.backward()
        opt.step()
        return loss.item()
    losses = [train() for _ in range(3)]
"""

CHECK = textwrap.dedent("""
    import json, sys, numpy as np, pandas as pd, torch, txpy
    store, expected = sys.argv[1], json.load(open(sys.argv[2]))
    s = txpy.load(store, "nb")
    assert float(s["X"].sum()) == expected["X_sum"] and s["X"].shape == tuple(expected["X_shape"])
    assert s["df"]["s"].tolist()[-1] == "r999" and int(s["df"]["a"].sum()) == 499500
    params = [p.detach().numpy().tolist() for p in s["model"].parameters()]
    assert params == expected["params"], "model differs"
    assert s["opt"].param_groups[0]["params"][0] is next(s["model"].parameters())
    assert s["losses"] == expected["losses"]
    torch.manual_seed(5)
    assert s["train"]() == expected["next_loss"], "training does not continue identically"
    print("CLONE OK")
""")


def _origin(root: Path) -> tuple[dict, Path]:
    ns: dict = {"__name__": "__main__"}
    s = txpy.Session(root / ".txpy", "nb", ns, notify=lambda m: None)
    exec(textwrap.dedent(ORIGIN_CELLS), ns)
    s.commit("train")
    import torch

    expected = {
        "X_sum": float(ns["X"].sum()), "X_shape": list(ns["X"].shape), "losses": ns["losses"],
        "params": [p.detach().numpy().tolist() for p in ns["model"].parameters()],
    }
    state = txpy.load(root / ".txpy", "nb")  # the next step, on a copy: the origin stays as is
    torch.manual_seed(5)
    expected["next_loss"] = state["train"]()
    path = root / "expected.json"
    path.write_text(json.dumps(expected))
    s.close()
    return ns, path


def _check_clone_in_new_process(store: Path, expected: Path) -> None:
    out = subprocess.run([sys.executable, "-c", CHECK, str(store), str(expected)],
                         capture_output=True, text=True, timeout=300)
    assert "CLONE OK" in out.stdout, out.stderr


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_push_clone_restore_in_another_process(tmp_path, kind, request):
    origin = tmp_path / "origin"
    origin.mkdir()
    _, expected = _origin(origin)
    if kind == "file":
        url, extra = (tmp_path / "remote").as_uri(), []
    else:
        url, endpoint = request.getfixturevalue("bucket")
        extra = ["--endpoint-url", endpoint]
    assert txpy_cmd("remote", "add", "origin", url, *extra, cwd=origin).returncode == 0
    pushed = txpy_cmd("push", cwd=origin)
    assert pushed.returncode == 0 and "pushed to origin: 1 commits" in pushed.stdout, pushed
    refused = txpy_cmd("clone", url, str(tmp_path / "untrusting"), *extra, cwd=tmp_path)
    assert refused.returncode == 1 and "does not trust" in refused.stderr
    assert not (tmp_path / "untrusting" / ".txpy").exists()
    cloned = txpy_cmd("clone", url, str(tmp_path / "copy"), "--trust", *extra, cwd=tmp_path)
    assert cloned.returncode == 0, cloned.stderr
    _check_clone_in_new_process(tmp_path / "copy" / ".txpy", expected)


def test_second_push_moves_only_new_chunks_and_pull_brings_them(tmp_path, bucket):
    url, endpoint = bucket
    options = {"client_kwargs": {"endpoint_url": endpoint}}
    ns = {"big": np.random.default_rng(1).random(2_000_000)}  # 16 MB, ~13 MB compressed
    s = txpy.Session(tmp_path / "a" / ".txpy", "h", ns, notify=lambda m: None)
    s.commit()
    remote = Remote(url, options)
    first = push(s.repo, remote)
    ns["big"][123] = -1.0
    s.commit()
    second = push(s.repo, remote)
    assert first.bytes > 12_000_000 and second.bytes < 1_500_000 and second.objects <= 4
    txpy_cmd("clone", url, str(tmp_path / "b"), "--trust", "--endpoint-url", endpoint,
             cwd=tmp_path)
    ns["big"][7] = -2.0
    s.commit()
    push(s.repo, remote)
    b = Repository.open(tmp_path / "b" / ".txpy")
    _, origin = get_remote(b, "origin")
    got = pull(b, origin, "origin")
    assert got.commits == 1 and got.bytes < 1_500_000
    b.close()
    state = txpy.load(tmp_path / "b" / ".txpy", "h")
    assert state["big"][123] == -1.0 and state["big"][7] == -2.0


def test_push_that_would_lose_someone_elses_commits_is_refused(tmp_path):
    url = (tmp_path / "remote").as_uri()
    a = txpy.Session(tmp_path / "a" / ".txpy", "h", {"v": 0}, notify=lambda m: None)
    a.commit()
    push(a.repo, Remote(url))
    txpy_cmd("clone", url, str(tmp_path / "b"), "--trust", cwd=tmp_path)
    b = txpy.Session(tmp_path / "b" / ".txpy", "h", {}, notify=lambda m: None)
    b.restore()
    b.namespace["v"] = 2
    b.commit()
    push(b.repo, Remote(url))
    a.namespace["v"] = 1
    a.commit()
    with pytest.raises(RemoteError, match="run `txpy pull` first"):
        push(a.repo, Remote(url))
    pull(a.repo, Remote(url), "origin", trust=True)
    assert a.repo.refs.tip("h", "origin/main") == b.head.id
    assert a.repo.refs.tip("h", "main") == a.head.id  # diverged: left alone


def test_killed_push_leaves_both_sides_valid_and_rerun_completes(tmp_path):
    url = (tmp_path / "remote").as_uri()
    origin = tmp_path / "o"
    ns = {"a": np.random.default_rng(2).random(8_000_000)}  # 64 MB: 64 chunks to send
    s = txpy.Session(origin / ".txpy", "h", ns, notify=lambda m: None)
    s.commit()
    s.close()
    txpy_cmd("remote", "add", "origin", url, cwd=origin)
    proc = subprocess.Popen([TXPY, "push"], cwd=origin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    objects = tmp_path / "remote" / "objects"
    deadline = time.time() + 60
    while time.time() < deadline and sum(1 for _ in objects.rglob("*")) < 20:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    refs = tmp_path / "remote" / "refs"
    assert not [f for f in refs.rglob("*") if f.is_file()]  # no ref before all its data
    done = txpy_cmd("push", cwd=origin)
    assert done.returncode == 0, done.stderr
    assert txpy_cmd("clone", url, str(tmp_path / "c"), "--trust", cwd=tmp_path).returncode == 0
    assert np.array_equal(txpy.load(tmp_path / "c" / ".txpy", "h")["a"], ns["a"])


def _pushed(tmp_path):
    url = (tmp_path / "remote").as_uri()
    s = txpy.Session(tmp_path / "a" / ".txpy", "h", {"x": list(range(500))},
                     notify=lambda m: None)
    cid = s.commit()
    push(s.repo, Remote(url))
    return url, tmp_path / "remote", cid


def test_tampered_chunk_on_the_remote_is_refused(tmp_path):
    url, remote_dir, _ = _pushed(tmp_path)
    for f in (remote_dir / "objects").rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[:-1] + b"!")
    out = txpy_cmd("clone", url, str(tmp_path / "c"), "--trust", cwd=tmp_path)
    assert out.returncode == 1 and "damaged" in out.stderr and "Traceback" not in out.stderr


def test_tampered_commit_record_on_the_remote_is_refused(tmp_path):
    url, remote_dir, cid = _pushed(tmp_path)
    record_path = LocalBackend(remote_dir / "commits").path(cid)
    record = json.loads(record_path.read_text())
    record["body"] = record["body"].replace('"api"', '"cell"')
    record_path.write_text(json.dumps(record))
    with pytest.raises(CorruptStoreError, match="does not match its id"):
        r = Repository.open(tmp_path / "fresh" / ".txpy", create=True)
        pull(r, Remote(url), "origin", trust=True)


def test_pull_refuses_a_new_untrusted_signer(tmp_path):
    url, _, _ = _pushed(tmp_path)
    mine = Repository.open(tmp_path / "mine" / ".txpy", create=True)
    with pytest.raises(UntrustedError, match="--trust"):
        pull(mine, Remote(url), "origin")
    assert mine.histories() == []


def test_environment_mismatches_are_named():
    recorded = {"python": "2.7.18", "platform": env.fingerprint()["platform"],
                "packages": {"numpy": "0.0.1", "surely-not-installed": "1.0"}}
    found = env.mismatches(recorded)
    assert any(m.startswith("python") for m in found)
    assert f"numpy {np.__version__} here, 0.0.1 at commit" in found
    assert "surely-not-installed 1.0 at commit, not installed here" in found


def test_missing_package_is_a_clear_error_naming_the_variable(tmp_path):
    pkg = tmp_path / "pkgs" / "fakepkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("class Thing:\n    pass\n")
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(tmp_path / 'pkgs')!r})
        import fakepkg, txpy
        s = txpy.Session({str(tmp_path / '.txpy')!r}, "h", {{"thing": fakepkg.Thing(), "ok": 1}})
        s.commit()
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    shutil.rmtree(tmp_path / "pkgs")  # a machine without the package
    with pytest.raises(txpy.TxpyError, match="cannot restore thing: needs the package 'fakepkg'"), \
            pytest.warns(txpy.TxpyWarning, match="no longer exist"):
        txpy.load(tmp_path / ".txpy", "h")


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_two_pushes_racing_from_the_same_ref_version_cannot_both_win(tmp_path, kind, request):
    if kind == "file":
        url, options = (tmp_path / "remote").as_uri(), {}
    else:
        url, endpoint = request.getfixturevalue("bucket")
        options = {"client_kwargs": {"endpoint_url": endpoint}}
    a = txpy.Session(tmp_path / "a" / ".txpy", "h", {"v": 0}, notify=lambda m: None)
    a.commit()
    push(a.repo, Remote(url, options))
    b = Repository.open(tmp_path / "b" / ".txpy", create=True)
    pull(b, Remote(url, options), "origin", trust=True)
    b.close()
    b = txpy.Session(tmp_path / "b" / ".txpy", "h", {}, notify=lambda m: None)
    b.restore()
    seen_by_b = Remote(url, options).read_refs()  # b reads the ref ...
    a.namespace["v"] = 1
    a.commit()
    push(a.repo, Remote(url, options))           # ... a pushes in between ...
    b.namespace["v"] = 2
    b.commit()
    late = Remote(url, options)
    late.read_refs = lambda: seen_by_b            # ... and b pushes from what it had read
    with pytest.raises(RemoteError, match="meanwhile"):
        push(b.repo, late)
    assert Remote(url, options).read_refs()[("h", "main")].commit == a.head.id


def test_remote_tracking_branches_are_not_pushed_back(tmp_path):
    url, _, _ = _pushed(tmp_path)
    assert txpy_cmd("clone", url, str(tmp_path / "c"), "--trust", cwd=tmp_path).returncode == 0
    c = txpy.Session(tmp_path / "c" / ".txpy", "h", {}, notify=lambda m: None)
    c.restore()
    assert "origin/main" in c.branches()
    c.namespace["y"] = 1
    c.commit()
    push(c.repo, Remote(url))
    assert set(Remote(url).read_refs()) == {("h", "main")}
    assert Remote(url).read_refs()[("h", "main")].commit == c.head.id
