import os
import textwrap

import pytest

import txpy

os.environ["TXPY_VERIFY"] = "1"  # DESIGN.md: verify mode is on in the test suite


@pytest.fixture
def store(tmp_path):
    return tmp_path / ".txpy"


@pytest.fixture
def ip(tmp_path, monkeypatch):
    """IPython's own InteractiveShell in a fresh working directory: a notebook kernel's shell
    without the kernel."""
    from IPython.core.interactiveshell import InteractiveShell

    from txpy.frontends import ipython as front

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    shell = InteractiveShell.instance()
    shell.reset()
    yield shell
    shell.run_cell("%unload_ext txpy")
    front.unload_ipython_extension(shell)  # loaded by txpy.enable(), not by %load_ext
    shell.reset()


@pytest.fixture
def session(store):
    ns: dict = {"__name__": "__main__"}
    s = txpy.Session(store=store, name="t", namespace=ns, notify=lambda m: None)
    yield s
    s.close()


#: a notebook's two closures sharing a cell (a nonlocal counter and its reader), bumped once
SHARED_CELL = """
def make():
    count = 0
    def bump():
        nonlocal count
        count += 1
        return count
    def peek():
        return count
    return bump, peek
bump, peek = make()
bump()
"""


def run(ns: dict, code: str) -> None:
    """Execute a 'cell' in the namespace, as a notebook would."""
    exec(compile(textwrap.dedent(code), "<cell>", "exec"), ns)


def store_bytes(store) -> int:
    """Bytes of stored objects: chunk files plus the small-object database."""
    return sum(f.stat().st_size for f in store.rglob("*")
               if f.is_file() and not f.name.startswith("txpy.db"))


def corrupt_object(store, key: str | None = None) -> str:
    """Flip the last byte of a stored object (key, or any small one) where it lives; its key."""
    import sqlite3

    path = store / "objects" / key if key else None
    if path is not None and path.exists():
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        return key
    conn = sqlite3.connect(store / "small.db")
    if key is None:
        key = conn.execute("SELECT key FROM objects LIMIT 1").fetchone()[0]
    body = bytearray(conn.execute("SELECT body FROM objects WHERE key=?", (key,)).fetchone()[0])
    body[-1] ^= 0xFF
    conn.execute("UPDATE objects SET body=? WHERE key=?", (bytes(body), key))
    conn.commit()
    conn.close()
    return key
