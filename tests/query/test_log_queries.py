"""search_logs over a store written by the storage writer from an OTLP logs request."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from otlp_values import kv

from mallard.collector.arrow import logs_to_arrow
from mallard.query import Store
from mallard.query.logs import search_logs
from mallard.query.timerange import InvalidArgument, to_unix_nano
from mallard.storage.writer import ParquetSink

T0 = datetime(2024, 5, 31, 16, 0, tzinfo=UTC)
RANGE = {"start": T0, "end": T0 + timedelta(hours=2)}
TRACE = "ab" * 16

# (service, seconds after T0, severity, body, trace id)
RECORDS = [
    ("shop", 0, 9, "Order placed", ""),
    ("shop", 10, 17, "Payment FAILED for order 7", TRACE),
    ("cart", 20, 13, "cart is slow", ""),
    ("cart", 3700, 21, "out of memory: order cache", TRACE),
    ("shop", 7300, 17, "order failed after the range", ""),
]


def request() -> bytes:
    message = ExportLogsServiceRequest()
    for service in ("shop", "cart"):
        resource = message.resource_logs.add()
        resource.resource.attributes.append(kv("service.name", service))
        scope = resource.scope_logs.add()
        for name, seconds, severity, body, trace in RECORDS:
            if name == service:
                scope.log_records.append(
                    LogRecord(
                        time_unix_nano=to_unix_nano(T0 + timedelta(seconds=seconds)),
                        severity_number=severity,  # type: ignore[arg-type]
                        body=AnyValue(string_value=body),
                        trace_id=bytes.fromhex(trace),
                        span_id=bytes.fromhex("01" * 8) if trace else b"",
                        attributes=[kv("n", seconds)],
                    )
                )
    return message.SerializeToString()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root: Path = tmp_path_factory.mktemp("logs")
    converted = logs_to_arrow(request())
    assert converted.rejected == 0
    ParquetSink(root).write("logs", [converted.batch], writer="test", first_lsn=1, last_lsn=1)
    with Store(root) as opened:
        yield opened


def bodies(entries: list[object]) -> list[str]:
    return [entry.body for entry in entries]  # type: ignore[attr-defined]


def test_newest_first_within_the_range(store: Store) -> None:
    assert bodies(search_logs(store, **RANGE)) == [
        "out of memory: order cache",
        "cart is slow",
        "Payment FAILED for order 7",
        "Order placed",
    ]
    assert bodies(search_logs(store, **RANGE, limit=2)) == ["out of memory: order cache", "cart is slow"]


def test_entry_fields(store: Store) -> None:
    (entry,) = search_logs(store, **RANGE, text="payment")
    assert entry.time == T0 + timedelta(seconds=10)
    assert (entry.service_name, entry.severity_number, entry.trace_id) == ("shop", 17, TRACE)
    assert entry.span_id == "01" * 8
    assert entry.attributes == {"n": "10"}
    assert entry.resource_attributes == {"service.name": "shop"}


def test_filters_combine(store: Store) -> None:
    assert bodies(search_logs(store, **RANGE, text="ORDER")) == [
        "out of memory: order cache",
        "Payment FAILED for order 7",
        "Order placed",
    ]
    assert bodies(search_logs(store, **RANGE, severity_min=17)) == [
        "out of memory: order cache",
        "Payment FAILED for order 7",
    ]
    assert bodies(search_logs(store, **RANGE, service="cart", severity_min=13)) == [
        "out of memory: order cache",
        "cart is slow",
    ]
    assert bodies(search_logs(store, **RANGE, trace_id=TRACE.upper(), service="shop")) == [
        "Payment FAILED for order 7"
    ]
    assert search_logs(store, **RANGE, text="50%_") == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"trace_id": "xyz"}, "trace id"),
        ({"severity_min": 30}, "severity_min"),
        ({"limit": 0}, "limit"),
        ({"text": ""}, "text"),
    ],
)
def test_bad_arguments(store: Store, arguments: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        search_logs(store, **RANGE, **arguments)  # type: ignore[arg-type]
