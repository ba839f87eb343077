"""`mallard serve` starts on port 0, takes a request on each transport and drains on SIGTERM."""

from __future__ import annotations

import urllib.request

from harness import MallardServer, wait_for_rows


def test_serve_takes_http_protobuf_and_drains(server: MallardServer) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = bytes(range(1, 17)), bytes(range(1, 9)), "smoke"
    span.start_time_unix_nano, span.end_time_unix_nano = 1_700_000_000_000_000_000, 1_700_000_000_500_000_000
    answer = urllib.request.urlopen(
        urllib.request.Request(
            f"{server.http_endpoint}/v1/traces",
            data=request.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
        )
    )
    assert answer.status == 200
    rows = wait_for_rows(server.data, "select name, duration from spans", 1)
    assert rows.to_pylist() == [{"name": "smoke", "duration": 500_000_000}]
    assert server.stop() == 0
