"""The event contract: round trips, every malformed family, and fuzzing of the decoder."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.errors import EventError
from streams.events import (
    EVENT_TYPES,
    MAX_POSITION,
    MAX_SPAN_MS,
    Event,
    dead_letter,
    decode_dead_letter,
    decode_event,
    encode_dead_letter,
    encode_event,
)
from tests.streams.helpers import MALFORMED, VALID, make_event


@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_every_type_round_trips(kind: str) -> None:
    event = make_event(kind)
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize(("raw", "reason", "field"), MALFORMED)
def test_malformed_names_reason_and_field(raw: bytes, reason: str, field: str | None) -> None:
    with pytest.raises(EventError) as info:
        decode_event(raw)
    assert info.value.reason == reason
    assert info.value.field == field
    if field:
        assert f"`{field}`" in str(info.value)


def test_dead_letter_round_trip_keeps_original_bytes() -> None:
    raw = b"\xff\x00 binary garbage"
    with pytest.raises(EventError) as info:
        decode_event(raw)
    letter = dead_letter(raw, info.value, "test", "interactions", 3, 42)
    back = decode_dead_letter(encode_dead_letter(letter))
    assert back.original == raw
    assert (back.reason, back.source_topic, back.partition, back.offset) == (
        "not_json",
        "interactions",
        3,
        42,
    )


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_decoder_never_fails_unexpectedly_on_bytes(raw: bytes) -> None:
    try:
        event = decode_event(raw)
    except EventError as exc:
        assert exc.reason
    else:
        assert isinstance(event, Event)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from([*VALID, "watch_ms", "position", "x"]), json_values))
def test_decoder_classifies_arbitrary_objects(obj: dict) -> None:
    raw = msgspec.json.encode({**VALID, **obj})
    try:
        decode_event(raw)
    except EventError as exc:
        assert exc.reason in {
            "wrong_type",
            "bad_value",
            "unknown_type",
            "missing_field",
            "unknown_field",
            "unsupported_version",
        }
        assert exc.field is not None


ids = st.text(min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(EVENT_TYPES),
    ts=st.integers(0, 2**53),
    user=ids,
    note=ids,
    watch=st.integers(0, MAX_SPAN_MS),
    position=st.none() | st.integers(0, MAX_POSITION),
)
def test_valid_events_round_trip(kind, ts, user, note, watch, position) -> None:
    event = Event(
        event_id=f"{user}:{ts}",
        ts=ts,
        user_id=user,
        note_id=note,
        type=kind,
        position=position,
        watch_ms=watch if kind == "play" else None,
    )
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize(
    ("field", "value"),
    [("watch_ms", MAX_SPAN_MS + 1), ("duration_ms", 2**63), ("position", MAX_POSITION + 1)],
)
def test_values_beyond_their_documented_range_are_bad(field: str, value: int) -> None:
    raw = msgspec.json.encode({**VALID, "type": "play", "watch_ms": 1, field: value})
    with pytest.raises(EventError) as caught:
        decode_event(raw)
    assert (caught.value.reason, caught.value.field) == ("bad_value", field)
