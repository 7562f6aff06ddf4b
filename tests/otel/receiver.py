"""An OTLP/HTTP trace receiver built on the official protobuf definitions
(PyPI `opentelemetry-proto`): each POST to /v1/traces is decoded as an
`ExportTraceServiceRequest` and every span in it appended to OUT as one JSON
line (ids in hex, attributes as a flat object, the resource's service.name).

    python receiver.py PORT OUT

tests/otel/e2e.py runs it as the collector `switchboard serve` exports to.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

WRITE = threading.Lock()


def value_of(value: AnyValue):
    """An attribute's value as JSON: the one field of the AnyValue oneof that is set."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def spans_of(request: ExportTraceServiceRequest):
    for resource_spans in request.resource_spans:
        resource = {kv.key: value_of(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "service": resource.get("service.name"),
                    "scope": scope_spans.scope.name,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name,
                    # Span.SpanKind's names: SPAN_KIND_SERVER, ...
                    "kind": span.SpanKind.Name(span.kind),
                    "start": span.start_time_unix_nano,
                    "end": span.end_time_unix_nano,
                    "attributes": {kv.key: value_of(kv.value) for kv in span.attributes},
                    "status": span.status.StatusCode.Name(span.status.code),
                    "status_message": span.status.message,
                }


def handler(out_path: str):
    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_response(415)
                self.end_headers()
                return
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            with WRITE, open(out_path, "a", encoding="utf-8") as out:
                for span in spans_of(request):
                    out.write(json.dumps(span) + "\n")
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    return Receiver


def main() -> None:
    port, out_path = int(sys.argv[1]), sys.argv[2]
    server = ThreadingHTTPServer(("127.0.0.1", port), handler(out_path))
    server.serve_forever()


if __name__ == "__main__":
    main()
