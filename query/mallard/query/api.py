"""The HTTP API: `/api/v1/...` over a store, with OpenAPI docs at `/docs`.

`create_api(root)` answers a FastAPI app; `mallard ui` serves it with uvicorn. The routes are thin:
parse the query string, call the typed functions of `mallard.query.traces` or the `SqlSandbox`, and
turn the frozen dataclasses into pydantic models (pydantic lives only here, at the HTTP edge).

| route | answers |
|---|---|
| `GET /api/v1/traces/{trace_id}` | one trace with all its spans; 404 when the store has none |
| `GET /api/v1/traces` | trace summaries matching the filters, newest first |
| `GET /api/v1/services` | RED figures per service over the range |
| `GET /api/v1/service-map` | caller → callee edges over the range |
| `GET /api/v1/metrics` | the metrics with points in the range |
| `GET /api/v1/metrics/{name}/series` | one metric's series on a step grid; 404 for an unknown metric |
| `GET /api/v1/logs` | log records matching the filters, newest first |
| `POST /api/v1/sql` | one read-only `SELECT` through the sandbox |
| `/api/services`, `/api/traces`, … | the Jaeger query API for Grafana (`mallard.query.jaeger`) |
| `/api/v1/query`, `/api/v1/query_range`, … | the Prometheus HTTP API subset (`mallard.query.prometheus`) |
| `GET /healthz` | `{"status": "ok"}`, never behind the token |

Errors are JSON `{"detail": "<message>"}`, one row per cause:

| cause | status |
|---|---|
| malformed parameter (trace id, time, duration, step, agg, attribute, limit, empty range), bad SQL | 400 |
| missing or wrong `Authorization: Bearer <token>` on `/api/...` (when a token is set) | 401 |
| SQL that is not one `SELECT` or reaches outside the store (`SqlRefused`) | 403 |
| unknown trace id, unknown metric | 404 |
| SQL over its time limit (`SqlTimeout`): 400, not 408, since clients and proxies retry a 408 | 400 |
| a query that fails on the server's side (an unreadable file) | 500 |
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field

from mallard.query.cli import one_line
from mallard.query.engine import Store
from mallard.query.errors import QueryError, SqlRefused, SqlTimeout
from mallard.query.jaeger import create_jaeger_router
from mallard.query.logs import MAX_SEARCH_LIMIT as MAX_LOG_LIMIT
from mallard.query.logs import MAX_SEVERITY, search_logs
from mallard.query.metrics import AGGREGATIONS, metric_names, metric_series
from mallard.query.prometheus import create_prometheus_router
from mallard.query.sandbox import SqlLimits, SqlSandbox
from mallard.query.timerange import NS_PER_UNIT, InvalidArgument, time_range
from mallard.query.traces import MAX_SEARCH_LIMIT, Trace, get_trace, search_traces, service_map, services

logger = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v1"
DEFAULT_RANGE: Final = timedelta(hours=1)
_UNIX_SECONDS: Final = re.compile(r"[0-9]+(\.[0-9]+)?")
_DURATION: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ns|us|µs|ms|s|m|h)?")


# --- response and request models (the HTTP contract) ------------------------------------------


class SpanEventModel(BaseModel):
    time: datetime
    time_unix_nano: int
    name: str
    attributes: dict[str, str | None]


class SpanLinkModel(BaseModel):
    trace_id: str
    span_id: str
    trace_state: str
    attributes: dict[str, str | None]


class SpanModel(BaseModel):
    trace_id: str
    span_id: str
    parent_span_id: str = Field(description="'' for a root span")
    name: str
    kind: str
    service_name: str
    start_time: datetime
    end_time: datetime
    start_time_unix_nano: int
    end_time_unix_nano: int
    duration_ns: int
    status_code: str = Field(description="UNSET, OK or ERROR")
    status_message: str
    attributes: dict[str, str | None]
    resource_attributes: dict[str, str | None]
    scope_name: str
    events: list[SpanEventModel]
    links: list[SpanLinkModel]


class TraceModel(BaseModel):
    trace_id: str
    root_span_id: str = Field(description="the root span, or the earliest span when none was received")
    root_service: str
    root_operation: str
    start_time: datetime
    duration_ns: int
    span_count: int
    error_count: int
    services: list[str]
    spans: list[SpanModel] = Field(description="ordered by start time, then span id")


class TraceSummaryModel(BaseModel):
    trace_id: str
    root_service: str
    root_operation: str
    start_time: datetime
    start_time_unix_nano: int
    duration_ns: int
    span_count: int
    error_count: int
    services: list[str]


class TraceSearchModel(BaseModel):
    start: datetime
    end: datetime
    traces: list[TraceSummaryModel]


class ServiceStatsModel(BaseModel):
    service_name: str
    request_count: int
    request_rate: float = Field(description="entry spans per second of the range")
    error_count: int
    error_rate: float
    p50_ns: float | None
    p95_ns: float | None
    p99_ns: float | None


class ServicesModel(BaseModel):
    start: datetime
    end: datetime
    services: list[ServiceStatsModel]


class EdgeModel(BaseModel):
    caller: str
    callee: str
    call_count: int
    error_count: int
    p50_ns: float
    p95_ns: float


class ServiceMapModel(BaseModel):
    start: datetime
    end: datetime
    edges: list[EdgeModel]


class MetricInfoModel(BaseModel):
    name: str
    type: str = Field(description="gauge, sum, histogram, exponential_histogram or summary")
    unit: str
    description: str
    temporality: str | None = Field(description="delta, cumulative, unspecified, mixed, or null")
    point_count: int


class MetricsModel(BaseModel):
    start: datetime
    end: datetime
    metrics: list[MetricInfoModel]


class SeriesModel(BaseModel):
    labels: dict[str, str] = Field(description="one entry per group_by key")
    points: list[tuple[datetime, float]] = Field(description="[step start, value], by time")


class MetricSeriesModel(BaseModel):
    start: datetime
    end: datetime
    step_s: float
    series: list[SeriesModel]


class LogModel(BaseModel):
    time: datetime
    observed_time: datetime
    severity_number: int
    severity_text: str
    body: str | None
    body_type: str
    event_name: str
    service_name: str
    trace_id: str = Field(description="'' without trace context")
    span_id: str
    attributes: dict[str, str | None]
    resource_attributes: dict[str, str | None]
    scope_name: str


class LogsModel(BaseModel):
    start: datetime
    end: datetime
    logs: list[LogModel]


class SqlRequest(BaseModel):
    sql: str = Field(description="exactly one SELECT over the views spans, metrics, logs")
    limit: int | None = Field(default=None, ge=0, description="row cap, at most the server's own")


class SqlAnswer(BaseModel):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = Field(description="a row or byte cap cut rows off")


class Health(BaseModel):
    status: str


# --- the app ----------------------------------------------------------------------------------

Middleware = Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]
TimeParam = Annotated[
    str | None,
    Query(description="RFC 3339 with an offset (2024-05-31T16:00:00Z) or unix seconds (1717171200.5)"),
]


def create_api(root: Path, *, auth_token: str | None = None, sql_limits: SqlLimits | None = None) -> FastAPI:
    """The API over the store under `root`; `auth_token` makes every `/api/` route ask for it."""
    store = Store(root)
    try:
        sandbox = SqlSandbox(root, limits=sql_limits)
    except BaseException:
        store.close()
        raise

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            sandbox.close()
            store.close()

    app = FastAPI(
        title="mallard",
        summary="Traces, services, metrics, logs and read-only SQL over a mallard store",
        version="1",
        lifespan=lifespan,
    )
    _add_error_handlers(app)
    if auth_token:
        app.middleware("http")(_bearer_guard(auth_token))
    documented_auth = [Depends(HTTPBearer(auto_error=False))] if auth_token else []
    router = APIRouter(prefix=API_PREFIX, dependencies=documented_auth)

    @router.get("/traces/{trace_id}", response_model=TraceModel, responses={404: {}, 400: {}})
    def trace(trace_id: str, start: TimeParam = None, end: TimeParam = None) -> TraceModel:
        """All spans of one trace (32 hex digits); `start`/`end` (both or neither) narrow the read."""
        begin, finish = _optional_range(start, end)
        found = get_trace(store, trace_id, start=begin, end=finish)
        if found is None:
            raise HTTPException(404, f"trace {trace_id.lower()} not found")
        return _trace_model(found)

    @router.get("/traces", response_model=TraceSearchModel, responses={400: {}})
    def traces(
        *,
        start: TimeParam = None,
        end: TimeParam = None,
        service: str | None = None,
        operation: str | None = None,
        min_duration: Annotated[str | None, Query(description="250ms, 1.5s, or nanoseconds")] = None,
        max_duration: Annotated[str | None, Query(description="250ms, 1.5s, or nanoseconds")] = None,
        status: Annotated[str | None, Query(description="ok, error or unset")] = None,
        attr: Annotated[list[str] | None, Query(description="key:value, repeatable")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_SEARCH_LIMIT)] = 20,
    ) -> TraceSearchModel:
        """Traces with a span in `[start, end)` (default: the last hour) matching every filter."""
        begin, finish = _range(start, end)
        found = search_traces(
            store,
            start=begin,
            end=finish,
            service=service,
            operation=operation,
            min_duration_ns=_duration("min_duration", min_duration),
            max_duration_ns=_duration("max_duration", max_duration),
            status=status,
            attributes=_attributes(attr or []),
            limit=limit,
        )
        summaries = [TraceSummaryModel.model_validate(s, from_attributes=True) for s in found]
        return TraceSearchModel(start=begin, end=finish, traces=summaries)

    @router.get("/services", response_model=ServicesModel, responses={400: {}})
    def services_route(start: TimeParam = None, end: TimeParam = None) -> ServicesModel:
        """Every service with a span in `[start, end)` (default: the last hour), with RED figures."""
        begin, finish = _range(start, end)
        stats = [
            ServiceStatsModel.model_validate(s, from_attributes=True)
            for s in services(store, start=begin, end=finish)
        ]
        return ServicesModel(start=begin, end=finish, services=stats)

    @router.get("/service-map", response_model=ServiceMapModel, responses={400: {}})
    def service_map_route(start: TimeParam = None, end: TimeParam = None) -> ServiceMapModel:
        """Caller → callee edges between services in `[start, end)` (default: the last hour)."""
        begin, finish = _range(start, end)
        edges = [
            EdgeModel.model_validate(e, from_attributes=True)
            for e in service_map(store, start=begin, end=finish)
        ]
        return ServiceMapModel(start=begin, end=finish, edges=edges)

    @router.get("/metrics", response_model=MetricsModel, responses={400: {}})
    def metrics_route(start: TimeParam = None, end: TimeParam = None) -> MetricsModel:
        """Every metric (name and type) with a point in `[start, end)` (default: the last hour)."""
        begin, finish = _range(start, end)
        found = [
            MetricInfoModel.model_validate(m, from_attributes=True)
            for m in metric_names(store, start=begin, end=finish)
        ]
        return MetricsModel(start=begin, end=finish, metrics=found)

    @router.get("/metrics/{name}/series", response_model=MetricSeriesModel, responses={400: {}, 404: {}})
    def metric_series_route(
        name: str,
        *,
        start: TimeParam = None,
        end: TimeParam = None,
        step: Annotated[str, Query(description="60s, 1m, 500ms, or seconds")] = "60s",
        agg: Annotated[str, Query(description=", ".join(AGGREGATIONS))] = "avg",
        group_by: Annotated[list[str] | None, Query(description="label key, repeatable")] = None,
        attr: Annotated[list[str] | None, Query(description="key:value, repeatable")] = None,
    ) -> MetricSeriesModel:
        """The series of metric `name` in `[start, end)` (default: the last hour), one per labels."""
        begin, finish = _range(start, end)
        step_s = parse_step("step", step)
        try:
            found = metric_series(
                store,
                name,
                start=begin,
                end=finish,
                step_s=step_s,
                agg=agg,
                group_by=group_by or [],
                attributes=_attributes(attr or []),
            )
        except InvalidArgument as exc:
            if str(exc) == f"unknown metric {name!r}":
                raise HTTPException(404, f"metric {name!r} not found") from None
            raise
        series = [SeriesModel(labels=s.labels, points=list(s.points)) for s in found]
        return MetricSeriesModel(start=begin, end=finish, step_s=step_s, series=series)

    @router.get("/logs", response_model=LogsModel, responses={400: {}})
    def logs_route(
        *,
        start: TimeParam = None,
        end: TimeParam = None,
        text: Annotated[str | None, Query(description="case-insensitive substring of the body")] = None,
        severity_min: Annotated[int | None, Query(ge=0, le=MAX_SEVERITY)] = None,
        service: str | None = None,
        trace_id: Annotated[str | None, Query(description="32 hex digits")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LOG_LIMIT)] = 100,
    ) -> LogsModel:
        """Log records in `[start, end)` (default: the last hour) matching every filter, newest first."""
        begin, finish = _range(start, end)
        found = search_logs(
            store,
            start=begin,
            end=finish,
            text=text,
            severity_min=severity_min,
            service=service,
            trace_id=trace_id,
            limit=limit,
        )
        entries = [LogModel.model_validate(e, from_attributes=True) for e in found]
        return LogsModel(start=begin, end=finish, logs=entries)

    @router.post("/sql", response_model=SqlAnswer, responses={400: {}, 403: {}})
    def sql(body: SqlRequest) -> SqlAnswer:
        """One read-only `SELECT`, under the server's time limit and row and byte caps."""
        result = sandbox.run(body.sql, max_rows=body.limit)
        return SqlAnswer(columns=result.columns, rows=result.rows, truncated=result.truncated)

    app.include_router(router)
    app.include_router(create_jaeger_router(store), dependencies=documented_auth)
    app.include_router(create_prometheus_router(store), dependencies=documented_auth)

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        return Health(status="ok")

    return app


def _bearer_guard(
    token: str,
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    expected = f"Bearer {token}".encode()

    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path.startswith("/api/"):
            sent = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(sent, expected):
                return JSONResponse(
                    {"detail": "missing or wrong bearer token"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return await call_next(request)

    return guard


def _add_error_handlers(app: FastAPI) -> None:
    def detail(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        return detail(400, str(exc))

    async def refused(_: Request, exc: Exception) -> JSONResponse:
        return detail(403, str(exc))

    async def failed(request: Request, exc: Exception) -> JSONResponse:
        if request.url.path == f"{API_PREFIX}/sql":  # the caller's SQL: DuckDB rejected it
            return detail(400, one_line(str(exc)))
        logger.exception("query failed on %s", request.url.path, exc_info=exc)
        return detail(500, "the query failed on the server; see its log")

    async def malformed(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        parts = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("query", "body"))
            parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg")))
        return detail(400, "; ".join(parts) or "malformed request")

    app.add_exception_handler(InvalidArgument, invalid)
    app.add_exception_handler(SqlTimeout, invalid)
    app.add_exception_handler(SqlRefused, refused)
    app.add_exception_handler(QueryError, failed)
    app.add_exception_handler(RequestValidationError, malformed)


# --- parameters -------------------------------------------------------------------------------


def parse_time(name: str, text: str) -> datetime:
    """RFC 3339 with an offset, or unix seconds; raises `InvalidArgument`."""
    text = text.strip()
    if _UNIX_SECONDS.fullmatch(text):
        try:
            return datetime.fromtimestamp(float(text), UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidArgument(f"{name}: {text!r} is out of range") from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(
            f"{name}: {text!r} is neither RFC 3339 (2024-05-31T16:00:00Z) nor unix seconds"
        ) from None
    if moment.tzinfo is None:
        raise InvalidArgument(f"{name}: {text!r} has no time zone offset (add Z or +00:00)")
    return moment


def parse_duration(name: str, text: str) -> int:
    """`250ms`, `1.5s`, `2m`, `1h`, `30us` or a whole number of nanoseconds, as nanoseconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise InvalidArgument(f"{name}: {text!r} is not a duration (250ms, 1.5s, or nanoseconds)")
    try:
        nanoseconds = Decimal(match[1]) * (NS_PER_UNIT[match[2]] if match[2] else 1)  # bare: ns
    except InvalidOperation:  # pragma: no cover - the pattern admits decimals only
        raise InvalidArgument(f"{name}: {text!r} is not a duration") from None
    if nanoseconds != nanoseconds.to_integral_value():
        raise InvalidArgument(f"{name}: {text!r} is not a whole number of nanoseconds")
    return int(nanoseconds)


def parse_step(name: str, text: str) -> float:
    """`60s`, `1m`, `500ms` or a bare number of seconds (`60`, `0.5`), as seconds."""
    stripped = text.strip()
    if _UNIX_SECONDS.fullmatch(stripped):
        seconds = float(stripped)
    else:
        match = _DURATION.fullmatch(stripped)
        if match is None or match[2] is None:
            raise InvalidArgument(f"{name}: {text!r} is not a step (60s, 1m, or seconds)")
        seconds = float(Decimal(match[1]) * NS_PER_UNIT[match[2]] / 1_000_000_000)
    if not 0 < seconds < 1e12:
        raise InvalidArgument(f"{name}: {text!r} is not a positive step below 10^12 s")
    return seconds


def _duration(name: str, text: str | None) -> int | None:
    return None if text is None else parse_duration(name, text)


def _range(start: str | None, end: str | None) -> tuple[datetime, datetime]:
    """The range asked for: `end` defaults to now, `start` to an hour before `end`."""
    finish = parse_time("end", end) if end is not None else datetime.now(UTC)
    begin = parse_time("start", start) if start is not None else finish - DEFAULT_RANGE
    checked = time_range(begin, finish)
    return checked.start, checked.end


def _optional_range(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    if start is None and end is None:
        return None, None
    if start is None or end is None:
        raise InvalidArgument("give both start and end, or neither")
    return _range(start, end)


def _attributes(pairs: list[str]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for pair in pairs:
        key, colon, value = pair.partition(":")
        if not colon or not key:
            raise InvalidArgument(f"attr: {pair!r} is not key:value")
        attributes[key] = value
    return attributes


def _trace_model(trace: Trace) -> TraceModel:
    return TraceModel(
        trace_id=trace.trace_id,
        root_span_id=trace.root.span_id,
        root_service=trace.root.service_name,
        root_operation=trace.root.name,
        start_time=trace.start_time,
        duration_ns=trace.duration_ns,
        span_count=len(trace.spans),
        error_count=trace.error_count,
        services=list(trace.services),
        spans=[SpanModel.model_validate(span, from_attributes=True) for span in trace.spans],
    )
