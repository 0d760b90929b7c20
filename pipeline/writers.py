"""Parquet shards of the output tables: deterministic (sorted, stable shard keys) and atomic (temp + rename)."""
from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.tables import SORT_KEYS, TABLES, with_version


def shard_of(study_id: str | None, n_shards: int) -> int:
    digest = hashlib.sha256((study_id or "").encode()).digest()
    return int.from_bytes(digest[:8], "little") % n_shards


def shard_prefix(part: int = 0, n_parts: int = 1) -> str:
    """File name prefix of one part's shards: parts of a partitioned run never write the same file."""
    return "part-" if n_parts == 1 else f"part-{part:03d}-"


def shard_path(out_dir: str, table: str, shard: int, prefix: str = "part-") -> str:
    return FileSystems.join(out_dir, table, f"{prefix}{shard:05d}.parquet")


def table_to_bytes(table_name: str, rows: list[dict], row_group_rows: int, compression: str) -> bytes:
    table = pa.Table.from_pylist(rows, schema=with_version(TABLES[table_name], table_name))
    table = table.sort_by([(key, "ascending") for key in SORT_KEYS[table_name]])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_rows, compression=compression)
    return sink.getvalue().to_pybytes()


def write_atomically(path: str, payload: bytes) -> None:
    """Write beside the target, then rename: a killed run never leaves a complete-looking partial shard."""
    temp = path + ".inprogress"
    with FileSystems.create(temp) as handle:
        handle.write(payload)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([temp], [path])


def write_shard(out_dir: str, table_name: str, shard: int, rows: list[dict], row_group_rows: int,
                compression: str, prefix: str = "part-") -> str:
    path = shard_path(out_dir, table_name, shard, prefix)
    write_atomically(path, table_to_bytes(table_name, rows, row_group_rows, compression))
    return path


def read_table(out_dir: str, table_name: str) -> pa.Table:
    """All shards of one table of a local run directory, in shard order."""
    pattern = FileSystems.join(out_dir, table_name, "part-*.parquet")
    paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    schema = with_version(TABLES[table_name], table_name)
    if not paths:
        return schema.empty_table()
    return pa.concat_tables([pq.read_table(p, schema=schema) for p in paths])
