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
from google.rpc import error_details_pb2, status_pb2

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


# error type -> (gRPC code, HTTP status, retry hint, reason label); first match wins, so subclasses
# come before their base class
_TABLE: Final[tuple[tuple[type[BaseException], grpc.StatusCode, int, int | None, str], ...]] = (
    # the body, or what gzip inflates it to, is over a limit: sending it again cannot help
    (TooLargeError, grpc.StatusCode.INVALID_ARGUMENT, 413, None, "too_large"),
    # neither OTLP protobuf nor OTLP JSON, or an encoding other than gzip
    (UnsupportedMediaError, grpc.StatusCode.INVALID_ARGUMENT, 415, None, "unsupported_media"),
    # malformed protobuf / JSON / gzip: bad data, never retried
    (PermanentError, grpc.StatusCode.INVALID_ARGUMENT, 400, None, "invalid"),
    # queue full: retryable, RetryInfo only where the spec allows RESOURCE_EXHAUSTED to be retried
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED, 429, RETRY_AFTER_S, "overloaded"),
    # the WAL cannot be written, or storage fails with a full queue: retryable
    (StorageUnavailableError, grpc.StatusCode.UNAVAILABLE, 503, RETRY_AFTER_S, "unavailable"),
)


def answer_for(error: BaseException) -> Answer:
    """The answer to give for `error`; anything not in the table is a bug: INTERNAL / 500."""
    message = str(error) or type(error).__name__
    for kind, grpc_code, http_status, retry_after_s, reason in _TABLE:
        if isinstance(error, kind):
            return Answer(
                grpc_code=grpc_code,
                http_status=http_status,
                retry_after_s=retry_after_s,
                message=message,
                reason=reason,
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
