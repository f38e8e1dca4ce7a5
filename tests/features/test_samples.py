"""The sample contract across versions: parts and messages written before `item_duration_ms`
and `history` existed still read, with the values they imply."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.errors import SampleLogError
from features.samples import (
    STAT_FEATURES,
    Sample,
    SampleBatch,
    decode_batch,
    read_sample_log,
    samples_table,
    write_sample_part,
)


def _sample(i: int, **kw: object) -> Sample:
    zeros = [0] * len(STAT_FEATURES)
    return Sample(
        f"s{i}", 1_000 + i, "u1", f"n{i}", "", "", "", -1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1.0,
        zeros, zeros, **kw,
    )  # fmt: skip


def test_a_part_from_before_the_new_columns_reads_with_their_defaults(tmp_path: Path) -> None:
    old = samples_table([_sample(0)]).drop_columns(["item_duration_ms", "history"])
    pq.write_table(old, tmp_path / "part-old.parquet")
    write_sample_part(tmp_path, "part-new.parquet", [_sample(1, item_duration_ms=9, history=["a"])])
    rows = read_sample_log(tmp_path).to_pylist()
    assert [(r["sample_id"], r["item_duration_ms"], r["history"]) for r in rows] == [
        ("s0", 0, []),
        ("s1", 9, ["a"]),
    ]


def test_a_part_missing_an_original_column_is_refused_by_name(tmp_path: Path) -> None:
    pq.write_table(
        samples_table([_sample(0)]).drop_columns(["user_id"]), tmp_path / "part-x.parquet"
    )
    with pytest.raises(SampleLogError, match="user_id"):
        read_sample_log(tmp_path)


def test_a_message_from_before_the_new_fields_decodes_with_their_defaults() -> None:
    batch = msgspec.to_builtins(SampleBatch("b", 0, 1_000, [_sample(0)]))
    for s in batch["samples"]:
        del s["item_duration_ms"], s["history"]
    got = decode_batch(msgspec.json.encode(batch)).samples[0]
    assert got.item_duration_ms == 0 and got.history == []
    assert pa.types.is_list(samples_table([got]).schema.field("history").type)


def test_sample_log_on_an_object_store_reads_back_whole(s3_url: str, tmp_path: Path) -> None:
    """Parts written to an s3:// log (the local S3-API server) read back as the same table as
    the same parts in a local directory, de-duplicated by sample id."""
    batch = [_sample(i) for i in range(30)]
    for where in (s3_url, tmp_path):
        write_sample_part(where, "part-a-000000.parquet", batch[:20])
        write_sample_part(where, "part-a-000001.parquet", batch[10:])  # 10 repeated
    got, want = read_sample_log(s3_url), read_sample_log(tmp_path)
    assert got.num_rows == 30
    assert got.equals(want)
    assert sorted(got.column("sample_id").to_pylist()) == sorted(s.sample_id for s in batch)
