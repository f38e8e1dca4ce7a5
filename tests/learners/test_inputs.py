"""Model inputs: the window rates agree with the feature store's own derived features."""

from __future__ import annotations

import numpy as np

from features.samples import STAT_FEATURES
from features.schema import FeatureConfig, derive
from features.windows import METRICS, WINDOWS
from learners.config import RankerConfig, config_from_dict, config_to_dict
from learners.inputs import R, rate_tensor


def test_rates_are_the_feature_stores_smoothed_rates_as_centred_log_odds() -> None:
    rng = np.random.default_rng(0)
    counts = rng.poisson(20, (50, len(STAT_FEATURES))).astype(np.float64)
    for w in WINDOWS:  # impressions >= clicks, plays = clicks
        imp = counts[:, STAT_FEATURES.index(f"impressions_{w.name}")] + 40
        counts[:, STAT_FEATURES.index(f"impressions_{w.name}")] = imp
        counts[:, STAT_FEATURES.index(f"plays_{w.name}")] = counts[
            :, STAT_FEATURES.index(f"clicks_{w.name}")
        ]
    config = FeatureConfig()
    rates = rate_tensor(counts, config.prior_strength, config).numpy()
    assert rates.shape == (50, R)
    by_window = {  # (50, METRICS) per window, the stats job's layout
        w.name: np.stack(
            [
                counts[:, STAT_FEATURES.index(f"{m}_{w.name}")]
                if f"{m}_{w.name}" in STAT_FEATURES
                else np.zeros(50)
                for m in METRICS
            ],
            axis=1,
        ).astype(np.int64)
        for w in WINDOWS
    }
    derived = derive("user_stats", by_window, config)
    prior = np.log(config.ctr_prior / (1 - config.ctr_prior))
    for j, w in enumerate(WINDOWS):  # the ctr is the first of 8 rates per window
        ctr = derived[f"ctr_{w.name}"]
        np.testing.assert_allclose(rates[:, 8 * j], np.log(ctr / (1 - ctr)) - prior, rtol=1e-4)
    # no history at all: every rate sits at its prior, so every input is 0
    assert np.all(rate_tensor(np.zeros((3, len(STAT_FEATURES))), 2.0, config).numpy() == 0)
    # missing (NaN) or negative counts count as zero
    bad = np.full((1, len(STAT_FEATURES)), np.nan)
    bad[0, 0] = -5
    assert np.all(rate_tensor(bad, 2.0, config).numpy() == 0)


def test_the_priors_are_the_ones_handed_in() -> None:
    counts = np.zeros((2, len(STAT_FEATURES)))
    first = WINDOWS[0].name  # the ctr of the first window is input 0
    counts[0, STAT_FEATURES.index(f"impressions_{first}")] = 10
    counts[0, STAT_FEATURES.index(f"clicks_{first}")] = 5

    def logit(p: float) -> float:
        return float(np.log(p / (1 - p)))

    for priors in (FeatureConfig(), FeatureConfig(ctr_prior=0.3, engagement_prior=0.05)):
        rates = rate_tensor(counts, 2.0, priors).numpy()
        want = logit((5 + 2.0 * priors.ctr_prior) / (10 + 2.0)) - logit(priors.ctr_prior)
        np.testing.assert_allclose(rates[0, 0], want, rtol=1e-5)
        assert np.all(rates[1] == 0)  # no history: centred on these priors


def test_ranker_priors_travel_with_the_model_and_old_snapshots_get_the_default() -> None:
    priors = FeatureConfig(ctr_prior=0.2)
    hyper = config_to_dict(RankerConfig(priors=priors))
    assert config_from_dict(RankerConfig, hyper).priors == priors
    del hyper["priors"]  # a snapshot written before the priors were kept
    assert config_from_dict(RankerConfig, hyper).priors == FeatureConfig()
    assert FeatureConfig() == FeatureConfig(
        ctr_prior=0.1, engagement_prior=0.02, completion_prior=0.3
    )
