"""Every ```python example in docs/ runs, against a stack where the jobs and training have run."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import numpy as np
import pytest

from features.exposure import ExposureConfig, ExposureWriter
from features.online_writer import OnlineWriter
from features.redis_conn import connect
from features.schema import FeatureConfig, derive
from features.store import apply_definitions, feature_store
from features.windows import METRICS, WINDOWS
from tests.learners.helpers import publish_trained

DOCS = Path(__file__).resolve().parents[1] / "docs"
EXAMPLE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _examples() -> list[tuple[str, list[str]]]:
    return [
        (doc.name, EXAMPLE.findall(doc.read_text()))
        for doc in sorted(DOCS.glob("*.md"))
        if EXAMPLE.search(doc.read_text())
    ]


def test_the_docs_have_examples() -> None:
    assert "architecture.md" in dict(_examples())


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str, bootstrap: str) -> Path:
    """Environment and stores as a deployment has them: features, filters and snapshots."""
    project = f"docs{uuid.uuid4().hex[:6]}"
    config = tmp_path / "settings.yaml"
    config.write_text(f"feast_project: {project}\nexposure:\n  namespace: {project}-exp\n")
    for name, value in {
        "STREAMREC_CONFIG": str(config),
        "STREAMREC_DATA_DIR": str(tmp_path),
        "REDIS_URL": redis_url,
        "KAFKA_BOOTSTRAP": bootstrap,
    }.items():
        monkeypatch.setenv(name, value)
    apply_definitions(feature_store(redis_url, project, tmp_path), tmp_path)  # as `run stats`
    client = connect(redis_url)
    counts = {w.name: np.full((1, len(METRICS)), 3, np.int64) for w in WINDOWS}
    OnlineWriter(client, project).write(
        "user_stats", ["u1"], derive("user_stats", counts, FeatureConfig()), 1_700_000_000_000
    )
    writer = ExposureWriter(client, ExposureConfig(namespace=f"{project}-exp"))
    writer.add_batch(["u1"], ["n2"], np.array([1_700_000_000_000]))
    publish_trained(tmp_path / "snapshots")
    return tmp_path


@pytest.mark.parametrize("doc", [name for name, _ in _examples()])
def test_doc_examples_run(doc: str, world: Path) -> None:
    del world  # the stores the examples read
    namespace: dict = {}
    for i, code in enumerate(dict(_examples())[doc]):
        try:
            exec(compile(code, f"{doc} example {i + 1}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{doc} example {i + 1} failed: {exc!r}\n{code}") from exc
