"""The Prometheus HTTP API, as Grafana's Prometheus data source calls it, over a mallard store.

`create_prometheus_router(store)` answers an `APIRouter` that `create_api` mounts on `/api/v1`, so a
Prometheus data source pointed at `http://HOST:8686` works. Queries are the PromQL subset of
`mallard.query.promql`, evaluated by `mallard.query.promql_eval` over the series of
`mallard.query.prometheus_series` (names, labels and time semantics: there and in `docs/prometheus.md`).

| route (GET, or POST with a form body) | answers `{"status": "success", "data": ...}` with |
|---|---|
| `/api/v1/query?query=&time=&timeout=` | `{"resultType": "vector"/"scalar"/"matrix", "result"}` |
| `/api/v1/query_range?query=&start=&end=&step=&timeout=` | `{"resultType": "matrix", "result"}` |
| `/api/v1/labels?start=&end=&match[]=&limit=` | label names |
| `/api/v1/label/{name}/values?start=&end=&match[]=&limit=` | the values of one label |
| `/api/v1/series?match[]=&start=&end=&limit=` | label sets, `__name__` included |
| `/api/v1/metadata?metric=&limit=&limit_per_metric=` | `{name: [{"type", "help", "unit"}]}` |
| `/api/v1/query_exemplars` | `[]` (exemplars are not served yet) |
| `/api/v1/status/buildinfo` | `{"version", ...}`: the Prometheus API version followed |

Times are RFC 3339 or unix seconds (evaluated at millisecond precision); `step` and `timeout` are
seconds or durations (`15s`, `1m30s`). Without `start`/`end` the label routes read all the store.
Errors are `{"status": "error", "errorType", "error"}`, one row per cause:

| cause | status, `errorType` |
|---|---|
| malformed parameter, PromQL that does not parse or is outside the subset, > 11,000 steps | 400 `bad_data` |
| a query that parses but cannot be answered (duplicate series in a match) | 422 `execution` |
| evaluation past `timeout` (default 2 minutes; checked between series, not inside one read) | 503 `timeout` |
| the store could not be read (logged with its traceback) | 500 `internal` |
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from mallard.query.engine import Store
from mallard.query.errors import QueryError
from mallard.query.metrics import MAX_STEPS, metric_names
from mallard.query.prometheus_series import format_value, label_sets, prometheus_metric_name
from mallard.query.promql import (
    Expr,
    Matcher,
    PromQLError,
    VectorSelector,
    parse,
    parse_duration_ms,
    value_type,
)
from mallard.query.promql_eval import Element, EvaluationError, QueryTimeout, Samples, evaluate
from mallard.query.timerange import InvalidArgument, from_unix_nano, to_unix_nano

logger = logging.getLogger(__name__)

PROMETHEUS_API_VERSION: Final = "2.53.0"  # the Prometheus release whose HTTP API the routes follow
DEFAULT_TIMEOUT_S: Final = 120.0
_ALL_TIME: Final = (0, to_unix_nano(datetime(2262, 1, 1, tzinfo=UTC)))  # ns; BIGINT ends in 2262
_MAX_MS: Final = 9_000_000_000_000  # |unix ms| of a parameter: about 1685 to 2255
_FLOAT: Final = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_METADATA_TYPES: Final = {"gauge": "gauge", "histogram": "histogram", "exponential_histogram": "histogram"}
_EVERY_METRIC: Final = VectorSelector(matchers=(Matcher(name="__name__", op="!=", value=""),))

Params = dict[str, list[str]]
Json = dict[str, Any]


class BadData(InvalidArgument):
    """A malformed parameter; the message names it as Prometheus does."""


def create_prometheus_router(store: Store) -> APIRouter:
    """The Prometheus query, label, series, metadata and build-info routes over `store`."""
    router = APIRouter(prefix="/api/v1", tags=["prometheus"])

    def route(path: str, handler: Callable[[Params], Any], *, name: str, doc: str) -> None:
        async def endpoint(request: Request) -> JSONResponse:
            params = await _params(request)
            return await _answer(handler, params)

        endpoint.__doc__ = doc
        router.add_api_route(path, endpoint, methods=["GET", "POST"], name=name, response_model=None)

    route("/query", lambda p: instant_query(store, p), name="prometheus_query", doc="PromQL at one time.")
    route(
        "/query_range",
        lambda p: range_query(store, p),
        name="prometheus_query_range",
        doc="PromQL at each step from start to end.",
    )
    route("/labels", lambda p: label_names(store, p), name="prometheus_labels", doc="Label names.")
    route("/series", lambda p: series(store, p), name="prometheus_series", doc="Label sets of series.")
    route("/metadata", lambda p: metadata(store, p), name="prometheus_metadata", doc="Type, help, unit.")
    route("/query_exemplars", lambda p: [], name="prometheus_query_exemplars", doc="Exemplars: none yet.")
    route("/status/buildinfo", lambda p: build_info(), name="prometheus_buildinfo", doc="Version.")

    @router.api_route("/label/{label}/values", methods=["GET", "POST"], response_model=None)
    async def prometheus_label_values(label: str, request: Request) -> JSONResponse:
        """The values of one label."""
        params = await _params(request)
        return await _answer(lambda p: label_values(store, label, p), params)

    return router


# --- requests and answers ---------------------------------------------------------------------


async def _params(request: Request) -> Params:
    """The form body (a POST) then the query string; the first value of a name wins, as in Go."""
    params: Params = defaultdict(list)
    if request.method == "POST" and request.headers.get("content-type", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        body = (await request.body()).decode("utf-8", errors="replace")
        for key, value in parse_qsl(body, keep_blank_values=True):
            params[key].append(value)
    for key, value in request.query_params.multi_items():
        params[key].append(value)
    return params


async def _answer(handler: Callable[[Params], Any], params: Params) -> JSONResponse:
    try:
        data = await run_in_threadpool(handler, params)
    except InvalidArgument as exc:
        return _error(400, "bad_data", str(exc))
    except EvaluationError as exc:
        return _error(422, "execution", str(exc))
    except QueryTimeout as exc:
        return _error(503, "timeout", str(exc))
    except Exception as exc:  # a request handler: the server keeps serving
        logger.exception("prometheus query failed", exc_info=exc)
        message = str(exc) if isinstance(exc, QueryError) else "the query failed on the server; see its log"
        return _error(500, "internal", message.splitlines()[0] if message else "internal error")
    body: Json = {"status": "success", "data": data}
    if isinstance(data, list) and _truncated(params, data):
        body["warnings"] = ["results truncated due to limit"]
        body["data"] = data[: _limit(params)]
    return JSONResponse(body)


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"status": "error", "errorType": kind, "error": message}, status_code=status)


# --- the routes -------------------------------------------------------------------------------


def instant_query(store: Store, params: Params) -> Json:
    expr = _query(params)
    at_ms = _time(params, "time") if _one(params, "time") else _now_ms()
    result = evaluate(store, expr, [at_ms], deadline=_deadline(params))
    kind = value_type(expr)
    if kind == "scalar":
        return {"resultType": "scalar", "result": [_seconds(at_ms), format_value(_scalars(result)[0])]}
    if kind == "matrix":
        return {"resultType": "matrix", "result": [_matrix_series(s) for s in _samples(result)]}
    moment = _seconds(at_ms)
    vector = [{"metric": _sorted(e.labels), "value": [moment, _text(e.values[0])]} for e in _elements(result)]
    return {"resultType": "vector", "result": vector}


def range_query(store: Store, params: Params) -> Json:
    expr = _query(params)
    start, end = _time(params, "start"), _time(params, "end")
    step = _duration_ms(params, "step")
    if end < start:
        raise BadData('invalid parameter "end": end timestamp must not be before start time')
    if step <= 0:
        raise BadData(
            'invalid parameter "step": zero or negative query resolution step widths are not accepted.'
            " Try a positive integer"
        )
    if (end - start) // step > MAX_STEPS:
        raise BadData(
            f"exceeded maximum resolution of {MAX_STEPS:,} points per timeseries."
            " Try decreasing the query resolution (?step=XX)"
        )
    if value_type(expr) == "matrix":
        raise BadData(
            'invalid parameter "query": invalid expression type "range vector" for range query,'
            " must be Scalar or instant Vector"
        )
    times = list(range(start, end + 1, step))
    result = evaluate(store, expr, times, deadline=_deadline(params))
    if value_type(expr) == "scalar":
        values = [[_seconds(t), format_value(v)] for t, v in zip(times, _scalars(result), strict=True)]
        return {"resultType": "matrix", "result": [{"metric": {}, "values": values}]}
    matrix = [
        {
            "metric": _sorted(e.labels),
            "values": [[_seconds(times[i]), _text(e.values[i])] for i in sorted(e.values)],
        }
        for e in _elements(result)
    ]
    return {"resultType": "matrix", "result": matrix}


def label_names(store: Store, params: Params) -> list[str]:
    sets = label_sets(store, _matches(params) or [_EVERY_METRIC], *_label_range(params))
    return sorted({name for labels in sets for name in labels})


def label_values(store: Store, label: str, params: Params) -> list[str]:
    if not _LABEL_NAME.fullmatch(label):
        raise BadData(f"invalid label name: {label!r}")
    sets = label_sets(store, _matches(params) or [_EVERY_METRIC], *_label_range(params))
    return sorted({labels[label] for labels in sets if label in labels})


def series(store: Store, params: Params) -> list[dict[str, str]]:
    selectors = _matches(params)
    if not selectors:
        raise BadData("no match[] parameter provided")
    return [_sorted(labels) for labels in label_sets(store, selectors, *_label_range(params))]


def metadata(store: Store, params: Params) -> dict[str, list[dict[str, str]]]:
    """`type` (`counter` for monotonic sums, `gauge`, `histogram`), `help` (description) and `unit`."""
    lo, hi = _ALL_TIME
    found: dict[str, list[dict[str, str]]] = defaultdict(list)
    non_monotonic = {
        row["metric_name"]
        for row in store.sql(
            "SELECT DISTINCT metric_name FROM metrics WHERE metric_type = 'sum' AND NOT is_monotonic"
        ).to_pylist()
    }
    wanted, per_metric = _one(params, "metric"), _limit(params, "limit_per_metric")
    for info in metric_names(store, start=from_unix_nano(lo), end=from_unix_nano(hi)):
        name = prometheus_metric_name(info.name)
        if info.type == "sum":
            kind: str | None = "gauge" if info.name in non_monotonic else "counter"
        else:
            kind = _METADATA_TYPES.get(info.type)
        if kind is None or (wanted and wanted != name):
            continue
        entry = {"type": kind, "help": info.description, "unit": info.unit}
        if entry not in found[name] and not (per_metric and len(found[name]) >= per_metric):
            found[name].append(entry)
    limit = _limit(params)
    names = sorted(found)[:limit] if limit else sorted(found)
    return {name: found[name] for name in names}


def build_info() -> Json:
    try:
        mallard = version("mallard")
    except PackageNotFoundError:  # pragma: no cover - a source checkout without an install
        mallard = "unknown"
    return {
        "version": PROMETHEUS_API_VERSION,
        "revision": f"mallard {mallard}",
        "branch": "",
        "buildUser": "mallard",
        "buildDate": "",
        "goVersion": "",
    }


# --- parameters -------------------------------------------------------------------------------


def _one(params: Params, name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def _query(params: Params) -> Expr:
    try:
        return parse(_one(params, "query") or "")
    except PromQLError as exc:
        raise BadData(f'invalid parameter "query": {exc}') from None


def _matches(params: Params) -> list[VectorSelector]:
    selectors = []
    for text in params.get("match[]", []):
        try:
            expr = parse(text)
        except PromQLError as exc:
            raise BadData(f'invalid parameter "match[]": {exc}') from None
        if not isinstance(expr, VectorSelector):
            raise BadData(f'invalid parameter "match[]": {text!r} is not a series selector')
        selectors.append(expr)
    return selectors


def _time(params: Params, name: str) -> int:
    """An RFC 3339 time or unix seconds, as unix milliseconds."""
    text = (_one(params, name) or "").strip()
    milliseconds = None
    try:
        if _FLOAT.fullmatch(text):
            milliseconds = int((Decimal(text) * 1000).to_integral_value())
        elif (moment := datetime.fromisoformat(text)).tzinfo is not None:
            milliseconds = to_unix_nano(moment) // 1_000_000
    except (ValueError, InvalidOperation, OverflowError):
        pass
    if milliseconds is None:
        raise BadData(f'invalid parameter "{name}": cannot parse "{text}" to a valid timestamp')
    if abs(milliseconds) > _MAX_MS:
        raise BadData(f'invalid parameter "{name}": {text} is out of range')
    return milliseconds


def _duration_ms(params: Params, name: str) -> int:
    """Seconds (`15`, `0.5`) or a PromQL duration (`15s`, `1m30s`), as milliseconds."""
    text = (_one(params, name) or "").strip()
    if _FLOAT.fullmatch(text):
        return int((Decimal(text) * 1000).to_integral_value())
    duration = parse_duration_ms(text)
    if duration is None:
        raise BadData(f'invalid parameter "{name}": cannot parse "{text}" to a valid duration')
    return duration


def _deadline(params: Params) -> float:
    timeout_s = _duration_ms(params, "timeout") / 1000 if _one(params, "timeout") else DEFAULT_TIMEOUT_S
    if timeout_s <= 0:
        raise BadData('invalid parameter "timeout": the timeout must be positive')
    return time.monotonic() + min(timeout_s, DEFAULT_TIMEOUT_S)


def _label_range(params: Params) -> tuple[int, int]:
    """`[start, end]` in nanoseconds; all the store without them."""
    lo = _time(params, "start") * 1_000_000 if _one(params, "start") else _ALL_TIME[0]
    hi = _time(params, "end") * 1_000_000 if _one(params, "end") else _ALL_TIME[1]
    if hi < lo:
        raise BadData('invalid parameter "end": end timestamp must not be before start time')
    return lo, hi


def _limit(params: Params, name: str = "limit") -> int:
    text = _one(params, name)
    if not text:
        return 0
    if not text.isdigit():
        raise BadData(f'invalid parameter "{name}": cannot parse "{text}" to a valid limit')
    return int(text)


def _truncated(params: Params, data: list[Any]) -> bool:
    return 0 < _limit(params) < len(data)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- results ----------------------------------------------------------------------------------


def _seconds(milliseconds: int) -> float | int:
    return milliseconds // 1000 if milliseconds % 1000 == 0 else milliseconds / 1000


def _sorted(labels: dict[str, str]) -> dict[str, str]:
    """Labels by name, as Prometheus writes them."""
    return dict(sorted(labels.items()))


def _text(value: object) -> str:
    assert isinstance(value, float), value
    return format_value(value)


def _matrix_series(samples: Samples) -> Json:
    values = [[_seconds(t), format_value(v)] for t, v in samples.samples]
    return {"metric": _sorted(samples.labels), "values": values}


def _scalars(result: object) -> list[float]:
    assert isinstance(result, list)
    return [value for value in result if isinstance(value, float)]


def _elements(result: object) -> list[Element]:
    assert isinstance(result, list)
    return [element for element in result if isinstance(element, Element)]


def _samples(result: object) -> list[Samples]:
    assert isinstance(result, list)
    return [series for series in result if isinstance(series, Samples)]
