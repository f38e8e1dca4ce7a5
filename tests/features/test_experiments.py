"""Experiments config and assignment: validation errors, stable buckets, layers, holdback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from features.errors import ExperimentConfigError
from features.experiments import (
    HOLDBACK_ARM,
    LAUNCHED_ARM,
    assign,
    bucket_of,
    buckets_of,
    parse_experiments,
    read_experiments,
)

USERS = [f"user-{i}" for i in range(20_000)]


def _two_arms(name: str, lo: int, hi: int, **extra) -> dict:
    return {"name": name, "buckets": [lo, hi], "arms": [{"name": "a"}, {"name": "b"}], **extra}


CONFIG = {
    "buckets": 100,
    "layers": [
        {
            "name": "ranking",
            "holdback": [90, 100],
            "experiments": [
                _two_arms("fusion", 0, 40),
                {
                    "name": "model",
                    "buckets": [40, 70],
                    "arms": [{"name": "old", "weight": 2}, {"name": "new"}],
                    "control": "old",
                },
            ],
        },
        {"name": "retrieval", "experiments": [_two_arms("channels", 0, 100)]},
    ],
}


def test_buckets_are_stable_across_processes_and_uniform() -> None:
    mine = [bucket_of(u, "ranking", 100) for u in USERS[:50]]
    code = (
        "from features.experiments import bucket_of; "
        "print([bucket_of(f'user-{i}', 'ranking', 100) for i in range(50)])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path.cwd())}
    other = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert other.stdout.strip() == str(mine)
    assert list(buckets_of(USERS[:50], "ranking", 100)) == mine
    counts = np.bincount(buckets_of(USERS, "ranking", 100), minlength=100)
    assert stats.chisquare(counts).pvalue > 0.001


def test_two_layers_split_users_independently() -> None:
    a = buckets_of(USERS, "ranking", 100) // 10
    b = buckets_of(USERS, "retrieval", 100) // 10
    table = np.zeros((10, 10), np.int64)
    np.add.at(table, (a, b), 1)
    assert stats.chi2_contingency(table).pvalue > 0.001
    same_salt = buckets_of(USERS, "ranking", 100) // 10
    assert (same_salt == a).all()  # one salt: fully dependent (the validator forbids it)


def test_assignment_respects_ranges_shares_and_the_holdback() -> None:
    config = parse_experiments(CONFIG)
    seen: Counter = Counter()
    for user in USERS:
        arms = assign(config, user)
        b = bucket_of(user, "ranking", 100)
        if b >= 90:  # the holdback: never an experiment arm of its layer
            assert arms["holdback.ranking"] == HOLDBACK_ARM
            assert not {"fusion", "model"} & set(arms)
        elif b >= 70:
            assert arms["holdback.ranking"] == LAUNCHED_ARM
        else:
            assert "holdback.ranking" not in arms
            assert ("fusion" in arms) == (b < 40) and ("model" in arms) == (b >= 40)
        assert "channels" in arms  # the retrieval layer's experiment takes all buckets
        seen.update(f"{e}={a}" for e, a in arms.items())
    for name in ("fusion", "model", "channels", "holdback.ranking"):
        shares = config.expected_shares(name)
        observed = [seen[f"{name}={arm}"] for arm in shares]
        expected = np.array(list(shares.values())) * sum(observed)
        assert stats.chisquare(observed, expected).pvalue > 0.001, name
    assert config.experiment("model")[1].control_arm == "old"
    assert config.expected_shares("model") == pytest.approx({"old": 2 / 3, "new": 1 / 3})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["layers"][0]["experiments"].append(_two_arms("late", 60, 80)),
            "experiment 'late' [60, 80) overlaps experiment 'model' [40, 70)",
        ),
        (
            lambda c: c["layers"][0]["experiments"].append(_two_arms("greedy", 70, 96)),
            "experiment 'greedy' [70, 96) overlaps the holdback [90, 100)",
        ),
        (
            lambda c: c["layers"][0]["experiments"][1].update(control="newest"),
            "control arm 'newest' is not one of its arms ['old', 'new']",
        ),
        (
            lambda c: c["layers"][1].update(salt="ranking"),
            "layers share a salt, so they would not be orthogonal",
        ),
        (
            lambda c: c["layers"][1]["experiments"].append(_two_arms("fusion", 0, 0)),
            "bucket range [0, 0) is empty",
        ),
        (
            lambda c: c["layers"][1]["experiments"][0].update(buckets=[0, 102]),
            "'channels' range [0, 102) is outside the buckets [0, 100)",
        ),
        (
            lambda c: c["layers"][0]["experiments"][1].update(buckets=[40, 71]),
            "its 31 buckets [40, 71) cannot be split by the arms' weights (sum 3)",
        ),
        (lambda c: c["layers"][1].update(experiments=[_two_arms("fusion", 0, 10)]), "is used in"),
        (lambda c: c["layers"][0]["experiments"][0].update(arms=[{"name": "a"}]), "at least 2"),
        (lambda c: c["layers"][0]["experiments"][0].update(colour="red"), "colour: Extra inputs"),
    ],
)
def test_invalid_configs_name_what_is_wrong(change, message) -> None:
    config = yaml.safe_load(yaml.safe_dump(CONFIG))
    change(config)
    with pytest.raises(ExperimentConfigError, match="invalid experiments config") as err:
        parse_experiments(config)
    assert message in str(err.value)


def test_unknown_names_and_unreadable_files_are_explained(tmp_path: Path) -> None:
    config = parse_experiments(CONFIG)
    with pytest.raises(ExperimentConfigError, match=r"no experiment 'nope'; configured: \["):
        config.experiment("nope")
    with pytest.raises(ExperimentConfigError, match="has no arm 'c'; its arms: \\['a', 'b'\\]"):
        config.experiment("fusion")[1].arm("c")
    path = tmp_path / "experiments.yaml"
    with pytest.raises(ExperimentConfigError, match="cannot read experiments config"):
        read_experiments(path)
    path.write_text(yaml.safe_dump(CONFIG))
    assert read_experiments(path) == config
