"""Stub of the native span converter (`_native_spans.c`); see `spans.spans_to_arrow`."""

import pyarrow as pa

def convert(payload: bytes, max_attributes: int, max_depth: int, /) -> tuple[pa.RecordBatch, int, str] | None:
    """The spans RecordBatch, rejected count and message; None where the Python converter must run.

    Malformed protobuf raises PermanentError, as `spans_to_arrow_python` does.
    """
