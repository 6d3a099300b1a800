"""The sandbox's seccomp filter: the system calls generated code never needs are refused.

Built with libseccomp (Debian's ``libseccomp2``, through the ``pyseccomp`` binding) and
handed to bubblewrap compiled (``--seccomp FD``); bwrap loads it just before it starts the
runner, so the runner and the code run under it and cannot lift it. A refused call fails
with ``EPERM`` (the code sees ``PermissionError``/``Operation not permitted``); a call
from another architecture's ABI (32-bit ``int 0x80``, x32) kills the process.
"""

from __future__ import annotations

import errno
import os
import socket
import threading

from activities.sandbox.models import SandboxUnavailable

# Refused outright. Each is either a way out of the sandbox's namespaces, a window on
# other processes or the kernel, or memory the whole-sandbox memory watch could not see.
DENIED = (
    # other processes' memory and debugging
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    # namespaces and mounts
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "name_to_handle_at",
    "open_by_handle_at",
    # the kernel itself
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "personality",
    "syslog",
    "acct",
    "quotactl",
    "swapon",
    "swapoff",
    "reboot",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "iopl",
    "ioperm",
    "uselib",
    "lookup_dcookie",
    "vhangup",
    "fanotify_init",
    # memory the memory watch cannot count: anonymous files and SysV shared memory
    "memfd_create",
    "memfd_secret",
    "shmget",
    "shmat",
    "shmctl",
)

# clone() with any of these flags would make a new namespace (unshare() is refused).
CLONE_NEW = 0x7E020000  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET

# The only socket families the code may open: local sockets, and IP on the sandbox's own
# loopback (there is no other interface in its network namespace).
ALLOWED_FAMILIES = (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)

_BPF: bytes | None = None
_LOCK = threading.Lock()


def seccomp_bpf() -> bytes:
    """The compiled filter (classic BPF for this machine's architecture), built once.

    Raises:
        SandboxUnavailable: libseccomp or its Python binding is missing.
    """
    global _BPF
    with _LOCK:
        if _BPF is None:
            _BPF = _build()
        return _BPF


def _build() -> bytes:
    try:
        import pyseccomp as sc
    except (ImportError, OSError, RuntimeError) as e:
        raise SandboxUnavailable(
            "sandbox isolation is unavailable: the seccomp filter cannot be built "
            f"({type(e).__name__}: {e}). Install Debian's libseccomp2 (`make sandbox-deps`) "
            "and the project's dependencies (pyseccomp). The code was not run."
        ) from None
    deny = sc.ERRNO(errno.EPERM)
    f = sc.SyscallFilter(sc.ALLOW)  # a call of another architecture's ABI: KILL
    for name in DENIED:
        try:
            f.add_rule(deny, name)
        except (ValueError, RuntimeError, OSError):
            continue  # a call this kernel's architecture or this libseccomp does not know
    for bit in range(32):
        flag = 1 << bit
        if flag & CLONE_NEW:
            f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory a filter cannot read: ENOSYS makes the C library
    # fall back to clone(), whose flags are checked above.
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for family in range(64):
        if family not in ALLOWED_FAMILIES:
            f.add_rule(deny, "socket", sc.Arg(0, sc.EQ, family))
    f.add_rule(deny, "socket", sc.Arg(0, sc.GE, 64))
    fd = os.memfd_create("plansmith-seccomp")
    try:
        with open(fd, "wb", closefd=False) as out:
            f.export_bpf(out)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)
