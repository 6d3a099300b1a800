"""Supervising the sandbox process: bounded output capture, the timeout, and the kill.

bwrap runs in its own session and process group; on timeout, cancellation, an output
flood or a whole-sandbox limit (``watch``: memory with tmpfs, process cap) the group is killed, then the sandbox's PID 1, which makes the kernel kill every
process left in its namespace. The same happens to whatever the code left behind when it
ends normally.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import threading
import time

from activities.sandbox.models import KILL_GRACE_S, Outcome, SandboxRequest, SandboxResult
from activities.sandbox.outcome import sandbox_result
from activities.sandbox.probe import Isolation, user_kwargs
from activities.sandbox.watch import SAMPLE_EVERY_S, SandboxWatch
from activities.tools import ToolError
from config import SandboxSettings


class Capture:
    """One stream of the sandbox: keeps the first ``cap`` bytes and counts all of them."""

    def __init__(self, cap: int):
        self.cap = cap
        self.data = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace")
        if self.total > len(self.data):
            text += f"\n[... truncated: {self.total - len(self.data)} more bytes not shown]"
        return text


def supervise(
    argv: list[str],
    job_fd: int,
    pipes: dict[str, tuple[int, int]],
    data_fds: list[int],
    mounts: socket.socket | None,
    owned: set[int],
    iso: Isolation,
    s: SandboxSettings,
    request: SandboxRequest,
    cancel: threading.Event | None,
) -> SandboxResult:
    """Start ``argv`` and read its output until it ends, is killed or floods; then judge it.

    The write ends of ``pipes`` are closed here once the child holds them, so their read
    ends see EOF when the sandbox is gone. ``mounts`` is the worker's end of the socket on
    which the runner hands over its tmpfs mounts (bwrap only).
    """
    limits = request.limits
    started = time.monotonic()
    writers = [w for _, w in pipes.values()]
    try:
        proc = subprocess.Popen(
            argv,
            stdin=job_fd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(*writers, *data_fds),
            env={"PATH": "/usr/bin:/bin"},
            cwd="/",
            start_new_session=True,
            **user_kwargs(s, iso.switch_user),
        )
    except OSError as e:
        raise ToolError(
            f"could not start the sandbox: {e}", retryable=True, kind="SandboxError"
        ) from None
    finally:
        for w in writers:  # only the sandbox may hold the write ends: EOF when it is gone
            owned.discard(w)
            os.close(w)
    assert proc.stdout is not None and proc.stderr is not None
    watch = SandboxWatch(proc.pid, limits, namespaced=iso.mode == "bwrap")
    if mounts is not None:
        mounts.setblocking(False)
    out, err = Capture(s.max_stdout_bytes), Capture(s.max_stderr_bytes)
    report = Capture(s.max_output_files_bytes * 2 + 1024 * 1024)
    info = Capture(64 * 1024)
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, pipes["result"][0]: report}
    if "info" in pipes:
        streams[pipes["info"][0]] = info
    sel = selectors.DefaultSelector()
    for fd in streams:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    deadline = started + limits.timeout_s
    killed: tuple[Outcome, str] | None = None
    kill_deadline = None
    exited_at = None
    init_pidfd: int | None = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if killed is None:
                if cancel is not None and cancel.is_set():
                    killed = ("cancelled", "the step was cancelled; the sandbox was killed")
                elif now >= deadline:
                    killed = (
                        "timeout",
                        f"wall-clock timeout of {limits.timeout_s:g} s exceeded; the sandbox "
                        "and every process in it were killed",
                    )
                else:
                    for name, cap in (("stdout", out), ("stderr", err)):
                        if cap.total > cap.cap * s.flood_factor:
                            killed = (
                                "output_limit",
                                f"{name} exceeded {cap.cap * s.flood_factor} bytes; the sandbox "
                                "was killed",
                            )
                if killed is None:
                    killed = watch.check(now)
                if killed is not None:
                    _kill_group(proc.pid)
                    kill_deadline = now + KILL_GRACE_S
            if kill_deadline is not None and now >= kill_deadline:
                break
            if _exited(proc.pid):
                # Only the sandbox's own processes hold the pipes; once its leader has
                # exited, anything still holding them is left over (unisolated mode).
                exited_at = exited_at or now
                if now - exited_at > 1.0:
                    break
            if mounts is not None and not watch.mount_fds:
                watch.mount_fds = _receive_mounts(mounts)
            wait = min(SAMPLE_EVERY_S, max(deadline - now, 0.0)) if killed is None else 0.1
            for key, _ in sel.select(wait):
                fd = key.fd
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if chunk:
                    streams[fd].add(chunk)
                    if streams[fd] is info and init_pidfd is None:
                        init_pidfd = _pidfd_of_init(info)
                else:
                    sel.unregister(fd)
    finally:
        sel.close()
        if killed is None:
            # A last look once the code has ended: what it left in the sandbox's tmpfs
            # counts too, so a write finished between two samples is not missed.
            killed = watch.check(float("inf"), final=True)
        watch.close()
        # Kill the group while its leader is a zombie at worst, so its id cannot have
        # been reused by an unrelated process.
        _kill_group(proc.pid)
        _, status = os.waitpid(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
        proc.stderr.close()
        if init_pidfd is not None and init_pidfd >= 0:
            # Killing the sandbox's PID 1 makes the kernel kill every process of its PID
            # namespace (bwrap's --die-with-parent does it too), and PID 1 exits only once
            # they are all gone: wait for that, so nothing the code started outlives the step.
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(init_pidfd, signal.SIGKILL)
                select.select([init_pidfd], [], [], KILL_GRACE_S)
            os.close(init_pidfd)
    duration = time.monotonic() - started
    return sandbox_result(
        request,
        iso,
        out,
        err,
        report,
        killed,
        proc.returncode,
        duration,
        watch.peak_process_bytes,
    )


def _receive_mounts(sock: socket.socket) -> list[int]:
    """The runner's tmpfs directories (fds), once it has sent them."""
    try:
        _, fds, _, _ = socket.recv_fds(sock, 16, 8)
    except (BlockingIOError, InterruptedError):
        return []
    except OSError:
        return []
    return list(fds)


def _pidfd_of_init(info: Capture) -> int | None:
    """A pidfd of the sandbox's PID 1, from bwrap's --info-fd JSON (once complete)."""
    try:
        pid = int(json.loads(bytes(info.data))["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return -1  # already gone


def _exited(pid: int) -> bool:
    """Whether the process has exited, without reaping it (its id stays reserved)."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
