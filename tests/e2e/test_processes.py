"""``plansmith up``, ``demo`` and ``server`` leave no process behind: stopped with SIGTERM,
SIGHUP or SIGINT, killed outright (SIGKILL), or when the process that started them ends
(``--exit-with-parent``, what ``make run`` uses). Real processes on free ports of
127.0.0.1 (never the fixed 7233/8233/8000 of a developer's stack); /proc says which
processes are left, and the ports must be ours to listen on again."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

STOPPED_WITHIN_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def can_listen(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:port now (as the next run would)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def stack_ports() -> tuple[int, int, int]:
    """Free ports for Temporal, its Web UI (Temporal's + 1000) and the API."""
    for _ in range(200):
        temporal = _free_port()
        if temporal + 1000 < 65536 and can_listen(temporal + 1000):
            api = _free_port()
            if api not in (temporal, temporal + 1000):
                return temporal, temporal + 1000, api
    raise RuntimeError("no free ports")


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a live process, None when it is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    state, ppid = text.rsplit(")", 1)[1].split()[:2]
    return None if state in ("Z", "X") else (int(ppid), state)


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                children.setdefault(st[0], []).append(int(entry))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def carrying(marker: str) -> set[int]:
    """Live processes whose environment holds ``marker`` (inherited by every process a
    test's command starts, orphaned or not)."""
    needle = marker.encode()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if needle in environ.split(b"\0") and _stat(int(entry)) is not None:
                found.add(int(entry))
    return found


def alive(pids: set[int]) -> set[int]:
    return {p for p in pids if _stat(p) is not None}


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    log: Path
    ports: tuple[int, int, int]

    @property
    def marker(self) -> str:
        return f"PLANSMITH_TASK_QUEUE=procs-{self.ports[0]}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.output():
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} after {timeout_s}s:\n{self.output()}")
            time.sleep(0.2)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator:
    started: list[Running] = []

    def start(*argv: str, wrapper: bool = False) -> Running:
        temporal, ui, api = stack_ports()
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": f"127.0.0.1:{temporal}",
            "PLANSMITH_TEMPORAL_DB": str(tmp_path / "temporal.db"),
            "DATABASE_URL": f"sqlite:///{tmp_path}/store.db",
            "PLANSMITH_TASK_QUEUE": f"procs-{temporal}",
            "PYTHONPATH": str(ROOT),
        }
        env.pop("PLANSMITH_API_KEYS", None)
        command = [sys.executable, "-m", "plansmith.cli", *argv]
        if "server" not in argv:
            command += ["--port", str(api)]
        if wrapper:  # a parent like make: starts the command, then dies without passing signals on
            command = [
                sys.executable,
                "-c",
                "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(3600)",
                *command,
            ]
        log = tmp_path / f"out-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        running = Running(proc, log, (temporal, ui, api))
        started.append(running)
        return running

    yield start
    for running in started:  # whatever a failed test left: its whole tree goes
        leftovers = descendants(running.proc.pid) | {running.proc.pid}
        for pid in alive(leftovers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        running.proc.wait(timeout=10)


def assert_all_gone(
    pids: set[int], ports: tuple[int, ...], since: float, marker: str | None = None
) -> None:
    """Within STOPPED_WITHIN_S of ``since``: none of ``pids`` (nor any process carrying
    ``marker``) is alive, and every port can be listened on again."""
    deadline = since + STOPPED_WITHIN_S

    def left_over() -> set[int]:
        return alive(pids) | (carrying(marker) if marker else set())

    while left_over() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = left_over()
    assert not left, {p: cmdline(p) for p in left}
    while not all(can_listen(p) for p in ports) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(can_listen(p) for p in ports), [p for p in ports if not can_listen(p)]


def the_stack(root: int, marker: str) -> set[int]:
    """The stack's processes under ``root``: the dev server, the worker and the API (all
    found by their environment's ``marker`` too)."""
    pids = descendants(root)
    assert pids <= carrying(marker), (pids, carrying(marker))
    lines = [cmdline(p) for p in pids]
    assert any("start-dev" in line for line in lines), lines
    assert any("plansmith.cli worker" in line for line in lines), lines
    assert any("plansmith.cli api" in line for line in lines), lines
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_to_up_stops_the_whole_stack_and_frees_the_ports(launch, sig) -> None:
    up = launch("up")
    up.wait_for("Plansmith is up")
    pids = the_stack(up.proc.pid, up.marker)
    for port in up.ports:
        assert not can_listen(port), f"port {port} should be in use while the stack is up"
    sent = time.monotonic()
    up.proc.send_signal(sig)
    assert up.proc.wait(timeout=STOPPED_WITHIN_S) == 0
    assert "stopping" in up.output()
    assert_all_gone(pids, up.ports, sent, up.marker)


def test_up_killed_outright_takes_its_children_along(launch) -> None:
    up = launch("up")
    up.wait_for("Plansmith is up")
    pids = the_stack(up.proc.pid, up.marker)
    sent = time.monotonic()
    up.proc.kill()  # SIGKILL: no handler runs; only the children's parent-death signal
    up.proc.wait(timeout=5)
    assert_all_gone(pids, up.ports, sent, up.marker)


def test_up_with_exit_with_parent_stops_when_its_parent_dies(launch) -> None:
    """``make run``: make dies on SIGTERM without passing it on to the command it runs."""
    parent = launch("up", "--exit-with-parent", wrapper=True)
    parent.wait_for("Plansmith is up")
    [up] = [p for p in descendants(parent.proc.pid) if "plansmith.cli up" in cmdline(p)]
    pids = the_stack(up, parent.marker) | {up}
    sent = time.monotonic()
    parent.proc.terminate()
    parent.proc.wait(timeout=5)
    assert_all_gone(pids, parent.ports, sent, parent.marker)


def test_demo_interrupted_while_it_runs_stops_the_stack(launch) -> None:
    demo = launch("demo", "--no-planner", "--no-keep")
    demo.wait_for("Plansmith is up")
    pids = the_stack(demo.proc.pid, demo.marker)
    sent = time.monotonic()
    demo.proc.send_signal(signal.SIGINT)
    demo.proc.wait(timeout=STOPPED_WITHIN_S)
    assert_all_gone(pids, demo.ports, sent, demo.marker)


def test_server_stops_its_dev_server_on_sigterm_and_when_killed(launch) -> None:
    for how in ("terminate", "kill"):
        server = launch("server")
        server.wait_for("Temporal dev server on")
        temporal, ui, _ = server.ports
        deadline = time.monotonic() + 60
        while can_listen(temporal) and time.monotonic() < deadline:
            time.sleep(0.2)
        pids = descendants(server.proc.pid)
        assert any("start-dev" in cmdline(p) for p in pids)
        assert pids <= carrying(server.marker)
        sent = time.monotonic()
        getattr(server.proc, how)()
        server.proc.wait(timeout=STOPPED_WITHIN_S)
        assert_all_gone(pids, (temporal, ui), sent, server.marker)


def test_sigterm_while_the_stack_is_still_starting_leaves_nothing(launch) -> None:
    up = launch("up")
    deadline = time.monotonic() + 60
    while not any("start-dev" in cmdline(p) for p in descendants(up.proc.pid)):
        assert time.monotonic() < deadline and up.proc.poll() is None, up.output()
        time.sleep(0.05)
    pids = descendants(up.proc.pid)
    sent = time.monotonic()
    up.proc.terminate()
    up.proc.wait(timeout=STOPPED_WITHIN_S)
    assert "Plansmith is up" not in up.output()
    # whatever it had started by then, and anything started while it stopped
    assert_all_gone(pids, up.ports, sent, up.marker)
