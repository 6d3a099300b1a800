"""The bubblewrap command line: the namespaces, the mounts and the sandbox's few /etc files.

The code sees a read-only ``/usr`` (and the interpreter's prefix when it lives elsewhere),
fresh size-limited tmpfs mounts for the work dir, ``/tmp`` and ``/dev/shm``, and nothing
else of the host's filesystem; the code itself and ``/etc/passwd``, ``/etc/group`` and
``/etc/hosts`` are bound read-only from memfds. bwrap loads the seccomp filter
(``syscalls.py``) just before it starts the runner.
"""

from __future__ import annotations

import os

from activities.sandbox.models import CODE_PATH, MB, WORKDIR


def bwrap_base(bwrap: str, prefix: str | None, disk_mb: int) -> list[str]:
    size = str(disk_mb * MB)
    argv = [
        bwrap,
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
        "--clearenv",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):
            argv += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            argv += ["--ro-bind", name, name]
    for name in ("/etc/ld.so.cache", "/etc/localtime"):
        argv += ["--ro-bind-try", name, name]
    if prefix:
        argv += ["--ro-bind", prefix, prefix]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    for mount in (WORKDIR, "/tmp", "/dev/shm"):
        argv += ["--size", size, "--tmpfs", mount]
    argv += ["--remount-ro", "/dev"]
    return argv


def data_files(code: str, uid: int, gid: int) -> dict[str, bytes]:
    """What is bound read-only into the sandbox: the code and a user of its own."""
    return {
        CODE_PATH: code.encode(),
        "/etc/passwd": (
            f"root:x:0:0:root:/:/usr/sbin/nologin\n"
            f"sandbox:x:{uid}:{gid}::{WORKDIR}:/usr/sbin/nologin\n"
        ).encode(),
        "/etc/group": b"root:x:0:\nsandbox:x:%d:\n" % gid,
        "/etc/hosts": b"127.0.0.1 localhost sandbox\n::1 localhost\n",
    }


def sandbox_argv(
    bwrap: str,
    prefix: str | None,
    disk_mb: int,
    data_fds: dict[str, int],
    info_fd: int,
    seccomp_fd: int,
    env: dict[str, str],
    command: list[str],
) -> list[str]:
    """The full bwrap command line that runs ``command`` in the sandbox.

    ``data_fds`` maps a path inside the sandbox to the memfd bound there; bwrap reports
    the sandbox's PID 1 on ``info_fd``; ``seccomp_fd`` holds the compiled seccomp filter.
    """
    argv = bwrap_base(bwrap, prefix, disk_mb)
    for dest, fd in data_fds.items():
        argv += ["--ro-bind-data", str(fd), dest]
    argv += ["--remount-ro", "/", "--chdir", WORKDIR, "--info-fd", str(info_fd)]
    argv += ["--seccomp", str(seccomp_fd)]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    return [*argv, "--", *command]
