"""OTLP/HTTP receiver: a bare ASGI app (served by uvicorn) for /v1/traces, /v1/metrics, /v1/logs.

Also answers `/healthz`, `/readyz` and `/metrics` (Prometheus text) for the collector itself.
"""

from __future__ import annotations

import hmac
import json
import logging
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from mallard.collector.errors import PermanentError, TooLargeError, UnsupportedMediaError
from mallard.collector.ingest import Ingest
from mallard.collector.otlp_json import decode_json
from mallard.collector.responses import export_response
from mallard.collector.status import Answer, answer_for, unauthenticated
from mallard.collector.telemetry import SelfMetrics

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
_SIGNAL_OF_PATH: Final = {"/v1/traces": "traces", "/v1/metrics": "metrics", "/v1/logs": "logs"}


class OtlpHttpApp:
    """The ASGI callable. Every error is answered with a google.rpc.Status in the request's encoding."""

    def __init__(
        self,
        ingest: Ingest,
        *,
        metrics: SelfMetrics,
        max_request_bytes: int,
        max_decompressed_bytes: int,
        auth_token: str | None,
        ready: Callable[[], bool],
        cors_allowed_origins: tuple[str, ...] = (),
    ) -> None:
        self._ingest = ingest
        self._metrics = metrics
        self._max_request = max_request_bytes
        self._max_decompressed = max_decompressed_bytes
        self._token = f"Bearer {auth_token}".encode() if auth_token else None
        self._ready = ready
        self._cors = frozenset(origin.encode() for origin in cors_allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        origin = dict(scope["headers"]).get(b"origin")
        if origin is not None and self._cors and (origin in self._cors or b"*" in self._cors):
            if method == "OPTIONS" and path in _SIGNAL_OF_PATH:
                await _respond(send, 204, b"", b"text/plain", _preflight(origin, dict(scope["headers"])))
                return
            send = _adding_headers(send, [(b"access-control-allow-origin", origin), (b"vary", b"Origin")])
        if path in ("/healthz", "/readyz", "/metrics") and method in ("GET", "HEAD"):
            await self._operational(path, send)
            return
        signal = _SIGNAL_OF_PATH.get(path.rstrip("/") or "/")
        if signal is None:
            await _plain(send, 404, f"no OTLP endpoint at {path}: use /v1/traces, /v1/metrics or /v1/logs")
            return
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().decode("latin-1").lower()
        as_json = content_type == JSON
        if method != "POST":
            wrong_method = Answer(
                grpc_code=grpc.StatusCode.UNIMPLEMENTED,
                http_status=405,
                retry_after_s=None,
                message=f"{method} {path}: OTLP export takes POST",
                reason="method",
            )
            await self._error(send, wrong_method, as_json, extra=[(b"allow", b"POST")])
            return
        if self._token is not None and not hmac.compare_digest(
            headers.get(b"authorization", b""), self._token
        ):
            self._ingest.refused(signal, "unauthenticated")
            await self._error(send, unauthenticated(), as_json)
            return
        payload: bytes | None = None  # set once decoded; from then on `Ingest` counts its own refusals
        try:
            if content_type not in (PROTOBUF, JSON):
                raise UnsupportedMediaError(
                    f"unsupported Content-Type {content_type or '(none)'!r}: use {PROTOBUF} or {JSON}"
                )
            body = await self._read_body(headers, receive)
            payload = decode_json(signal, body).SerializeToString() if as_json else body
            result = await self._ingest.export(signal, payload)
        except Exception as exc:  # the request boundary: every failure becomes an OTLP answer
            if not isinstance(exc, PermanentError):
                logger.debug("export failed", exc_info=True)
            answer = answer_for(exc)
            if payload is None:  # refused before `Ingest`, which counts its own refusals
                self._ingest.refused(signal, answer.reason)
            if answer.http_status == 500:
                logger.exception("unexpected failure on %s", path)
            await self._error(send, answer, as_json)
            return
        await _message(send, 200, export_response(signal, result), as_json)

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self._max_request:
            raise TooLargeError(
                f"request body of {int(length)} bytes is over the limit of {self._max_request}"
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise PermanentError("client disconnected before the body was complete")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_request:
                raise TooLargeError(f"request body is over the limit of {self._max_request} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        if encoding == b"gzip":
            return self._gunzip(body)
        if encoding not in (b"identity", b""):
            raise UnsupportedMediaError(
                f"unsupported Content-Encoding {encoding.decode('latin-1')!r}: use gzip"
            )
        return body

    def _gunzip(self, body: bytes) -> bytes:
        inflater = zlib.decompressobj(wbits=31)
        try:
            data = inflater.decompress(body, self._max_decompressed + 1)
        except zlib.error as exc:
            raise PermanentError(f"malformed gzip body: {exc}") from None
        if len(data) > self._max_decompressed:
            raise TooLargeError(f"gzip body inflates past the limit of {self._max_decompressed} bytes")
        if not inflater.eof:
            raise PermanentError("truncated gzip body")
        return data

    async def _operational(self, path: str, send: Send) -> None:
        if path == "/healthz":
            await _plain(send, 200, "ok")
        elif path == "/readyz":
            ready = self._ready()
            await _plain(send, 200 if ready else 503, "ready" if ready else "not ready")
        else:
            await _plain(
                send, 200, self._metrics.render_prometheus(), content_type=b"text/plain; version=0.0.4"
            )

    async def _error(
        self, send: Send, answer: Answer, as_json: bool, *, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        extra = list(extra or [])
        if answer.retry_after_s is not None:
            extra.append((b"retry-after", str(answer.retry_after_s).encode()))
        await _message(send, answer.http_status, answer.rpc_status(), as_json, extra=extra)


def _preflight(origin: bytes, headers: dict[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    """CORS preflight answer for browser OTLP exporters (OTLP/HTTP from a web page)."""
    requested = headers.get(
        b"access-control-request-headers", b"content-type, content-encoding, authorization"
    )
    return [
        (b"access-control-allow-origin", origin),
        (b"access-control-allow-methods", b"POST"),
        (b"access-control-allow-headers", requested),
        (b"access-control-max-age", b"86400"),
        (b"vary", b"Origin"),
    ]


def _adding_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    async def wrapped(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *headers]}
        await send(message)

    return wrapped


async def _message(
    send: Send,
    status: int,
    message: Message,
    as_json: bool,
    *,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    if as_json:
        body = json.dumps(json_format.MessageToDict(message)).encode()
        content_type = JSON.encode()
    else:
        body = message.SerializeToString()
        content_type = PROTOBUF.encode()
    await _respond(send, status, body, content_type, extra or [])


async def _plain(
    send: Send,
    status: int,
    text: str,
    *,
    content_type: bytes = b"text/plain; charset=utf-8",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await _respond(send, status, text.encode(), content_type, extra or [])


async def _respond(
    send: Send, status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]]
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
