"""Schema v1 of the Parquet store: the public column contract of `spans`, `metrics` and `logs`.

Every column is documented in `docs/storage.md`; a test keeps the two in step. Column names and types
are a public contract: add columns, never rename or retype them within a schema version.

Attribute maps: every OTLP attribute is kept in a `MAP(VARCHAR, VARCHAR)` (`attributes['http.route']`
in DuckDB). String values are stored as they are; other values are rendered as JSON text (`200`,
`1.5`, `true`, `["a","b"]`, `{"k":1}`) and bytes as base64. The sibling `*_types` map names the type of
every non-string value (`int`, `double`, `bool`, `bytes`, `array`, `kvlist`, `empty`), so the original
type is recoverable: `coalesce(attribute_types['k'], 'string')`.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

SCHEMA_VERSION: Final = 1
TABLES: Final = ("spans", "metrics", "logs")

TIMESTAMP: Final = pa.timestamp("us", tz="UTC")
ATTRIBUTES: Final = pa.map_(pa.string(), pa.string())

EVENT: Final = pa.struct(
    [
        pa.field("time", TIMESTAMP),
        pa.field("time_unix_nano", pa.int64()),
        pa.field("name", pa.string()),
        pa.field("attributes", ATTRIBUTES),
        pa.field("attribute_types", ATTRIBUTES),
        pa.field("dropped_attributes_count", pa.int64()),
    ]
)

LINK: Final = pa.struct(
    [
        pa.field("trace_id", pa.string()),
        pa.field("span_id", pa.string()),
        pa.field("trace_state", pa.string()),
        pa.field("flags", pa.int64()),
        pa.field("attributes", ATTRIBUTES),
        pa.field("attribute_types", ATTRIBUTES),
        pa.field("dropped_attributes_count", pa.int64()),
    ]
)

EXEMPLAR: Final = pa.struct(
    [
        pa.field("time", TIMESTAMP),
        pa.field("time_unix_nano", pa.int64()),
        pa.field("value", pa.float64()),
        pa.field("value_int", pa.int64()),
        pa.field("trace_id", pa.string()),
        pa.field("span_id", pa.string()),
        pa.field("filtered_attributes", ATTRIBUTES),
        pa.field("filtered_attribute_types", ATTRIBUTES),
    ]
)

QUANTILE: Final = pa.struct([pa.field("quantile", pa.float64()), pa.field("value", pa.float64())])

# Attributes promoted to typed columns: column -> (type, attribute keys tried in order).
# The value also stays in the `attributes` map, so `attributes['http.route']` always works.
SPAN_PROMOTED: Final[dict[str, tuple[pa.DataType, tuple[str, ...]]]] = {
    "http_method": (pa.string(), ("http.request.method", "http.method")),
    "http_route": (pa.string(), ("http.route",)),
    "http_status_code": (pa.int64(), ("http.response.status_code", "http.status_code")),
    "gen_ai_system": (pa.string(), ("gen_ai.system", "gen_ai.provider.name", "llm.system", "llm.provider")),
    "gen_ai_operation_name": (pa.string(), ("gen_ai.operation.name",)),
    "gen_ai_request_model": (pa.string(), ("gen_ai.request.model",)),
    "gen_ai_response_model": (pa.string(), ("gen_ai.response.model",)),
    "gen_ai_input_tokens": (
        pa.int64(),
        ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt"),
    ),
    "gen_ai_output_tokens": (
        pa.int64(),
        ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion"),
    ),
    # Added within v1 (NULL in older files). Both naming schemes land in the same columns: the OTel
    # GenAI names (`gen_ai.*`) first, then OpenInference's (`llm.*`). `gen_ai_model` is the model that
    # served the call, whichever scheme names it; cost and per-model queries read it.
    "gen_ai_cache_read_input_tokens": (
        pa.int64(),
        ("gen_ai.usage.cache_read.input_tokens", "llm.token_count.prompt_details.cache_read"),
    ),
    "gen_ai_model": (pa.string(), ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name")),
}

# Span columns the collector computes from the promoted ones after conversion (the converters leave
# them NULL; `mallard.collector.pricing` fills them, on live ingest and on WAL replay alike).
SPAN_COMPUTED: Final[dict[str, pa.DataType]] = {
    "gen_ai_cost_usd": pa.float64(),
}

_RESOURCE_AND_SCOPE: Final = [
    pa.field("resource_attributes", ATTRIBUTES),
    pa.field("resource_attribute_types", ATTRIBUTES),
    pa.field("scope_name", pa.string()),
    pa.field("scope_version", pa.string()),
    pa.field("scope_attributes", ATTRIBUTES),
    pa.field("scope_attribute_types", ATTRIBUTES),
]

SPANS: Final = pa.schema(
    [
        pa.field("trace_id", pa.string()),
        pa.field("span_id", pa.string()),
        pa.field("parent_span_id", pa.string()),
        pa.field("trace_state", pa.string()),
        pa.field("flags", pa.int64()),
        pa.field("name", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("service_name", pa.string()),
        pa.field("start_time", TIMESTAMP),
        pa.field("end_time", TIMESTAMP),
        pa.field("start_time_unix_nano", pa.int64()),
        pa.field("end_time_unix_nano", pa.int64()),
        pa.field("duration", pa.int64()),
        pa.field("status_code", pa.string()),
        pa.field("status_message", pa.string()),
        *(pa.field(name, typ) for name, (typ, _) in SPAN_PROMOTED.items()),
        *(pa.field(name, typ) for name, typ in SPAN_COMPUTED.items()),
        pa.field("attributes", ATTRIBUTES),
        pa.field("attribute_types", ATTRIBUTES),
        *_RESOURCE_AND_SCOPE,
        pa.field("events", pa.list_(EVENT)),
        pa.field("links", pa.list_(LINK)),
        pa.field("dropped_attributes_count", pa.int64()),
        pa.field("dropped_events_count", pa.int64()),
        pa.field("dropped_links_count", pa.int64()),
    ]
)

METRICS: Final = pa.schema(
    [
        pa.field("metric_name", pa.string()),
        pa.field("metric_description", pa.string()),
        pa.field("unit", pa.string()),
        pa.field("metric_type", pa.string()),
        pa.field("service_name", pa.string()),
        pa.field("time", TIMESTAMP),
        pa.field("start_time", TIMESTAMP),
        pa.field("time_unix_nano", pa.int64()),
        pa.field("start_time_unix_nano", pa.int64()),
        pa.field("temporality", pa.string()),
        pa.field("is_monotonic", pa.bool_()),
        pa.field("value", pa.float64()),
        pa.field("value_int", pa.int64()),
        pa.field("count", pa.int64()),
        pa.field("sum", pa.float64()),
        pa.field("min", pa.float64()),
        pa.field("max", pa.float64()),
        pa.field("bucket_counts", pa.list_(pa.int64())),
        pa.field("explicit_bounds", pa.list_(pa.float64())),
        pa.field("scale", pa.int32()),
        pa.field("zero_count", pa.int64()),
        pa.field("zero_threshold", pa.float64()),
        pa.field("positive_offset", pa.int32()),
        pa.field("positive_bucket_counts", pa.list_(pa.int64())),
        pa.field("negative_offset", pa.int32()),
        pa.field("negative_bucket_counts", pa.list_(pa.int64())),
        pa.field("quantiles", pa.list_(QUANTILE)),
        pa.field("exemplars", pa.list_(EXEMPLAR)),
        pa.field("flags", pa.int64()),
        pa.field("attributes", ATTRIBUTES),
        pa.field("attribute_types", ATTRIBUTES),
        *_RESOURCE_AND_SCOPE,
    ]
)

LOGS: Final = pa.schema(
    [
        pa.field("time", TIMESTAMP),
        pa.field("observed_time", TIMESTAMP),
        pa.field("time_unix_nano", pa.int64()),
        pa.field("observed_time_unix_nano", pa.int64()),
        pa.field("severity_number", pa.int32()),
        pa.field("severity_text", pa.string()),
        pa.field("body", pa.string()),
        pa.field("body_type", pa.string()),
        pa.field("event_name", pa.string()),
        pa.field("trace_id", pa.string()),
        pa.field("span_id", pa.string()),
        pa.field("flags", pa.int64()),
        pa.field("service_name", pa.string()),
        pa.field("attributes", ATTRIBUTES),
        pa.field("attribute_types", ATTRIBUTES),
        *_RESOURCE_AND_SCOPE,
        pa.field("dropped_attributes_count", pa.int64()),
    ]
)

# The attribute-map columns every table has (each built by the converters from OTLP KeyValues).
ATTRIBUTE_MAP_COLUMNS: Final = frozenset(
    {
        "attributes",
        "attribute_types",
        "resource_attributes",
        "resource_attribute_types",
        "scope_attributes",
        "scope_attribute_types",
    }
)

SCHEMAS: Final[dict[str, pa.Schema]] = {"spans": SPANS, "metrics": METRICS, "logs": LOGS}

# `traces`, built by compaction from `spans` (not written by the collector): one row per trace and
# hour partition of its spans. Almost every trace lies in one hour and so has one row; the `traces`
# view of `mallard.query.Store` merges the rows of a trace (`TRACE_MERGE_SQL` in `storage.traces`).
# The root candidate of a row is its parentless span (else its earliest span), ties broken by start
# time then span id; across rows a parentless candidate wins, then the earliest.
TRACES: Final = pa.schema(
    [
        pa.field("trace_id", pa.string()),
        pa.field("root_service", pa.string()),
        pa.field("root_operation", pa.string()),
        pa.field("root_span_id", pa.string()),
        pa.field("has_root", pa.bool_()),
        pa.field("root_start_time_unix_nano", pa.int64()),
        pa.field("start_time", TIMESTAMP),
        pa.field("end_time", TIMESTAMP),
        pa.field("start_time_unix_nano", pa.int64()),
        pa.field("end_time_unix_nano", pa.int64()),
        pa.field("span_count", pa.int64()),
        pa.field("error_count", pa.int64()),
        pa.field("services", pa.list_(pa.string())),
        pa.field("input_tokens", pa.int64()),
        pa.field("output_tokens", pa.int64()),
        pa.field("cost_usd", pa.float64()),  # added within v1
    ]
)
# `attribute_index`, built by compaction from `spans`: which traces of an hour carry the rare values
# of span attributes (see `mallard.storage.attribute_index`).
ATTRIBUTE_INDEX: Final = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("value", pa.string()),  # NULL: the key is not indexed in this hour
        pa.field("trace_id", pa.string()),  # NULL: the value is too frequent to list its traces
    ]
)
DERIVED_TABLES: Final = ("traces", "attribute_index")  # built by compaction from `spans`
ALL_TABLES: Final = (*TABLES, *DERIVED_TABLES)  # the collector's tables and those compaction builds

# Columns that only compacted files have (compaction derives them; collector files lack them, and
# `mallard.query.Store` reads them as NULL there).
SERIES_ID_SQL: Final = (
    "hash(service_name, scope_name, scope_version, resource_attributes, attributes, temporality,"
    " explicit_bounds)"
)
COMPACTED_COLUMNS: Final[dict[str, dict[str, tuple[pa.DataType, str]]]] = {
    "metrics": {"series_id": (pa.uint64(), SERIES_ID_SQL)},
}
ALL_SCHEMAS: Final[dict[str, pa.Schema]] = {
    **SCHEMAS,
    "traces": TRACES,
    "attribute_index": ATTRIBUTE_INDEX,
}

# The column each table is partitioned on (date=/hour= directories).
PARTITION_TIME_COLUMN: Final[dict[str, str]] = {
    "spans": "start_time",
    "metrics": "time",
    "logs": "time",
}


def schema_for(table: str) -> pa.Schema:
    """The v1 Arrow schema of `table`; raises `KeyError` for an unknown table."""
    return SCHEMAS[table]
