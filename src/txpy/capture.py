"""Running work in a forked copy-on-write child of this process.

``os.fork()`` copies no memory: the child sees the parent's objects exactly as they were at
the fork, pages shared until one side writes them (measured here: 6–12 ms for a 1.3 GB
kernel holding a pandas frame and a torch model). The child examines and encodes that frozen
state while the parent's user goes on.

Only the forking thread exists in the child, so it must touch nothing another thread may
have held at the fork: no SQLite connection, no zmq, no inherited stdio (a notebook's stdout
is a zmq stream). It waits for a go from its parent (children run one at a time), reports one
pickled value through a pipe and leaves with ``os._exit``: no finalizer, atexit hook or
buffered output of the parent runs twice.

What at-fork hooks change in the child is put back: Python's ``random`` reseeds itself in
every forked child, and the child would otherwise capture a random state the session never
had.
"""

from __future__ import annotations

import gc
import os
import pickle
import select
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

#: fork exists (Linux, macOS); elsewhere every capture runs in process
AVAILABLE = hasattr(os, "fork")

_GO = b"g"


class ChildFailed(Exception):
    """The child died, hung past its deadline, or its work raised (the message says which)."""


#: the parent's ends of the pipes of children alive: a new child closes its copies, so that
#: a child's pipes reach EOF when the parent (not a sibling) lets go of them
_parent_fds: set[int] = set()


def can_fork() -> bool:
    """Whether a capture may fork now: fork exists and this is the main thread (the child
    sets its own signal handlers, which only the main thread can)."""
    return AVAILABLE and threading.current_thread() is threading.main_thread()


class Child:
    """A forked child waiting for `go`, then working; `result` collects what it reports."""

    def __init__(self, pid: int, go_fd: int, result_fd: int):
        self.pid = pid
        self._go_fd: int | None = go_fd
        self._result_fd: int | None = result_fd
        self._reaped = False

    def go(self) -> None:
        """Let the child start its work (and close the go pipe: it needs one byte)."""
        fd, self._go_fd = self._go_fd, None
        if fd is None:
            return
        try:
            os.write(fd, _GO)
        except OSError:
            pass  # it died already: result() says so
        finally:
            _close(fd)

    def result(self, deadline: float) -> Any:
        """What the child's work returned; ChildFailed if it raised, died, or ran past
        deadline seconds (then it is killed)."""
        fd = self._result_fd
        assert fd is not None, "result() is collected once"
        parts: list[bytes] = []
        end = time.monotonic() + deadline
        try:
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise ChildFailed(f"it took longer than {deadline:g} s (killed)")
                ready, _, _ = select.select([fd], [], [], left)
                if ready:
                    data = os.read(fd, 1 << 20)
                    if not data:
                        break
                    parts.append(data)
        finally:
            self._result_fd = None
            _close(fd)
        status = self._reap()
        if status != 0:
            raise ChildFailed(_describe(status))
        try:
            kind, value = pickle.loads(b"".join(parts))
        except Exception as e:
            raise ChildFailed(f"its report could not be read ({type(e).__name__})") from None
        if kind != "ok":
            raise ChildFailed(value)
        return value

    def kill(self) -> None:
        """Stop the child now (it may be waiting or working) and reap it."""
        if self._reaped:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for fd in (self._go_fd, self._result_fd):
            if fd is not None:
                _close(fd)
        self._go_fd = self._result_fd = None
        self._reap()

    def _reap(self) -> int:
        if self._reaped:
            return 0
        self._reaped = True
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:  # someone else reaped it (a SIGCHLD handler set to ignore)
            return 0
        return status


def fork(work: Callable[[], Any]) -> Child:
    """Fork a child that runs work() once told to go and reports its return value (which
    must pickle); the parent returns at once."""
    go_r, go_w = os.pipe()
    result_r, result_w = os.pipe()
    rng = sys.modules.get("random")
    rng_state = rng.getstate() if rng is not None else None
    with warnings.catch_warnings():  # 3.12+ warns of forking with threads; user filters may
        warnings.simplefilter("ignore")  # make a warning an error
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which leaves with os._exit
        if rng is not None:
            rng.setstate(rng_state)  # reseeded by its at-fork hook
        _run_child(work, go_r, result_w, {go_w, result_r, *_parent_fds})
    _close(go_r)
    _close(result_w)
    _parent_fds.update((go_w, result_r))
    return Child(pid, go_w, result_r)


def _run_child(work: Callable[[], Any], go_r: int, result_w: int,
               inherited: set[int]) -> None:  # pragma: no cover - child only
    code = 4
    try:
        _die_with_parent()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # "interrupt kernel" signals the group
        try:  # a group of its own: a kernel shutting down kills the children in its group
            os.setpgid(0, 0)  # before they are done (ipykernel does), not those of another
        except OSError:
            pass
        for fd in inherited:
            _close(fd)
        gc.disable()  # a collection would run finalizers twice and copy every page it touches
        os.nice(10)  # on a busy machine the user's next cell comes first
        devnull = open(os.devnull, "w")  # noqa: SIM115 - the process ends with os._exit
        sys.stdout = sys.stderr = devnull
        if os.read(go_r, 1) != _GO:
            code = 3  # the parent gave up on it (or is gone)
            return
        try:
            payload: tuple[str, Any] = ("ok", work())
        except BaseException as e:
            payload = ("error", f"{type(e).__name__}: {e}")
        data = memoryview(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
        while data:
            data = data[os.write(result_w, data):]
        code = 0
    finally:
        os._exit(code)


def _die_with_parent() -> None:  # pragma: no cover - child only
    """Linux: the kernel kills this child when its parent dies (its capture can no longer be
    published, and a child stuck in a user's __reduce__ would otherwise live forever).
    Elsewhere a waiting child still leaves when its go pipe closes."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the line above
        os._exit(3)


def _close(fd: int) -> None:
    _parent_fds.discard(fd)
    try:
        os.close(fd)
    except OSError:
        pass


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"it was killed by {name}"
    return f"it exited with status {os.WEXITSTATUS(status)}"
