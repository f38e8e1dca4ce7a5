"""The retrieval channels' stored indexes in Redis: note neighbours, author notes, fresh notes.

Written by the co-click job (`streams.itemcf`, `streamrec run itemcf`), read by the serving
channels (`serving.channels`). Every key sits under the Feast project's prefix `p`:

- `p:nb:<kind>:<note>` (kind "itemcf" or "swing"): the note's top-K neighbours, best first, as
  msgpack `[[note ids], [scores]]`; absent when the note has none. `NeighbourStore.read` fetches
  the lists of many notes in one pipelined round trip.
- `p:author:<author>`: sorted set of the author's newest notes, score = the event time the note
  was first seen (epoch ms), trimmed to the writer's `per_author` newest.
- `p:fresh`: sorted set of the notes still fresh (first seen recently, too few impressions for
  their statistics to be trusted), score = first-seen time; `p:fresh:info` a hash note ->
  msgpack `[category, author, impressions]`.
- `p:cache:<user>`: the cache channel's notes of the user - those the ranker placed high in
  their last answer but that were not returned - as msgpack `[[note ids], [fused scores]]`,
  written by the recommender (not the job) with a time to live.
- `p:hwm:itemcf`: the job's event-time high-water mark (`features.client.mark_key`), raised
  after the values of each write on the same connection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec

from features.client import mark_key
from features.errors import FeaturesError
from features.redis_conn import Client, is_cluster

KINDS = ("itemcf", "swing")
"""The neighbour lists a note can have."""
JOB = "itemcf"
"""The job that writes them (its high-water mark is `mark_key(project, JOB)`)."""

_ENC = msgspec.msgpack.Encoder()
_ROW = msgspec.msgpack.Decoder(tuple[list[str], list[float]])
_INFO = msgspec.msgpack.Decoder(tuple[str, str, int])

__all__ = ["JOB", "KINDS", "FreshNote", "NeighbourStore"]


@dataclass(frozen=True, slots=True)
class FreshNote:
    """A note still in its cold start."""

    note_id: str
    first_seen_ms: int
    category: str
    """"" when its events carry none."""
    author: str
    impressions: int


_MAX_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


class NeighbourStore:
    """Reader and writer of the channels' indexes under the project's prefix.

    Args:
        client: a redis-py client (`decode_responses=False`).
        project: the Feast project (`Settings.feast_project`), the keys' prefix.
    """

    def __init__(self, client: Client, project: str) -> None:
        self.client, self.project = client, project

    # -- keys -------------------------------------------------------------------------------
    def key(self, kind: str, note_id: str) -> str:
        """Key of a note's neighbour list of `kind`."""
        if kind not in KINDS:
            raise FeaturesError(f"unknown neighbour kind {kind!r}; expected one of {KINDS}")
        return f"{self.project}:nb:{kind}:{note_id}"

    def author_key(self, author: str) -> str:
        """Key of an author's newest notes."""
        return f"{self.project}:author:{author}"

    @property
    def fresh_key(self) -> str:
        """Key of the fresh notes (sorted by first-seen time)."""
        return f"{self.project}:fresh"

    def cache_key(self, user_id: str) -> str:
        """Key of a user's cached notes (ranked high, not returned)."""
        return f"{self.project}:cache:{user_id}"

    # -- writes -----------------------------------------------------------------------------
    def write_cache(self, user_id: str, ids: list[str], scores: list[float], ttl_s: int) -> None:
        """Replace the user's cached notes (best first) for `ttl_s` seconds; none deletes them."""
        if ids:
            self.client.set(self.cache_key(user_id), _ENC.encode((ids, scores)), ex=ttl_s)
        else:
            self.client.delete(self.cache_key(user_id))

    def write(
        self,
        rows: Mapping[str, Mapping[str, tuple[list[str], list[float]]]],
        authors: Mapping[str, Mapping[str, int]] | None = None,
        per_author: int = 20,
        fresh: Sequence[FreshNote] = (),
        stale: Sequence[str] = (),
        hwm_ms: int | None = None,
    ) -> None:
        """Store neighbour rows, author notes and fresh notes in one pipelined round trip.

        Args:
            rows: kind -> note -> (neighbour ids best first, scores); an empty list deletes.
            authors: author -> note -> first-seen ms, added to the author's set (trimmed to
                its `per_author` newest).
            fresh: fresh notes to (re)write; `stale`: notes no longer fresh (removed).
            hwm_ms: raises the job's high-water mark after the values.
        """
        pipe = self.client.pipeline(transaction=False)
        for kind, by_note in rows.items():
            for note, (ids, scores) in by_note.items():
                if ids:
                    pipe.set(self.key(kind, note), _ENC.encode((ids, scores)))
                else:
                    pipe.delete(self.key(kind, note))
        for author, notes in (authors or {}).items():
            key = self.author_key(author)
            pipe.zadd(key, {n: t for n, t in notes.items()})
            pipe.zremrangebyrank(key, 0, -per_author - 1)
        if fresh:
            pipe.zadd(self.fresh_key, {f.note_id: f.first_seen_ms for f in fresh})
            pipe.hset(
                f"{self.fresh_key}:info",
                mapping={
                    f.note_id: _ENC.encode((f.category, f.author, f.impressions)) for f in fresh
                },
            )
        if stale:
            pipe.zrem(self.fresh_key, *stale)
            pipe.hdel(f"{self.fresh_key}:info", *stale)
        if hwm_ms is None:
            pipe.execute()
        elif is_cluster(self.client):  # nodes apply their parts in parallel: the mark after all
            pipe.execute()
            self.client.eval(_MAX_SCRIPT, 1, mark_key(self.project, JOB), int(hwm_ms))
        else:
            pipe.eval(_MAX_SCRIPT, 1, mark_key(self.project, JOB), int(hwm_ms))
            pipe.execute()

    # -- reads ------------------------------------------------------------------------------
    def read(self, kind: str, note_ids: Sequence[str]) -> list[tuple[list[str], list[float]]]:
        """Each note's neighbours (ids best first, scores), ([], []) for none; one pipelined
        round trip (GETs: a Redis Cluster routes each to its slot)."""
        if not note_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for n in note_ids:
            pipe.get(self.key(kind, n))
        raw = pipe.execute()
        return [([], []) if r is None else _ROW.decode(r) for r in raw]

    def cached(self, user_id: str) -> tuple[list[str], list[float]]:
        """The user's cached notes (ids best first, scores), ([], []) for none."""
        raw = self.client.get(self.cache_key(user_id))
        return ([], []) if raw is None else _ROW.decode(raw)

    def author_notes(self, authors: Sequence[str], n: int) -> list[list[tuple[str, int]]]:
        """Each author's `n` newest notes as (note, first-seen ms), newest first."""
        pipe = self.client.pipeline(transaction=False)
        for a in authors:
            pipe.zrevrange(self.author_key(a), 0, n - 1, withscores=True)
        rows = pipe.execute() if authors else []
        return [[(m.decode(), int(s)) for m, s in row] for row in rows]

    def fresh(self, n: int) -> list[FreshNote]:
        """The `n` most recently first-seen fresh notes, newest first."""
        pairs = self.client.zrevrange(self.fresh_key, 0, n - 1, withscores=True)
        if not pairs:
            return []
        notes = [m.decode() for m, _ in pairs]
        infos = self.client.hmget(f"{self.fresh_key}:info", notes)
        out = []
        for note, (_, ts), info in zip(notes, pairs, infos, strict=True):
            cat, author, shown = _INFO.decode(info) if info is not None else ("", "", 0)
            out.append(FreshNote(note, int(ts), cat, author, shown))
        return out

    def as_of(self) -> int | None:
        """The job's event-time high-water mark (epoch ms), None before it wrote."""
        raw = self.client.get(mark_key(self.project, JOB))
        return None if raw is None else int(raw)
