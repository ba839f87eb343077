"""Storage errors."""

from __future__ import annotations


class StorageError(Exception):
    """Base error of the storage layer: writing, committing or reading the Parquet store failed."""
