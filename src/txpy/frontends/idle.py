"""Sweeps while a Jupyter kernel is idle.

A thread or a library callback may change a variable after its cell ended, with no cell to
commit it: a kill -9 then loses the change, and the periodic sweep (every tenth cell) only
finds it at the next cells. So once a kernel has been idle for a while, txpy examines every
name (a background capture: the kernel pays a fork; in process only when that is predicted
to take under IN_PROCESS_MOST), commits what changed and examines those names at every
commit from then on. The wait doubles while the kernel stays idle, so a
kernel left overnight sweeps a dozen times, not thousands.

Scheduled on the kernel's own event loop, so a sweep runs on the main thread between
requests, never inside a cell; a plain IPython terminal has no such loop and no idle sweeps.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

#: seconds of idleness before the first sweep (TXPY_IDLE_SWEEP; 0 turns idle sweeps off)
FIRST = float(os.environ.get("TXPY_IDLE_SWEEP", "5"))
#: the longest wait between two sweeps while the kernel stays idle
LONGEST = 600.0
#: seconds an idle sweep may hold the kernel where it is not forked (sync or async
#: durability, CUDA in use): a cell started meanwhile would wait for it
IN_PROCESS_MOST = 0.05


class IdleSweeps:
    """Calls sweep() after FIRST seconds without a cell, then after twice as long, and so on
    up to LONGEST; a cell starting cancels the wait, a cell ending starts it again."""

    def __init__(self, loop: Any, sweep: Callable[[], None]):
        self._loop, self._sweep = loop, sweep
        self._timer: Any = None
        self._wait = FIRST

    @classmethod
    def of_kernel(cls, ip: Any, sweep: Callable[[], None]) -> IdleSweeps | None:
        """Idle sweeps on the shell's kernel loop; None without a kernel (a terminal)."""
        loop = getattr(getattr(ip, "kernel", None), "io_loop", None)
        if loop is None or FIRST <= 0:
            return None
        return cls(loop, sweep)

    def cell_started(self) -> None:
        self.stop()

    def cell_ended(self) -> None:
        self.stop()
        self._wait = FIRST
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._loop.remove_timeout(self._timer)
            self._timer = None

    def _schedule(self) -> None:
        self._timer = self._loop.call_later(self._wait, self._due)

    def _due(self) -> None:
        self._timer = None
        self._sweep()
        self._wait = min(self._wait * 2, LONGEST)
        self._schedule()
