"""Golden OTLP/JSON requests (tests/testdata/otlp_json) posted to a real `mallard serve`, read back with
DuckDB: every AnyValue type, every metric point type and the edge cases land as documented."""

from __future__ import annotations

import gzip
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import MallardServer, query, start_server, wait_for_rows

GOLDEN = Path(__file__).resolve().parents[1] / "testdata" / "otlp_json"


def post_json(server: MallardServer, signal: str, name: str, *, compress: bool = False) -> dict[str, Any]:
    body = (GOLDEN / name).read_bytes()
    headers = {"Content-Type": "application/json"}
    if compress:
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    request = urllib.request.Request(f"{server.http_endpoint}/v1/{signal}", data=body, headers=headers)
    with urllib.request.urlopen(request) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"] == "application/json"
        result: dict[str, Any] = json.loads(answer.read() or b"{}")
        return result


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    running = start_server(tmp_path_factory.mktemp("golden") / "data", "--flush-interval", "0.2")
    try:
        assert post_json(running, "traces", "traces_anyvalue.json") == {}
        assert post_json(running, "traces", "traces_edge_cases.json", compress=True) == {}
        assert post_json(running, "metrics", "metrics_all_types.json") == {}
        assert post_json(running, "logs", "logs_all.json") == {}
        wait_for_rows(running.data, "select 1 from spans", 5)
        wait_for_rows(running.data, "select 1 from metrics", 9)
        wait_for_rows(running.data, "select 1 from logs", 4)
    finally:
        assert running.stop() == 0
    yield running.data


def one(data: Path, sql: str) -> dict[str, Any]:
    rows = query(data, sql).to_pylist()
    assert len(rows) == 1, rows
    row: dict[str, Any] = rows[0]
    return row


def test_every_anyvalue_type(store: Path) -> None:
    row = one(store, "select * from spans where span_id = 'eee19b7ec3c1b174'")
    attrs, types = dict(row["attributes"]), dict(row["attribute_types"])
    assert attrs["http.request.method"] == "POST" and "http.request.method" not in types
    assert (attrs["app.order.sequence"], types["app.order.sequence"]) == ("9007199254740993", "int")
    assert (attrs["app.inventory.delta"], types["app.inventory.delta"]) == ("-42", "int")
    assert (attrs["app.cart.total"], types["app.cart.total"]) == ("129.95", "double")
    assert (attrs["app.cart.items"], types["app.cart.items"]) == ("3.0", "double")
    assert (attrs["app.feature.express_checkout"], types["app.feature.express_checkout"]) == ("true", "bool")
    assert (attrs["app.cache.hit"], types["app.cache.hit"]) == ("false", "bool")
    assert (attrs["app.payload.digest"], types["app.payload.digest"]) == ("3q2+7w==", "bytes")
    assert types["app.cart.tags"] == "array"
    assert json.loads(attrs["app.cart.tags"]) == ["gift", 3, True, 1.25, ["nested", 7]]
    assert types["app.customer"] == "kvlist"
    customer = json.loads(attrs["app.customer"])
    assert customer["tier"] == "gold" and customer["address"] == {"country": "NL", "postcode": "1012 AB"}
    assert customer["lifetime_orders"] == 57
    assert attrs["app.coupon"] is None and types["app.coupon"] == "empty"
    assert row["http_method"] == "POST" and row["http_status_code"] == 402
    assert row["trace_state"] == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE" and row["flags"] == 257
    assert row["kind"] == "SERVER" and row["status_code"] == "ERROR"
    assert row["status_message"] == "payment declined: insufficient funds"
    assert row["dropped_attributes_count"] == 2
    assert row["start_time_unix_nano"] == 1717171717000000000 and row["duration"] == 250_000_000
    assert row["service_name"] == "checkout" and row["scope_version"] == "0.66b2"
    assert row["scope_attributes"] == [("instrumentation.provider", "opentelemetry")]
    assert row["scope_attribute_types"] == []  # a string: absent from the types map
    exception = row["events"][1]
    assert exception["name"] == "exception" and exception["dropped_attributes_count"] == 1
    assert dict(exception["attributes"])["exception.type"] == "PaymentDeclined"
    assert dict(row["events"][0]["attribute_types"]) == {"app.sku.count": "int"}
    link = row["links"][0]
    assert (link["trace_id"], link["span_id"], link["flags"]) == (
        "0af7651916cd43dd8448eb211c80319c",
        "b7ad6b7169203331",
        769,
    )
    assert dict(link["attributes"]) == {"messaging.message.id": "msg-8812"}
    # the big int is exact through SQL too
    exact = one(
        store,
        "select attributes['app.order.sequence']::BIGINT as n from spans where span_id = 'eee19b7ec3c1b174'",
    )
    assert exact["n"] == 9007199254740993
    child = one(store, "select service_name, parent_span_id from spans where span_id = '53995c3f42cd8ad8'")
    assert child == {"service_name": "payments", "parent_span_id": "eee19b7ec3c1b174"}


def test_scope_attributes_are_queryable(store: Path) -> None:
    rows = query(
        store,
        "select span_id, scope_attributes['instrumentation.provider'] as provider,"
        " coalesce(scope_attribute_types['instrumentation.provider'], 'string') as type,"
        " cardinality(scope_attributes) as n from spans"
        " where trace_id = '5b8efff798038103d269b633813fc60c' order by span_id",
    ).to_pylist()
    assert rows == [
        {"span_id": "53995c3f42cd8ad8", "provider": None, "type": "string", "n": 0},  # its scope has none
        {"span_id": "eee19b7ec3c1b174", "provider": "opentelemetry", "type": "string", "n": 1},
    ]
    for table in ("metrics", "logs"):  # their golden scopes have none: an empty map, never NULL
        not_empty = "scope_attributes is null or cardinality(scope_attributes) > 0"
        assert one(store, f"select count(*) filter (where {not_empty}) as n from {table}") == {"n": 0}


def test_edge_cases(store: Path) -> None:
    rows = {
        r["span_id"]: r
        for r in query(
            store, "select * from spans where trace_id = '4bf92f3577b34da6a3ce929d0e0e4736'"
        ).to_pylist()
    }
    unicode_span = rows["00f067aa0ba902b7"]  # uppercase hex in, lowercase out
    assert unicode_span["name"] == "查询订单 🛒"
    assert unicode_span["service_name"] == "" and unicode_span["resource_attributes"] == []
    assert "用户.名称" in dict(unicode_span["attributes"]) and "emoji.🔥" in dict(unicode_span["attributes"])
    assert unicode_span["parent_span_id"] == ""
    # names are kept as sent (no Unicode normalisation): "e" + combining acute stays two code points
    assert rows["a3ce929d0e0e4736"]["name"] == "Cafe\u0301 \u2615 r\u00e9sum\u00e9"
    no_service = rows["a3ce929d0e0e4736"]
    assert no_service["service_name"] == "" and no_service["parent_span_id"] == "00f067aa0ba902b7"
    assert dict(no_service["resource_attribute_types"]) == {"process.pid": "int"}
    blank = one(store, "select name, parent_span_id from spans where span_id = 'ffffffffffffffff'")
    assert blank == {"name": "", "parent_span_id": ""}


def test_every_metric_point_type(store: Path) -> None:
    metrics = query(store, "select * from metrics where service_name = 'inventory'").to_pylist()
    by_name: dict[str, list[dict[str, Any]]] = {}
    for row in metrics:
        by_name.setdefault(row["metric_name"], []).append(row)
    used = next(
        r
        for r in by_name["system.memory.utilization"]
        if dict(r["attributes"])["system.memory.state"] == "used"
    )
    assert used["metric_type"] == "gauge" and used["value"] == 0.6180339887 and used["temporality"] is None
    assert used["metric_description"] == "Fraction of memory in use." and used["start_time"] is None
    threads = by_name["process.thread.count"][0]
    assert (threads["value_int"], threads["value"], threads["unit"]) == (42, 42.0, "{thread}")
    orders = by_name["orders.processed"][0]
    assert (orders["metric_type"], orders["temporality"], orders["is_monotonic"], orders["value_int"]) == (
        "sum",
        "cumulative",
        True,
        1234567,
    )
    changes = sorted(by_name["inventory.stock.change"], key=lambda r: r["flags"])
    assert changes[0]["temporality"] == "delta" and changes[0]["value_int"] == -17
    assert changes[1]["flags"] == 1 and changes[1]["value"] is None  # no recorded value
    histogram = by_name["http.server.request.duration"][0]
    assert histogram["count"] == 12 and histogram["sum"] == 3.83
    assert histogram["bucket_counts"] == [2, 5, 3, 1, 1, 0]
    assert histogram["explicit_bounds"] == [0.05, 0.1, 0.25, 0.5, 1.0]
    assert (histogram["min"], histogram["max"]) == (0.012, 0.87)
    first, second = histogram["exemplars"]
    assert first["trace_id"] == "5b8efff798038103d269b633813fc60c" and first["value"] == 0.87
    assert dict(first["filtered_attributes"]) == {"user.id": "u-1138"}
    assert second["span_id"] == "53995c3f42cd8ad8"
    exp = by_name["clock.skew"][0]
    assert exp["metric_type"] == "exponential_histogram" and exp["temporality"] == "delta"
    assert (exp["count"], exp["sum"], exp["scale"], exp["zero_count"], exp["zero_threshold"]) == (
        15,
        25.5,
        3,
        2,
        1e-09,
    )
    assert (exp["positive_offset"], exp["positive_bucket_counts"]) == (10, [1, 4, 3, 2])
    assert (exp["negative_offset"], exp["negative_bucket_counts"]) == (-3, [1, 2])
    assert exp["exemplars"][0]["value_int"] == 3
    summary = by_name["db.query.latency"][0]
    assert summary["metric_type"] == "summary" and summary["count"] == 100 and summary["sum"] == 2510.5
    assert [(q["quantile"], q["value"]) for q in summary["quantiles"]] == [
        (0.0, 1.2),
        (0.5, 18.75),
        (0.99, 120.0),
        (1.0, 340.5),
    ]


def test_log_bodies_and_trace_context(store: Path) -> None:
    rows = query(store, "select * from logs order by observed_time_unix_nano, time_unix_nano").to_pylist()
    bodies = {r["body_type"]: r for r in rows}
    assert bodies["string"]["body"] == "order 1234 placed"
    assert bodies["string"]["trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert bodies["kvlist"]["trace_id"] == "5b8efff798038103d269b633813fc60c"  # uppercase hex in
    assert json.loads(bodies["array"]["body"])[0] == "retrying"
    no_time = bodies["int"]
    assert no_time["body"] == "-9007199254740993"
    assert no_time["time_unix_nano"] == 0 and no_time["time"] == no_time["observed_time"]
