"""The code sandbox: the ``python`` tool and the ``run_code`` activity.

Generated Python runs in a child process that cannot harm the worker, read its secrets
or reach the network. The isolation is built from well-kept parts rather than home-made
ones:

- **bubblewrap** (the Debian package ``bubblewrap``) puts the code in new user, PID,
  network, IPC, UTS and cgroup namespaces: no network but an empty loopback of its own, no
  view of the worker's processes, a read-only view of ``/usr`` (the interpreter and its
  libraries) and nothing else of the host's filesystem; the work dir, ``/tmp`` and
  ``/dev/shm`` are fresh size-limited tmpfs mounts that vanish with the sandbox. Nested
  user namespaces are disabled. When the worker runs as root, bwrap itself is started
  as an unprivileged uid (``PLANSMITH_SANDBOX_UID``, default 65534), so the code owns
  nothing on the host and the kernel enforces ``RLIMIT_NPROC`` on it.
- **rlimits** (CPU seconds, address space, file size, open files, processes; no core
  files), set by a small runner inside the sandbox before it starts the code, so the
  code inherits them and cannot raise them.
- a **wall-clock timeout**: bwrap runs in its own session and process group; on timeout
  (or cancellation, or an output flood) the group is killed, the sandbox's PID 1 dies and
  the kernel kills every process left in the namespace, daemons included. When the code
  ends normally the same happens to whatever it left behind.
- an **empty environment**: bwrap is started with ``PATH`` only and clears that too.
- **limits for the sandbox as a whole** (``watch``): the worker samples the PSS of all
  the sandbox's processes plus its tmpfs usage every 50 ms and kills the sandbox above
  ``memory_mb``; ``RLIMIT_NPROC`` in the sandbox's own user namespace caps its
  processes and threads together.
- a **seccomp filter** (``syscalls``, built with libseccomp) that refuses what generated
  code never needs (ptrace, namespaces, mounts, bpf, io_uring, keyrings, memfds...).

When bwrap is missing or the kernel refuses the namespaces, ``run_code`` refuses to run
with a clear ``SandboxUnavailable`` error, unless the operator opted out on purpose with
``PLANSMITH_SANDBOX_ISOLATION=none`` (then: a limited child process in a temporary
directory, no namespaces; every record says so).

The runner (``runner.py``) talks to the host over three channels: the job (JSON) on its stdin, the code
and a few tiny files (``/etc/passwd``…) bound read-only through memfds, and its report
(exit status, resource usage, declared output files) on a pipe the code never gets.

Modules: ``models`` (names, errors, request/limits/result), ``params`` (the tool's params
and the step's limits), ``probe`` (what isolation the worker can build), ``bwrap`` (the
bubblewrap command line), ``runner`` (the program run inside the sandbox), ``run`` (the
job and the child's command line), ``supervise`` (output caps, timeout, kill),
``watch`` (the whole-sandbox limits), ``syscalls`` (the seccomp filter),
``outcome`` (how the run ended), ``record`` (the audit record), ``tool`` (the ``python``
tool and the ``run_code`` activity of :class:`SandboxActivities`).
"""

from activities.sandbox.models import SandboxUnavailable
from activities.sandbox.probe import isolation
from activities.sandbox.tool import SandboxActivities

__all__ = ["SandboxActivities", "SandboxUnavailable", "isolation"]
