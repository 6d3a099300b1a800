"""The processes of a Plansmith stack: ``server`` (Temporal's dev server), ``worker``,
``api``, and ``up`` (the three as child processes, stopped together).

No child outlives the command (:mod:`plansmith.children`): SIGTERM, SIGHUP and SIGINT
stop them all, and a parent that is killed outright takes them along (parent-death
signal). ``--exit-with-parent`` makes ``up``/``demo`` themselves stop with the process that
started them (``make run``/``make up``: make does not pass SIGTERM on)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import subprocess
import sys
import time

from config import Settings
from plansmith.children import Stopping, StopSignals, exit_with_parent, popen, stop_processes
from plansmith.cli.console import EXIT_OK, CliError, err, ui_url
from plansmith.devserver import (
    port_open,
    server_command,
    start_server,
    wait_until_ready,
)

STOP_GRACE_S = 4.0  # per phase (API and worker, then the dev server); then SIGKILL


def cmd_server(args: argparse.Namespace, settings: Settings) -> int:
    cmd = server_command(settings, args.db_filename)
    print(
        f"Temporal dev server on {settings.temporal.address}, Web UI on {ui_url(settings)}",
        flush=True,
    )
    with StopSignals() as signals:
        proc = popen(cmd, death_signal=signal.SIGTERM)
        try:
            return proc.wait()
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP
            return EXIT_OK
        finally:
            signals.stopping()
            stop_processes([proc], grace_s=2 * STOP_GRACE_S)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    # deferred: the worker's wiring loads every activity (model clients, sandbox, store)
    from worker import run_worker
    from workflows.telemetry import MetricsUnavailable

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_worker(settings, args.queue))
    except MetricsUnavailable as e:  # PLANSMITH_WORKER_METRICS_PORT taken
        raise CliError(str(e)) from None
    return EXIT_OK


def is_loopback(host: str) -> bool:
    """``localhost``, ``127.0.0.0/8`` or ``::1``: only this machine can connect."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # another name, or a wildcard address: reachable from elsewhere


def check_exposure(host: str, settings: Settings) -> None:
    """Refuse (CliError) to serve the API beyond loopback without API keys, unless the
    operator said so with PLANSMITH_ALLOW_OPEN_API=1: anyone who reaches an open API can
    approve plans."""
    api = settings.api
    if is_loopback(host) or api.keys_enabled or api.allow_open_api:
        return
    raise CliError(
        f"refusing to serve the API on {host}, beyond loopback, without API keys: anyone "
        "who reaches it could create, approve and cancel plans. Set PLANSMITH_API_KEYS "
        "(key:owner[:role],...; docs/operating.md), bind to 127.0.0.1, or set "
        "PLANSMITH_ALLOW_OPEN_API=1 to run it open on purpose"
    )


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    check_exposure(args.host, settings)  # before anything is imported or bound
    import uvicorn  # deferred: the web server is needed by this verb only

    from api.app import create_app

    if not settings.api.keys_enabled and not is_loopback(args.host):
        err(f"warning: the API on {args.host} asks for no API key (PLANSMITH_ALLOW_OPEN_API=1)")
    app = create_app(settings=settings, bind_host=args.host)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return EXIT_OK


def _spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    # SIGKILL if we die: nobody would be left to end a graceful stop that hangs
    return popen([sys.executable, "-m", "plansmith.cli", *argv], death_signal=signal.SIGKILL)


class Stack:
    """Dev server + worker + API as child processes; stopped together.

    Start and stop it from the main thread: a child's parent-death signal follows the
    thread that started it."""

    def __init__(self, settings: Settings, api_port: int = 8000, host: str = "127.0.0.1"):
        self.settings, self.api_port, self.host = settings, api_port, host
        self.procs: list[subprocess.Popen[bytes]] = []

    async def start(self) -> None:
        if port_open(self.host, self.api_port):
            raise CliError(
                f"port {self.api_port} on {self.host} is taken; pass --port to use another"
            )
        try:
            self.procs.append(start_server(self.settings))
        except RuntimeError as e:
            raise CliError(str(e)) from None
        await wait_until_ready(self.settings)
        self.procs.append(_spawn(["worker"]))
        self.procs.append(_spawn(["api", "--host", self.host, "--port", str(self.api_port)]))
        deadline = time.monotonic() + 30
        while not port_open(self.host, self.api_port):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise CliError("the worker or the API did not start; see the messages above")
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        """The API and the worker first, then the dev server; each phase gets
        ``STOP_GRACE_S``, then what is left is killed."""
        server, others = self.procs[:1], self.procs[1:]
        stop_processes(others, grace_s=STOP_GRACE_S)
        stop_processes(server, grace_s=STOP_GRACE_S)
        self.procs.clear()

    def print_where(self) -> None:
        print(f"  Temporal:   {self.settings.temporal.address}", flush=True)
        print(f"  Web UI:     {ui_url(self.settings)}", flush=True)
        print(f"  API:        http://{self.host}:{self.api_port}/healthz", flush=True)


def wait_forever(stack: Stack) -> None:
    """Until Ctrl-C (or SIGTERM, SIGHUP), or until a process of the stack stops."""
    try:
        while all(p.poll() is None for p in stack.procs):
            time.sleep(0.5)
        err("a process of the stack stopped; stopping the others")
    except KeyboardInterrupt as e:
        said = f" ({e.args[0]})" if isinstance(e, Stopping) else ""
        print(f"\nstopping{said}…", flush=True)


def follow_parent(args: argparse.Namespace) -> None:
    """``--exit-with-parent``: stop (SIGTERM) when the process that started us ends."""
    if getattr(args, "exit_with_parent", False) and not exit_with_parent():
        err("warning: --exit-with-parent is not supported on this platform")


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    check_exposure(args.host, settings)  # before any process of the stack starts
    stack = Stack(settings, args.port, args.host)
    with StopSignals() as signals:
        try:
            follow_parent(args)
            asyncio.run(stack.start())
            print("Plansmith is up (Ctrl-C stops it):", flush=True)
            stack.print_where()
            wait_forever(stack)
        finally:
            signals.stopping()
            stack.stop()
    return EXIT_OK
