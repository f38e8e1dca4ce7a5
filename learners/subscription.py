"""Follow snapshot announcements: new, verified versions of a model as they are published.

Every publish of a `SnapshotWriter` with a `kafka_announcer` produces the version's manifest
(JSON, key = model) to the `embedding-snapshots` topic. A downstream consumer follows them with
`SnapshotSubscriber` (or the generator `follow_snapshots`)::

    from learners import SnapshotSubscriber

    with SnapshotSubscriber("127.0.0.1:9092", "embedding-snapshots", root, "retriever") as sub:
        for snapshot in sub:  # blocks; each one newer than the last, checksums verified
            use(snapshot.tables["item"], snapshot.manifest.version)

An announcement is the manifest (JSON, the record's value); a small delta also carries its files
in the record's headers (`kafka_announcer`, up to `SnapshotConfig.inline_max_bytes`), so a
consumer holding the version before it applies it without reading the store
(`learners.snapshots.apply_delta`, checksums verified against the manifest). Otherwise the store
is the truth: on each announcement of a newer version the subscriber reads the newest consistent
state from it (only the new deltas when it can, `SnapshotReader.refresh`), verifying the
checksums of everything it reads. A partial or corrupt version is never handed out: it is
reported to `on_error` (by default a logged warning) and the state stays at the last good
version until a good one follows (a new full, typically). Announcements that arrive before the
files are visible are retried on the next polls.

The Kafka client is kafka-python (pure Python, no native library for downstream consumers);
the learners' own hot paths use confluent-kafka. The consumer joins no group: it is assigned
every partition of the topic and starts at its end (or its beginning with `from_beginning`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from learners.errors import (
    SnapshotAnnounceError,
    SnapshotCorruptError,
    SnapshotError,
    SnapshotFollowError,
)
from learners.snapshots import (
    Manifest,
    Publication,
    Snapshot,
    SnapshotConfig,
    SnapshotReader,
    apply_delta,
    decode_announcement,
    delta_follows,
    encode_manifest,
)
from streams.config import Broker, connection

logger = logging.getLogger(__name__)

LOCATION_HEADER = "streamrec-location"
"""Record header: where the announced version is in the store (its directory or URL)."""
FILE_HEADER = "streamrec-file:"
"""Record header prefix: `streamrec-file:<name>` holds the bytes of that file of a delta."""
RECORD_OVERHEAD = 1024
"""Bytes counted for a record's framing beyond its value and headers (batch header, lengths,
key): a generous bound, so an announcement counted within `inline_max_bytes` stays under it."""
INLINE_MAX_BYTES = SnapshotConfig.model_fields["inline_max_bytes"].default


@dataclass(frozen=True)
class Announcement:
    """One record of the announcements topic."""

    manifest: Manifest
    files: dict[str, bytes] = field(default_factory=dict)
    """The delta's files carried in the record (empty: read the version from the store)."""
    location: str | None = None
    """Where the version is in the store, as its writer named it (None: not said)."""


def encode_announcement(
    publication: Publication, inline_max_bytes: int = INLINE_MAX_BYTES
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The record value (the manifest JSON) and headers announcing `publication`: its location,
    and a delta's files when the whole record fits in `inline_max_bytes`."""
    value = encode_manifest(publication.manifest)
    headers = [(LOCATION_HEADER, publication.location.encode())]
    if publication.manifest.kind == "delta" and publication.files:
        files = [(FILE_HEADER + name, data) for name, data in publication.files.items()]
        size = RECORD_OVERHEAD + len(value) + sum(len(k) + len(v) for k, v in [*headers, *files])
        if size <= inline_max_bytes:
            headers += files
    return value, headers


def decode_record(value: bytes, headers: list[tuple[str, bytes]] | None) -> Announcement:
    """Parse one record of the announcements topic (headers as (name, bytes) pairs).

    Raises:
        SnapshotError: the value is not a manifest.
    """
    manifest = decode_announcement(value)
    files, location = {}, None
    for key, data in headers or ():
        if key == LOCATION_HEADER:
            location = bytes(data).decode(errors="replace")
        elif key.startswith(FILE_HEADER):
            files[key.removeprefix(FILE_HEADER)] = bytes(data)
    return Announcement(manifest, files, location)


def kafka_announcer(
    bootstrap: Broker,
    topic: str,
    timeout_s: float = 10.0,
    inline_max_bytes: int = INLINE_MAX_BYTES,
) -> Callable[[Publication], None]:
    """Return a `SnapshotWriter` `announce` callback producing each version to `topic`: key =
    model, value = manifest JSON, headers = its location and, for a delta within
    `inline_max_bytes` (`SnapshotConfig.inline_max_bytes`), its files (`encode_announcement`).

    The callback waits for the broker's acknowledgement and raises `SnapshotAnnounceError` when
    it does not come within `timeout_s` (the version stays published in the store).
    """
    from confluent_kafka import KafkaException

    from streams.kafka_io import make_producer

    producer = make_producer(bootstrap, **{"linger.ms": 0})

    def announce(publication: Publication) -> None:
        manifest = publication.manifest
        failures: list[str] = []

        def delivered(err: object, _msg: object) -> None:
            if err is not None:
                failures.append(str(err))

        value, headers = encode_announcement(publication, inline_max_bytes)
        try:
            producer.produce(
                topic,
                key=manifest.model.encode(),
                value=value,
                headers=headers,
                on_delivery=delivered,
            )
        except (BufferError, KafkaException) as exc:  # e.g. a record beyond message.max.bytes
            failures.append(str(exc))
        pending = producer.flush(timeout_s) if not failures else 0
        if pending or failures:
            raise SnapshotAnnounceError(
                f"snapshot {manifest.model!r} version {manifest.version} is published but its "
                f"announcement on {topic!r} at {bootstrap} failed "
                f"({'; '.join(failures) or f'no acknowledgement in {timeout_s} s'}): check the "
                "broker (`streamrec infra status`) and `snapshots.inline_max_bytes` against its "
                "`max.message.bytes`; consumers still find the version by listing the store"
            )

    return announce


class _Closing:
    """`with` it closes it on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Announcements(_Closing):
    """The announcements on a topic, read with kafka-python (every partition, no group).

    Args:
        bootstrap: host:port of a broker, or a `KafkaConnection` (with its SASL / TLS settings).
        topic: the announcements topic (`embedding-snapshots`).
        from_beginning: also read what the topic already holds; by default only what is
            announced after construction.
        consumer_options: extra `kafka.KafkaConsumer` settings (security, timeouts...).

    Raises:
        SnapshotFollowError: the broker cannot be reached or the topic does not exist.
    """

    def __init__(
        self,
        bootstrap: Broker,
        topic: str,
        from_beginning: bool = False,
        **consumer_options: Any,
    ) -> None:
        import kafka
        from kafka.errors import KafkaError

        self.topic = topic
        options = connection(bootstrap).kafka_python(
            group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100, **consumer_options
        )
        try:
            self._consumer = kafka.KafkaConsumer(**options)
        except KafkaError as exc:
            raise SnapshotFollowError(
                f"cannot follow {topic!r}: no broker at {bootstrap} ({exc}); check "
                "`streamrec infra status`"
            ) from exc
        try:
            parts = self._consumer.partitions_for_topic(topic)
            if not parts:
                raise SnapshotFollowError(
                    f"cannot follow {topic!r} at {bootstrap}: no such topic; it is created by "
                    "`streamrec infra up` (or publish a snapshot with an announcer first)"
                )
            assigned = [kafka.TopicPartition(topic, p) for p in sorted(parts)]
            self._consumer.assign(assigned)
            if from_beginning:
                self._consumer.seek_to_beginning(*assigned)
            else:
                self._consumer.seek_to_end(*assigned)
            for tp in assigned:  # resolve the start now: nothing announced from here is missed
                self._consumer.position(tp)
        except (KafkaError, SnapshotFollowError) as exc:
            self._consumer.close()
            if isinstance(exc, SnapshotFollowError):
                raise
            raise SnapshotFollowError(f"cannot follow {topic!r} at {bootstrap}: {exc}") from exc

    def poll(self, timeout_s: float = 0.5) -> list[Announcement]:
        """The announcements that arrive within `timeout_s` (undecodable records skipped)."""
        out = []
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        for records in batches.values():
            for record in records:
                try:
                    out.append(decode_record(record.value, record.headers))
                except SnapshotError as exc:
                    logger.warning(
                        "skipping record %s@%s of %r: %s",
                        record.partition,
                        record.offset,
                        self.topic,
                        exc,
                    )
        return out

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()


class SnapshotSubscriber(_Closing):
    """Yields the newest verified `Snapshot` of one model each time a newer one is announced.

    Args:
        bootstrap, topic: where the announcements are (`kafka.topics.embedding_snapshots`).
        root: the snapshot root the announced versions are published under.
        model: the model followed (announcements of other models are ignored).
        current: the snapshot the consumer already holds; only newer ones are yielded (the
            subscriber then reads only the deltas published since it when it can).
        from_beginning: also act on the announcements the topic already holds.
        on_error: called with every version that is refused (partial or corrupt) and with
            reading errors; the default logs a warning.
        poll_timeout_s: longest wait of one `poll`.
        consumer_options: extra `kafka.KafkaConsumer` settings.

    Raises `SnapshotFollowError` as `Announcements` does (no broker, no topic).
    """

    def __init__(
        self,
        bootstrap: Broker,
        topic: str,
        root: Path | str,
        model: str,
        current: Snapshot | None = None,
        from_beginning: bool = False,
        on_error: Callable[[SnapshotError], None] | None = None,
        poll_timeout_s: float = 0.5,
        **consumer_options: Any,
    ) -> None:
        self.model = model
        self.current = current
        self.poll_timeout_s = poll_timeout_s
        self._errors: list[SnapshotCorruptError] = []
        self._reader = SnapshotReader(root, model, on_fallback=self._errors.append)
        self._on_error = on_error or (lambda exc: logger.warning("%s", exc))
        self._reported: set[int] = set()
        self._wanted = 0  # newest version announced and not yet reached nor refused
        self._closed = threading.Event()
        self._announcements = Announcements(bootstrap, topic, from_beginning, **consumer_options)

    @property
    def version(self) -> int:
        """Version of the last snapshot yielded (or handed in), 0 before any."""
        return self.current.manifest.version if self.current is not None else 0

    def poll(self, timeout_s: float | None = None) -> Snapshot | None:
        """The newest verified snapshot if a newer version was announced (and is readable)
        within `timeout_s` (default `poll_timeout_s`), else None."""
        wait = self.poll_timeout_s if timeout_s is None else timeout_s
        applied = None
        for announcement in self._announcements.poll(wait):
            manifest = announcement.manifest
            if manifest.model != self.model:
                continue
            if (
                announcement.files
                and self.current is not None
                and delta_follows(self.current, manifest)
            ):
                try:  # carried in the announcement: no store read
                    self.current = applied = apply_delta(self.current, manifest, announcement.files)
                    continue
                except SnapshotError as exc:
                    logger.warning("%s", exc)
            self._wanted = max(self._wanted, manifest.version)
        if self._wanted <= self.version:
            return applied
        return self._load() or applied

    def _load(self) -> Snapshot | None:
        self._errors.clear()
        try:
            snap = (
                self._reader.refresh(self.current)
                if self.current is not None
                else self._reader.latest()
            )
        except SnapshotError as exc:  # nothing usable at all (yet)
            self._report(exc)
            return None
        refused = set()
        for exc in self._errors:
            refused.add(exc.version)
            self._report(exc)
        if snap.manifest.version >= self._wanted or self._wanted in refused:
            self._wanted = 0  # reached, or refused: wait for the next announcement
        if snap.manifest.version <= self.version:
            return None
        self.current = snap
        return snap

    def _report(self, exc: SnapshotError) -> None:
        version = getattr(exc, "version", None)
        if version is not None:
            if version in self._reported:
                return
            self._reported.add(version)
        self._on_error(exc)

    def __iter__(self) -> Iterator[Snapshot]:
        """Newer snapshots as they are announced, until `close` (called from the iterating
        thread; from another thread, use `follow_snapshots` with a `stop` event)."""
        while not self._closed.is_set():
            snap = self.poll()
            if snap is not None:
                yield snap

    def close(self) -> None:
        """Stop iterating and close the consumer."""
        self._closed.set()
        self._announcements.close()


def follow_snapshots(
    bootstrap: Broker,
    topic: str,
    root: Path | str,
    model: str,
    current: Snapshot | None = None,
    stop: threading.Event | None = None,
    **options: Any,
) -> Iterator[Snapshot]:
    """Yield each newer verified snapshot of `model` as it is announced, until `stop` is set.

    A generator over a `SnapshotSubscriber` (same arguments; `options` are its keyword
    arguments); the consumer is closed when the generator ends or is closed.
    """
    with SnapshotSubscriber(bootstrap, topic, root, model, current, **options) as sub:
        while stop is None or not stop.is_set():
            snap = sub.poll()
            if snap is not None:
                yield snap
