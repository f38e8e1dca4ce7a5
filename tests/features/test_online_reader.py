"""The batched reader returns exactly what Feast's `get_online_features` returns."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from features.errors import FeaturesError
from features.online_reader import OnlineReader, decode_values
from features.online_writer import OnlineWriter
from features.schema import feature_types
from features.store import apply_definitions, feature_store, online_features


@pytest.mark.parametrize("view", ["user_stats", "note_stats"])
def test_reader_equals_get_online_features(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, view: str
) -> None:
    store = feature_store(redis_url, f"p{uuid.uuid4().hex[:8]}", tmp_path)
    apply_definitions(store, tmp_path)
    rng = np.random.default_rng(3)
    names = list(feature_types(view))
    stored = [f"e{i}" for i in range(30)]
    edge_ints = np.array([0, 1, -1, 127, 128, 300, 2**31, -(2**40), 2**62, 2**63 - 1])
    edge_floats = np.array([0.0, -0.0, 1.5, -2.25, 1e-300, 1e300, np.inf, -np.inf, 0.1, 7.0])
    cols = {
        n: np.concatenate(
            [
                edge_ints if k == "int64" else edge_floats,
                rng.integers(0, 10**9, 20) if k == "int64" else rng.random(20) * 100,
            ]
        )
        for n, k in feature_types(view).items()
    }
    OnlineWriter(redis_client, store.project).write(view, stored, cols, 1_767_225_600_123)
    ids = [*stored[:20], "never-written", *stored[20:]]

    values, stamps = OnlineReader(redis_client, store.project).read(view, ids, names)

    feast = online_features(store, view, ids)
    for j, name in enumerate(names):
        expected = [np.nan if v is None else float(v) for v in feast[name]]
        np.testing.assert_array_equal(values[:, j], expected, err_msg=name)
        assert [np.signbit(v) for v in values[:, j]] == [np.signbit(v) for v in expected]
    assert stamps[20] == -1
    assert set(stamps[np.arange(len(ids)) != 20]) == {1_767_225_600_123}


def test_unknown_feature_is_named(redis_client: redis.Redis) -> None:
    with pytest.raises(FeaturesError, match="no_such_feature"):
        OnlineReader(redis_client, "p").read("note_stats", ["n1"], ["no_such_feature"])


def _row_decoder(raw: list[bytes | None]) -> np.ndarray:
    """The previous decoder: every value laid in an 11-byte row (kept as the oracle)."""
    out = np.full(len(raw), np.nan)
    present = [j for j, v in enumerate(raw) if v]
    if not present:
        return out
    values = [raw[j] for j in present]
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    data = np.frombuffer(b"".join(values), dtype=np.uint8)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    offsets = np.arange(11)
    inside = offsets[None, :] < np.minimum(lengths, 11)[:, None]
    index = np.where(inside, starts[:, None] + offsets[None, :], 0)
    rows = np.where(inside, data[index], 0).astype(np.uint8)  # (M, 11)
    tag = rows[:, 0]
    result = np.full(len(values), np.nan)
    ints = (tag == 0x20) & (lengths <= 11)
    if ints.any():
        b = rows[ints, 1:].astype(np.uint64)  # (I, 10)
        cont = (b & np.uint64(0x80)) != 0
        live = np.concatenate([np.ones((len(b), 1), bool), np.cumprod(cont[:, :-1], axis=1)], 1)
        groups = (
            (b & np.uint64(0x7F)) << (np.arange(10, dtype=np.uint64) * np.uint64(7))
        ) * live.astype(np.uint64)
        result[ints] = np.bitwise_or.reduce(groups, axis=1).view(np.int64)
    doubles = (tag == 0x29) & (lengths == 9)
    if doubles.any():
        result[doubles] = np.ascontiguousarray(rows[doubles, 1:9]).view("<f8")[:, 0]
    other = np.flatnonzero(~(ints | doubles))
    for k in other.tolist():
        v = ValueProto.FromString(values[k])
        kind = v.WhichOneof("val")
        if kind is not None:
            result[k] = getattr(v, kind)
    out[present] = result
    return out


def test_decode_values_equals_value_proto_and_the_previous_decoder() -> None:
    """Every kind of stored value decodes to what `ValueProto` holds, and int64 / double values
    to what the previous decoder gave (NaN for nothing stored or an empty `ValueProto`)."""
    rng = np.random.default_rng(11)
    ints = [0, 1, -1, 127, 128, 16_383, 16_384, 2**31, -(2**40), 2**62, 2**63 - 1, -(2**63)]
    ints += rng.integers(-(2**63), 2**63 - 1, 200).tolist() + rng.integers(0, 300, 500).tolist()
    doubles = [0.0, -0.0, 1.5, -2.25, 1e-300, 1e300, np.inf, -np.inf, np.nan, 0.1]
    doubles += (rng.normal(size=100) * 1e6).tolist()
    protos = [ValueProto(int64_val=v) for v in ints] + [ValueProto(double_val=v) for v in doubles]
    others = [
        ValueProto(int32_val=-7), ValueProto(float_val=2.5), ValueProto(bool_val=True),
        ValueProto(),
    ]  # fmt: skip
    raw: list[bytes | None] = [p.SerializeToString() for p in [*protos, *others]]
    raw += [None, b""]
    order = rng.permutation(len(raw))
    raw = [raw[k] for k in order]

    got = decode_values(raw)

    want = []
    for r in raw:
        value = ValueProto.FromString(r or b"")
        kind = value.WhichOneof("val")
        want.append(np.nan if kind is None else float(getattr(value, kind)))
    np.testing.assert_array_equal(got, np.array(want))
    assert np.array_equal(np.signbit(got), np.signbit(want))
    numeric = [k for k, r in enumerate(raw) if r and r[0] in (0x20, 0x29)]
    previous = _row_decoder([raw[k] for k in numeric])
    np.testing.assert_array_equal(got[numeric], previous)
    assert np.array_equal(np.signbit(got[numeric]), np.signbit(previous))
    assert np.isnan(decode_values([None, b"", None])).all() and not len(decode_values([]))
