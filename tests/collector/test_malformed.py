"""Every malformed request gets its documented OTLP answer, and the collector keeps serving.

One real `mallard serve` with small limits takes a good request, then each bad one; after every bad
request a good one must still be acknowledged, and at the end the store holds the good spans, and
only them, unchanged. A second server with a tiny queue checks backpressure (429 / RESOURCE_EXHAUSTED
with a retry delay) and that SIGTERM still drains everything it acknowledged.
"""

from __future__ import annotations

import gzip
import http.client
import itertools
import json
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from harness import MallardServer, query, start_server, wait_for_rows
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

MAX_REQUEST = 1 << 20
MAX_DECOMPRESSED = 4 << 20
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
TRACE_ID = bytes(range(1, 17))
_span_ids = itertools.count(1)


def trace_request(*names: str, bad_span_id: str | None = None, name_padding: int = 0) -> bytes:
    """One resource, one scope, a span per name; `bad_span_id` adds a span whose id is 4 bytes long."""
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for name in names:
        span = spans.add()
        span.trace_id, span.span_id = TRACE_ID, next(_span_ids).to_bytes(8, "big")
        span.name = name + "x" * name_padding
        span.start_time_unix_nano = 1_700_000_000_000_000_000
        span.end_time_unix_nano = 1_700_000_000_250_000_000
    if bad_span_id is not None:
        span = spans.add()
        span.trace_id, span.span_id, span.name = TRACE_ID, b"\x01\x02\x03\x04", bad_span_id
    return request.SerializeToString()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def rpc_status(self) -> status_pb2.Status:
        assert self.headers["content-type"] == "application/x-protobuf"
        return status_pb2.Status.FromString(self.body)


def http_call(
    endpoint: str,
    body: Any = b"",
    *,
    method: str = "POST",
    path: str = "/v1/traces",
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> Reply:
    """One request on a fresh connection; `chunked` sends `body` (an iterable) without Content-Length."""
    url = urllib.parse.urlsplit(endpoint)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    try:
        sent = {"Content-Type": "application/x-protobuf", **(headers or {})}
        if chunked:
            connection.request(method, path, body=body, headers=sent, encode_chunked=True)
        else:
            connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def chunks(total: int, size: int = 64 << 10) -> Iterator[bytes]:
    while total > 0:
        yield b"\x00" * min(size, total)
        total -= size


def grpc_export(channel: grpc.Channel, payload: bytes, **kwargs: Any) -> ExportTraceServiceResponse:
    call = channel.unary_unary(
        TRACE_EXPORT, request_serializer=None, response_deserializer=ExportTraceServiceResponse.FromString
    )
    response: ExportTraceServiceResponse = call(payload, timeout=30, **kwargs)
    return response


def refused(endpoint: str, reason: str) -> float:
    text = http_call(endpoint, method="GET", path="/metrics").body.decode()
    pattern = rf'^mallard_refused_requests_total\{{reason="{reason}",signal="traces"\}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return float(match[1]) if match else 0.0


@dataclass
class Collector:
    """The shared server, and the names of every span it acknowledged so far."""

    server: MallardServer
    channel: grpc.Channel
    expected: list[str] = field(default_factory=list)
    first_rows: list[dict[str, Any]] = field(default_factory=list)

    def send_good(self, label: str) -> None:
        """The server still serves: a good request after a bad one is acknowledged in full."""
        name = f"good-{len(self.expected)}-{label}"
        reply = http_call(self.server.http_endpoint, trace_request(name))
        assert reply.status == 200, reply
        assert not ExportTraceServiceResponse.FromString(reply.body).HasField("partial_success")
        self.expected.append(name)


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    data = tmp_path_factory.mktemp("malformed") / "data"
    server = start_server(
        data,
        "--flush-interval", "0.2",
        "--max-request-bytes", "1MiB",
        "--max-decompressed-bytes", "4MiB",
    )  # fmt: skip
    channel = grpc.insecure_channel(server.grpc_endpoint)
    running = Collector(server, channel)
    running.send_good("first")
    running.first_rows = wait_for_rows(data, "select * from spans", 1).to_pylist()
    assert len(running.first_rows) == 1
    yield running
    channel.close()
    if server.process.poll() is None:
        server.stop()


# HTTP


def test_body_over_limit_with_content_length_is_413(collector: Collector) -> None:
    body = trace_request("too-big", name_padding=MAX_REQUEST + 1)
    reply = http_call(collector.server.http_endpoint, body)
    assert reply.status == 413
    assert "limit" in reply.rpc_status().message
    collector.send_good("after-413")


def test_chunked_body_over_limit_is_413(collector: Collector) -> None:
    reply = http_call(collector.server.http_endpoint, chunks(MAX_REQUEST + (64 << 10)), chunked=True)
    assert reply.status == 413
    assert "limit" in reply.rpc_status().message
    collector.send_good("after-chunked-413")


def test_small_chunked_body_without_content_length_is_accepted(collector: Collector) -> None:
    body = trace_request("chunked")
    reply = http_call(collector.server.http_endpoint, iter([body[:10], body[10:]]), chunked=True)
    assert reply.status == 200
    collector.expected.append("chunked")


def test_gzip_bomb_is_413(collector: Collector) -> None:
    bomb = gzip.compress(b"\x00" * (MAX_DECOMPRESSED * 2))
    assert len(bomb) < MAX_REQUEST
    reply = http_call(collector.server.http_endpoint, bomb, headers={"Content-Encoding": "gzip"})
    assert reply.status == 413
    assert "inflates" in reply.rpc_status().message
    collector.send_good("after-bomb")


def test_corrupt_gzip_is_400(collector: Collector) -> None:
    corrupt = gzip.compress(trace_request("corrupt"))[:10] + b"not deflate at all"
    reply = http_call(collector.server.http_endpoint, corrupt, headers={"Content-Encoding": "gzip"})
    assert reply.status == 400
    assert "gzip" in reply.rpc_status().message
    truncated = gzip.compress(trace_request("truncated"))[:-12]
    reply = http_call(collector.server.http_endpoint, truncated, headers={"Content-Encoding": "gzip"})
    assert reply.status == 400
    collector.send_good("after-corrupt-gzip")


def test_valid_gzip_body_is_accepted(collector: Collector) -> None:
    body = gzip.compress(trace_request("gzipped"))
    reply = http_call(collector.server.http_endpoint, body, headers={"Content-Encoding": "gzip"})
    assert reply.status == 200
    collector.expected.append("gzipped")


def test_malformed_protobuf_is_400_with_a_protobuf_status(collector: Collector) -> None:
    reply = http_call(collector.server.http_endpoint, b"\xff\xff\xff\xff not protobuf")
    assert reply.status == 400
    status = reply.rpc_status()
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message
    collector.send_good("after-bad-protobuf")


def test_malformed_json_is_400_with_a_json_status(collector: Collector) -> None:
    reply = http_call(
        collector.server.http_endpoint,
        b'{"resourceSpans": [',
        headers={"Content-Type": "application/json"},
    )
    assert reply.status == 400
    assert reply.headers["content-type"] == "application/json"
    status = json.loads(reply.body)
    assert status["message"]
    collector.send_good("after-bad-json")


def test_unknown_content_type_is_415(collector: Collector) -> None:
    reply = http_call(collector.server.http_endpoint, b"hello", headers={"Content-Type": "text/plain"})
    assert reply.status == 415
    assert "Content-Type" in reply.rpc_status().message
    collector.send_good("after-415-type")


def test_unsupported_content_encoding_is_415(collector: Collector) -> None:
    body = trace_request("brotli")
    reply = http_call(collector.server.http_endpoint, body, headers={"Content-Encoding": "br"})
    assert reply.status == 415
    assert "Content-Encoding" in reply.rpc_status().message
    collector.send_good("after-415-encoding")


def test_wrong_path_is_404(collector: Collector) -> None:
    reply = http_call(collector.server.http_endpoint, trace_request("lost"), path="/v1/tracez")
    assert reply.status == 404
    collector.send_good("after-404")


def test_get_on_an_export_path_is_405(collector: Collector) -> None:
    reply = http_call(collector.server.http_endpoint, method="GET")
    assert reply.status == 405
    assert reply.headers["allow"] == "POST"
    collector.send_good("after-405")


def test_invalid_span_ids_are_a_partial_success_over_http(collector: Collector) -> None:
    body = trace_request("valid-beside-bad", bad_span_id="bad-id-http")
    reply = http_call(collector.server.http_endpoint, body)
    assert reply.status == 200
    partial = ExportTraceServiceResponse.FromString(reply.body).partial_success
    assert partial.rejected_spans == 1
    assert "spans[1]" in partial.error_message
    assert "expected 8" in partial.error_message
    collector.expected.append("valid-beside-bad")
    collector.send_good("after-partial-http")


# gRPC


def test_malformed_protobuf_over_grpc_is_invalid_argument(collector: Collector) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        grpc_export(collector.channel, b"\xff\xff\xff\xff not protobuf")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details()
    collector.send_good("after-grpc-bad-protobuf")


def test_message_over_the_limit_over_grpc_is_resource_exhausted(collector: Collector) -> None:
    # grpc itself refuses it (max_receive_message_length) before our handler runs. There is no
    # RetryInfo, so OTLP clients treat this RESOURCE_EXHAUSTED as permanent.
    with pytest.raises(grpc.RpcError) as caught:
        grpc_export(collector.channel, trace_request("too-big", name_padding=MAX_REQUEST + 1))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (caught.value.details() or "")
    trailers = dict(caught.value.trailing_metadata() or ())
    assert "grpc-status-details-bin" not in trailers
    collector.send_good("after-grpc-too-big")


def test_invalid_span_ids_are_a_partial_success_over_grpc(collector: Collector) -> None:
    response = grpc_export(collector.channel, trace_request("grpc-beside-bad", bad_span_id="bad-id-grpc"))
    assert response.partial_success.rejected_spans == 1
    assert "spans[1]" in response.partial_success.error_message
    collector.expected.append("grpc-beside-bad")
    collector.send_good("after-partial-grpc")


# operational endpoints, then the final state of the store


def test_operational_endpoints_answer_after_bad_requests(collector: Collector) -> None:
    endpoint = collector.server.http_endpoint
    assert http_call(endpoint, method="GET", path="/healthz").status == 200
    assert http_call(endpoint, method="GET", path="/readyz").status == 200
    metrics = http_call(endpoint, method="GET", path="/metrics")
    assert metrics.status == 200
    assert "mallard_refused_requests_total" in metrics.body.decode()


def test_each_invalid_request_is_counted_once(collector: Collector) -> None:
    endpoint = collector.server.http_endpoint
    before = refused(endpoint, "invalid")
    assert http_call(endpoint, b"\xff\xff not protobuf").status == 400
    assert refused(endpoint, "invalid") == before + 1
    with pytest.raises(grpc.RpcError):
        grpc_export(collector.channel, b"\xff\xff not protobuf")
    assert refused(endpoint, "invalid") == before + 2
    bad_json = http_call(endpoint, b"[", headers={"Content-Type": "application/json"})
    assert bad_json.status == 400
    assert refused(endpoint, "invalid") == before + 3


def test_store_holds_the_good_spans_and_only_them(collector: Collector) -> None:
    data = collector.server.data
    rows = wait_for_rows(data, "select name from spans", len(collector.expected))
    assert sorted(rows.column("name").to_pylist()) == sorted(collector.expected)
    first = query(data, f"select * from spans where name = '{collector.expected[0]}'").to_pylist()
    assert first == collector.first_rows
    assert collector.server.stop() == 0
    assert query(data, "select count(*) as n from spans").to_pylist() == [{"n": len(collector.expected)}]


# backpressure


def test_full_queue_answers_retry_later_and_drains_on_stop(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", "--max-queue-bytes", "1KiB", "--flush-interval", "30")
    channel = grpc.insecure_channel(server.grpc_endpoint)
    try:
        accepted: list[str] = []
        reply = Reply(0, {}, b"")
        for attempt in range(50):  # the first request is taken; the queue then holds its rows
            name = f"queued-{attempt}"
            reply = http_call(server.http_endpoint, trace_request(name))
            if reply.status != 200:
                break
            accepted.append(name)
        assert accepted, "the first request must be taken while the queue is empty"
        assert reply.status == 429
        assert reply.headers["retry-after"] == "1"
        status = reply.rpc_status()
        assert status.code == code_pb2.RESOURCE_EXHAUSTED
        info = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(info)
        assert info.retry_delay.seconds == 1

        as_json = http_call(
            server.http_endpoint, b"{}", headers={"Content-Type": "application/json"}
        )  # answered in the request's encoding
        assert as_json.status == 429
        assert json.loads(as_json.body)["details"][0]["retryDelay"] == "1s"
        assert http_call(server.http_endpoint, method="GET", path="/readyz").status == 503

        with pytest.raises(grpc.RpcError) as caught:
            grpc_export(channel, trace_request("refused-grpc"))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(caught.value.trailing_metadata() or ())
        details = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
        assert details.code == code_pb2.RESOURCE_EXHAUSTED
        assert details.details[0].Unpack(info)
        assert info.retry_delay.seconds == 1
    finally:
        channel.close()
        assert server.stop() == 0
    rows = query(server.data, "select name from spans")
    assert sorted(rows.column("name").to_pylist()) == sorted(accepted)
