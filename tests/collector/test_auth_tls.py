"""`--auth-token` guards both receivers; `--tls-cert/--tls-key` serves both over TLS."""

from __future__ import annotations

import http.client
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2, status_pb2
from harness import MallardServer, query, start_server, wait_for_rows
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

TOKEN = "secret"
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def trace_request(name: str) -> bytes:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = bytes(range(1, 17)), bytes(range(1, 9)), name
    span.start_time_unix_nano, span.end_time_unix_nano = 1_700_000_000_000_000_000, 1_700_000_001_000_000_000
    return request.SerializeToString()


def post(
    url: str, body: bytes, *, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None
) -> int:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/x-protobuf", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


def grpc_export(
    channel: grpc.Channel, payload: bytes, *, timeout: float = 30, **kwargs: object
) -> ExportTraceServiceResponse:
    call = channel.unary_unary(
        TRACE_EXPORT, request_serializer=None, response_deserializer=ExportTraceServiceResponse.FromString
    )
    response: ExportTraceServiceResponse = call(payload, timeout=timeout, **kwargs)
    return response


def sdk_spans(*names: str) -> list[ReadableSpan]:
    """Finished spans from the real SDK, to hand to the real OTLP exporters."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test_auth_tls")
    for name in names:
        with tracer.start_as_current_span(name):
            pass
    provider.shutdown()
    return list(memory.get_finished_spans())


# bearer token


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MallardServer]:
    data = tmp_path_factory.mktemp("auth") / "data"
    server = start_server(data, "--flush-interval", "0.2", "--auth-token", TOKEN)
    yield server
    if server.process.poll() is None:
        server.stop()


def test_http_needs_the_bearer_token(guarded: MallardServer) -> None:
    url = f"{guarded.http_endpoint}/v1/traces"
    assert post(url, trace_request("no-token")) == 401
    assert post(url, trace_request("wrong"), headers={"Authorization": "Bearer wrong"}) == 401
    assert post(url, trace_request("bare"), headers={"Authorization": TOKEN}) == 401
    assert post(url, trace_request("http-ok"), headers={"Authorization": f"Bearer {TOKEN}"}) == 200
    rows = wait_for_rows(guarded.data, "select name from spans where name = 'http-ok'", 1)
    assert rows.num_rows == 1


def test_http_401_carries_a_status_body(guarded: MallardServer) -> None:
    request = urllib.request.Request(
        f"{guarded.http_endpoint}/v1/traces",
        data=trace_request("no-token"),
        headers={"Content-Type": "application/x-protobuf"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 401
    status = status_pb2.Status.FromString(caught.value.read())
    assert status.code == code_pb2.UNAUTHENTICATED
    assert status.message


def test_grpc_needs_the_bearer_token(guarded: MallardServer) -> None:
    with grpc.insecure_channel(guarded.grpc_endpoint) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            grpc_export(channel, trace_request("no-token"))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as caught:
            grpc_export(channel, trace_request("wrong"), metadata=(("authorization", "Bearer wrong"),))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        response = grpc_export(
            channel, trace_request("grpc-ok"), metadata=(("authorization", f"Bearer {TOKEN}"),)
        )
    assert not response.HasField("partial_success")
    assert wait_for_rows(guarded.data, "select name from spans where name = 'grpc-ok'", 1).num_rows == 1


def test_sdk_grpc_exporter_with_the_token_exports(guarded: MallardServer) -> None:
    spans = sdk_spans("sdk-grpc-a", "sdk-grpc-b")
    exporter = OTLPSpanExporter(
        endpoint=guarded.grpc_endpoint, insecure=True, headers={"authorization": f"Bearer {TOKEN}"}
    )
    try:
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    sql = "select name from spans where name like 'sdk-grpc-%' order by name"
    assert wait_for_rows(guarded.data, sql, 2).column("name").to_pylist() == ["sdk-grpc-a", "sdk-grpc-b"]

    # UNAUTHENTICATED is not retryable, so a wrong token fails at once
    wrong = OTLPSpanExporter(
        endpoint=guarded.grpc_endpoint, insecure=True, headers={"authorization": "Bearer nope"}, timeout=10
    )
    try:
        assert wrong.export(sdk_spans("sdk-grpc-refused")) == SpanExportResult.FAILURE
    finally:
        wrong.shutdown()


def test_sdk_http_exporter_with_the_token_exports(guarded: MallardServer) -> None:
    exporter = HttpSpanExporter(
        endpoint=f"{guarded.http_endpoint}/v1/traces", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    try:
        assert exporter.export(sdk_spans("sdk-http")) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert wait_for_rows(guarded.data, "select name from spans where name = 'sdk-http'", 1).num_rows == 1


def test_refused_requests_were_never_stored(guarded: MallardServer) -> None:
    assert guarded.stop() == 0
    names = query(guarded.data, "select name from spans").column("name").to_pylist()
    assert not {"no-token", "wrong", "bare", "sdk-grpc-refused"} & set(names)


# TLS


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, made with the `openssl` command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("TLS tests need the `openssl` command (the `cryptography` package is not installed)")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MallardServer, Path]]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(directory)
    server = start_server(
        directory / "data", "--flush-interval", "0.2", "--tls-cert", str(cert), "--tls-key", str(key)
    )
    yield server, cert
    if server.process.poll() is None:
        server.stop()


def test_https_with_the_ca_is_accepted(tls_server: tuple[MallardServer, Path]) -> None:
    server, cert = tls_server
    context = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{server.http_port}/v1/traces"
    assert post(url, trace_request("https"), context=context) == 200
    assert wait_for_rows(server.data, "select name from spans where name = 'https'", 1).num_rows == 1


def test_https_without_the_ca_is_refused_by_the_client(tls_server: tuple[MallardServer, Path]) -> None:
    server, _ = tls_server
    url = f"https://127.0.0.1:{server.http_port}/v1/traces"
    with pytest.raises(urllib.error.URLError) as caught:
        post(url, trace_request("untrusted"), context=ssl.create_default_context())
    assert isinstance(caught.value.reason, ssl.SSLCertVerificationError)


def test_plain_http_on_the_tls_port_fails(tls_server: tuple[MallardServer, Path]) -> None:
    server, _ = tls_server
    with pytest.raises((OSError, http.client.HTTPException)):
        post(f"http://127.0.0.1:{server.http_port}/v1/traces", trace_request("plain"))


def test_grpc_over_tls_with_the_ca_is_accepted(tls_server: tuple[MallardServer, Path]) -> None:
    server, cert = tls_server
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(server.grpc_endpoint, credentials) as channel:
        response = grpc_export(channel, trace_request("grpc-tls"))
    assert not response.HasField("partial_success")
    assert wait_for_rows(server.data, "select name from spans where name = 'grpc-tls'", 1).num_rows == 1


def test_insecure_grpc_on_the_tls_port_fails(tls_server: tuple[MallardServer, Path]) -> None:
    server, _ = tls_server
    with grpc.insecure_channel(server.grpc_endpoint) as channel, pytest.raises(grpc.RpcError) as caught:
        grpc_export(channel, trace_request("grpc-plain"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
