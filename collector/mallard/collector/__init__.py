"""mallard.collector: OTLP receivers, write-ahead log and batching into the Parquet store."""
