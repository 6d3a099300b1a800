"""A local HTTP server (127.0.0.1, free port, stopped by the test) that counts the
requests it gets by path and ``Idempotency-Key``: how tests see whether an effect was
sent once, and under which key.

Paths (any method; the query string is ignored for counting):

- ``/ok``: 200 with a small JSON body.
- ``/big``: 200 with a JSON body of about ``?size=N`` bytes (a large output).
- ``/flaky``: 503 for the first ``?fail=N`` requests to it, then 200.
- ``/hold``: marks the request as arrived (:attr:`KeyServer.arrived`), then waits until
  :meth:`KeyServer.release` (at most ``hold_s`` seconds) before answering 200.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class KeyServer:
    def __init__(self, hold_s: float = 30.0) -> None:
        self.seen: list[tuple[str, str, str]] = []  # (method, path, idempotency key)
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
                if length:
                    self.rfile.read(length)
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                key = self.headers.get("Idempotency-Key", "")
                with outer._lock:
                    outer.seen.append((self.command, url.path, key))
                    outer._hits[url.path] += 1
                    hits = outer._hits[url.path]
                if url.path == "/hold":
                    outer.arrived.set()
                    outer._release.wait(hold_s)
                if url.path == "/flaky" and hits <= int(query.get("fail", "0")):
                    self._send(503, {"error": f"flaky failure {hits}"})
                elif url.path == "/big":
                    self._send(200, {"ok": True, "pad": "x" * int(query.get("size", "1000"))})
                else:
                    self._send(200, {"ok": True, "path": url.path})

            def _send(self, code: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def release(self) -> None:
        """Let every held (``/hold``) request answer."""
        self._release.set()

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
