"""The chaos suite's short profile (``chaos/run.py``; ``make chaos`` runs the long one):
about 17 plans on two worker processes while workers are SIGKILLed (each replaced), the
Temporal dev server restarts, the store (PostgreSQL through a local TCP proxy) goes away
for 5 s, a control storm hits the running plans and hostile documents arrive through
``plansmith run``. Every figure must be 0 (the worker's peak RSS only has to stay under
its address-space cap)."""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest

from chaos.run import PROFILES, run_suite
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow


async def test_short_chaos_profile_loses_nothing_and_repeats_no_effect() -> None:
    lines: list[str] = []
    report = await run_suite(PROFILES["short"], lines.append)
    table = report.table()
    print("\n".join(lines) + "\n\n" + table)  # shown with -s, and on failure
    # the faults did happen: the figures below are about something
    assert report.workers_killed >= 2 and report.workers_started >= 4, table
    assert report.server_restarts == 1 and report.store_cuts == 1, table
    assert report.store_refused > 0, "no worker touched the store while it was away\n" + table
    assert sum(v for k, v in report.storm.items() if "accepted" in k) > 0, table
    assert sum(v for k, v in report.storm.items() if "refused" in k) > 0, table
    assert report.post_steps > 0 and report.effects > 0, table
    assert report.outcomes["completed"] > 0, table
    assert report.worker_peak_rss_kib > 0
    assert report.failures() == {}, table


def cut_off(sock: socket.socket) -> bool:
    """Whether nothing comes back through the connection: reset, or closed."""
    try:
        sock.sendall(b"x")
        return sock.recv(1) == b""
    except OSError:
        return True


def refused(port: int) -> bool:
    """Whether a new connection is reset (at once, or at its first exchange)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            return cut_off(sock)
    except OSError:
        return True


def test_the_proxy_cuts_and_restores_a_connection() -> None:
    """The store cut is real: a connection through the proxy is reset on both sides, new
    ones are refused, and after the restore they reach the server again."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    ended = threading.Semaphore(0)  # one release per connection the server saw end

    def answer(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            while data := conn.recv(1024):
                conn.sendall(data)
        ended.release()

    def echo() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=echo, daemon=True).start()
    with TcpProxy(("127.0.0.1", port)) as proxy:
        a = socket.create_connection(("127.0.0.1", proxy.port), timeout=3)
        a.sendall(b"ping")
        assert a.recv(4) == b"ping"
        proxy.cut()
        # the server's side ends too: a session left open there would keep the locks of
        # its transaction while its client is gone
        assert ended.acquire(timeout=3), "the server still holds the cut connection"
        assert cut_off(a), "an open connection still reached the server"
        assert refused(proxy.port), "a new connection reached the server while it was away"
        assert proxy.refused >= 1
        proxy.restore()
        c = socket.create_connection(("127.0.0.1", proxy.port), timeout=3)
        c.sendall(b"pong")
        assert c.recv(4) == b"pong"
        for s in (a, c):
            s.close()
    server.close()
