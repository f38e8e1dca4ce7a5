"""The joiner against the per-event joiner of d10c0ad: every sample, counter, batch id and dead
letter the same on a fixture with late events, duplicates, actions in and out of the window and
several partitions."""

from __future__ import annotations

import hashlib
import random

import msgspec
import msgspec.structs
import pytest

from features.windows import HOUR
from streams.events import Event, decode_dead_letter
from streams.kafka_io import RawBatch
from streams.sources.synthetic import SyntheticConfig, SyntheticSource
from tests.streams.helpers import WINDOW, raw_batches, run

# The digest of the per-event joiner's output (commit d10c0ad) on `_fixture()`, per setting of
# `test_samples_counts_and_batches_equal_the_per_event_joiners`: any change to a sample's field,
# a counter, a batch id or a dead letter changes it. The semantics themselves are tested against
# pandas in test_samples.py; this pins the rewrite to the code those tests passed on.
PER_EVENT_DIGESTS = {
    "2-shards": "a2514ce2f13ff3ca",
    "4-shards-small-batches": "31b806d56b020161",
    "2-workers": "a2514ce2f13ff3ca",
}
SETTINGS = {
    "2-shards": {"negative_keep_rate": 0.5},
    "4-shards-small-batches": {"shards": 4, "batch_size": 7, "negative_keep_rate": 0.3},
    "2-workers": {"workers": 2, "negative_keep_rate": 0.5},
}


def _fixture() -> list:
    """A synthetic world (3 partitions, batches of 50) plus: the same events re-sent later
    (duplicates), events behind the watermark (late), actions just inside and just outside
    their impression's window, and actions without impression (orphans)."""
    cfg = SyntheticConfig(seed=3, users=40, notes=120, request_gap_ms=600_000.0)
    world = [e for b in SyntheticSource(cfg, limit=4_000).batches() for e in b]
    rng = random.Random(5)
    impressions = [e for e in world if e.type == "impression"]
    extra = []
    for i, imp in enumerate(rng.sample(impressions, 60)):
        edge = imp.ts + WINDOW + (0 if i % 2 else 1)  # at the edge: attached; 1 ms after: late
        kind = ("click", "like", "play", "collect")[i % 4]
        more = {"watch_ms": 4_000 + i, "duration_ms": 9_000} if kind == "play" else {}
        extra.append(
            Event(
                f"edge{i}", edge, imp.user_id, imp.note_id, kind, request_id=imp.request_id, **more
            )
        )
        extra.append(Event(f"orphan{i}", imp.ts + 5, imp.user_id, "nobody", "click"))
    events = sorted(world + extra, key=lambda e: e.ts)
    batches = raw_batches(events)
    again = rng.sample(events, 200)  # a producer's retries, later in the stream
    late = [
        msgspec.structs.replace(e, event_id=f"late{i}", ts=e.ts - 3 * HOUR)
        for i, e in enumerate(rng.sample(events[len(events) // 2 :], 40))
    ]
    cut = len(batches) * 3 // 4
    tail = raw_batches(sorted(again + late, key=lambda e: e.ts))
    out, next_offset = [], {}
    for b in batches[:cut] + tail + batches[cut:]:  # offsets consecutive per partition
        first = next_offset.get(b.partition, 0)
        next_offset[b.partition] = first + len(b.values)
        out.append(
            RawBatch(
                b.topic, b.partition, b.keys, b.values, list(range(first, first + len(b.values)))
            )
        )
    return out


@pytest.fixture(scope="module")
def fixture() -> list:
    return _fixture()


def _digest(result) -> str:
    h = hashlib.sha256()
    for s in result.samples:  # sorted by sample id
        h.update(msgspec.json.encode(s))
    h.update(repr(sorted(result.counts.items())).encode())
    h.update(repr(result.batch_ids).encode())
    letters = sorted(
        (x.reason, x.offset, x.partition)
        for x in map(decode_dead_letter, (d.value for d in result.dead))
    )
    h.update(repr(letters).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_samples_counts_and_batches_equal_the_per_event_joiners(
    fixture: list, setting: str
) -> None:
    result = run(fixture, **SETTINGS[setting])
    counts = result.counts
    # The fixture exercises what it claims to.
    assert counts["duplicate"] > 0 and counts["late_action"] > 0 and counts["orphan_action"] > 0
    assert counts["attached"] > 0 and counts["kept_negative"] > 0 and result.dead
    assert _digest(result) == PER_EVENT_DIGESTS[setting]
