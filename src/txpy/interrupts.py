"""Holding signals while the session's bookkeeping changes.

A KeyboardInterrupt ("interrupt kernel", Ctrl-C) or an exception raised by any Python signal
handler (SIGALRM timeouts) can land between any two bytecodes. Where txpy changes several
things that must change together — a commit record and the session's HEAD, known digests and
sharing index; the names a rollback rebinds — such a signal is held until they all have
changed, then delivered. Only Python-level handlers run in the main thread, so only they are
held, and only there; the sections are short (milliseconds).
"""

from __future__ import annotations

import inspect
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: SIGKILL and SIGSTOP cannot be caught; asking for their handler is an error on some systems
_CATCHABLE = tuple(s for s in signal.valid_signals()
                   if s not in (getattr(signal, "SIGKILL", None), getattr(signal, "SIGSTOP", None)))


@contextmanager
def held() -> Iterator[None]:
    """Run the block without Python signal handlers; call those whose signal arrived after it,
    in the order they arrived (a KeyboardInterrupt is raised then, not inside the block)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        arrived.append(signum)

    saved: dict[int, Callable[..., Any]] = {}
    try:  # the handlers are replaced inside it: a signal arriving meanwhile cannot leak `hold`
        for sig in _CATCHABLE:
            handler = signal.getsignal(sig)
            if callable(handler):
                saved[sig] = handler
                signal.signal(sig, hold)
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(arrived):
            saved[sig](sig, inspect.currentframe())
