"""Child processes that never outlive the command that started them.

``plansmith up``, ``demo`` and ``server`` run the Temporal dev server, the worker and the
API as child processes, each in its own session (a terminal's Ctrl-C reaches the parent
only, which then stops them in order). Three things make sure none is left behind:

- :class:`StopSignals`: SIGTERM, SIGHUP and SIGINT make the parent stop its children
  (the signal is turned into :class:`Stopping`, a ``KeyboardInterrupt``, once; signals
  that come while the children are being stopped are ignored).
- :func:`die_with_parent`: each child asks the kernel for a signal when its parent dies
  (Linux ``prctl(PR_SET_PDEATHSIG)``), so a parent killed with SIGKILL, or crashing, still
  takes its children along.
- :func:`stop_processes`: every child is interrupted at once and waited for with one
  deadline; whatever is left then is killed.

:func:`exit_with_parent` lets the parent itself follow *its* parent (``make run``: make
does not pass a SIGTERM on to the command it runs).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return fn


_PRCTL = _prctl()  # looked up here, in the parent: the child only calls it


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when the thread that starts
    it (start children from the main thread) ends, or None where the platform cannot."""
    prctl = _PRCTL
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), sig)

    return preexec


def exit_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask for ``sig`` when this process's parent ends (then :class:`StopSignals` stops
    the children as for any SIGTERM). False where the platform cannot."""
    if _PRCTL is None:
        return False
    parent = os.getppid()
    if _PRCTL(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # it ended before the request took effect
        os.kill(os.getpid(), sig)
    return True


def popen(
    argv: Sequence[str], death_signal: int = signal.SIGTERM, **kw: Any
) -> subprocess.Popen[bytes]:
    """Start a child in its own session that receives ``death_signal`` if we die."""
    return subprocess.Popen(
        list(argv), start_new_session=True, preexec_fn=die_with_parent(death_signal), **kw
    )


class Stopping(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGHUP, SIGINT) arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """While active (``with StopSignals() as signals:``), the first SIGTERM, SIGHUP or
    SIGINT raises :class:`Stopping` in the main thread; after :meth:`stopping` (called
    when the children are being stopped anyway) or after the first one, they are noted
    and ignored, so the stopping itself is never cut short."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._quiet = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if not self._quiet:
            self._quiet = True
            raise Stopping(signum)

    def stopping(self) -> None:
        self._quiet = True

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def stop_processes(
    procs: Sequence[subprocess.Popen[bytes]],
    grace_s: float = 6.0,
    sig: int = signal.SIGINT,
) -> None:
    """Send ``sig`` (SIGINT: the clean way for the temporal CLI, uvicorn and the worker) to
    each child's process group at once, wait up to ``grace_s`` for all, then kill the
    groups still there."""
    live = [p for p in procs if p.poll() is None]
    for proc in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
    deadline = time.monotonic() + grace_s
    for proc in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in live:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
