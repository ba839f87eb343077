"""The Prometheus HTTP API (`/api/v1/query`, `/query_range`, labels, series, metadata) as Grafana's
Prometheus data source calls it, over a store filled through the real collector.

The data (T0 = 2024-05-31 16:00 UTC; seconds after T0; resource service.name=shop,
service.instance.id=shop-1):

    http.requests (delta monotonic sum), http.route=/a: +30 s 6, +60 s 12, +90 s 6, +120 s 3
                                          http.route=/b: +60 s 4, +120 s 8
    jobs.done (cumulative monotonic sum, started at T0; restarted at +80 s):
        +15 s 5, +45 s 9, +75 s 14, then +95 s 2, +125 s 7   -> increases 5, 4, 5, 2, 5
    queue.size (cumulative non-monotonic sum): +30 s 3
    room.temperature (gauge, Cel), room=kitchen: +0 s 20, +30 s 22, +60 s 25, +90 s 24
                                   room=hall:    +0 s 18, +60 s 19
    http.server.duration (cumulative histogram, s, bounds 0.1, 0.5, 1; started at T0), route=/a:
        +30 s counts 2 3 4 1 (sum 6), +60 s 4 8 6 2 (sum 12), +90 s 4 13 11 2 (sum 17)
    rpc.latency (delta exponential histogram, scale 0): +60 s positive buckets (1, 2] 2, (2, 4] 2
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from harness import UiServer, post_otlp, start_server, start_ui, wait_for_rows
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb
from otlp_values import kv

from mallard.query import Store
from mallard.query.metrics import _Explicit
from mallard.query.prometheus_series import (
    Histogram,
    bucket_quantile,
    format_value,
    prometheus_label_name,
    prometheus_metric_name,
    series_labels,
)
from mallard.query.promql import parse
from mallard.query.promql_eval import QueryTimeout, evaluate
from mallard.query.timerange import to_unix_nano

T0 = datetime(2024, 5, 31, 16, 0, tzinfo=UTC)
T0_S = 1717171200
CUMULATIVE = pb.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = pb.AGGREGATION_TEMPORALITY_DELTA
SHOP = {"job": "shop", "instance": "shop-1"}
ROUTE_A = {**SHOP, "http_route": "/a"}
ROUTE_B = {**SHOP, "http_route": "/b"}
KITCHEN = {**SHOP, "room": "kitchen"}
HALL = {**SHOP, "room": "hall"}


def ns(seconds: float) -> int:
    return to_unix_nano(T0 + timedelta(seconds=seconds))


def number(seconds: float, value: float, start: float | None = None, **attributes: str) -> pb.NumberDataPoint:
    return pb.NumberDataPoint(
        time_unix_nano=ns(seconds),
        start_time_unix_nano=ns(start) if start is not None else 0,
        as_double=value,
        attributes=[kv(key.replace("_", "."), value) for key, value in attributes.items()],
    )


def metrics_request() -> bytes:
    requests = pb.Metric(
        name="http.requests",
        unit="1",
        description="requests served",
        sum=pb.Sum(
            aggregation_temporality=DELTA,
            is_monotonic=True,
            data_points=[
                *(number(s, v, s - 30, http_route="/a") for s, v in ((30, 6), (60, 12), (90, 6), (120, 3))),
                *(number(s, v, s - 60, http_route="/b") for s, v in ((60, 4), (120, 8))),
            ],
        ),
    )
    jobs = pb.Metric(
        name="jobs.done",
        sum=pb.Sum(
            aggregation_temporality=CUMULATIVE,
            is_monotonic=True,
            data_points=[
                *(number(s, v, 0) for s, v in ((15, 5), (45, 9), (75, 14))),
                *(number(s, v, 80) for s, v in ((95, 2), (125, 7))),
            ],
        ),
    )
    queue = pb.Metric(
        name="queue.size",
        sum=pb.Sum(aggregation_temporality=CUMULATIVE, is_monotonic=False, data_points=[number(30, 3, 0)]),
    )
    temperature = pb.Metric(
        name="room.temperature",
        unit="Cel",
        description="room temperature",
        gauge=pb.Gauge(
            data_points=[
                *(number(s, v, room="kitchen") for s, v in ((0, 20), (30, 22), (60, 25), (90, 24))),
                *(number(s, v, room="hall") for s, v in ((0, 18), (60, 19))),
            ]
        ),
    )
    duration = pb.Metric(
        name="http.server.duration",
        unit="s",
        histogram=pb.Histogram(
            aggregation_temporality=CUMULATIVE,
            data_points=[
                pb.HistogramDataPoint(
                    time_unix_nano=ns(seconds),
                    start_time_unix_nano=ns(0),
                    count=sum(counts),
                    sum=total,
                    bucket_counts=counts,
                    explicit_bounds=[0.1, 0.5, 1.0],
                    attributes=[kv("http.route", "/a")],
                )
                for seconds, counts, total in (
                    (30, [2, 3, 4, 1], 6.0),
                    (60, [4, 8, 6, 2], 12.0),
                    (90, [4, 13, 11, 2], 17.0),
                )
            ],
        ),
    )
    latency = pb.Metric(
        name="rpc.latency",
        exponential_histogram=pb.ExponentialHistogram(
            aggregation_temporality=DELTA,
            data_points=[
                pb.ExponentialHistogramDataPoint(
                    time_unix_nano=ns(60),
                    start_time_unix_nano=ns(0),
                    count=4,
                    sum=10.0,
                    scale=0,
                    positive=pb.ExponentialHistogramDataPoint.Buckets(offset=0, bucket_counts=[2, 2]),
                )
            ],
        ),
    )
    message = ExportMetricsServiceRequest()
    resource = message.resource_metrics.add()
    resource.resource.attributes.extend([kv("service.name", "shop"), kv("service.instance.id", "shop-1")])
    resource.scope_metrics.add().metrics.extend([requests, jobs, queue, temperature, duration, latency])
    return message.SerializeToString()


POINTS = 4 + 2 + 5 + 1 + 4 + 2 + 3 + 1


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store filled once through a real collector."""
    root = tmp_path_factory.mktemp("prometheus") / "data"
    collector = start_server(root, "--flush-interval", "0.2")
    try:
        post_otlp(collector, "metrics", metrics_request())
        assert wait_for_rows(root, "select metric_name from metrics", POINTS).num_rows == POINTS
    finally:
        assert collector.stop() == 0
    return root


@pytest.fixture(scope="module")
def ui(data: Path) -> Iterator[UiServer]:
    running = start_ui(data)
    yield running
    assert running.stop() == 0, "".join(running.output)


def get(ui: UiServer, path: str, **params: str | list[str]) -> tuple[int, Any]:
    return ui.call(f"{path}?{urllib.parse.urlencode(params, doseq=True)}" if params else path)


def post(ui: UiServer, path: str, **params: str | list[str]) -> tuple[int, Any]:
    """A form-encoded POST, as Grafana sends queries with its default HTTP method."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{ui.port}{path}",
        data=urllib.parse.urlencode(params, doseq=True).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def at(seconds: float) -> str:
    return str(T0_S + seconds)


# --- the shapes Grafana parses (pkg/promlib/converter/prom.go) --------------------------------


def check_success(body: Any) -> Any:
    assert body["status"] == "success" and "error" not in body and "errorType" not in body, body
    assert set(body) <= {"status", "data", "warnings", "infos"}
    return body["data"]


def check_sample(sample: Any) -> tuple[float, float]:
    """`[unix seconds (number), "value" (string)]`."""
    assert isinstance(sample, list) and len(sample) == 2, sample
    moment, text = sample
    assert type(moment) in (int, float) and isinstance(text, str)
    return moment, float(text.replace("Inf", "inf"))


def check_labels(labels: Any) -> dict[str, str]:
    assert isinstance(labels, dict)
    assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in labels.items())
    return labels


def vector(body: Any) -> dict[tuple[tuple[str, str], ...], float]:
    """An instant query's vector as {sorted labels: value}, checking its shape."""
    data = check_success(body)
    assert set(data) == {"resultType", "result"} and data["resultType"] == "vector"
    answer = {}
    for series in data["result"]:
        assert set(series) == {"metric", "value"}
        answer[tuple(sorted(check_labels(series["metric"]).items()))] = check_sample(series["value"])[1]
    return answer


def matrix(body: Any) -> dict[tuple[tuple[str, str], ...], list[tuple[float, float]]]:
    data = check_success(body)
    assert set(data) == {"resultType", "result"} and data["resultType"] == "matrix"
    answer = {}
    for series in data["result"]:
        assert set(series) == {"metric", "values"}
        samples = [check_sample(sample) for sample in series["values"]]
        assert [t for t, _ in samples] == sorted(t for t, _ in samples)
        answer[tuple(sorted(check_labels(series["metric"]).items()))] = samples
    return answer


def labels(**pairs: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(pairs.items()))


def check_error(status: int, body: Any, expected_status: int, kind: str, message: str) -> None:
    assert status == expected_status, body
    assert set(body) == {"status", "errorType", "error"}
    assert body["status"] == "error" and body["errorType"] == kind
    assert message in body["error"], body["error"]


def instant(ui: UiServer, query: str, seconds: float) -> dict[tuple[tuple[str, str], ...], float]:
    status, body = get(ui, "/api/v1/query", query=query, time=at(seconds))
    assert status == 200, body
    return vector(body)


# --- names and labels ------------------------------------------------------------------------


def test_names_and_labels_are_normalised() -> None:
    assert prometheus_metric_name("http.server.duration") == "http_server_duration"
    assert prometheus_metric_name("k8s.pod/cpu:rate") == "k8s_pod_cpu:rate"
    assert prometheus_metric_name("2xx.count") == "_2xx_count"
    assert prometheus_label_name("http.route") == "http_route"
    assert prometheus_label_name("größe") == "gr__e"
    assert series_labels(
        "m", "shop", [("http.route", "/a"), ("http_route", "/b"), ("empty", ""), ("job", "x")], "i-1"
    ) == {"http_route": "/a;/b", "job": "shop", "instance": "i-1", "__name__": "m"}
    assert series_labels("m", "", [("job", "x")], None) == {"job": "x", "__name__": "m"}
    assert [format_value(v) for v in (1.0, 0.25, 1e-7, 1e21, -0.5, math.inf, -math.inf, math.nan)] == [
        "1", "0.25", "0.0000001", "1000000000000000000000", "-0.5", "+Inf", "-Inf", "NaN"
    ]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_label_names_are_always_valid(key: str) -> None:
    assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", prometheus_label_name(key))
    assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", prometheus_metric_name(key or "x"))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(-100, 100), min_size=1, max_size=6, unique=True),
    st.data(),
    st.floats(0, 1),
)
def test_whole_histogram_quantile_equals_prometheus_per_le(
    bounds: list[float], data: st.DataObject, q: float
) -> None:
    """Without min/max, a histogram kept whole answers what Prometheus' algorithm answers over its
    per-le cumulative counts (the two paths of histogram_quantile)."""
    bounds = sorted(bounds)
    counts = data.draw(st.lists(st.integers(0, 50), min_size=len(bounds) + 1, max_size=len(bounds) + 1))
    point = _Explicit(
        count=sum(counts),
        sum=None,
        minimum=None,
        maximum=None,
        counts=dict(zip([*bounds, math.inf], counts, strict=True)),
    )
    whole = Histogram((point,), per=60.0)
    per_le = bucket_quantile(q, whole.buckets())
    assert whole.quantile(q) == pytest.approx(per_le, nan_ok=True)


# --- what Grafana sends first: the health check, build info, the metric browser ---------------


def test_grafana_health_check_scalar(ui: UiServer) -> None:
    status, body = get(ui, "/api/v1/query", query="1+1", time="4")  # time range 1 s .. 4 s
    assert status == 200
    assert check_success(body) == {"resultType": "scalar", "result": [4, "2"]}
    status, body = post(ui, "/api/v1/query", query="1+1", time="4.5")
    assert status == 200 and check_success(body) == {"resultType": "scalar", "result": [4.5, "2"]}


def test_build_info_makes_grafana_see_prometheus(ui: UiServer) -> None:
    status, body = get(ui, "/api/v1/status/buildinfo")
    assert status == 200
    data = check_success(body)
    assert data["version"] == "2.53.0" and data["revision"].startswith("mallard ")
    assert not data.get("features")  # no features: Grafana's heuristics say "Prometheus", not Mimir


def test_label_names(ui: UiServer) -> None:
    status, body = get(ui, "/api/v1/labels", start=at(0), end=at(3600))
    assert status == 200
    assert check_success(body) == ["__name__", "http_route", "instance", "job", "le", "room"]
    status, body = post(ui, "/api/v1/labels", start=at(0), end=at(3600), **{"match[]": "room_temperature"})
    assert status == 200 and check_success(body) == ["__name__", "instance", "job", "room"]
    # the range: before T0 nothing exists
    assert check_success(get(ui, "/api/v1/labels", start=at(-7200), end=at(-3600))[1]) == []


def test_metric_names_as_label_values(ui: UiServer) -> None:
    status, body = get(ui, "/api/v1/label/__name__/values", start=at(0), end=at(3600))
    assert status == 200
    assert check_success(body) == [
        "http_requests",
        "http_server_duration_bucket",
        "http_server_duration_count",
        "http_server_duration_sum",
        "jobs_done",
        "queue_size",
        "room_temperature",
        "rpc_latency_bucket",
        "rpc_latency_count",
        "rpc_latency_sum",
    ]
    # from +100 s on, only jobs.done and http.requests have points
    names = check_success(get(ui, "/api/v1/label/__name__/values", start=at(100), end=at(3600))[1])
    assert names == ["http_requests", "jobs_done"]


def test_label_values_with_match(ui: UiServer) -> None:
    assert check_success(get(ui, "/api/v1/label/job/values")[1]) == ["shop"]  # all time
    values = get(
        ui, "/api/v1/label/room/values", start=at(0), end=at(3600), **{"match[]": "room_temperature"}
    )
    assert check_success(values[1]) == ["hall", "kitchen"]
    les = get(ui, "/api/v1/label/le/values", **{"match[]": "http_server_duration_bucket"})
    assert check_success(les[1]) == ["+Inf", "0.1", "0.5", "1"]
    routes = get(ui, "/api/v1/label/http_route/values", **{"match[]": ['http_requests{http_route!="/b"}']})
    assert check_success(routes[1]) == ["/a"]
    status, body = get(ui, "/api/v1/label/room/values", limit="1")
    assert (
        status == 200 and body["data"] == ["hall"] and body["warnings"] == ["results truncated due to limit"]
    )


def test_series(ui: UiServer) -> None:
    status, body = get(ui, "/api/v1/series", start=at(0), end=at(3600), **{"match[]": "room_temperature"})
    assert status == 200
    assert check_success(body) == [
        {"__name__": "room_temperature", **HALL},
        {"__name__": "room_temperature", **KITCHEN},
    ]
    # several match[] (a union), the exact OTel name, and a regex on __name__
    status, body = post(
        ui,
        "/api/v1/series",
        start=at(0),
        end=at(3600),
        **{"match[]": ['{__name__="jobs.done"}', '{__name__=~"http_server_duration_(count|sum)"}']},
    )
    assert status == 200
    assert check_success(body) == [
        {"__name__": "http_server_duration_count", **ROUTE_A},
        {"__name__": "http_server_duration_sum", **ROUTE_A},
        {"__name__": "jobs_done", **SHOP},
    ]
    buckets = check_success(
        get(ui, "/api/v1/series", **{"match[]": 'http_server_duration_bucket{le="0.5"}'})[1]
    )
    assert buckets == [{"__name__": "http_server_duration_bucket", "le": "0.5", **ROUTE_A}]


def test_metadata(ui: UiServer) -> None:
    status, body = get(ui, "/api/v1/metadata")
    assert status == 200
    assert check_success(body) == {
        "http_requests": [{"type": "counter", "help": "requests served", "unit": "1"}],
        "http_server_duration": [{"type": "histogram", "help": "", "unit": "s"}],
        "jobs_done": [{"type": "counter", "help": "", "unit": ""}],
        "queue_size": [{"type": "gauge", "help": "", "unit": ""}],  # an UpDownCounter
        "room_temperature": [{"type": "gauge", "help": "room temperature", "unit": "Cel"}],
        "rpc_latency": [{"type": "histogram", "help": "", "unit": ""}],
    }
    one = check_success(get(ui, "/api/v1/metadata", metric="room_temperature")[1])
    assert list(one) == ["room_temperature"]
    assert list(check_success(get(ui, "/api/v1/metadata", limit="2")[1])) == [
        "http_requests",
        "http_server_duration",
    ]


def test_exemplars_answer_an_empty_list(ui: UiServer) -> None:
    status, body = post(ui, "/api/v1/query_exemplars", query="jobs_done", start=at(0), end=at(600))
    assert status == 200 and check_success(body) == []


# --- instant queries: selectors ---------------------------------------------------------------


def test_gauge_selector_takes_the_newest_point_in_five_minutes(ui: UiServer) -> None:
    name = {"__name__": "room_temperature"}
    assert instant(ui, "room_temperature", 120) == {
        labels(**name, **KITCHEN): 24.0,  # +90 s
        labels(**name, **HALL): 19.0,  # +60 s
    }
    assert instant(ui, "room_temperature offset 1m", 120) == {
        labels(**name, **KITCHEN): 25.0,
        labels(**name, **HALL): 19.0,
    }
    assert instant(ui, "room_temperature", 45) == {
        labels(**name, **KITCHEN): 22.0,
        labels(**name, **HALL): 18.0,
    }
    assert instant(ui, "room_temperature", 60 + 300) == {
        labels(**name, **KITCHEN): 24.0
    }  # hall's +60 s is 5m old
    assert instant(ui, "room_temperature", -1) == {}
    assert instant(ui, "no_such_metric", 120) == {}


@pytest.mark.parametrize(
    ("query", "rooms"),
    [
        ('room_temperature{room="hall"}', ["hall"]),
        ('room_temperature{room!="hall"}', ["kitchen"]),
        ('room_temperature{room=~"kit.*"}', ["kitchen"]),
        ('room_temperature{room=~"kit"}', []),  # anchored: the whole value must match
        ('room_temperature{room!~"h.*"}', ["kitchen"]),
        ('room_temperature{job="shop", nothere=""}', ["hall", "kitchen"]),  # "" matches an absent label
        ('{__name__="room.temperature"}', ["hall", "kitchen"]),  # the exact OTel name
        ('{"room.temperature", room="hall"}', ["hall"]),  # Prometheus 3's quoted name
        ('{__name__=~"room_.*", room="hall"}', ["hall"]),
        ('{room="hall"}', ["hall"]),  # no name: every metric
    ],
)
def test_label_matchers(ui: UiServer, query: str, rooms: list[str]) -> None:
    answer = instant(ui, query, 120)
    assert sorted(dict(key)["room"] for key in answer) == rooms
    assert all(dict(key)["__name__"] == "room_temperature" for key in answer)


def test_histogram_parts_as_selectors(ui: UiServer) -> None:
    assert instant(ui, "http_server_duration_count", 90) == {
        labels(__name__="http_server_duration_count", **ROUTE_A): 30.0
    }
    assert instant(ui, '{__name__="http.server.duration_sum"}', 75) == {
        labels(__name__="http_server_duration_sum", **ROUTE_A): 12.0
    }
    buckets = instant(ui, "http_server_duration_bucket", 90)  # cumulative per le
    assert buckets == {
        labels(__name__="http_server_duration_bucket", le=le, **ROUTE_A): count
        for le, count in (("0.1", 4.0), ("0.5", 17.0), ("1", 28.0), ("+Inf", 30.0))
    }
    assert list(instant(ui, 'http_server_duration_bucket{le="1"}', 90).values()) == [28.0]


# --- counters: rate and increase --------------------------------------------------------------


def test_delta_counter_increase_and_rate(ui: UiServer) -> None:
    # window (60 s, 120 s]: /a +90 s 6 and +120 s 3; /b +120 s 8 (the +60 s points are outside)
    assert instant(ui, "increase(http_requests[1m])", 120) == {labels(**ROUTE_A): 9.0, labels(**ROUTE_B): 8.0}
    # (0, 120 s]: /a 27, /b 12 -> 39 in 120 s
    assert instant(ui, "sum(rate(http_requests[2m]))", 120) == {(): pytest.approx(39 / 120)}
    assert instant(ui, 'increase(http_requests{http_route="/b"}[30s])', 90) == {}  # no point in the window


def test_cumulative_counter_with_a_reset(ui: UiServer) -> None:
    # increases 5 (started at T0, in the window), 4, 5, then the restart counts 2 from zero
    assert instant(ui, "increase(jobs_done[2m])", 120) == {labels(**SHOP): 16.0}
    # (30 s, 150 s]: 4, 5, 2, 5; the +15 s point is only the baseline of +45 s
    assert instant(ui, "increase(jobs_done[2m])", 150) == {labels(**SHOP): 16.0}
    assert instant(ui, "rate(jobs_done[1m] offset 1m)", 180) == {labels(**SHOP): pytest.approx(7 / 60)}
    # windows and offsets far beyond the stored times
    assert instant(ui, "increase(jobs_done[1000y])", 120) == {labels(**SHOP): 16.0}
    assert instant(ui, "jobs_done offset 100y", 120) == {}


def test_range_query_on_the_step_grid(ui: UiServer) -> None:
    status, body = get(
        ui, "/api/v1/query_range", query="increase(jobs_done[1m])", start=at(60), end=at(180), step="60"
    )
    assert status == 200
    # (0, 60]: 5 + 4; (60, 120]: 5 + 2 (restart); (120, 180]: 7 - 2 -> 21 = 14 before the restart + 7 after
    assert matrix(body) == {labels(**SHOP): [(T0_S + 60, 9.0), (T0_S + 120, 7.0), (T0_S + 180, 5.0)]}


def test_range_query_by_post_as_grafana_sends_it(ui: UiServer) -> None:
    query = "sum by (http_route) (increase(http_requests[1m]))"
    status, body = post(ui, "/api/v1/query_range", query=query, start=at(60), end=at(120), step="60")
    assert status == 200
    assert matrix(body) == {
        labels(http_route="/a"): [(T0_S + 60, 18.0), (T0_S + 120, 9.0)],
        labels(http_route="/b"): [(T0_S + 60, 4.0), (T0_S + 120, 8.0)],
    }


def test_range_query_of_a_gauge_and_of_a_scalar(ui: UiServer) -> None:
    status, body = get(
        ui, "/api/v1/query_range", query="room_temperature", start=at(0), end=at(120), step="30s"
    )
    assert status == 200
    times = [T0_S + s for s in (0, 30, 60, 90, 120)]
    assert matrix(body) == {
        labels(__name__="room_temperature", **KITCHEN): list(
            zip(times, [20.0, 22.0, 25.0, 24.0, 24.0], strict=True)
        ),
        labels(__name__="room_temperature", **HALL): list(
            zip(times, [18.0, 18.0, 19.0, 19.0, 19.0], strict=True)
        ),
    }
    status, body = get(
        ui, "/api/v1/query_range", query="2 * 3", start="2024-05-31T16:00:00Z", end=at(1), step="0.5"
    )
    assert status == 200
    assert matrix(body) == {(): [(T0_S, 6.0), (T0_S + 0.5, 6.0), (T0_S + 1, 6.0)]}
    assert body["data"]["result"][0]["values"][1] == [T0_S + 0.5, "6"]


def test_range_query_with_grafana_style_float_parameters(ui: UiServer) -> None:
    # Grafana sends unix seconds with a fraction and the step in seconds; evaluation is per millisecond
    status, body = post(
        ui,
        "/api/v1/query_range",
        query="room_temperature{room='hall'}",
        start=at(59.5),
        end=at(60.75),
        step="0.25",
    )
    assert status == 200
    (samples,) = matrix(body).values()
    assert samples == [
        (T0_S + 59.5, 18.0),
        (T0_S + 59.75, 18.0),
        (T0_S + 60, 19.0),
        (T0_S + 60.25, 19.0),
        (T0_S + 60.5, 19.0),
        (T0_S + 60.75, 19.0),
    ]


def test_top_level_range_vector_answers_raw_samples(ui: UiServer) -> None:
    status, body = get(ui, "/api/v1/query", query='room_temperature{room="kitchen"}[1m]', time=at(90))
    assert status == 200
    assert matrix(body) == {
        labels(__name__="room_temperature", **KITCHEN): [(T0_S + 60, 25.0), (T0_S + 90, 24.0)]
    }


# --- aggregations and arithmetic --------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("sum by (room) (room_temperature)", {labels(room="kitchen"): 24.0, labels(room="hall"): 19.0}),
        ("sum(room_temperature) by (room)", {labels(room="kitchen"): 24.0, labels(room="hall"): 19.0}),
        ("avg(room_temperature)", {(): 21.5}),
        ("max without (room) (room_temperature)", {labels(**SHOP): 24.0}),
        ("min(room_temperature) by (job)", {labels(job="shop"): 19.0}),
        ("count(room_temperature)", {(): 2.0}),
        (
            "count by (le) (http_server_duration_bucket)",
            {labels(le=le): 1.0 for le in ("0.1", "0.5", "1", "+Inf")},
        ),
        ("room_temperature * 2 - 1", {labels(**KITCHEN): 47.0, labels(**HALL): 37.0}),
        ("10 - room_temperature", {labels(**KITCHEN): -14.0, labels(**HALL): -9.0}),
        ("-room_temperature{room='hall'}", {labels(**HALL): -19.0}),
        ("sum(room_temperature) / count(room_temperature)", {(): 21.5}),
        ("room_temperature - room_temperature offset 1m", {labels(**KITCHEN): -1.0, labels(**HALL): 0.0}),
        ("room_temperature / 0", {labels(**KITCHEN): math.inf, labels(**HALL): math.inf}),
    ],
)
def test_aggregation_and_arithmetic(ui: UiServer, query: str, expected: dict[Any, float]) -> None:
    assert instant(ui, query, 120) == expected


def test_scalar_arithmetic(ui: UiServer) -> None:
    for query, value in (("(1 + 2) * 3", "9"), ("1 - 2 - 3", "-4"), ("2 / 0", "+Inf"), ("-(0 / 0)", "NaN")):
        status, body = get(ui, "/api/v1/query", query=query, time=at(0))
        assert status == 200 and check_success(body)["result"] == [T0_S, value], query


def test_average_latency_from_sum_and_count(ui: UiServer) -> None:
    query = "sum(rate(http_server_duration_sum[1m])) / sum(rate(http_server_duration_count[1m]))"
    assert instant(ui, query, 90) == {(): pytest.approx(11 / 20)}  # (30, 90]: sum 17 - 6, count 30 - 10


# --- histogram_quantile -----------------------------------------------------------------------


def test_histogram_quantile_over_explicit_buckets(ui: UiServer) -> None:
    # (30 s, 90 s]: bucket increases 2, 10, 7, 1 (20 observations); the median is the 10th:
    # 8 of the 10 in (0.1, 0.5] -> 0.1 + 0.4 * 0.8
    query = "histogram_quantile(0.5, sum by (le) (rate(http_server_duration_bucket[1m])))"
    assert instant(ui, query, 90) == {(): pytest.approx(0.42)}
    # per-le numbers (an le matcher makes them so) go through Prometheus' algorithm: the same answer
    per_le = 'histogram_quantile(0.5, rate(http_server_duration_bucket{le=~".+"}[1m]))'
    assert instant(ui, per_le, 90) == {labels(**ROUTE_A): pytest.approx(0.42)}
    # the rates themselves, cumulative per le
    assert instant(ui, "rate(http_server_duration_bucket[1m])", 90) == {
        labels(le=le, **ROUTE_A): pytest.approx(count / 60)
        for le, count in (("0.1", 2), ("0.5", 12), ("1", 19), ("+Inf", 20))
    }
    # the +Inf bucket answers its lower bound; φ outside [0, 1] answers ±Inf
    assert instant(
        ui, "histogram_quantile(0.99, sum(rate(http_server_duration_bucket[1m])) by (le))", 90
    ) == {(): 1.0}
    assert instant(
        ui, "histogram_quantile(1.5, sum by (le) (rate(http_server_duration_bucket[1m])))", 90
    ) == {(): math.inf}


def test_histograms_stay_whole_only_while_le_is_kept(ui: UiServer) -> None:
    keep = "histogram_quantile(0.5, sum without (http_route) (rate(http_server_duration_bucket[1m])))"
    assert instant(ui, keep, 90) == {labels(**SHOP): pytest.approx(0.42)}
    # by (job) drops le: the per-le series (2, 12, 19, 20 in the window) are added up, as Prometheus does
    assert instant(ui, "sum by (job) (increase(http_server_duration_bucket[1m]))", 90) == {
        labels(job="shop"): 53.0
    }
    assert instant(ui, "sum by (le) (increase(http_server_duration_bucket[1m])) * 2", 90) == {
        labels(le=le): 2.0 * count for le, count in (("0.1", 2), ("0.5", 12), ("1", 19), ("+Inf", 20))
    }


def test_histogram_quantile_over_exponential_buckets(ui: UiServer) -> None:
    # buckets (1, 2] 2 and (2, 4] 2: the 3rd of 4 is half way into (2, 4] on a log scale: 2·√2
    query = "histogram_quantile(0.75, sum by (le) (increase(rpc_latency_bucket[1m])))"
    assert instant(ui, query, 60) == {(): pytest.approx(2 * math.sqrt(2))}
    assert instant(ui, "increase(rpc_latency_count[1m])", 60) == {labels(**SHOP): 4.0}


def test_histogram_quantile_range_query(ui: UiServer) -> None:
    query = "histogram_quantile(0.5, sum by (le) (increase(http_server_duration_bucket[30s])))"
    status, body = get(ui, "/api/v1/query_range", query=query, start=at(60), end=at(90), step="30")
    assert status == 200
    # (30, 60]: increases 2, 5, 2, 1 -> the 5th of 10 is 3/5 into (0.1, 0.5];
    # (60, 90]: 0, 5, 5, 0 -> the 5th is the top of (0.1, 0.5]
    assert matrix(body) == {(): [(T0_S + 60, pytest.approx(0.34)), (T0_S + 90, pytest.approx(0.5))]}


# --- bad input: Prometheus' error JSON, and the server keeps serving -------------------------


@pytest.mark.parametrize(
    ("path", "params", "status", "kind", "message"),
    [
        ("/api/v1/query", {"query": "sum("}, 400, "bad_data", 'invalid parameter "query": 1:5: parse error'),
        ("/api/v1/query", {"query": ""}, 400, "bad_data", "no expression found in input"),
        (
            "/api/v1/query",
            {"query": "irate(x[5m])"},
            400,
            "bad_data",
            "unsupported PromQL: the function irate()",
        ),
        ("/api/v1/query", {"query": "x > 1"}, 400, "bad_data", "unsupported PromQL: the binary operator '>'"),
        ("/api/v1/query", {"query": "nope(x)"}, 400, "bad_data", "unknown function nope()"),
        (
            "/api/v1/query",
            {"query": "1", "time": "yesterday"},
            400,
            "bad_data",
            'invalid parameter "time": cannot parse "yesterday" to a valid timestamp',
        ),
        (
            "/api/v1/query",
            {"query": "1", "time": "2024-05-31T16:00:00"},
            400,
            "bad_data",
            "to a valid timestamp",
        ),
        (
            "/api/v1/query",
            {"query": "1", "time": "1e20"},
            400,
            "bad_data",
            'invalid parameter "time": 1e20 is out',
        ),
        (
            "/api/v1/query",
            {"query": "1", "timeout": "soon"},
            400,
            "bad_data",
            'invalid parameter "timeout": cannot parse "soon" to a valid duration',
        ),
        (
            "/api/v1/query_range",
            {"query": "1", "start": at(0), "end": at(86400), "step": "1"},
            400,
            "bad_data",
            "exceeded maximum resolution of 11,000 points per timeseries",
        ),
        (
            "/api/v1/query_range",
            {"query": "1", "start": at(0), "end": at(60), "step": "0"},
            400,
            "bad_data",
            "zero or negative query resolution step widths are not accepted",
        ),
        (
            "/api/v1/query_range",
            {"query": "1", "start": at(60), "end": at(0), "step": "15s"},
            400,
            "bad_data",
            "end timestamp must not be before start time",
        ),
        (
            "/api/v1/query_range",
            {"query": "1", "end": at(60), "step": "15s"},
            400,
            "bad_data",
            'invalid parameter "start": cannot parse "" to a valid timestamp',
        ),
        (
            "/api/v1/query_range",
            {"query": "1", "start": at(0), "end": at(60), "step": "fast"},
            400,
            "bad_data",
            'invalid parameter "step": cannot parse "fast" to a valid duration',
        ),
        (
            "/api/v1/query_range",
            {"query": "jobs_done[5m]", "start": at(0), "end": at(60), "step": "15"},
            400,
            "bad_data",
            'invalid expression type "range vector" for range query',
        ),
        ("/api/v1/series", {}, 400, "bad_data", "no match[] parameter provided"),
        ("/api/v1/series", {"match[]": "sum(x)"}, 400, "bad_data", 'invalid parameter "match[]"'),
        (
            "/api/v1/labels",
            {"match[]": "x{"},
            400,
            "bad_data",
            'invalid parameter "match[]": 1:3: parse error',
        ),
        ("/api/v1/label/a-b/values", {}, 400, "bad_data", "invalid label name: 'a-b'"),
        (
            "/api/v1/query",
            {"query": 'rate({__name__=~"http_server_duration_(count|sum)"}[1m])', "time": at(90)},
            422,
            "execution",
            "vector cannot contain metrics with the same labelset",
        ),
    ],
)
def test_bad_input_answers_prometheus_errors(
    ui: UiServer, path: str, params: dict[str, str], status: int, kind: str, message: str
) -> None:
    check_error(*get(ui, path, **params), status, kind, message)
    check_error(*post(ui, path, **params), status, kind, message)
    assert instant(ui, "count(room_temperature)", 120) == {(): 2.0}  # still serving


def test_evaluation_past_its_deadline_times_out(data: Path) -> None:
    with Store(data) as store, pytest.raises(QueryTimeout, match="query timed out"):
        evaluate(store, parse("room_temperature"), [(T0_S + 120) * 1000], deadline=time.monotonic() - 1)


def test_bearer_token_guards_the_prometheus_routes(data: Path) -> None:
    guarded = start_ui(data, "--auth-token", "s3cret")
    try:
        status, body = get(guarded, "/api/v1/query", query="1+1", time="4")
        assert status == 401 and body == {"detail": "missing or wrong bearer token"}
        status, body = guarded.call("/api/v1/query?query=1%2B1&time=4", token="s3cret")
        assert status == 200 and check_success(body)["result"] == [4, "2"]
    finally:
        assert guarded.stop() == 0
