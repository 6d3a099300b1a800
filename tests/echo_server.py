"""An HTTP server on 127.0.0.1 (a free port) that records every request and echoes it
back: the secrets tests prove with it that a value did reach the server, and that what
the server sends back (which repeats the value) is redacted."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class EchoServer:
    """``/reject...`` answers 400, any other path 200; both with a JSON body repeating the
    path and the request's headers. ``/b64...`` also sends the body back base64-encoded
    (``body_b64``, standard and URL-safe without padding), as some services echo data."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                seen = {"body": body, "path": self.path, "headers": dict(self.headers)}
                outer.requests.append(seen)
                answer: dict[str, Any] = {"you_sent": seen}
                if self.path.startswith("/b64"):
                    raw = body.encode()
                    answer["body_b64"] = base64.b64encode(raw).decode()
                    answer["body_b64url"] = base64.urlsafe_b64encode(raw).decode().rstrip("=")
                data = json.dumps(answer).encode()
                self.send_response(400 if self.path.startswith("/reject") else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> EchoServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def received(self, value: str) -> bool:
        """Whether ``value`` arrived in a request's path, headers or body."""
        return any(value in json.dumps(r) for r in self.requests)
