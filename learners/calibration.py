"""Calibration of probabilities learnt on negatively down-sampled data.

If every negative is kept with probability a and positives always, a model trained on the kept
samples as they come learns q = p / (p + a (1 - p)); inverting gives the true probability
p = a q / (1 - q + a q) (He et al., "Practical Lessons from Predicting Clicks on Ads at
Facebook", ADKDD 2014).
"""

from __future__ import annotations

import torch


def calibrate(q: torch.Tensor, a: float) -> torch.Tensor:
    """p = a q / (1 - q + a q): a probability learnt with negatives kept at rate a, corrected."""
    return a * q / (1.0 - q + a * q)
