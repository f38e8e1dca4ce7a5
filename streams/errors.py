"""Errors of the streaming jobs and the event contract."""

from __future__ import annotations


class StreamsError(Exception):
    """Root of every error raised by `streams`."""


class EventError(StreamsError):
    """An event failed validation; `reason` is a stable code and `field` names the culprit.

    Reasons: `not_json`, `oversized`, `not_object`, `missing_field`, `unknown_field`,
    `wrong_type`, `bad_value`, `unknown_type`, `unsupported_version` (the decoder); `late`,
    `future`, `outlier`, `duplicate`, `internal` (the ingest step, docs/sources.md).
    """

    def __init__(self, reason: str, field: str | None, detail: str) -> None:
        self.reason = reason
        self.field = field
        self.detail = detail
        where = f"field `{field}`" if field else "event"
        super().__init__(f"{reason}: {where}: {detail}")


class SourceError(StreamsError):
    """A replay source cannot be read (missing file, missing required column)."""


class KafkaError(StreamsError):
    """The broker refused or failed an operation; the message says which and what to check."""


class StoreUnavailableError(StreamsError):
    """A store (Redis) did not answer within the retry budget; the message says what to check."""


class LogMismatchError(KafkaError):
    """A reader's resume offsets do not belong to the log it reads now (the topic was recreated,
    e.g. by a broker that lost its storage, or the offset lies beyond the partition's end); the
    message names the topic, partition, offsets and the command that starts over."""


class RecoveryStateError(StreamsError):
    """A step's recovered state has taken records its input is about to give it again: the
    recovery store holds snapshots of different epochs; the message names the partition, the
    offsets and the command that starts over."""


class RecoveryStoreError(StreamsError):
    """A recovery store cannot be used (its partitions are missing); the message says what to
    start or check."""
