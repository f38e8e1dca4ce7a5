"""Per-user, time-sliced Bloom filters of what a user was shown, in plain Redis.

Layout of a namespace `ns` (all plain Redis types, no module needed):

- `{ns}:meta`: a hash with the layout (`FilterLayout`: slice length, live slices, bits and hash
  count of one slice filter, the hash function), written once by the first writer, so a reader
  needs no configuration file;
- `{ns}:hwm`: the writers' event-time high-water mark (epoch ms; only ever grows);
- `ns:x:{<user_id>}:<slice>`: the Bloom filter of a user and a slice of event time
  (`slice = ts // slice_ms`), a string of one or more segments of `bits / 8` bytes. Bits go to
  the last segment; once it holds `fill_limit` set bits (its fill at the design load) the next
  impressions start a new segment, up to `max_segments` (a scalable Bloom filter, Almeida et al.
  2007): a user shown three times the design load on one day costs three segments that day
  instead of a saturated filter that reports most candidates as seen for a month.

Keys are hash-tagged for Redis Cluster: `{ns}` puts the layout and the mark in one slot, `{user}`
puts all of a user's slices in one slot.

Writes: the client ORs each batch's bits per key into a delta bitmap (numpy); one Lua call per
`keys_per_call` keys ORs the deltas in (`BITOP OR`), refreshes the TTLs and raises the
high-water mark - measured 6-7x faster than pipelined `BITFIELD SET` (docs/benchmarks.md). On a
Redis Cluster a script may only touch keys of one slot: the same script runs once per slot (a
user's slices), pipelined per node, and the mark is raised after all of them.

A query at high-water mark `H` reads the slices `H // slice_ms - slices + 1 .. H // slice_ms`:
an impression is remembered for at least `retention - slice_ms` and at most `retention` of event
time. Redis TTLs are only a garbage collector: a slice key expires `gc_slack_ms` of wall-clock
time after the event time at which it stops being read, counted from the high-water mark when
it was written - so a replay of 1998 impressions does not expire on arrival.

Bit positions are enhanced double hashing (Dillinger & Manolios) of MurmurHash3 x64-128 of the
UTF-8 note id: `g_i = (h1 + i h2 + (i^3 - i) / 6) mod bits`, with `h1, h2` the two little-endian
64-bit halves reduced mod `bits`, and bit `g` is Redis bit `g` (byte `g // 8`, MSB first).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import mmh3
import numpy as np
import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from redis.crc import key_slot

from features.errors import ExposureError
from features.redis_conn import Client, fan_out, is_cluster, node_client

logger = logging.getLogger(__name__)

LAYOUT_VERSION = 2
"""2: keys hash-tagged for Redis Cluster (`{ns}:meta`, `ns:x:{user}:slice`)."""
HASH_NAME = "murmur3_x64_128+enhanced_double_hashing"


class ExposureConfig(BaseModel):
    """Settings of the exposure job: time-sliced per-user Bloom filters in Redis."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    namespace: str = Field(default="exposure", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    """Redis key prefix of the filters, their sizing and the job's event-time high-water mark."""
    retention_ms: int = Field(default=30 * 86_400_000, gt=0)
    """How long an impression is remembered, in event time (a whole number of slices)."""
    slice_ms: int = Field(default=86_400_000, gt=0)
    """Event-time length of one slice (one Bloom filter per user per slice)."""
    expected_items: int = Field(default=3_000, ge=1)
    """Design load: impressions per user per retention window the filters are sized for."""
    fp_rate: float = Field(default=0.01, gt=0, lt=0.5)
    """Target false-positive rate of a query over all live slices at the design load."""
    gc_slack_ms: int = Field(default=2 * 86_400_000, ge=0)
    """Redis TTL slack: a slice key lives this long (wall clock) after it can last be read."""
    max_segments: int = Field(default=8, ge=1, le=1_024)
    """A user's slice that fills past its design load grows by another filter segment, up to
    this many (a scalable Bloom filter: the false-positive rate of a heavy day stays bounded)."""
    keys_per_call: int = Field(default=2_000, ge=1)
    """Most slice keys one Lua call updates, bounding how long Redis is busy."""

    @model_validator(mode="after")
    def _whole_slices(self) -> ExposureConfig:
        if self.retention_ms % self.slice_ms:
            raise ValueError(
                f"retention_ms ({self.retention_ms}) must be a whole number of slice_ms "
                f"({self.slice_ms})"
            )
        return self

    @property
    def slices(self) -> int:
        """Number of live slices a query reads."""
        return self.retention_ms // self.slice_ms


class FilterLayout(BaseModel):
    """The sizing and retention of a namespace, as stored in `<ns>:meta`."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    version: int = LAYOUT_VERSION
    """Layout version of the keys."""
    hash: str = HASH_NAME
    """How note ids map to bit positions."""
    slice_ms: int = Field(gt=0)
    """Event-time length of one slice."""
    slices: int = Field(ge=1)
    """Number of live slices a query reads (retention = slices x slice_ms)."""
    bits: int = Field(ge=64, le=2**32, multiple_of=8)
    """Bits of one slice filter."""
    hashes: int = Field(ge=1, le=64)
    """Bits set per impression (number of hash functions)."""
    expected_items: int = Field(ge=1)
    """Design load: impressions per user per retention window."""
    fp_rate: float = Field(gt=0, lt=1)
    """Configured false-positive rate of a query at the design load."""
    design_fp: float = Field(ge=0, lt=1)
    """False-positive rate the chosen sizing predicts at the design load."""
    fill_limit: int = Field(ge=1)
    """Set bits at which a slice segment counts as full (its fill at the design load); later
    impressions of that user and slice go to a new segment appended to the same key."""
    max_segments: int = Field(ge=1, le=1_024)
    """Most segments per slice; past it the last segment keeps filling."""

    @property
    def retention_ms(self) -> int:
        """Event-time retention."""
        return self.slices * self.slice_ms

    @property
    def bits_per_item(self) -> float:
        """Filter bits per impression at the design load."""
        return self.slices * self.bits / self.expected_items


def layout_for(config: ExposureConfig) -> FilterLayout:
    """Size the slice filters so a query over all live slices meets `config.fp_rate`.

    Each of the S live slices is sized for `expected_items / S` impressions at the per-slice
    rate f with 1 - (1 - f)^S = fp_rate (a query asks every slice); m = -n ln f / ln(2)^2 bits
    rounded up to whole 64-bit words, k = round(m / n ln 2).
    """
    slices = config.slices
    per_slice = math.ceil(config.expected_items / slices)
    f = 1.0 - (1.0 - config.fp_rate) ** (1.0 / slices)
    bits = 64 * math.ceil(-per_slice * math.log(f) / math.log(2) ** 2 / 64)
    hashes = max(1, round(bits / per_slice * math.log(2)))
    fill = 1.0 - math.exp(-hashes * per_slice / bits)
    slice_fp = fill**hashes
    return FilterLayout(
        slice_ms=config.slice_ms,
        slices=slices,
        bits=bits,
        hashes=hashes,
        expected_items=config.expected_items,
        fp_rate=config.fp_rate,
        design_fp=1.0 - (1.0 - slice_fp) ** slices,
        fill_limit=math.ceil(fill * bits),
        max_segments=config.max_segments,
    )


def meta_key(namespace: str) -> str:
    """Key of a namespace's layout hash (slot of `{namespace}`, with the mark)."""
    return f"{{{namespace}}}:meta"


def hwm_key(namespace: str) -> str:
    """Key of a namespace's event-time high-water mark (epoch ms; slot of `{namespace}`)."""
    return f"{{{namespace}}}:hwm"


def slice_prefix(namespace: str, user_id: str) -> str:
    """Prefix of a user's slice keys (the slice number follows); `{user_id}` is the hash tag
    that keeps a user's slices in one cluster slot."""
    return f"{namespace}:x:{{{user_id}}}:"


def bit_positions(note_ids: Sequence[str], bits: int, hashes: int) -> np.ndarray:
    """Bit positions of each note id in a filter of `bits` bits.

    Returns:
        int64 array of shape (len(note_ids), hashes).
    """
    raw = b"".join(map(mmh3.hash_bytes, note_ids))
    h = (np.frombuffer(raw, dtype="<u8").reshape(-1, 2) % np.uint64(bits)).astype(np.int64)
    i = np.arange(hashes, dtype=np.int64)
    return (h[:, :1] + i * h[:, 1:] + (i**3 - i) // 6) % bits  # (n, hashes)


def _check_client(client: Client) -> None:
    if client.get_connection_kwargs().get("decode_responses"):
        raise ExposureError(
            "the exposure filter reads binary bitmaps: pass a redis client created with "
            "decode_responses=False"
        )


def _read_layout(pairs: Sequence[bytes], namespace: str) -> FilterLayout:
    fields = {pairs[i].decode(): pairs[i + 1].decode() for i in range(0, len(pairs), 2)}
    try:
        return FilterLayout.model_validate(fields)
    except ValidationError as exc:
        raise ExposureError(
            f"{meta_key(namespace)} does not hold a readable exposure layout: {exc}"
        ) from exc


def _raise_hwm_lua(key: str) -> str:
    """Lua that raises the high-water mark at `key` to ARGV[1] (never lowers it) and returns
    the mark."""
    return f"""local current = tonumber(redis.call('GET', {key}) or '-1')
if tonumber(ARGV[1]) > current then
  redis.call('SET', {key}, ARGV[1])
  return ARGV[1]
end
return redis.call('GET', {key})
"""


_SLICES_LUA = """
local function write_slices(tmp, first)
  local width = tonumber(ARGV[2])
  local limit, most = tonumber(ARGV[3]), tonumber(ARGV[4])
  for i = first, #KEYS do
    local j = 5 + 2 * (i - first)
    local key = KEYS[i]
    local at = math.floor(redis.call('STRLEN', key) / width) - 1
    if at < 0 then
      at = 0
    elseif at + 1 < most and
        redis.call('BITCOUNT', key, at * width, at * width + width - 1) >= limit then
      at = at + 1
    end
    if at == 0 then
      redis.call('SET', tmp, ARGV[j + 1])
    else
      redis.call('SET', tmp, string.rep('\\0', at * width) .. ARGV[j + 1])
    end
    redis.call('BITOP', 'OR', key, key, tmp)
    redis.call('PEXPIRE', key, ARGV[j])
  end
  redis.call('DEL', tmp)
end
"""
"""ORs each slice key's delta (ARGV: newest, width, fill limit, most segments, then a TTL and a
delta per key) into its last segment, or a new one when that is full; `tmp` is a scratch key."""

_WRITE_LUA = (
    _SLICES_LUA
    + """
if redis.call('EXISTS', KEYS[3]) == 0 then return -2 end
write_slices(KEYS[1], 4)
"""
    + _raise_hwm_lua("KEYS[2]")
)
"""Single Redis: every slice key of the call (KEYS[4..]), the mark (KEYS[2]) raised after."""

_SLOT_WRITE_LUA = _SLICES_LUA + "write_slices(KEYS[1], 2)\nreturn 1\n"
"""Redis Cluster: the slice keys of one slot (KEYS[2..]) and a scratch key of that slot."""

_LAYOUT_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
return {redis.call('HGETALL', KEYS[1]), redis.call('GET', KEYS[2])}
"""

_HWM_LUA = "\nif redis.call('EXISTS', KEYS[2]) == 0 then return -2 end\n" + _raise_hwm_lua(
    "KEYS[1]"
)
_LOST = -2
"""What the write scripts answer when `<ns>:meta` is gone (Redis lost its data): the writer
stores its layout again and repeats the call."""

_READ_LUA = """
local meta = redis.call('HGETALL', KEYS[1])
if #meta == 0 then return {} end
local hwm = redis.call('GET', KEYS[2])
if not hwm then return {meta} end
local slice_ms, slices
for i = 1, #meta, 2 do
  if meta[i] == 'slice_ms' then slice_ms = tonumber(meta[i + 1]) end
  if meta[i] == 'slices' then slices = tonumber(meta[i + 1]) end
end
local newest = math.floor(tonumber(hwm) / slice_ms)
local keys = {}
for i = 0, slices - 1 do
  keys[i + 1] = ARGV[1] .. string.format('%d', newest - i)
end
return {meta, hwm, redis.call('MGET', unpack(keys))}
"""


class ExposureWriter:
    """Sets the Bloom bits of impressions, a batch at a time (idempotent: bits are ORed in).

    Args:
        client: a redis client (decode_responses=False).
        config: namespace, retention and sizing; the first writer stores the layout in Redis,
            later writers must agree with it.
    """

    def __init__(self, client: Client, config: ExposureConfig) -> None:
        _check_client(client)
        self._client, self._config = client, config
        self.layout = layout_for(config)
        self._ns = config.namespace
        self._write = client.register_script(_WRITE_LUA)
        self._slot_write = client.register_script(_SLOT_WRITE_LUA)
        self._max = client.register_script(_HWM_LUA)
        self._hwm = self._ensure_layout()

    def _ensure_layout(self) -> int:
        fields = [x for kv in self.layout.model_dump().items() for x in (kv[0], str(kv[1]))]
        stored, hwm = self._client.eval(
            _LAYOUT_LUA, 2, meta_key(self._ns), hwm_key(self._ns), *fields
        )
        current = _read_layout(stored, self._ns)
        if current != self.layout:
            raise ExposureError(
                f"namespace {self._ns!r} already holds filters with layout "
                f"{current.model_dump()}, but this config asks for {self.layout.model_dump()}: "
                "use the stored settings or a new `exposure.namespace`"
            )
        return int(hwm) if hwm is not None else -1

    @property
    def hwm(self) -> int:
        """The event-time high-water mark this writer last saw in Redis (-1 before any write)."""
        return self._hwm

    def add_batch(
        self,
        users: Sequence[str],
        notes: Sequence[str],
        ts: Sequence[int] | np.ndarray,
        as_of: int | None = None,
    ) -> int:
        """Record that `users[i]` was shown `notes[i]` at event time `ts[i]` (epoch ms).

        Impressions already outside the retention window (relative to the high-water mark
        including this batch) are skipped: no query would read their slice.

        Args:
            as_of: the flow's event-time clock after this batch, when it saw later events than
                these impressions (other event types); the high-water mark becomes at least it.

        Returns:
            The number of impressions whose bits were set.
        """
        ts = np.asarray(ts, dtype=np.int64)
        newest = max(self._hwm, int(ts.max()) if len(ts) else -1, -1 if as_of is None else as_of)
        if len(ts) == 0:
            if newest > self._hwm:
                self._hwm = self._raise_hwm(newest)
            return 0
        layout = self.layout
        slice_of = (ts // layout.slice_ms).tolist()
        live_from = newest // layout.slice_ms - layout.slices + 1
        prefix = f"{self._ns}:x:"
        index: dict[str, int] = {}
        key_slices: list[int] = []
        groups: list[int] = []
        kept: list[str] = []
        for user, note, s in zip(users, notes, slice_of, strict=True):
            if s < live_from:
                continue
            key = f"{prefix}{{{user}}}:{s}"
            g = index.get(key)
            if g is None:
                g = index[key] = len(key_slices)
                key_slices.append(s)
            groups.append(g)
            kept.append(note)
        if not kept:
            self._hwm = self._raise_hwm(newest)
            return 0
        gid = np.asarray(groups, dtype=np.int64)
        positions = bit_positions(kept, layout.bits, layout.hashes)  # (n, hashes)
        order = np.argsort(gid, kind="stable")
        gid, positions = gid[order], positions[order]
        keys = list(index)
        ttl = (np.asarray(key_slices, dtype=np.int64) + layout.slices) * layout.slice_ms
        ttl = (ttl - newest + self._config.gc_slack_ms).tolist()
        step = self._config.keys_per_call
        hwm = newest
        for lo in range(0, len(keys), step):
            hi = min(lo + step, len(keys))
            a, b = np.searchsorted(gid, [lo, hi])
            bitmap = np.zeros((hi - lo, layout.bits), dtype=bool)  # (groups, bits)
            bitmap[gid[a:b, None] - lo, positions[a:b]] = True
            hwm = self._write_lua(keys[lo:hi], ttl[lo:hi], bitmap, newest)
        self._hwm = max(hwm, newest)
        return len(kept)

    def _write_lua(self, keys: list[str], ttl: list[int], bitmap: np.ndarray, newest: int) -> int:
        packed = np.packbits(bitmap, axis=1).tobytes()  # Redis bit order: MSB first
        width = self.layout.bits // 8
        head: list[object] = [newest, width, self.layout.fill_limit, self.layout.max_segments]
        if is_cluster(self._client):
            self._write_slots(keys, ttl, packed, head)
            return self._raise_hwm(newest)
        args = list(head)
        for j, t in enumerate(ttl):
            args += (t, packed[j * width : (j + 1) * width])
        keys = [f"{{{self._ns}}}:tmp", hwm_key(self._ns), meta_key(self._ns), *keys]
        reply = int(self._write(keys=keys, args=args))
        if reply == _LOST:
            self._relayout()
            reply = int(self._write(keys=keys, args=args))
        return reply

    def _write_slots(
        self, keys: list[str], ttl: list[int], packed: bytes, head: list[object]
    ) -> None:
        """Redis Cluster: one script call per slot (a user's slices), pipelined per node."""
        width = self.layout.bits // 8
        by_slot: dict[int, list[int]] = {}
        for j, key in enumerate(keys):
            by_slot.setdefault(key_slot(key.encode()), []).append(j)
        pipes: dict[int, redis.client.Pipeline] = {}
        for idx in by_slot.values():
            node = node_client(self._client, keys[idx[0]])
            pipe = pipes.get(id(node))
            if pipe is None:
                pipe = pipes[id(node)] = node.pipeline(transaction=False)
            args = list(head)
            for j in idx:
                args += (ttl[j], packed[j * width : (j + 1) * width])
            call_keys = [f"{keys[idx[0]]}:tmp", *(keys[j] for j in idx)]
            self._slot_write(keys=call_keys, args=args, client=pipe)
        for pipe in pipes.values():
            pipe.execute()

    def _raise_hwm(self, newest: int) -> int:
        keys = [hwm_key(self._ns), meta_key(self._ns)]
        reply = int(self._max(keys=keys, args=[newest]))
        if reply == _LOST:
            self._relayout()
            reply = int(self._max(keys=keys, args=[newest]))
        return reply

    def _relayout(self) -> None:
        logger.warning(
            "exposure namespace %r lost its layout (Redis restarted empty?): storing it again; "
            "impressions written before the loss are gone - replay them with `streamrec run "
            "exposure --until-end` from the start of the topic (docs/operations.md)",
            self._ns,
        )
        self._ensure_layout()


class ExposureFilter:
    """Answers "which of these notes has this user been shown?" in one Redis round trip.

    The layout and the high-water mark are read from Redis with the slices, so a reader needs no
    configuration and always agrees with the writers' clock. On a single Redis one Lua call
    reads them all (it computes the slice keys itself). On a Redis Cluster the user's slices
    live in another slot than the mark: the reader keeps the layout (read once) and the last
    mark it saw, and sends `GET` of the mark and `MGET` of the slices that mark names to both
    nodes at once - one round trip, plus a second `MGET` only when the mark has entered a new
    slice since (once a slice length).

    Args:
        client: a redis client (decode_responses=False).
        namespace: the key prefix the exposure job writes (`exposure.namespace`).
    """

    def __init__(self, client: Client, namespace: str = "exposure") -> None:
        _check_client(client)
        self._client, self._ns = client, namespace
        self._read = client.register_script(_READ_LUA)
        self._known: tuple[FilterLayout, int] | None = None
        """Cluster: the layout and the last mark read."""

    def seen(self, user_id: str, note_ids: Sequence[str]) -> list[bool]:
        """For each note id, whether `user_id` was shown it within the retention window.

        Never a false negative; false positives at about the configured rate.

        Raises:
            ExposureError: the namespace holds no filters (the exposure job never ran on it).
        """
        if len(note_ids) == 0:
            return []
        if is_cluster(self._client):
            layout, stored = self._slices_on_cluster(user_id)
        else:
            reply = self._read(
                keys=[meta_key(self._ns), hwm_key(self._ns)],
                args=[slice_prefix(self._ns, user_id)],
            )
            if not reply:
                raise self._missing()
            layout = _read_layout(reply[0], self._ns)
            stored = reply[2] if len(reply) > 2 else []
        blobs = [b for b in stored if b]
        if not blobs:
            return [False] * len(note_ids)
        width = layout.bits // 8
        joined = b"".join(b.ljust(-(-len(b) // width) * width, b"\0") for b in blobs)
        filters = np.frombuffer(joined, dtype=np.uint8).reshape(-1, width)  # (segments, bytes)
        positions = bit_positions(note_ids, layout.bits, layout.hashes)
        return _contains(filters, positions).tolist()

    def _missing(self) -> ExposureError:
        return ExposureError(
            f"no exposure filters in namespace {self._ns!r} on this Redis: run "
            "`streamrec run exposure` (or check the namespace)"
        )

    def _slice_keys(self, layout: FilterLayout, hwm: int, user_id: str) -> list[str]:
        newest = hwm // layout.slice_ms
        prefix = slice_prefix(self._ns, user_id)
        return [f"{prefix}{newest - i}" for i in range(layout.slices)]

    def _slices_on_cluster(self, user_id: str) -> tuple[FilterLayout, list[bytes | None]]:
        """The layout and the user's live slices on a Redis Cluster (see the class)."""
        if self._known is None:
            meta, hwm = fan_out(
                self._client, [("HGETALL", meta_key(self._ns)), ("GET", hwm_key(self._ns))]
            )
            if not meta:
                raise self._missing()
            self._known = (_read_layout(meta, self._ns), -1 if hwm is None else int(hwm))
        layout, hwm = self._known
        keys = self._slice_keys(layout, hwm, user_id)
        raw, stored = fan_out(self._client, [("GET", hwm_key(self._ns)), ("MGET", *keys)])
        if raw is None:  # Redis lost the namespace (or it was never written): read it again
            self._known = None
            return layout, []
        fresh = int(raw)
        self._known = (layout, fresh)
        if fresh // layout.slice_ms != hwm // layout.slice_ms:
            (stored,) = fan_out(self._client, [("MGET", *self._slice_keys(layout, fresh, user_id))])
        return layout, stored

    def unseen(self, user_id: str, candidates: Sequence[str]) -> list[str]:
        """The candidates `user_id` has not been shown (in order), in one round trip."""
        return [c for c, s in zip(candidates, self.seen(user_id, candidates), strict=True) if not s]

    def describe(self) -> tuple[FilterLayout, int | None]:
        """The stored layout and high-water mark (None before the first write).

        Raises:
            ExposureError: the namespace holds no filters.
        """
        pipe = self._client.pipeline(transaction=False)
        pipe.hgetall(meta_key(self._ns))
        pipe.get(hwm_key(self._ns))
        meta, hwm = pipe.execute()
        if not meta:
            raise ExposureError(
                f"no exposure filters in namespace {self._ns!r} on this Redis: run "
                "`streamrec run exposure` (or check the namespace)"
            )
        pairs = [x for kv in meta.items() for x in kv]
        return _read_layout(pairs, self._ns), int(hwm) if hwm is not None else None


def _contains(filters: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Whether each item has all its bits set in at least one filter.

    Transposes the filters into bit-sliced lanes (lane p holds bit p of every filter, filter r
    at lane bit r), so an item costs one AND over its `hashes` lanes whatever the slice count.

    Args:
        filters: uint8 array (slices, bytes), Redis bit order.
        positions: int64 array (items, hashes).

    Returns:
        bool array (items,).
    """
    slices, width = filters.shape
    bits = np.unpackbits(filters, axis=1)  # (slices, width * 8)
    words = -(-slices // 64)
    padded = np.zeros((words * 64, width * 8), dtype=np.uint8)
    padded[:slices] = bits
    packed = np.bitwise_or.reduce(padded.reshape(words * 8, 8, -1) << _SHIFTS, axis=1)
    lanes = np.ascontiguousarray(packed.T).view(np.uint64)  # (width * 8, words)
    both = np.bitwise_and.reduce(lanes[positions], axis=1)  # (items, words)
    return (both != 0).any(axis=1)


_SHIFTS = np.arange(8, dtype=np.uint8)[None, :, None]
