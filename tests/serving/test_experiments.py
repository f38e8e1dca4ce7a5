"""Experiments in serving: arms' overrides validated, applied per user, reloaded without a
restart, pinned snapshot versions, and /recommend returning the arms."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from features.errors import ExperimentConfigError
from features.experiments import assign, parse_experiments
from features.exposure import ExposureConfig
from infra.config import load_settings
from infra.service import service_for
from learners.full import load_or_create
from learners.snapshots import SnapshotWriter
from serving.config import ServingConfig
from serving.experiments import ExperimentRouter, compile_experiments
from tests.learners.helpers import CONFIG, publish_trained


def _config(weights: dict | None = None, pin: int | None = None) -> dict:
    treatment: dict = {"fusion": {"weights": weights or {"click": 10.0}}}
    if pin is not None:
        treatment["ranker_version"] = pin
    return {
        "layers": [
            {
                "name": "ranking",
                "experiments": [
                    {
                        "name": "fusion",
                        "buckets": [0, 50],
                        "arms": [{"name": "control"}, {"name": "clicky", "overrides": treatment}],
                    }
                ],
            },
            {
                "name": "retrieval",
                "experiments": [
                    {
                        "name": "ctx",
                        "buckets": [0, 100],
                        "arms": [
                            {"name": "on"},
                            {"name": "off", "overrides": {"context": {"enabled": False}}},
                        ],
                    }
                ],
            },
        ]
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fusion": {"formula": "max"}}, "experiment 'fusion' arm 'clicky': invalid overrides: "),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"rank_k": 0}, "rank_k: Input should be greater than or equal to 1"),
        ({"context": {"share": 2}}, "context.share"),
    ],
)
def test_invalid_overrides_name_the_experiment_arm_and_field(overrides, message) -> None:
    raw = _config()
    raw["layers"][0]["experiments"][0]["arms"][1]["overrides"] = overrides
    with pytest.raises(ExperimentConfigError, match="invalid overrides") as err:
        compile_experiments(parse_experiments(raw), ServingConfig())
    assert message in str(err.value)


def test_layers_may_not_change_the_same_setting() -> None:
    raw = _config()
    raw["layers"][1]["experiments"][0]["arms"][1]["overrides"] = {"fusion": {"rank_k": 5.0}}
    with pytest.raises(ExperimentConfigError, match="layers 'ranking' and 'retrieval' both"):
        compile_experiments(parse_experiments(raw), ServingConfig())


def test_router_applies_arms_and_reloads_edits_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump(_config()))
    base = ServingConfig(context={"share": 0.5})
    router = ExperimentRouter(path, base, check_every_s=1e-6)
    config = parse_experiments(_config())
    users = [f"u{i}" for i in range(200)]
    for user in users:
        routed = router.route(user)
        assert routed.arms == assign(config, user)
        fusion = routed.config.fusion
        if routed.arms.get("fusion") == "clicky":
            assert fusion.weights["click"] == 10.0 and fusion.weights["like"] == 2.0  # merged
        else:
            assert fusion == base.fusion
        assert routed.config.context.enabled == (routed.arms["ctx"] == "on")
        assert routed.config.context.share == 0.5  # the base's value where nothing overrides
    clicky = next(u for u in users if router.route(u).arms.get("fusion") == "clicky")

    path.write_text(yaml.safe_dump(_config({"click": 3.0})))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert router.route(clicky).config.fusion.weights["click"] == 3.0
    assert router.reloads == 1 and router.last_error is None

    broken = _config()
    broken["layers"][0]["experiments"][0]["buckets"] = [0, 51]
    path.write_text(yaml.safe_dump(broken))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 2 * 10**9))
    assert router.route(clicky).config.fusion.weights["click"] == 3.0  # the previous ones
    assert "cannot be split" in router.last_error and "keeping the previous" in router.last_error


def test_recommend_applies_and_returns_the_users_arms(tmp_path: Path, redis_url: str) -> None:
    root = tmp_path / "snapshots"
    snapshots = publish_trained(root)
    # Version 2 of both (the same state published again); the "clicky" arm pins the ranker to 1.
    ranker, retriever, _, _ = load_or_create(CONFIG, snapshots)
    for name, state in (("ranker", ranker), ("retriever", retriever)):
        tables, dense = state.full_state()
        SnapshotWriter(root, name, snapshots).publish_full(
            tables, dense, state.hwm_ms, state.meta({"offsets": {}})
        )
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump(_config(pin=1)))
    ns = f"t{uuid.uuid4().hex[:6]}"
    base = load_settings(env={"REDIS_URL": redis_url})
    settings = base.model_copy(
        update={
            "snapshots": base.snapshots.model_copy(update={"root": root}),
            "exposure": ExposureConfig(namespace=ns),
            "feast_project": f"p{ns}",
            "serving": ServingConfig(experiments=path),
        }
    )
    service = service_for(settings, redis_url)
    service.watcher.refresh()
    client = TestClient(service.app)
    config = parse_experiments(_config(pin=1))
    bodies = {}
    for i in range(40):
        user = f"u{i}"
        body = client.get("/recommend", params={"user_id": user, "n": 10}).json()
        assert body["arms"] == assign(config, user)
        clicky = body["arms"].get("fusion") == "clicky"
        assert body["versions"] == {"ranker": 1 if clicky else 2, "retriever": 2}
        if body["arms"]["ctx"] == "off":
            assert {item["channel"] for item in body["items"]} == {"two_tower"}
        bodies[user] = body
    for body in bodies.values():  # the fused score is the arm's formula of the task scores
        weights = dict(ServingConfig().fusion.weights)
        if body["arms"].get("fusion") == "clicky":
            weights["click"] = 10.0
        top = body["items"][0]
        assert top["score"] >= weights["click"] * top["scores"]["click"] - 1e-9
    series = client.get("/metrics").text
    for arm in ("clicky", "control"):
        n = sum(b["arms"].get("fusion") == arm for b in bodies.values())
        want = f'streamrec_experiment_answers_total{{arm="{arm}",experiment="fusion"}} {n:.1f}'
        assert want in series
    arms_seen = {b["arms"].get("fusion") for b in bodies.values()}
    assert {"clicky", "control"} <= arms_seen
    clicky_scores = [b["items"][0]["score"] for b in bodies.values() if b["arms"].get("fusion")]
    assert np.isfinite(clicky_scores).all()
