"""SQL over a mallard store: `Store` (DuckDB views `spans`, `metrics`, `logs`), typed trace, metric,
log, model-quality and LLM-usage queries, a read-only SQL sandbox, result formatting, and
`mallard sql` / `mallard shell`."""

from __future__ import annotations

from mallard.query.cli import add_sql_arguments, run_sql
from mallard.query.engine import Store
from mallard.query.errors import QueryError, SqlRefused, SqlTimeout
from mallard.query.histograms import exponential_histogram_quantile, histogram_quantile
from mallard.query.llm import LlmUsage, llm_usage
from mallard.query.logs import LogEntry, search_logs
from mallard.query.metrics import MetricInfo, Series, metric_names, metric_series
from mallard.query.models import (
    FeatureDrift,
    ModelQuality,
    PredictionDistribution,
    feature_drift,
    model_quality,
    prediction_distribution,
)
from mallard.query.output import (
    JsonValue,
    format_csv,
    format_json,
    format_table,
    to_json_rows,
)
from mallard.query.sandbox import SqlLimits, SqlResult, SqlSandbox
from mallard.query.timerange import InvalidArgument, TimeRange, time_range
from mallard.query.traces import (
    Edge,
    ServiceStats,
    Span,
    SpanEvent,
    SpanLink,
    Trace,
    TraceSummary,
    get_trace,
    search_traces,
    service_map,
    services,
)

__all__ = [
    "Edge",
    "FeatureDrift",
    "LlmUsage",
    "ModelQuality",
    "PredictionDistribution",
    "feature_drift",
    "llm_usage",
    "model_quality",
    "prediction_distribution",
    "LogEntry",
    "MetricInfo",
    "Series",
    "exponential_histogram_quantile",
    "histogram_quantile",
    "metric_names",
    "metric_series",
    "search_logs",
    "InvalidArgument",
    "JsonValue",
    "QueryError",
    "ServiceStats",
    "Span",
    "SpanEvent",
    "SpanLink",
    "SqlLimits",
    "SqlRefused",
    "SqlResult",
    "SqlSandbox",
    "SqlTimeout",
    "Store",
    "TimeRange",
    "Trace",
    "TraceSummary",
    "add_sql_arguments",
    "format_csv",
    "format_json",
    "format_table",
    "get_trace",
    "run_sql",
    "search_traces",
    "service_map",
    "services",
    "time_range",
    "to_json_rows",
]
