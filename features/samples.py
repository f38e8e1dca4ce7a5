"""The training-sample contract and its stores: the `training-samples` codec and the parquet log.

A sample is one impression joined with the actions on the same (user, note, request) that
followed it within the attribution window. It carries the ID features, the labels, the negative
down-sampling keep-rate it survived, and the window statistics of its user and note as they were
at impression time (point-in-time: the impression's own events and anything later excluded).

On Kafka (`training-samples`) a message is one `SampleBatch` encoded as msgspec JSON, keyed by
the batch id; the parquet log holds the same fields, one row per sample (`SAMPLE_COLUMNS`).
`user_stats` / `note_stats` are the counts of `STAT_FEATURES`, in that order; serving reads the
same names from Feast, so a model sees the same inputs at training and at serving time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import msgspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.errors import SampleLogError
from features.paths import object_store
from features.schema import COUNTS
from features.windows import WINDOWS

SAMPLE_SCHEMA_VERSION: Final = 1
LABELS: Final = ("click", "like", "collect", "share", "comment", "follow")
"""Binary labels, 1 if the action followed the impression within the attribution window."""
STAT_FEATURES: Final = tuple(f"{m}_{w.name}" for w in WINDOWS for m in COUNTS)
"""Names of the window counts carried in `user_stats` / `note_stats` (Feast feature names)."""


class Sample(msgspec.Struct, frozen=True, gc=False):
    """One labelled impression."""

    sample_id: str
    """The impression's event_id (unique, deterministic across replays)."""
    ts: int
    """Impression event time, epoch ms."""
    user_id: str
    note_id: str
    author_id: str
    """"" when the impression carried none."""
    category: str
    """"" when the impression carried none."""
    request_id: str
    """"" when the impression carried none."""
    position: int
    """-1 when unknown."""
    click: int
    like: int
    collect: int
    share: int
    comment: int
    follow: int
    watch_ms: int
    """Total watch time of the plays that followed (0 if none)."""
    duration_ms: int
    """The note's duration from its plays or impression (0 if unknown)."""
    completion: int
    """1 if watch_ms >= 80 % of a known duration."""
    keep_rate: float
    """Probability with which this sample was kept (1.0 for positives, a for negatives)."""
    user_stats: list[int]
    """The user's `STAT_FEATURES` counts at impression time."""
    note_stats: list[int]
    """The note's `STAT_FEATURES` counts at impression time."""
    item_duration_ms: int = 0
    """The note's duration as the impression carried it (0 unknown): known before any action,
    so a model may read it (`duration_ms` may come from the plays, which follow the click)."""
    history: list[str] = msgspec.field(default_factory=list)
    """The user's most recently clicked notes before the impression, newest first (at most
    `SamplesConfig.history_len`; point-in-time like the statistics)."""


class SampleBatch(msgspec.Struct, frozen=True, gc=False):
    """A micro-batch of samples: one message on `training-samples`."""

    batch_id: str
    """Deterministic id (flow partition and sequence), so a replay produces the same ids."""
    created_ms: int
    """Wall time the batch was emitted, epoch ms (for freshness measurement)."""
    max_ts: int
    """Largest impression event time in the batch."""
    samples: list[Sample]
    v: int = SAMPLE_SCHEMA_VERSION


SAMPLE_COLUMNS: Final = tuple(Sample.__struct_fields__)
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(SampleBatch)


def encode_batch(batch: SampleBatch) -> bytes:
    """Encode a micro-batch for `training-samples`."""
    return _ENCODER.encode(batch)


def decode_batch(raw: bytes) -> SampleBatch:
    """Decode a `training-samples` message (raises `msgspec.ValidationError` if malformed)."""
    return _DECODER.decode(raw)


_BINARY = (*LABELS, "completion")
_TYPES = {
    **dict.fromkeys(
        ("sample_id", "user_id", "note_id", "author_id", "category", "request_id"), pa.string()
    ),
    **dict.fromkeys(_BINARY, pa.int8()),
    "keep_rate": pa.float64(),
    "user_stats": pa.list_(pa.int64()),
    "note_stats": pa.list_(pa.int64()),
    "history": pa.list_(pa.string()),
}
LOG_SCHEMA = pa.schema([(c, _TYPES.get(c, pa.int64())) for c in SAMPLE_COLUMNS])
"""Schema of the parquet log: `SAMPLE_COLUMNS`, binary labels as int8, stats as int64 lists."""


def samples_table(samples: list[Sample]) -> pa.Table:
    """One row per sample, in `LOG_SCHEMA`."""
    return pa.table(
        {c: [getattr(s, c) for s in samples] for c in SAMPLE_COLUMNS}, schema=LOG_SCHEMA
    )


def write_sample_part(directory: Path | str, name: str, samples: list[Sample]) -> None:
    """Write `samples` as the part file `name` of the log: aside, fsynced, then renamed in.

    A reader sees a part whole or not at all; writing the same name again replaces it. At an
    object-store URL (`s3://...`) the part is one object, put whole (no rename needed).
    """
    fs, path = object_store(directory)
    if fs is not None:
        with fs.open(f"{path}/{name}", "wb") as out:
            pq.write_table(samples_table(samples), out)
        return
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    aside = directory / f".{name}.tmp"
    pq.write_table(samples_table(samples), aside)
    with open(aside, "rb") as f:
        os.fsync(f.fileno())
    os.replace(aside, directory / name)


_ADDED: Final = {"item_duration_ms": 0, "history": []}
"""Columns added to the log after its first version, with the value older parts imply."""


def _conform(table: pa.Table, part: Path | str) -> pa.Table:
    """A part in `LOG_SCHEMA`: the columns added since it was written get their defaults."""
    if table.schema.names == LOG_SCHEMA.names:
        return table
    columns = []
    for f in LOG_SCHEMA:
        if f.name in table.schema.names:
            columns.append(table.column(f.name).cast(f.type))
        elif f.name in _ADDED:
            columns.append(pa.array([_ADDED[f.name]] * table.num_rows, f.type))
        else:
            raise SampleLogError(
                f"{part}: sample log part without column {f.name!r}; it was not written by "
                "streamrec's joiner - move it out of the log directory"
            )
    return pa.Table.from_arrays(columns, schema=LOG_SCHEMA)


def read_sample_log(directory: Path | str) -> pa.Table:
    """Read the parquet log, one row per sample id (the log is at-least-once; see the docs).

    Args:
        directory: the log's directory, or its fsspec URL (`s3://bucket/prefix`).
    """
    fs, path = object_store(directory)
    if fs is None:
        parts = sorted(Path(path).glob("part-*.parquet"))
        tables = [_conform(pq.read_table(p), p) for p in parts]
    else:
        fs.invalidate_cache(path)
        parts = sorted(fs.glob(f"{path}/part-*.parquet"))
        tables = [_conform(pq.read_table(p, filesystem=fs), p) for p in parts]
    if not tables:
        return samples_table([])
    table = pa.concat_tables(tables)
    first = ~pd.Series(table.column("sample_id").to_numpy(zero_copy_only=False)).duplicated()
    table = table.filter(pa.array(first.to_numpy()))
    return table.sort_by([("ts", "ascending"), ("sample_id", "ascending")])
