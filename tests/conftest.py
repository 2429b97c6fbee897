import os
import textwrap

import pytest

import txpy

os.environ["TXPY_VERIFY"] = "1"  # DESIGN.md: verify mode is on in the test suite


@pytest.fixture
def store(tmp_path):
    return tmp_path / ".txpy"


@pytest.fixture
def session(store):
    ns: dict = {"__name__": "__main__"}
    s = txpy.Session(store=store, name="t", namespace=ns, notify=lambda m: None)
    yield s
    s.close()


def run(ns: dict, code: str) -> None:
    """Execute a 'cell' in the namespace, as a notebook would."""
    exec(compile(textwrap.dedent(code), "<cell>", "exec"), ns)


def store_bytes(store) -> int:
    return sum(f.stat().st_size for f in (store / "objects").rglob("*") if f.is_file())
