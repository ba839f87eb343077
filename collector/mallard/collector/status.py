"""One table from collector error to OTLP answer, for both transports (OTLP spec, "Failures").

| error                    | gRPC                | HTTP | retried by clients? |
|--------------------------|---------------------|------|---------------------|
| PermanentError           | INVALID_ARGUMENT    | 400  | no: the data is bad |
| TooLargeError            | INVALID_ARGUMENT    | 413  | no                  |
| UnsupportedMediaError    | INVALID_ARGUMENT    | 415  | no                  |
| OverloadedError          | RESOURCE_EXHAUSTED  | 429  | yes: RetryInfo / Retry-After |
| StorageUnavailableError  | UNAVAILABLE         | 503  | yes: RetryInfo / Retry-After |
| unauthenticated          | UNAUTHENTICATED     | 401  | no                  |
| anything else (a bug)    | INTERNAL            | 500  | no                  |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from mallard.collector.errors import (
    OverloadedError,
    PermanentError,
    StorageUnavailableError,
    TooLargeError,
    UnsupportedMediaError,
)
from mallard.collector.ingest import RETRY_AFTER_S


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    grpc_code: grpc.StatusCode
    http_status: int
    retry_after_s: int | None  # sent as RetryInfo (gRPC) and Retry-After (HTTP) when set
    message: str
    reason: str  # the `reason` label of mallard_refused_requests_total

    def rpc_status(self) -> status_pb2.Status:
        """The google.rpc.Status both transports carry (HTTP body; gRPC status details)."""
        status = status_pb2.Status(code=self.grpc_code.value[0], message=self.message)
        if self.retry_after_s is not None:
            info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=self.retry_after_s))
            packed = any_pb2.Any()
            packed.Pack(info)
            status.details.append(packed)
        return status


UNAUTHENTICATED: Final = code_pb2.UNAUTHENTICATED


def answer_for(error: BaseException) -> Answer:
    message = str(error) or type(error).__name__
    if isinstance(error, TooLargeError):
        return Answer(
            grpc_code=grpc.StatusCode.INVALID_ARGUMENT,
            http_status=413,
            retry_after_s=None,
            message=message,
            reason="too_large",
        )
    if isinstance(error, UnsupportedMediaError):
        return Answer(
            grpc_code=grpc.StatusCode.INVALID_ARGUMENT,
            http_status=415,
            retry_after_s=None,
            message=message,
            reason="unsupported_media",
        )
    if isinstance(error, PermanentError):
        return Answer(
            grpc_code=grpc.StatusCode.INVALID_ARGUMENT,
            http_status=400,
            retry_after_s=None,
            message=message,
            reason="invalid",
        )
    if isinstance(error, OverloadedError):
        return Answer(
            grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED,
            http_status=429,
            retry_after_s=RETRY_AFTER_S,
            message=message,
            reason="overloaded",
        )
    if isinstance(error, StorageUnavailableError):
        return Answer(
            grpc_code=grpc.StatusCode.UNAVAILABLE,
            http_status=503,
            retry_after_s=RETRY_AFTER_S,
            message=message,
            reason="unavailable",
        )
    return Answer(
        grpc_code=grpc.StatusCode.INTERNAL,
        http_status=500,
        retry_after_s=None,
        message=f"internal error: {message}",
        reason="internal",
    )


def unauthenticated() -> Answer:
    return Answer(
        grpc_code=grpc.StatusCode.UNAUTHENTICATED,
        http_status=401,
        retry_after_s=None,
        message="missing or wrong bearer token",
        reason="unauthenticated",
    )
