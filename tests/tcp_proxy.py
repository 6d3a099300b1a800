"""A TCP proxy on 127.0.0.1 in front of a local server (the store's PostgreSQL), to make
the server go away and come back, or hang, while the code under test keeps its address.

    proxy = TcpProxy(("127.0.0.1", 5432))
    url = f"postgresql://...@127.0.0.1:{proxy.port}/test"
    proxy.cut()      # every connection is closed and new ones are reset at once
    proxy.restore()  # connections go through again (same port)
    proxy.hang()     # connections are accepted and bytes read, but nothing is answered
    proxy.close()

The listening socket stays open for the proxy's whole life (the port is never given
back while it runs), so ``restore`` cannot lose the port to another process.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import uuid
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import make_url

__all__ = ["TcpProxy", "pg_schema_behind_proxy"]


class TcpProxy:
    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.accepted = 0  # connections forwarded to the upstream
        self.refused = 0  # connections reset while cut
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = False
        self._hung = False
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name="tcp-proxy")
        self._thread.start()

    # --- control ------------------------------------------------------------------

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        """Close every connection (both ends, at once) and reset new ones until
        :meth:`restore`: to its clients, the server went away."""
        with self._lock:
            self._cut = True
            self._hung = False
            self._close_all()

    def hang(self) -> None:
        """From now on, accept connections and read what clients send, but forward and
        answer nothing (a database that stopped answering, TCP still up)."""
        with self._lock:
            self._hung = True

    def restore(self) -> None:
        """Forward again (after :meth:`cut` or :meth:`hang`); connections that hung are
        closed, new ones reach the upstream."""
        with self._lock:
            if self._hung:
                self._close_all()
            self._cut = False
            self._hung = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._cut = True
            self._close_all()
        with contextlib.suppress(OSError):
            self.listener.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- inside -------------------------------------------------------------------

    def _close_all(self) -> None:
        for s in self._sockets:
            _reset(s)
        self._sockets.clear()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    _reset(conn)
                    return
                if self._cut:
                    self.refused += 1
                    _reset(conn)
                    continue
                if self._hung:
                    self._sockets.append(conn)
                    threading.Thread(target=self._swallow, args=(conn,), daemon=True).start()
                    continue
            try:
                up = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(conn)
                continue
            up.settimeout(None)
            with self._lock:
                if self._cut or self._closed:
                    _reset(conn)
                    _reset(up)
                    continue
                self.accepted += 1
                self._sockets += [conn, up]
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self._hung:
                    continue  # read and dropped: nobody answers
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _swallow(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass


def _reset(s: socket.socket) -> None:
    """Close ``s`` with a RST (SO_LINGER 0): the peer sees the connection fail at once."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()


@contextlib.contextmanager
def pg_schema_behind_proxy(pg_database: str) -> Iterator[tuple[str, str, TcpProxy]]:
    """A fresh schema in the PostgreSQL database ``pg_database`` (the ``pg_database``
    fixture): (direct URL, URL through a :class:`TcpProxy`, the proxy)."""
    from store import db

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = db.make_engine(pg_database, poolclass=sa.NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    direct = make_url(pg_database).update_query_dict({"options": f"-csearch_path={schema}"})
    proxy = TcpProxy((direct.host or "127.0.0.1", direct.port or 5432))
    via = direct.set(host="127.0.0.1", port=proxy.port)
    try:
        yield (
            direct.render_as_string(hide_password=False),
            via.render_as_string(hide_password=False),
            proxy,
        )
    finally:
        proxy.close()
