"""Errors of the learners: models, online and full training, embedding snapshots."""

from __future__ import annotations


class LearnersError(Exception):
    """Root of every error raised by `learners`."""


class SnapshotError(LearnersError):
    """A snapshot cannot be written or read; the message says which and what to do."""


class SnapshotNotFoundError(SnapshotError):
    """The model has no (such) published version."""


class SnapshotCorruptError(SnapshotError):
    """A published version is partial or corrupt; `version` and `file` name the culprit.

    `file` is None when the version as a whole is unusable (e.g. a delta whose base is missing).
    """

    def __init__(self, model: str, version: int, file: str | None, detail: str, fix: str) -> None:
        self.model = model
        self.version = version
        self.file = file
        self.detail = detail
        where = f"{file}: " if file else ""
        super().__init__(f"snapshot {model!r} version {version}: {where}{detail}; {fix}")


class SnapshotRootNotWritableError(SnapshotError):
    """The snapshot root (or a model directory in it) cannot take a new version: read-only, not
    a directory, or too little free space. Raised before any training, so no work is lost."""


class SnapshotPublishError(SnapshotError):
    """Writing a version failed (e.g. disk full); nothing partial is left, the learner stops."""


class SnapshotConflictError(SnapshotError):
    """A delta was published against a full snapshot that is no longer the latest one."""


class SnapshotAnnounceError(SnapshotError):
    """A published version could not be announced on Kafka (it is on disk nevertheless)."""


class SnapshotFollowError(SnapshotError):
    """Snapshot announcements cannot be followed (no broker, no such topic)."""


class ModelConfigError(LearnersError):
    """Model hyperparameters are inconsistent or do not match a snapshot."""


class SampleInputError(LearnersError):
    """Training or scoring inputs have the wrong shape or content; the message names them."""
