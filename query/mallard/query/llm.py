"""Typed LLM usage query over a `Store`: calls, tokens, cost, errors and latency per model and bucket.

An LLM call is a span with a model (`gen_ai_model`: `gen_ai.response.model`, else
`gen_ai.request.model`, else OpenInference's `llm.model_name`), whichever naming scheme sent it. The
range is half-open, `[start, end)`, on the span `start_time`, and prunes the hive partitions; the
step `k` covers `[start + k·step, start + (k+1)·step)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from mallard.query.engine import Store
from mallard.query.timerange import InvalidArgument, from_unix_nano, partition_predicate, time_range

GROUP_COLUMNS: Final = (
    "gen_ai_model",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "gen_ai_system",
    "gen_ai_operation_name",
    "service_name",
)
"""The span columns `llm_usage` can group by."""

_US: Final = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class LlmUsage:
    """The LLM calls of one group in one time bucket."""

    group: dict[str, str | None]  # group_by column → value (None: the spans lack it)
    bucket_start: datetime | None  # None when no step was asked for (one bucket)
    calls: int
    errors: int  # calls with status ERROR
    error_rate: float
    input_tokens: int  # cached ones included; a call without a count adds 0
    output_tokens: int
    cached_input_tokens: int
    cost_usd: float | None  # sum of the priced calls; None when none was priced
    unpriced_calls: int  # calls with token counts but no cost (a model the price table lacks)
    latency_p50_s: float
    latency_p95_s: float


def llm_usage(
    store: Store,
    *,
    start: datetime,
    end: datetime,
    step_s: float | None = None,
    group_by: tuple[str, ...] = ("gen_ai_model",),
) -> list[LlmUsage]:
    """LLM usage per `group_by` group (columns of `GROUP_COLUMNS`) and time bucket of `step_s` seconds
    from `start` (one bucket when None), sorted by bucket then group."""
    window = time_range(start, end)
    unknown = [column for column in group_by if column not in GROUP_COLUMNS]
    if unknown or len(set(group_by)) != len(group_by):
        raise InvalidArgument(
            f"group_by takes distinct columns of {', '.join(GROUP_COLUMNS)}, got {group_by}"
        )
    if step_s is not None and (
        isinstance(step_s, bool) or not isinstance(step_s, int | float) or not step_s >= 0.001
    ):
        raise InvalidArgument(f"step_s is a number of seconds, at least 0.001, got {step_s!r}")
    origin_us = window.start_unix_nano // 1_000
    step_us = None if step_s is None else round(step_s * _US)
    bucket = (
        "NULL::BIGINT"
        if step_us is None
        else f"({origin_us} + (epoch_us(start_time) - {origin_us}) // {step_us} * {step_us})"
    )
    groups = "".join(f"{column}, " for column in group_by)
    order = ", ".join(["bucket NULLS FIRST", *(f"{column} NULLS FIRST" for column in group_by)])
    query = f"""
        SELECT {groups}{bucket} AS bucket,
            count(*) AS calls,
            count(*) FILTER (WHERE status_code = 'ERROR') AS errors,
            CAST(coalesce(sum(gen_ai_input_tokens), 0) AS BIGINT) AS input_tokens,
            CAST(coalesce(sum(gen_ai_output_tokens), 0) AS BIGINT) AS output_tokens,
            CAST(coalesce(sum(gen_ai_cache_read_input_tokens), 0) AS BIGINT) AS cached_input_tokens,
            sum(gen_ai_cost_usd) AS cost_usd,
            count(*) FILTER (WHERE gen_ai_cost_usd IS NULL
                AND (gen_ai_input_tokens IS NOT NULL OR gen_ai_output_tokens IS NOT NULL)) AS unpriced,
            quantile_cont(duration, 0.5) / 1e9 AS p50,
            quantile_cont(duration, 0.95) / 1e9 AS p95
        FROM spans
        WHERE {partition_predicate(window)} AND start_time >= ? AND start_time < ?
            AND gen_ai_model IS NOT NULL
        GROUP BY ALL
        ORDER BY {order}
    """
    rows = store.sql(query, [window.start, window.end], order_joins=False).to_pylist()
    return [_usage(row, group_by) for row in rows]


def _usage(row: dict[str, Any], group_by: tuple[str, ...]) -> LlmUsage:
    calls = int(row["calls"])
    bucket = row["bucket"]
    return LlmUsage(
        group={column: row[column] for column in group_by},
        bucket_start=None if bucket is None else from_unix_nano(int(bucket) * 1_000),
        calls=calls,
        errors=int(row["errors"]),
        error_rate=int(row["errors"]) / calls,
        input_tokens=int(row["input_tokens"]),
        output_tokens=int(row["output_tokens"]),
        cached_input_tokens=int(row["cached_input_tokens"]),
        cost_usd=row["cost_usd"],
        unpriced_calls=int(row["unpriced"]),
        latency_p50_s=float(row["p50"]),
        latency_p95_s=float(row["p95"]),
    )
