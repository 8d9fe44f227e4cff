"""Exported decisions as files: JSON Lines (streamed, one decision per line) and Parquet (pyarrow, written
in row groups to a temporary file, since a Parquet file's footer comes last). pyarrow is imported only
when a Parquet export is asked for."""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator
from datetime import datetime
from typing import IO, Any

ROW_GROUP = 1000
# Columns in order; nested values (entity keys, the content shown) are JSON strings in Parquet.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("decision_id", "string"), ("item_id", "string"), ("review_id", "string"), ("queue", "string"),
    ("kind", "string"), ("request_id", "string"), ("entity_id", "string"), ("reason", "string"),
    ("model_name", "string"), ("model_version", "int64"), ("prompt_name", "string"), ("prompt_version", "int64"),
    ("reviewer", "string"), ("action", "string"), ("category", "string"), ("label_flag", "bool"),
    ("label_text", "string"), ("corrected_completion", "string"), ("comment", "string"), ("resolution", "bool"),
    ("final", "bool"), ("double_labelled", "bool"), ("item_status", "string"), ("claimed_at", "timestamp"),
    ("decided_at", "timestamp"), ("event_time", "timestamp"), ("requested_at", "timestamp"),
    ("entity_keys", "json"), ("content", "json"),
)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot export {type(value).__name__}")


async def jsonl(records: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for r in records:
        yield (json.dumps(r, default=_json_default, ensure_ascii=False) + "\n").encode()


def _schema() -> Any:
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "bool": pa.bool_(),
             "timestamp": pa.timestamp("us", tz="UTC"), "json": pa.string()}
    return pa.schema([(name, types[kind]) for name, kind in COLUMNS])


def _batch(rows: list[dict[str, Any]], schema: Any) -> Any:
    import pyarrow as pa

    columns = {}
    for name, kind in COLUMNS:
        values = [r.get(name) for r in rows]
        if kind == "json":
            values = [json.dumps(v, default=_json_default, ensure_ascii=False) for v in values]
        columns[name] = values
    return pa.Table.from_pydict(columns, schema=schema)


async def parquet(records: AsyncIterator[dict[str, Any]]) -> IO[bytes]:
    """The records as one Parquet file (zstd), in a temporary file positioned at its start."""
    import pyarrow.parquet as pq

    schema = _schema()
    out = tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024)
    writer = pq.ParquetWriter(out, schema, compression="zstd")
    try:
        rows: list[dict[str, Any]] = []
        async for r in records:
            rows.append(r)
            if len(rows) >= ROW_GROUP:
                writer.write_table(_batch(rows, schema))
                rows = []
        if rows:
            writer.write_table(_batch(rows, schema))
    finally:
        writer.close()
    out.seek(0)
    return out
