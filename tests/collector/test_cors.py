"""CORS for browser OTLP/HTTP exporters: preflight and allowed origins, off by default."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import MallardServer, start_server
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

APP = "http://app.example:3000"


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MallardServer]:
    running = start_server(
        tmp_path_factory.mktemp("cors") / "data", "--cors-allowed-origins", f"{APP}, http://other"
    )
    yield running
    running.stop()


def call(
    server: MallardServer, method: str, headers: dict[str, str], body: bytes = b""
) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    connection.request(method, "/v1/traces", body=body, headers=headers)
    return connection.getresponse()


def test_preflight_for_an_allowed_origin(cors_server: MallardServer) -> None:
    answer = call(
        cors_server,
        "OPTIONS",
        {
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert answer.status == 204
    assert answer.getheader("access-control-allow-origin") == APP
    assert answer.getheader("access-control-allow-methods") == "POST"
    assert answer.getheader("access-control-allow-headers") == "content-type"


def test_export_from_an_allowed_origin_carries_the_header(cors_server: MallardServer) -> None:
    answer = call(
        cors_server,
        "POST",
        {"Origin": APP, "Content-Type": "application/x-protobuf"},
        ExportTraceServiceRequest().SerializeToString(),
    )
    assert answer.status == 200
    assert answer.getheader("access-control-allow-origin") == APP


def test_other_origins_get_no_cors_headers(cors_server: MallardServer) -> None:
    answer = call(
        cors_server, "OPTIONS", {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert answer.status == 405
    assert answer.getheader("access-control-allow-origin") is None


def test_cors_is_off_by_default(tmp_path: Path) -> None:
    plain = start_server(tmp_path / "data")
    try:
        answer = call(plain, "OPTIONS", {"Origin": APP, "Access-Control-Request-Method": "POST"})
        assert answer.status == 405 and answer.getheader("access-control-allow-origin") is None
    finally:
        plain.stop()
