"""torch and pandas state round-trips exactly, with shared references kept."""

import numpy as np
import pandas as pd
import pytest

import txpy
from conftest import run

torch = pytest.importorskip("torch")


def _train_setup(ns):
    run(ns, """
        import torch
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        X = torch.randn(64, 8)
        y = torch.randint(0, 2, (64,))
        def train_step():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(X), y)
            loss.backward()
            opt.step()
            return loss.item()
        losses = [train_step() for _ in range(3)]
    """)


def test_model_and_optimizer_restore_exactly_and_stay_linked(session, store):
    ns = session.namespace
    _train_setup(ns)
    c = session.commit()
    state = txpy.load(store, "t", c)
    model, opt = state["model"], state["opt"]
    for p, q in zip(model.parameters(), ns["model"].parameters(), strict=True):
        assert torch.equal(p, q) and p.requires_grad and torch.equal(p.grad, q.grad)
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in model.parameters()]
    restored_avg = opt.state[next(model.parameters())]["exp_avg"]
    original_avg = ns["opt"].state[next(ns["model"].parameters())]["exp_avg"]
    assert torch.equal(restored_avg, original_avg)
    # training continues identically in the restored state and in the original
    torch.manual_seed(1)
    a = ns["train_step"]()
    torch.manual_seed(1)
    b = state["train_step"]()
    assert a == b


def test_failed_training_step_is_rolled_back_exactly(session):
    ns = session.namespace
    _train_setup(ns)
    session.commit()
    before = [p.detach().clone() for p in ns["model"].parameters()]
    steps_before = ns["opt"].state_dict()["state"][0]["step"].item()
    with pytest.raises(RuntimeError), session.transaction():
        run(ns, "train_step(); raise RuntimeError('nan loss')")
    after = list(ns["model"].parameters())
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))
    assert ns["opt"].state_dict()["state"][0]["step"].item() == steps_before
    assert ns["opt"].param_groups[0]["params"][0] is after[0]


def test_tensor_views_share_storage_after_restore(session, store):
    ns = session.namespace
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    ns["base"], ns["col"] = base, base[:, 1]
    ns["half"] = torch.ones(5, dtype=torch.bfloat16)
    state = txpy.load(store, "t", session.commit())
    state["base"][0, 1] = 100
    assert state["col"][0].item() == 100
    assert state["half"].dtype == torch.bfloat16 and torch.equal(state["half"], ns["half"])
    assert state["col"].stride() == (4,)


def test_pandas_frames_round_trip(session, store):
    ns = session.namespace
    ns["df"] = pd.DataFrame({"a": range(1000), "s": [f"row{i}" for i in range(1000)]},
                            index=pd.date_range("2024-01-01", periods=1000, freq="min"))
    ns["df"]["b"] = ns["df"]["a"] * 2.5
    ns["df"]["wait"] = pd.to_timedelta(ns["df"]["a"], unit="s")
    ns["stamps"] = np.arange(100_000).astype("datetime64[ns]")
    state = txpy.load(store, "t", session.commit())
    pd.testing.assert_frame_equal(state["df"], ns["df"])
    assert state["stamps"].dtype == ns["stamps"].dtype
    assert np.array_equal(state["stamps"], ns["stamps"])


def test_dataframe_rollback(session):
    ns = session.namespace
    ns["df"] = pd.DataFrame({"a": [1, 2, 3]})
    session.commit()
    with pytest.raises(ZeroDivisionError), session.transaction():
        run(ns, "df['b'] = df['a'] * 2; df.drop(columns=['a'], inplace=True); 1/0")
    pd.testing.assert_frame_equal(ns["df"], pd.DataFrame({"a": [1, 2, 3]}))


def test_string_columns_use_the_fast_path_and_still_see_every_change(session, store):
    ns = session.namespace
    n = 50_000
    ns["df"] = pd.DataFrame({"s": [f"name_{i}" for i in range(n)],
                             "mixed": [f"x{i}" if i % 7 else None for i in range(n)],
                             "weird": ["a\x00b" if i == 3 else "ü€😀" for i in range(n)]})
    c1 = session.commit()
    session.namespace["df"].loc[123, "s"] = "edited"
    c2 = session.commit()
    assert session.diff(c1, c2).changed == ("df",)
    restored = txpy.load(store, "t", c2)["df"]
    pd.testing.assert_frame_equal(restored, ns["df"])
    assert restored.loc[123, "s"] == "edited"
    pd.testing.assert_frame_equal(txpy.load(store, "t", c1)["df"].loc[:122], ns["df"].loc[:122])


class Tag(str):
    """A str subclass: a fast path that joined it as plain str would lose its type."""


def test_object_arrays_that_are_not_all_exact_str_restore_exactly(session, store):
    n = 20_000
    subclass = np.array([f"s{i}" for i in range(n)], dtype=object)
    subclass[7] = Tag("tagged")
    mixed = np.array([f"m{i}" for i in range(n)], dtype=object)
    mixed[9] = b"bytes"
    session.namespace.update(subclass=subclass, mixed=mixed, Tag=Tag)
    restored = txpy.load(store, "t", session.commit())
    assert type(restored["subclass"][7]).__name__ == "Tag" and restored["subclass"][7] == "tagged"
    assert restored["mixed"][9] == b"bytes"
    assert restored["subclass"].tolist() == subclass.tolist()
    assert restored["mixed"].tolist() == mixed.tolist()
