"""logs_to_arrow: one row per log record, times, bodies and trace context checked field by field."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, SeverityNumber
from otlp_values import kv

from mallard.collector.arrow import CONVERTERS, TABLE_OF_SIGNAL, Limits, logs_to_arrow
from mallard.collector.errors import PermanentError
from mallard.storage.schema import LOGS

T0 = 1_700_000_000_123_456_789  # nanoseconds
OBSERVED = T0 + 2_000_000_000
RECEIVED = T0 + 5_000_000_000
TRACE_ID = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN_ID = bytes.fromhex("eee19b7ec3c1b174")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ts(ns: int) -> datetime:
    return EPOCH + timedelta(microseconds=ns // 1000)


def add_resource(
    req: ExportLogsServiceRequest,
    records: list[LogRecord],
    resource: dict[str, object] | None = None,
    scope: tuple[str, str] = ("logger", "2.1"),
    *,
    scope_attributes: Sequence[KeyValue] = (),
) -> None:
    rl = req.resource_logs.add()
    if resource is None:
        resource = {"service.name": "checkout"}
    rl.resource.attributes.extend(kv(k, v) for k, v in resource.items())
    add_scope(rl, records, scope, scope_attributes)


def add_scope(
    rl: ResourceLogs,
    records: list[LogRecord],
    scope: tuple[str, str] = ("logger", "2.1"),
    attributes: Sequence[KeyValue] = (),
) -> None:
    sl = rl.scope_logs.add()
    sl.scope.name, sl.scope.version = scope
    sl.scope.attributes.extend(attributes)
    sl.log_records.extend(records)


def request(
    *records: LogRecord, resource: dict[str, object] | None = None, scope_attributes: Sequence[KeyValue] = ()
) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    add_resource(req, list(records), resource, scope_attributes=scope_attributes)
    return req


def convert(
    req: ExportLogsServiceRequest, limits: Limits | None = None
) -> tuple[list[dict[str, Any]], int, str]:
    out = logs_to_arrow(req.SerializeToString(), limits=limits or Limits(), received_unix_nano=RECEIVED)
    assert out.table == "logs"
    assert out.batch.schema == LOGS
    out.batch.validate(full=True)
    return out.batch.to_pylist(), out.rejected, out.message


def only(rows: list[dict[str, Any]], *names: str) -> list[dict[str, Any]]:
    return [{n: row[n] for n in names} for row in rows]


def test_record_row_has_every_column_as_expected() -> None:
    record = LogRecord(
        time_unix_nano=T0,
        observed_time_unix_nano=OBSERVED,
        severity_number=SeverityNumber.SEVERITY_NUMBER_ERROR,
        severity_text="ERROR",
        body=AnyValue(string_value="payment failed"),
        attributes=[kv("order.id", "o-17"), kv("attempt", 2)],
        dropped_attributes_count=3,
        flags=1,
        trace_id=TRACE_ID,
        span_id=SPAN_ID,
        event_name="payment.failure",
    )
    scope_attributes = [kv("logger.kind", "structlog"), kv("logger.level", 20)]
    req = request(record, resource={"service.name": "pay", "pod": 4}, scope_attributes=scope_attributes)
    rows, rejected, message = convert(req)
    assert (rejected, message) == (0, "")
    assert rows == [
        {
            "time": ts(T0),
            "observed_time": ts(OBSERVED),
            "time_unix_nano": T0,
            "observed_time_unix_nano": OBSERVED,
            "severity_number": 17,
            "severity_text": "ERROR",
            "body": "payment failed",
            "body_type": "string",
            "event_name": "payment.failure",
            "trace_id": TRACE_ID.hex(),
            "span_id": SPAN_ID.hex(),
            "flags": 1,
            "service_name": "pay",
            "attributes": [("order.id", "o-17"), ("attempt", "2")],
            "attribute_types": [("attempt", "int")],
            "resource_attributes": [("service.name", "pay"), ("pod", "4")],
            "resource_attribute_types": [("pod", "int")],
            "scope_name": "logger",
            "scope_version": "2.1",
            "scope_attributes": [("logger.kind", "structlog"), ("logger.level", "20")],
            "scope_attribute_types": [("logger.level", "int")],
            "dropped_attributes_count": 3,
        }
    ]


def test_time_falls_back_to_observed_then_received_time() -> None:
    rows, _, _ = convert(
        request(
            LogRecord(time_unix_nano=T0, observed_time_unix_nano=OBSERVED),
            LogRecord(time_unix_nano=T0),
            LogRecord(observed_time_unix_nano=OBSERVED),
            LogRecord(),
        )
    )
    names = ("time", "observed_time", "time_unix_nano", "observed_time_unix_nano")
    assert only(rows, *names) == [
        {
            "time": ts(T0),
            "observed_time": ts(OBSERVED),
            "time_unix_nano": T0,
            "observed_time_unix_nano": OBSERVED,
        },
        {  # the collector stamps a missing observed time
            "time": ts(T0),
            "observed_time": ts(RECEIVED),
            "time_unix_nano": T0,
            "observed_time_unix_nano": 0,
        },
        {
            "time": ts(OBSERVED),
            "observed_time": ts(OBSERVED),
            "time_unix_nano": 0,
            "observed_time_unix_nano": OBSERVED,
        },
        {
            "time": ts(RECEIVED),
            "observed_time": ts(RECEIVED),
            "time_unix_nano": 0,
            "observed_time_unix_nano": 0,
        },
    ]
    assert rows[0]["time"] == datetime(2023, 11, 14, 22, 13, 20, 123456, UTC)


def test_conversion_is_deterministic_given_the_received_time() -> None:
    payload = request(LogRecord(body=AnyValue(string_value="x"))).SerializeToString()
    first = logs_to_arrow(payload, received_unix_nano=RECEIVED)
    assert first.batch.equals(logs_to_arrow(payload, received_unix_nano=RECEIVED).batch)
    assert logs_to_arrow(payload).batch.column("time").to_pylist() == [EPOCH]


def test_every_body_type() -> None:
    bodies = [
        AnyValue(string_value="plain text"),
        AnyValue(string_value=""),
        AnyValue(int_value=-(2**63)),
        AnyValue(double_value=1.5),
        AnyValue(bool_value=False),
        AnyValue(bytes_value=b"\x00\xffhi"),
        AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1), AnyValue(string_value="a")])),
        AnyValue(
            kvlist_value=KeyValueList(
                values=[
                    kv("msg", "ünïcode"),
                    KeyValue(key="nested", value=AnyValue(kvlist_value=KeyValueList(values=[kv("n", 1.0)]))),
                    KeyValue(key="nothing", value=AnyValue()),
                ]
            )
        ),
        AnyValue(),  # set, but holding no value
    ]
    records = [LogRecord(body=body) for body in bodies] + [LogRecord()]  # the last has no body
    rows, rejected, _ = convert(request(*records))
    assert rejected == 0
    assert only(rows, "body", "body_type") == [
        {"body": "plain text", "body_type": "string"},
        {"body": "", "body_type": "string"},
        {"body": "-9223372036854775808", "body_type": "int"},
        {"body": "1.5", "body_type": "double"},
        {"body": "false", "body_type": "bool"},
        {"body": "AP9oaQ==", "body_type": "bytes"},
        {"body": '[1,"a"]', "body_type": "array"},
        {"body": '{"msg":"ünïcode","nested":{"n":1.0},"nothing":null}', "body_type": "kvlist"},
        {"body": None, "body_type": "empty"},
        {"body": None, "body_type": "empty"},
    ]


def test_trace_context_ids_and_flags() -> None:
    rows, rejected, _ = convert(
        request(
            LogRecord(trace_id=TRACE_ID, span_id=SPAN_ID, flags=0x101),
            LogRecord(trace_id=bytes(16), span_id=bytes(8)),  # all zero: no context
            LogRecord(),
        )
    )
    assert rejected == 0
    assert only(rows, "trace_id", "span_id", "flags") == [
        {"trace_id": TRACE_ID.hex(), "span_id": SPAN_ID.hex(), "flags": 0x101},
        {"trace_id": "", "span_id": "", "flags": 0},
        {"trace_id": "", "span_id": "", "flags": 0},
    ]


def test_rows_follow_their_resource_and_scope() -> None:
    req = request(
        LogRecord(severity_text="a"),
        LogRecord(severity_text="b"),
        resource={"service.name": "api"},
        scope_attributes=[kv("lib.sampled", False), kv("lib.owner", "team-a")],
    )
    add_scope(req.resource_logs[0], [LogRecord(severity_text="d")], ("second", "3"), [kv("lib.ratio", 0.25)])
    add_resource(req, [LogRecord(severity_text="c")], resource={"zone": "z1"}, scope=("other", ""))
    rows, _, _ = convert(req)
    names = ("severity_text", "service_name", "resource_attributes", "scope_name", "scope_version")
    names += ("scope_attributes", "scope_attribute_types")
    api = {"service_name": "api", "resource_attributes": [("service.name", "api")]}
    logger = {
        "scope_name": "logger",
        "scope_version": "2.1",
        "scope_attributes": [("lib.sampled", "false"), ("lib.owner", "team-a")],
        "scope_attribute_types": [("lib.sampled", "bool")],
    }
    assert only(rows, *names) == [
        {"severity_text": "a", **api, **logger},
        {"severity_text": "b", **api, **logger},
        {
            "severity_text": "d",
            **api,
            "scope_name": "second",
            "scope_version": "3",
            "scope_attributes": [("lib.ratio", "0.25")],
            "scope_attribute_types": [("lib.ratio", "double")],
        },
        {
            "severity_text": "c",
            "service_name": "",
            "resource_attributes": [("zone", "z1")],
            "scope_name": "other",
            "scope_version": "",
            "scope_attributes": [],
            "scope_attribute_types": [],
        },
    ]


def test_malformed_ids_limits_and_deep_bodies_reject_the_record() -> None:
    deep = AnyValue(string_value="bottom")
    for _ in range(5):
        deep = AnyValue(array_value=ArrayValue(values=[deep]))
    records = [
        LogRecord(trace_id=b"\x01" * 15, severity_text="bad trace id"),
        LogRecord(span_id=b"\x01" * 16, severity_text="bad span id"),
        LogRecord(attributes=[kv("a", 1), kv("b", 2), kv("c", 3)], severity_text="too many"),
        LogRecord(body=deep, severity_text="too deep"),
        LogRecord(attributes=[kv("k", True)], severity_text="kept"),
    ]
    rows, rejected, message = convert(request(*records), Limits(max_attributes=2, max_depth=4))
    # nothing of the rejected records is left behind
    assert only(rows, "severity_text", "attributes", "attribute_types") == [
        {"severity_text": "kept", "attributes": [("k", "true")], "attribute_types": [("k", "bool")]}
    ]
    assert rejected == 4
    where = "resource_logs[0].scope_logs[0].log_records"
    assert message == (
        f"rejected 4: {where}[0]: trace_id 15 bytes, expected 16;"
        f" {where}[1]: span_id 16 bytes, expected 8;"
        f" {where}[2]: 3 attributes, more than the limit of 2 (and 1 more)"
    )


def test_resource_over_limits_rejects_all_of_its_records() -> None:
    req = request(LogRecord(), LogRecord(), resource={"a": 1, "b": 2})
    add_resource(req, [LogRecord(severity_text="kept")], resource={"service.name": "ok"})
    rows, rejected, message = convert(req, Limits(max_attributes=1))
    assert only(rows, "severity_text", "service_name") == [{"severity_text": "kept", "service_name": "ok"}]
    assert rejected == 2
    assert message.startswith("rejected 2: resource_logs[0].resource: 2 attributes, more than the limit of 1")


def test_scope_over_limits_rejects_all_of_its_records() -> None:
    req = request(LogRecord(), LogRecord(trace_id=b"\x01"), scope_attributes=[kv("a", 1), kv("b", 2)])
    add_scope(req.resource_logs[0], [LogRecord(severity_text="kept")], ("ok", "1"), [kv("c", b"\xff")])
    rows, rejected, message = convert(req, Limits(max_attributes=1))
    # the rejected scope leaves nothing behind: the kept row has its own scope attributes
    assert only(rows, "severity_text", "scope_name", "scope_attributes", "scope_attribute_types") == [
        {
            "severity_text": "kept",
            "scope_name": "ok",
            "scope_attributes": [("c", "/w==")],
            "scope_attribute_types": [("c", "bytes")],
        }
    ]
    reason = "resource_logs[0].scope_logs[0].scope: 2 attributes, more than the limit of 1"
    assert (rejected, message) == (2, f"rejected 2: {reason}; {reason}")


def test_scope_attribute_nested_too_deep_rejects_its_records() -> None:
    nested = AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key="k", value=AnyValue(int_value=1))]))
    req = request(LogRecord(), scope_attributes=[KeyValue(key="deep", value=nested)])
    assert convert(req, Limits(max_depth=2))[1] == 0
    rows, rejected, message = convert(req, Limits(max_depth=1))
    assert (rows, rejected) == ([], 1)
    assert message == (
        "rejected 1: resource_logs[0].scope_logs[0].scope: attribute value nested deeper than the limit"
    )


def test_resource_over_limits_is_reported_before_its_scopes() -> None:
    req = request(LogRecord(), resource={"a": 1, "b": 2}, scope_attributes=[kv("c", 1), kv("d", 2)])
    _, rejected, message = convert(req, Limits(max_attributes=1))
    assert (rejected, message) == (
        1,
        "rejected 1: resource_logs[0].resource: 2 attributes, more than the limit of 1",
    )


def test_malformed_bytes_are_a_permanent_error() -> None:
    with pytest.raises(PermanentError, match=r"^malformed protobuf ExportLogsServiceRequest: "):
        logs_to_arrow(b"\x0a\x05\x0a")


def test_times_beyond_int64_are_a_permanent_error() -> None:
    with pytest.raises(PermanentError, match=r"^time_unix_nano out of range"):
        logs_to_arrow(request(LogRecord(time_unix_nano=2**64 - 1)).SerializeToString())


def test_empty_request_is_an_empty_batch_with_the_schema() -> None:
    out = logs_to_arrow(b"", received_unix_nano=RECEIVED)
    assert (out.batch.num_rows, out.rejected, out.message) == (0, 0, "")
    assert out.batch.schema == LOGS


def test_registered_as_the_logs_converter() -> None:
    assert CONVERTERS["logs"] is logs_to_arrow
    assert TABLE_OF_SIGNAL["logs"] == logs_to_arrow(b"").table


# --- property: any valid request converts, one row per record ------------------------------

_u63 = st.integers(0, 2**63 - 1)


def _pairs(values: dict[str, AnyValue]) -> list[KeyValue]:
    return [KeyValue(key=k, value=v) for k, v in values.items()]


_scalar = st.one_of(
    st.builds(AnyValue, string_value=st.text(max_size=8)),
    st.builds(AnyValue, int_value=st.integers(-(2**63), 2**63 - 1)),
    st.builds(AnyValue, double_value=st.floats()),
    st.builds(AnyValue, bool_value=st.booleans()),
    st.builds(AnyValue, bytes_value=st.binary(max_size=8)),
    st.just(AnyValue()),
)
_any_value = st.recursive(
    _scalar,
    lambda inner: st.one_of(
        st.builds(lambda vs: AnyValue(array_value=ArrayValue(values=vs)), st.lists(inner, max_size=3)),
        st.builds(
            lambda d: AnyValue(
                kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in d.items()])
            ),
            st.dictionaries(st.text(max_size=4), inner, max_size=3),
        ),
    ),
    max_leaves=8,
)
_attributes = st.dictionaries(st.text(max_size=6), _any_value, max_size=4).map(_pairs)
_record = st.builds(
    LogRecord,
    time_unix_nano=st.one_of(st.just(0), _u63),
    observed_time_unix_nano=st.one_of(st.just(0), _u63),
    severity_number=st.integers(0, 24),
    severity_text=st.text(max_size=6),
    body=_any_value,
    attributes=_attributes,
    dropped_attributes_count=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 2**32 - 1),
    trace_id=st.sampled_from([b"", bytes(16), TRACE_ID]),
    span_id=st.sampled_from([b"", bytes(8), SPAN_ID]),
    event_name=st.text(max_size=6),
)


@st.composite
def _request(draw: st.DrawFn) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        add_resource(
            req,
            draw(st.lists(_record, max_size=5)),
            {"service.name": draw(st.text(max_size=6))},
            scope_attributes=draw(_attributes),
        )
    return req


@settings(max_examples=200, deadline=None)
@given(_request(), _u63)
def test_any_valid_request_converts_one_row_per_record(req: ExportLogsServiceRequest, received: int) -> None:
    records = [r for rl in req.resource_logs for sl in rl.scope_logs for r in sl.log_records]
    out = logs_to_arrow(req.SerializeToString(), received_unix_nano=received)
    assert out.rejected == 0
    assert out.batch.schema == LOGS
    out.batch.validate(full=True)
    assert out.batch.num_rows == len(records)
    assert out.batch.column("time_unix_nano").to_pylist() == [r.time_unix_nano for r in records]
    assert out.batch.column("time").null_count == 0
    expected_scope_keys = [
        [a.key for a in sl.scope.attributes]
        for rl in req.resource_logs
        for sl in rl.scope_logs
        for _ in sl.log_records
    ]
    scope_keys = [[key for key, _ in row] for row in out.batch.column("scope_attributes").to_pylist()]
    assert scope_keys == expected_scope_keys
