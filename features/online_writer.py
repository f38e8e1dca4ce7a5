"""Write rows into Feast's Redis online store, byte for byte as Feast does, much faster.

Feast's `push` converts every value to a protobuf object in Python and reads each entity's stored
timestamp before writing it (about 7k rows/s here). This writer produces the same Redis keys,
hash fields and value bytes - entity keys through Feast's own `serialize_entity_key` (cached per
id), field names through Feast's own `_mmh3`, values in the protobuf wire format of `ValueProto`
(int64_val, double_val) and the `_ts:<view>` field with Feast's `Timestamp` - but encodes whole
columns with numpy and sends one pipelined round trip per call, built as raw Redis protocol.
`tests/features/test_online_writer.py` proves the bytes identical to `store.push()`'s.

Unlike `push`, it does not read the stored timestamp first: the stats job writes aggregates in
event-time order, so the last write is the newest and last-write-wins is what a read-first check
would also decide - at one round trip instead of two.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import redis
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from google.protobuf.timestamp_pb2 import Timestamp

from features.errors import FeaturesError
from features.schema import ENTITY_KEY, feature_types

_INT64_TAG, _DOUBLE_TAG = 0x20, 0x29  # ValueProto fields 4 (varint) and 5 (fixed64)
_CRLF = np.frombuffer(b"\r\n", dtype=np.uint8)


class _Parts:
    """Columns of padded byte strings; `bytes()` concatenates the valid bytes row by row."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.data: list[np.ndarray] = []
        self.lens: list[np.ndarray] = []

    def const(self, value: bytes) -> None:
        arr = np.frombuffer(value, dtype=np.uint8)
        self.data.append(np.broadcast_to(arr, (self.rows, len(arr))))
        self.lens.append(np.full(self.rows, len(arr)))

    def var(self, data: np.ndarray, lens: np.ndarray) -> None:
        self.data.append(data)
        self.lens.append(lens)

    def bytes(self) -> bytes:
        data = np.concatenate(self.data, axis=1)  # (R, total width)
        mask = np.concatenate(
            [np.arange(d.shape[1]) < n[:, None] for d, n in zip(self.data, self.lens, strict=True)],
            axis=1,
        )
        return data[mask].tobytes()


def _int64_values(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ValueProto(int64_val=v) bytes of each value: (R, 11) padded, and lengths."""
    v = values.astype(np.int64).view(np.uint64)
    groups = np.stack([(v >> np.uint64(7 * j)) & np.uint64(0x7F) for j in range(10)], axis=1)
    more = np.stack([(v >> np.uint64(7 * j)) != 0 for j in range(1, 10)], axis=1)
    length = 1 + more.sum(axis=1)  # varint bytes, 1..10
    cont = np.arange(10)[None, :] < (length - 1)[:, None]
    out = np.zeros((len(v), 11), dtype=np.uint8)
    out[:, 0] = _INT64_TAG
    out[:, 1:] = (groups | (cont.astype(np.uint64) << np.uint64(7))).astype(np.uint8)
    return out, length + 1


def _double_values(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ValueProto(double_val=v) bytes of each value: (R, 9), all 9 long."""
    out = np.empty((len(values), 9), dtype=np.uint8)
    out[:, 0] = _DOUBLE_TAG
    out[:, 1:] = values.astype("<f8").view(np.uint8).reshape(-1, 8)
    return out, np.full(len(values), 9)


def _bulk_len(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RESP `$<n>\\r\\n` headers for bulk strings of the given lengths (n < 100)."""
    tens, ones = lengths // 10, lengths % 10
    two = tens > 0
    out = np.zeros((len(lengths), 5), dtype=np.uint8)
    out[:, 0] = ord("$")
    out[:, 1] = np.where(two, ord("0") + tens, ord("0") + ones)
    out[:, 2] = np.where(two, ord("0") + ones, ord("\r"))
    out[:, 3] = np.where(two, ord("\r"), ord("\n"))
    out[:, 4] = ord("\n")
    return out, np.where(two, 5, 4)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class OnlineWriter:
    """Writes feature rows of the repository's views into Feast's Redis online store."""

    def __init__(
        self,
        client: redis.Redis,
        project: str,
        key_ttl_seconds: int | None = None,
        cache_size: int = 1_000_000,
    ) -> None:
        self._client = client
        self._project = project.encode()
        self._ttl = key_ttl_seconds
        self._cache_size = cache_size
        self._keys: dict[tuple[str, str], bytes] = {}
        self._fields = {
            view: {name: _mmh3(f"{view}:{name}") for name in feature_types(view)}
            for view in ENTITY_KEY
        }

    def redis_key(self, view: str, entity_id: str) -> bytes:
        """Feast's Redis key of an entity (serialized entity key + project)."""
        cached = self._keys.get((view, entity_id))
        if cached is None:
            proto = EntityKeyProto(
                join_keys=[ENTITY_KEY[view]], entity_values=[ValueProto(string_val=entity_id)]
            )
            cached = serialize_entity_key(proto, entity_key_serialization_version=3)
            cached += self._project
            if len(self._keys) >= self._cache_size:
                self._keys.clear()
            self._keys[(view, entity_id)] = cached
        return cached

    def encode(
        self, view: str, entity_ids: Sequence[str], columns: dict[str, np.ndarray], event_ts_ms: int
    ) -> bytes:
        """Return the Redis protocol bytes of one HSET per entity (and EXPIRE with a TTL)."""
        fields = self._fields.get(view)
        if fields is None:
            raise FeaturesError(
                f"unknown feature view {view!r}; expected one of {list(ENTITY_KEY)}"
            )
        missing = set(fields) - set(columns)
        if missing:
            raise FeaturesError(f"{view}: columns missing: {sorted(missing)[:5]} ...")
        rows = len(entity_ids)
        stamp = Timestamp()
        stamp.FromMilliseconds(int(event_ts_ms))
        ts_pair = _bulk(b"_ts:" + view.encode()) + _bulk(stamp.SerializeToString())
        argc = b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * (len(fields) + 1))
        keys = [self.redis_key(view, i) for i in entity_ids]
        heads = [argc + _bulk(k) + ts_pair for k in keys]
        width = max(len(h) for h in heads)
        parts = _Parts(rows)
        parts.var(
            np.frombuffer(b"".join(h.ljust(width, b"\0") for h in heads), dtype=np.uint8).reshape(
                rows, width
            ),
            np.fromiter((len(h) for h in heads), dtype=np.int64, count=rows),
        )
        kinds = feature_types(view)
        for name, field in fields.items():
            parts.const(_bulk(field))
            encode = _int64_values if kinds[name] == "int64" else _double_values
            values, lengths = encode(np.asarray(columns[name]))
            parts.var(*_bulk_len(lengths))
            parts.var(values, lengths)
            parts.var(np.broadcast_to(_CRLF, (rows, 2)), np.full(rows, 2))
        payload = parts.bytes()
        if self._ttl:
            payload += b"".join(
                b"*3\r\n$6\r\nEXPIRE\r\n" + _bulk(k) + _bulk(str(self._ttl).encode()) for k in keys
            )
        return payload

    def write(
        self, view: str, entity_ids: Sequence[str], columns: dict[str, np.ndarray], event_ts_ms: int
    ) -> None:
        """Write one row per entity, valid as of `event_ts_ms`, in one round trip."""
        if not len(entity_ids):
            return
        payload = self.encode(view, entity_ids, columns, event_ts_ms)
        replies = len(entity_ids) * (2 if self._ttl else 1)
        pool = self._client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([payload])
            errors = []
            for _ in range(replies):
                try:
                    conn.read_response()
                except redis.ResponseError as exc:
                    errors.append(exc)
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        if errors:
            raise FeaturesError(f"Redis refused {len(errors)} of {replies} writes: {errors[0]}")
