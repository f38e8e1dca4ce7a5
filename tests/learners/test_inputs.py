"""Model inputs: the window rates agree with the feature store's own derived features."""

from __future__ import annotations

import numpy as np

from features.samples import STAT_FEATURES
from features.schema import FeatureConfig, derive
from features.windows import METRICS, WINDOWS
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
    rates = rate_tensor(counts, config.prior_strength).numpy()
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
    assert np.all(rate_tensor(np.zeros((3, len(STAT_FEATURES))), 2.0).numpy() == 0)
    # missing (NaN) or negative counts count as zero
    bad = np.full((1, len(STAT_FEATURES)), np.nan)
    bad[0, 0] = -5
    assert np.all(rate_tensor(bad, 2.0).numpy() == 0)
