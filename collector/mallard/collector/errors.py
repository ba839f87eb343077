"""Collector errors, each decided where it is raised: permanent (bad input, never retry) or retryable.

The mapping to the wire lives in one table, `mallard.collector.status`.
"""

from __future__ import annotations


class CollectorError(Exception):
    """Base error of the collector."""


class PermanentError(CollectorError):
    """The request is bad and sending it again will not help (OTLP: 400 / INVALID_ARGUMENT)."""


class TooLargeError(PermanentError):
    """The body, or what it inflates to, is over a configured limit (413 / INVALID_ARGUMENT)."""


class UnsupportedMediaError(PermanentError):
    """The Content-Type is neither OTLP protobuf nor OTLP JSON (415)."""


class OverloadedError(CollectorError):
    """Queues are full: retry later (429 / RESOURCE_EXHAUSTED with a retry delay)."""


class StorageUnavailableError(CollectorError):
    """The WAL cannot take the request right now (503 / UNAVAILABLE)."""
