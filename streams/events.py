"""The interaction event contract (DESIGN.md "Event"), its strict decoder and dead letters.

Encoding and decoding use msgspec: typed, validated in C, and about 3x faster than orjson
followed by pydantic validation (see docs/benchmarks.md, `bench/codec.py`).
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Final, Literal

import msgspec

from streams.errors import EventError

EVENT_SCHEMA_VERSION: Final = 2
"""The newest schema version: 2 adds `arms` (the experiment arms that served an event)."""
SCHEMA_VERSIONS: Final = (1, 2)
"""The versions this build reads (an event without `v` is version 1)."""
EVENT_TYPES: Final = (
    "impression",
    "click",
    "like",
    "collect",
    "share",
    "comment",
    "follow",
    "play",
    "hide",
)
EventType = Literal[
    "impression", "click", "like", "collect", "share", "comment", "follow", "play", "hide"
]
ACTION_TYPES: Final = tuple(t for t in EVENT_TYPES if t != "impression")

MAX_TS_MS: Final = 2**53
"""Largest event time (the contract's bound; the jobs also refuse events ahead of the wall
clock by more than `events.max_future_ms`)."""
MAX_SPAN_MS: Final = 86_400_000
"""Largest `watch_ms` / `duration_ms`: one day. Window sums are int64: a day per play leaves
room for ~10^11 plays of one entity in a window before a sum could overflow."""
MAX_POSITION: Final = 1_000_000
"""Largest `position` in a feed."""

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Position = Annotated[int, msgspec.Meta(ge=0, le=MAX_POSITION)]
Span = Annotated[int, msgspec.Meta(ge=0, le=MAX_SPAN_MS)]
Millis = Annotated[int, msgspec.Meta(ge=0, le=MAX_TS_MS)]
MAX_ARMS: Final = 16
"""Most experiments one event may carry arms of."""
ArmName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Arms = Annotated[dict[ArmName, ArmName], msgspec.Meta(min_length=1, max_length=MAX_ARMS)]


class Event(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """One interaction of a user with a note, at event time `ts` (epoch milliseconds)."""

    event_id: Id
    ts: Millis
    user_id: Id
    note_id: Id
    type: EventType
    author_id: Id | None = None
    category: Id | None = None
    request_id: Id | None = None
    position: Position | None = None
    watch_ms: Span | None = None
    duration_ms: Span | None = None
    arms: Arms | None = None
    """Version 2: experiment -> arm of the answer that showed the note (what /recommend
    returned); actions may carry them too, else they count for the user's last known arms."""
    v: int = 1


class DeadLetter(msgspec.Struct, frozen=True, omit_defaults=True):
    """What goes to `interactions.dlq`: the original bytes, why they failed and where from."""

    reason: str
    error: str
    original: bytes
    at_ms: int
    flow: str
    field: str | None = None
    source_topic: str | None = None
    partition: int | None = None
    offset: int | None = None


_AT = re.compile(r" - at `\$\.([A-Za-z0-9_]+)")
_NAMED = re.compile(r"field `([^`]+)`")
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Event)
_DLQ_DECODER = msgspec.json.Decoder(DeadLetter)


def _classify(message: str) -> tuple[str, str | None]:
    """Map a msgspec error message to (reason, field)."""
    at = _AT.search(message)
    if message.startswith("Object missing required field"):
        return "missing_field", _NAMED.search(message).group(1)
    if message.startswith("Object contains unknown field"):
        return "unknown_field", _NAMED.search(message).group(1)
    if at is None:
        return ("not_object" if message.startswith("Expected `object`") else "wrong_type"), None
    field = at.group(1)
    if message.startswith("Invalid enum value"):
        return ("unknown_type" if field == "type" else "bad_value"), field
    if message.startswith("Expected `") and ("` >=" in message or "` <=" in message):
        return "bad_value", field
    if "length" in message or "matching regex" in message:
        return "bad_value", field
    return "wrong_type", field


def decode_event(raw: bytes, max_bytes: int = 16_384) -> Event:
    """Decode and validate one event.

    Raises:
        EventError: with the reason code and the offending field.
    """
    if len(raw) > max_bytes:
        raise EventError("oversized", None, f"{len(raw)} bytes > limit {max_bytes}")
    try:
        event = _DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        reason, field = _classify(str(exc))
        raise EventError(reason, field, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise EventError("not_json", None, str(exc)) from None
    if event.v not in SCHEMA_VERSIONS:
        raise EventError(
            "unsupported_version",
            "v",
            f"schema version {event.v}, this build reads {', '.join(map(str, SCHEMA_VERSIONS))}",
        )
    if event.arms is not None and event.v < 2:
        raise EventError("bad_value", "v", "an event carrying `arms` must declare schema `v: 2`")
    if event.type == "play" and event.watch_ms is None:
        raise EventError("missing_field", "watch_ms", "a play event must carry watch_ms")
    return event


def encode_event(event: Event) -> bytes:
    """Encode one event as compact JSON."""
    return _ENCODER.encode(event)


def dead_letter(
    raw: bytes,
    error: EventError,
    flow: str,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> DeadLetter:
    """Build the dead-letter record for a rejected payload."""
    return DeadLetter(
        reason=error.reason,
        error=str(error),
        original=raw,
        at_ms=int(time.time() * 1000),
        flow=flow,
        field=error.field,
        source_topic=topic,
        partition=partition,
        offset=offset,
    )


def encode_dead_letter(record: DeadLetter) -> bytes:
    """Encode a dead letter as JSON (the original bytes base64-encoded)."""
    return _ENCODER.encode(record)


def decode_dead_letter(raw: bytes) -> DeadLetter:
    """Decode a dead letter read from the DLQ topic."""
    return _DLQ_DECODER.decode(raw)
