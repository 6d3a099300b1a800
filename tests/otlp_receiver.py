"""An OTLP/HTTP trace receiver on 127.0.0.1 (a free port): ``POST /v1/traces`` with a
protobuf ``ExportTraceServiceRequest``, answered 200. The tracing tests point
``OTEL_EXPORTER_OTLP_ENDPOINT`` at it and read back what each process exported."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


@dataclass
class Received:
    """One span as it arrived: its service, trace id (hex) and the span itself."""

    service: str
    trace_id: str
    span: Any

    @property
    def name(self) -> str:
        return str(self.span.name)

    def attribute(self, key: str) -> Any:
        for a in self.span.attributes:
            if a.key == key:
                value = a.value
                return getattr(value, value.WhichOneof("value"))
        return None


class OtlpReceiver:
    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.paths.append(self.path)
                if self.path == "/v1/traces":
                    req = ExportTraceServiceRequest()
                    req.ParseFromString(body)
                    outer.requests.append(req)
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def spans(self) -> list[Received]:
        """Every span received so far, in order of arrival."""
        out = []
        for req in list(self.requests):
            for rs in req.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in rs.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for ss in rs.scope_spans:
                    out.extend(Received(service, s.trace_id.hex(), s) for s in ss.spans)
        return out
