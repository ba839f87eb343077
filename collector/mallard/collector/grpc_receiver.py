"""OTLP/gRPC receiver: TraceService, MetricsService and LogsService `Export` on one grpc.aio server.

Handlers take raw request bytes (no deserializer), so parsing, limits and errors stay ours.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final

import grpc

from mallard.collector.errors import PermanentError
from mallard.collector.ingest import Ingest
from mallard.collector.responses import export_response
from mallard.collector.status import Answer, answer_for, unauthenticated

logger = logging.getLogger(__name__)

SERVICES: Final = {
    "traces": "opentelemetry.proto.collector.trace.v1.TraceService",
    "metrics": "opentelemetry.proto.collector.metrics.v1.MetricsService",
    "logs": "opentelemetry.proto.collector.logs.v1.LogsService",
}

Handler = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Coroutine[Any, Any, bytes]]


def _export_handler(ingest: Ingest, signal: str, token: str | None) -> Handler:
    expected = f"Bearer {token}" if token else None

    async def export(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        if expected is not None:
            sent = dict(context.invocation_metadata() or ()).get("authorization", "")
            if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), expected.encode()):
                ingest.refused(signal, "unauthenticated")
                await _abort(context, unauthenticated())
        try:
            result = await ingest.export(signal, request)
        except Exception as exc:  # the request boundary: every failure becomes an OTLP status
            answer = answer_for(exc)
            if answer.http_status == 500:
                logger.exception("unexpected failure exporting %s", signal)
            elif not isinstance(exc, PermanentError):
                logger.debug("export failed", exc_info=True)
            await _abort(context, answer)
        return bytes(export_response(signal, result).SerializeToString())

    return export


async def _abort(context: grpc.aio.ServicerContext[bytes, bytes], answer: Answer) -> None:
    details = answer.rpc_status().SerializeToString()
    await context.abort(
        answer.grpc_code, answer.message, trailing_metadata=(("grpc-status-details-bin", details),)
    )


def create_grpc_server(
    ingest: Ingest,
    *,
    max_request_bytes: int,
    auth_token: str | None,
    reuse_port: bool,
    max_concurrent_requests: int,
) -> grpc.aio.Server:
    """A server with the three OTLP services registered; the caller adds ports and starts it."""
    server = grpc.aio.server(
        maximum_concurrent_rpcs=max_concurrent_requests,  # beyond it grpc answers RESOURCE_EXHAUSTED
        options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            # several workers share a port only when asked; otherwise a taken port is an error
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )
    handlers = []
    for signal, service in SERVICES.items():
        method = grpc.unary_unary_rpc_method_handler(
            _export_handler(ingest, signal, auth_token),
            request_deserializer=None,
            response_serializer=None,
        )
        handlers.append(grpc.method_handlers_generic_handler(service, {"Export": method}))
    server.add_generic_rpc_handlers(tuple(handlers))
    return server
