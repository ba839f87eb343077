"""The `traces` summary: the SQL that builds its rows from spans, and the SQL that merges them.

Both are DuckDB SQL over a relation named in the text, so the compactor (over the spans files of one
hour) and `mallard.query.Store` (over the spans of hours not compacted yet) build identical rows.
"""

from __future__ import annotations

from typing import Final

_ROOT_ORDER: Final = "(coalesce(parent_span_id, '') <> '', start_time_unix_nano, span_id)"
# Span columns added within v1 that the summary reads: a typed empty relation unioned by name under
# the spans supplies them (NULL) where the spans files predate them (compaction reads files directly).
_ADDED_SPAN_COLUMNS: Final = "SELECT CAST(NULL AS DOUBLE) AS gen_ai_cost_usd WHERE false"


def trace_rows_sql(spans: str, *, extra_keys: tuple[str, ...] = ()) -> str:
    """One row of the `traces` table (schema `TRACES`) per trace of the spans relation `spans`,
    per `extra_keys` too (e.g. the hive columns `date`, `hour`), ordered by trace id."""
    keys = ", ".join(("trace_id", *extra_keys))
    return f"""
        SELECT {keys},
            arg_min(service_name, {_ROOT_ORDER}) AS root_service,
            arg_min(name, {_ROOT_ORDER}) AS root_operation,
            arg_min(span_id, {_ROOT_ORDER}) AS root_span_id,
            bool_or(coalesce(parent_span_id, '') = '') AS has_root,
            arg_min(start_time_unix_nano, {_ROOT_ORDER}) AS root_start_time_unix_nano,
            min(start_time) AS start_time,
            max(end_time) AS end_time,
            min(start_time_unix_nano) AS start_time_unix_nano,
            max(end_time_unix_nano) AS end_time_unix_nano,
            count(*) AS span_count,
            count(*) FILTER (WHERE status_code = 'ERROR') AS error_count,
            list_sort(list_distinct(list(service_name))) AS services,
            CAST(sum(gen_ai_input_tokens) AS BIGINT) AS input_tokens,
            CAST(sum(gen_ai_output_tokens) AS BIGINT) AS output_tokens,
            sum(gen_ai_cost_usd) AS cost_usd
        FROM ({_ADDED_SPAN_COLUMNS} UNION ALL BY NAME SELECT * FROM {spans})
        GROUP BY {keys}
        ORDER BY {keys}
    """


_MERGED_ROOT: Final = "(NOT has_root, root_start_time_unix_nano, root_span_id)"


def trace_merge_sql(where: str = "") -> str:
    """One row per trace from the rows of the `traces` table (the relation `trace_rows`), of the
    traces `where` (a condition on `trace_rows`, e.g. `trace_id IN (...)`) selects; all when empty.
    Filtering here, before the rows are merged, lets DuckDB prune files and row groups by trace id."""
    condition = f"WHERE {where}" if where else ""
    return f"""
    SELECT trace_id,
        arg_min(root_service, {_MERGED_ROOT}) AS root_service,
        arg_min(root_operation, {_MERGED_ROOT}) AS root_operation,
        arg_min(root_span_id, {_MERGED_ROOT}) AS root_span_id,
        min(start_time) AS start_time,
        max(end_time) AS end_time,
        min(start_time_unix_nano) AS start_time_unix_nano,
        max(end_time_unix_nano) AS end_time_unix_nano,
        max(end_time_unix_nano) - min(start_time_unix_nano) AS duration,
        CAST(sum(span_count) AS BIGINT) AS span_count,
        CAST(sum(error_count) AS BIGINT) AS error_count,
        list_sort(list_distinct(flatten(list(services)))) AS services,
        CAST(sum(input_tokens) AS BIGINT) AS input_tokens,
        CAST(sum(output_tokens) AS BIGINT) AS output_tokens,
        sum(cost_usd) AS cost_usd
    FROM trace_rows {condition}
    GROUP BY trace_id
"""


# The `traces` view: one row per trace.
TRACE_MERGE_SQL: Final = trace_merge_sql()
