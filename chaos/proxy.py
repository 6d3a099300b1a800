"""A TCP proxy on 127.0.0.1 (free port) in front of one server, that the chaos suite can
cut: the store "goes away" for the workers while PostgreSQL itself keeps running.

- ``cut("reset")``: every open connection is reset (RST) and every new one is reset at
  once, as when the database restarts or its host refuses connections.
- ``cut("hang")``: nothing is forwarded any more, open connections stay open and new ones
  are accepted but get no answer, as in a network partition.
- ``restore()``: new connections reach the server again; in ``hang`` mode the held bytes
  flow again, as when a partition heals.

Threads only, no dependency; it forwards between loopback addresses and nothing else.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from typing import Literal

CutMode = Literal["reset", "hang"]


def _reset(sock: socket.socket) -> None:
    """End the connection at once, as a dead peer would (RST, SO_LINGER 0).

    ``shutdown`` first: ``close`` alone does not end a socket that another thread is
    blocked reading (the pump), so the server would keep the session -- and the locks
    of its open transaction -- while its client is long gone."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        if target_host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the chaos proxy forwards to this machine only")
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._mode: CutMode | None = None
        self._open = threading.Event()  # set while bytes may flow
        self._open.set()
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._held: list[socket.socket] = []  # accepted during a hang, not yet forwarded
        self._stopped = False
        self.connections = 0  # accepted and forwarded
        self.refused = 0  # reset (cut "reset") or held (cut "hang")
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    # --- control --------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    @property
    def down(self) -> bool:
        return self._mode is not None

    def cut(self, mode: CutMode = "reset") -> None:
        """The server goes away (see the module docstring)."""
        with self._lock:
            self._mode = mode
            self._open.clear()
            pairs = list(self._pairs) if mode == "reset" else []
            if mode == "reset":
                self._pairs.clear()
        for a, b in pairs:
            _reset(a)
            _reset(b)

    def restore(self) -> None:
        """The server is back."""
        with self._lock:
            self._mode = None
            held, self._held = self._held, []
            self._open.set()
        for conn in held:
            self._forward(conn)

    def stop(self) -> None:
        self._stopped = True
        self.restore()
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            pairs, self._pairs = list(self._pairs), set()
        for a, b in pairs:
            _reset(a)
            _reset(b)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- forwarding -----------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                mode = self._mode
                if mode == "hang":
                    self._held.append(conn)
            if mode == "reset":
                self.refused += 1
                _reset(conn)
            elif mode == "hang":
                self.refused += 1
            else:
                self._forward(conn)

    def _forward(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            _reset(conn)
            return
        pair = (conn, upstream)
        with self._lock:
            self._pairs.add(pair)
        self.connections += 1
        for src, dst in (pair, pair[::-1]):
            threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._open.wait()  # a hang holds the bytes here until restore()
                if pair not in self._pairs:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                known = pair in self._pairs
                self._pairs.discard(pair)
            if known:  # the other side ended: end this one too
                for s in pair:
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                    with contextlib.suppress(OSError):
                        s.close()
