"""Running code in the sandbox: the runner's job, the child's command line, a thread.

The runner's source (``runner.py``) is read once and passed to the sandbox's interpreter
with ``-c``. Its job goes to its stdin through a memfd, the code and the sandbox's /etc
files are bound read-only from memfds (bwrap) or written to a temporary dir (no
isolation), and its report comes back on a pipe the code never gets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from activities.sandbox.bwrap import data_files, sandbox_argv
from activities.sandbox.models import (
    CODE_PATH,
    KILL_GRACE_S,
    MB,
    WORKDIR,
    SandboxRequest,
    SandboxResult,
)
from activities.sandbox.probe import isolation
from activities.sandbox.supervise import supervise
from activities.sandbox.syscalls import seccomp_bpf
from config import SandboxSettings

HEARTBEAT_EVERY_S = 1.0

# The runner's source, passed to the sandbox's interpreter with ``-c``.
RUNNER_SOURCE = Path(__file__).with_name("runner.py").read_text(encoding="utf-8")


def run_sandboxed(
    request: SandboxRequest,
    settings: SandboxSettings,
    cancel: threading.Event | None = None,
) -> SandboxResult:
    """Run ``request.code`` in the sandbox and wait for it (blocking; call it in a thread).

    Setting ``cancel`` kills the sandbox at once.

    Raises:
        SandboxUnavailable: the isolation cannot be built here (the code did not run).
        ToolError: the sandbox itself failed to start (retryable).
    """
    s = settings
    iso = isolation(s)
    limits = request.limits
    owned: set[int] = set()  # fds to close at the end (each exactly once: numbers get reused)
    tmp: str | None = None
    mounts: socket.socket | None = None
    try:
        if iso.mode == "bwrap":
            workdir, tmpdir = WORKDIR, "/tmp"
            code_path = CODE_PATH
            uid, gid = (s.uid, s.gid) if iso.switch_user else (os.geteuid(), os.getegid())
            files = data_files(request.code, uid, gid)
            data_fds = {dest: _memfd(dest, data) for dest, data in files.items()}
            owned.update(data_fds.values())
            seccomp_fd = _memfd("seccomp", seccomp_bpf())
            owned.add(seccomp_fd)
        else:
            tmp = tempfile.mkdtemp(prefix="plansmith-sandbox-")
            os.chmod(tmp, 0o711)
            workdir, tmpdir = os.path.join(tmp, "work"), os.path.join(tmp, "tmp")
            code_path = os.path.join(tmp, "main.py")
            for d in (workdir, tmpdir):
                os.mkdir(d, 0o700)
                if iso.switch_user:
                    os.chown(d, s.uid, s.gid)
            with open(code_path, "w", encoding="utf-8") as f:
                f.write(request.code)
            os.chmod(code_path, 0o644)
            data_fds = {}
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": workdir,
            "TMPDIR": tmpdir,
            "LANG": "C.UTF-8",
            "USER": "sandbox",
        }
        enforce_nproc = iso.mode == "bwrap" or iso.switch_user
        rlimits = [
            ("RLIMIT_CPU", limits.cpu_s, limits.cpu_s + 1),
            ("RLIMIT_AS", limits.memory_mb * MB, limits.memory_mb * MB),
            ("RLIMIT_FSIZE", limits.file_size_mb * MB, limits.file_size_mb * MB),
            ("RLIMIT_NOFILE", limits.open_files, limits.open_files),
            ("RLIMIT_CORE", 0, 0),
        ]
        if enforce_nproc:
            # the sandbox's PID 1 and the runner count too
            extra = 2 if iso.mode == "bwrap" else 1
            rlimits.append(("RLIMIT_NPROC", limits.processes + extra, limits.processes + extra))
        job = {
            "workdir": workdir,
            "files": {k: base64.b64encode(v).decode() for k, v in request.files.items()},
            "stdin": base64.b64encode(request.stdin).decode(),
            "nice": s.nice,
            "rlimits": rlimits,
            "argv": [iso.python, "-I", "-B", code_path],
            "env": env,
            "outputs": list(request.outputs),
            "max_file_bytes": s.max_output_file_bytes,
            "max_files_bytes": s.max_output_files_bytes,
            "count_left_behind": iso.mode == "bwrap",
            # the tmpfs mounts the worker's watch counts as the sandbox's memory
            "mounts": [workdir, tmpdir, "/dev/shm"] if iso.mode == "bwrap" else [],
        }
        job_fd = _memfd("job", json.dumps(job).encode())
        owned.add(job_fd)
        result_r, result_w = os.pipe()
        owned.update((result_r, result_w))
        pipes = {"result": (result_r, result_w)}
        runner = [iso.python, "-I", "-B", "-c", RUNNER_SOURCE, str(result_w)]
        if iso.mode == "bwrap":
            assert iso.bwrap is not None
            _, info_w = pipes["info"] = os.pipe()
            owned.update(pipes["info"])
            # the runner hands its tmpfs mounts to the worker's watch over this socket
            mounts, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            mounts_w = theirs.detach()
            owned.add(mounts_w)
            pipes["mounts"] = (-1, mounts_w)
            runner.append(str(mounts_w))
            argv = sandbox_argv(
                iso.bwrap,
                iso.python_prefix,
                limits.disk_mb,
                data_fds,
                info_w,
                seccomp_fd,
                env,
                runner,
            )
            passed = [*data_fds.values(), seccomp_fd]
        else:
            argv = runner
            passed = []
        return supervise(argv, job_fd, pipes, passed, mounts, owned, iso, s, request, cancel)
    finally:
        if mounts is not None:
            mounts.close()
        for fd in owned:
            with contextlib.suppress(OSError):
                os.close(fd)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name.strip("/").replace("/", "-"))
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


async def run_in_thread(
    request: SandboxRequest,
    settings: SandboxSettings,
    heartbeat: Callable[..., None] = lambda *a: None,
) -> SandboxResult:
    """Run the sandbox in a thread of its own, heartbeating; a cancel kills the sandbox."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[SandboxResult] = loop.create_future()
    cancel = threading.Event()

    def settle(result: SandboxResult | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result = run_sandboxed(request, settings, cancel)
        except BaseException as e:
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=target, name="plansmith-sandbox", daemon=True).start()
    try:
        while True:
            finished, _ = await asyncio.wait({done}, timeout=HEARTBEAT_EVERY_S)
            if finished:
                return done.result()
            heartbeat()
    except asyncio.CancelledError:
        cancel.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait({done}, timeout=KILL_GRACE_S + 5)
        raise
