"""Fixtures of the learner tests."""

from __future__ import annotations

import pytest

from infra.stack import ensure_topics


@pytest.fixture
def announce_topic(request: pytest.FixtureRequest, bootstrap: str, topic_name: str) -> str:
    """A fresh snapshot-announcements topic on the broker: 1 partition, or as many as the
    test's indirect parameter says."""
    topic = f"{topic_name}-embedding-snapshots"
    ensure_topics(bootstrap, [topic], getattr(request, "param", 1))
    return topic
