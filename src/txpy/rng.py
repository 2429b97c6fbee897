"""The global random generators are part of the session's state.

A rolled-back or restored session must continue with the same random stream as an
uninterrupted one, or "restoring" re-runs produce different models. Only modules the user
already imported are captured; nothing is imported to capture it.
"""

from __future__ import annotations

import random
import sys
from typing import Any


def capture() -> dict[str, Any]:
    """The state of random, numpy.random's global generator and torch's CPU generator."""
    state: dict[str, Any] = {"random": random.getstate()}
    np_random = sys.modules.get("numpy.random")  # not hasattr(numpy, ...): that imports it
    if np_random is not None:
        state["numpy"] = np_random.get_state()
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_rng_state"):
        state["torch"] = torch.get_rng_state()
    return state


def restore(state: dict[str, Any]) -> None:
    random.setstate(state["random"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "torch" in state:
        import torch

        torch.set_rng_state(state["torch"])
