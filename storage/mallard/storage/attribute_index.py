"""The `attribute_index` table: where the rare values of span attributes are, built by compaction.

A search on `attributes[key] = value` over a day would otherwise decode the attribute map of every
span (about 5 s for 10M spans on two cores). For each compacted hour of `spans`, compaction writes the
hour's index (schema `ATTRIBUTE_INDEX`), ordered by key and value, in rows of three kinds:

- `(key, value, trace_id)`: a **posting**. The value occurs in at most `MAX_POSTINGS_PER_VALUE`
  traces of the hour; there is one row per trace that has it.
- `(key, value, NULL)`: a **frequent value**. It occurs in more traces than that; a search for it
  reads the hour's spans. A frequent value matches many traces, so the newest-first search stops early.
- `(key, NULL, NULL)`: an **unindexed key**. Its values are nearly unique per span (a client
  address, a request id): the hour has more than `UNIQUE_KEY_RATIO` distinct values of it per span
  that carries it, so indexing it would cost as much as the spans. A search for it reads the hour's
  spans.

A key or value that the hour's index does not name does not occur in the hour. Keys with their own
text column (`SPAN_PROMOTED`) are not indexed: the column answers faster. Values longer than
`MAX_INDEXED_VALUE_CHARS` are not indexed either (`indexable()` tells a search not to use the index for
them). NULL values are left out: `attributes[key] = value` is never true for them.

The index is exact for the spans compacted into the hour. Spans that arrive later for the hour (late
data) are not indexed until the hour is compacted again; searches read such hours in full.
"""

from __future__ import annotations

from typing import Final

from mallard.storage.schema import SPAN_PROMOTED

MAX_POSTINGS_PER_VALUE: Final = 64
UNIQUE_KEY_RATIO: Final = 0.5
MAX_INDEXED_VALUE_CHARS: Final = 256

# The keys with their own column, left out of the index.
PROMOTED_KEYS: Final = tuple(sorted({key for _, keys in SPAN_PROMOTED.values() for key in keys}))


def indexable(key: str, value: str) -> bool:
    """Whether the index answers `attributes[key] = value`."""
    return key not in PROMOTED_KEYS and len(value) <= MAX_INDEXED_VALUE_CHARS


def attribute_index_sql(spans: str) -> str:
    """The `attribute_index` rows (schema `ATTRIBUTE_INDEX`) of the spans relation `spans`, ordered by
    key, value (NULL first), trace id (NULL first)."""
    promoted = ", ".join("'" + key.replace("'", "''") + "'" for key in PROMOTED_KEYS)
    return f"""
        WITH span_entries AS (
            SELECT trace_id, entry.key AS key, entry.value AS value
            FROM (SELECT trace_id, unnest(map_entries(attributes)) AS entry FROM {spans})
            WHERE entry.value IS NOT NULL AND entry.key NOT IN ({promoted})
                AND length(entry.value) <= {MAX_INDEXED_VALUE_CHARS}
        ),
        keys AS (
            SELECT key, count(*) AS spans, count(DISTINCT value) AS distinct_values
            FROM span_entries GROUP BY key
        ),
        indexed AS (
            SELECT DISTINCT span_entries.trace_id, span_entries.key, span_entries.value
            FROM span_entries JOIN keys USING (key)
            WHERE keys.distinct_values <= {UNIQUE_KEY_RATIO} * keys.spans
        ),
        counted AS (
            SELECT trace_id, key, value, count(*) OVER (PARTITION BY key, value) AS traces FROM indexed
        )
        SELECT key, value, trace_id FROM (
            SELECT key, CAST(NULL AS VARCHAR) AS value, CAST(NULL AS VARCHAR) AS trace_id
            FROM keys WHERE distinct_values > {UNIQUE_KEY_RATIO} * spans
            UNION ALL
            SELECT DISTINCT key, value, CAST(NULL AS VARCHAR) FROM counted
            WHERE traces > {MAX_POSTINGS_PER_VALUE}
            UNION ALL
            SELECT key, value, trace_id FROM counted WHERE traces <= {MAX_POSTINGS_PER_VALUE}
        )
        ORDER BY key, value NULLS FIRST, trace_id NULLS FIRST
    """
