"""mallard.storage: the Parquet store: schema v1, layout, atomic writer."""

from mallard.storage.errors import StorageError
from mallard.storage.layout import PartFile, Partition, list_part_files, table_glob
from mallard.storage.schema import SCHEMA_VERSION, SCHEMAS, TABLES, schema_for
from mallard.storage.writer import ParquetSettings, ParquetSink

__all__ = [
    "SCHEMAS",
    "SCHEMA_VERSION",
    "TABLES",
    "ParquetSettings",
    "ParquetSink",
    "PartFile",
    "Partition",
    "StorageError",
    "list_part_files",
    "schema_for",
    "table_glob",
]
