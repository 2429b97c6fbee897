"""State outside the namespace (issue 14, class 4): random generators and library settings
are committed with the namespace, rolled back with a failing transaction and restored in a
new process."""

import logging
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from txpy import globalstate


@pytest.fixture
def settings_kept():
    """Leave the test process's settings as they were."""
    state = globalstate.capture()
    yield
    globalstate.restore(state, {})


def _change_everything():
    np.seterr(divide="raise")
    np.set_printoptions(precision=3)
    pd.set_option("display.max_rows", 7)
    torch.set_default_dtype(torch.float64)
    torch.set_grad_enabled(False)
    warnings.filterwarnings("error", message="txpy-test", category=UserWarning)
    logging.getLogger("txpy.test.logger").setLevel(logging.ERROR)


def _looks_changed():
    return {
        "divide": np.geterr()["divide"] == "raise",
        "precision": np.get_printoptions()["precision"] == 3,
        "pandas rows": pd.get_option("display.max_rows") == 7,
        "dtype": torch.get_default_dtype() == torch.float64,
        "grad off": not torch.is_grad_enabled(),
        "warning filter": any(f[0] == "error" and f[1] is not None
                              and f[1].pattern == "txpy-test" for f in warnings.filters),
        "logger level": logging.getLogger("txpy.test.logger").level == logging.ERROR,
    }


def test_every_provider_puts_back_what_it_captured(settings_kept):
    before = globalstate.capture()
    _change_everything()
    assert all(_looks_changed().values())
    assert globalstate.restore(before, {}) == ({}, [])
    assert not any(_looks_changed().values()), _looks_changed()


def test_a_setting_that_cannot_be_put_back_costs_only_itself(settings_kept):
    state = globalstate.capture()
    state["numpy errors"] = {"no such error kind": "raise"}
    torch.set_default_dtype(torch.float64)
    failed, _ = globalstate.restore(state, {})
    assert list(failed) == ["numpy errors"]
    assert torch.get_default_dtype() == torch.float32


def test_a_failing_transaction_rolls_back_settings_too(session, settings_kept):
    session.namespace["x"] = 1
    session.commit()
    with pytest.raises(ValueError), session.transaction():
        _change_everything()
        raise ValueError
    assert not any(_looks_changed().values()), _looks_changed()


def test_a_new_process_restores_the_settings(store, settings_kept):
    import txpy

    s = txpy.Session(store, "g", {"x": 1}, notify=lambda m: None)
    _change_everything()
    s.commit()
    s.close()
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import logging, numpy as np, torch, txpy
        s = txpy.Session({str(store)!r}, "g", {{}})
        s.restore()
        import pandas as pd
        print(np.geterr()["divide"], torch.get_default_dtype(), torch.is_grad_enabled(),
              logging.getLogger("txpy.test.logger").level, pd.get_option("display.max_rows"))
    """)], capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert out == ["raise", "torch.float64", "False", str(logging.ERROR), "7"]


def test_a_rollback_puts_warnings_filters_back_exactly(session, settings_kept, monkeypatch):
    """A filter Python installs holds its module as a plain string; put back through
    filterwarnings it became a regex (and the commit after a rollback a new one)."""
    monkeypatch.setattr(warnings, "filters", [  # Python's own, without pytest's
        ("default", None, DeprecationWarning, "__main__", 0),
        ("ignore", None, ImportWarning, None, 0)])
    warnings._filters_mutated()
    session.namespace["x"] = 1
    session.commit()
    before = list(warnings.filters)
    with pytest.raises(ValueError), session.transaction():
        warnings.simplefilter("ignore")
        raise ValueError
    assert warnings.filters == before and warnings.filters[0][3] == "__main__"
