"""A local HTTP server (127.0.0.1, free port, stopped by the test) that counts the
requests it gets by path and ``Idempotency-Key``: how tests see whether an effect was
sent once, and under which key.

Paths (any method; the query string is ignored for counting):

- ``/ok``: 200 with a small JSON body.
- ``/big``: 200 with a JSON body of about ``?size=N`` bytes (a large output).
- ``/flaky``: 503 for the first ``?fail=N`` requests to it, then 200.
- ``/status?code=N``: that status, always.
- ``/hold``: marks the request as arrived (:attr:`KeyServer.arrived`), then waits until
  :meth:`KeyServer.release` (at most ``hold_s`` seconds) before answering 200.
- ``/redirect?to=URL&code=307``: that redirect (any 3xx code) to ``URL``.
- ``/stream?size=N``: N bytes, chunked, without a Content-Length; :attr:`KeyServer.streamed`
  counts what was written before the client went away (:attr:`KeyServer.stream_ended`).

Every request is also kept whole, headers and body, in :attr:`KeyServer.received`.
``host`` picks the loopback address it listens on (``127.0.0.2``...).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Received:
    method: str
    path: str  # with the query string
    headers: dict[str, str]
    body: bytes


class KeyServer:
    def __init__(self, hold_s: float = 30.0, host: str = "127.0.0.1") -> None:
        self.seen: list[tuple[str, str, str]] = []  # (method, path, idempotency key)
        self.received: list[Received] = []
        self.streamed = 0
        self.stream_ended = threading.Event()
        self.arrived = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._hits: Counter[str] = Counter()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                key = self.headers.get("Idempotency-Key", "")
                with outer._lock:
                    outer.seen.append((self.command, url.path, key))
                    outer.received.append(
                        Received(self.command, self.path, dict(self.headers.items()), body)
                    )
                    outer._hits[url.path] += 1
                    hits = outer._hits[url.path]
                if url.path == "/hold":
                    outer.arrived.set()
                    outer._release.wait(hold_s)
                if url.path == "/flaky" and hits <= int(query.get("fail", "0")):
                    self._send(503, {"error": f"flaky failure {hits}"})
                elif url.path == "/big":
                    self._send(200, {"ok": True, "pad": "x" * int(query.get("size", "1000"))})
                elif url.path == "/redirect":
                    self.send_response(int(query.get("code", "307")))
                    self.send_header("Location", query.get("to", "/ok"))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif url.path == "/stream":
                    self._stream(int(query.get("size", "1000000")))
                elif url.path == "/status":
                    self._send(int(query.get("code", "200")), {"status": query.get("code")})
                else:
                    self._send(200, {"ok": True, "path": url.path})

            def _send(self, code: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, size: int) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"y" * 65536
                try:
                    left = size
                    while left > 0:
                        part = chunk[: min(left, len(chunk))]
                        self.wfile.write(b"%x\r\n%b\r\n" % (len(part), part))
                        left -= len(part)
                        with outer._lock:
                            outer.streamed += len(part)
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the client stopped reading and went away
                    self.close_connection = True
                finally:
                    outer.stream_ended.set()

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.host = host
        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def release(self) -> None:
        """Let every held (``/hold``) request answer."""
        self._release.set()

    @property
    def paths(self) -> Counter[str]:
        """How many requests each path got."""
        with self._lock:
            return Counter(p for _, p, _ in self.seen)

    @property
    def keys(self) -> Counter[str]:
        """How many requests carried each ``Idempotency-Key``."""
        with self._lock:
            return Counter(k for _, _, k in self.seen)

    def requests(self, path: str, method: str | None = None) -> list[str]:
        """The idempotency keys of the requests to ``path`` (by ``method``), in order."""
        with self._lock:
            return [k for m, p, k in self.seen if p == path and method in (None, m)]

    def __enter__(self) -> KeyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
