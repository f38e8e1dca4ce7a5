"""Calibration of probabilities learnt on negatively down-sampled data.

If every negative is kept with probability a and positives always, a model trained on the kept
samples as they come learns q = p / (p + a (1 - p)); inverting gives the true probability
p = a q / (1 - q + a q) (He et al., "Practical Lessons from Predicting Clicks on Ads at
Facebook", ADKDD 2014). That is exact only for a q that is right on the sampled data, so each
task also gets a scalar offset on its logit (`fit_offset`): full training fits it on its log,
and online the `OffsetTracker` refits it on the model's predictions for samples it had not
learnt from yet, the newest `window` of them, so the offsets follow the stream. Every offset
is fitted on what is checked: the mean of the final prediction (a calibrated task's after the
correction above) over the samples weighted by 1 / keep_rate, i.e. over every impression,
equals the task's rate there. (Matching the mean q on the sampled data to the sampled rate
instead left the mean of p = a q / (1 - q + a q) 6-11 % above the click rate on KuaiRand at
a = 0.25: the correction is concave in q, so the mean of p is not p of the mean.)
"""

from __future__ import annotations

import numpy as np
import torch


def calibrate(q: torch.Tensor, a: float) -> torch.Tensor:
    """p = a q / (1 - q + a q): a probability learnt with negatives kept at rate a, corrected."""
    return a * q / (1.0 - q + a * q)


def fit_offset(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, a: float | None = None) -> float:
    """The d for which the w-weighted mean of sigmoid(z + d) equals the w-weighted mean of y
    (with `a`: of calibrate(sigmoid(z + d), a), the prediction of a down-sampling-calibrated
    task).

    Args:
        z: (B,) logits, y: (B,) labels in [0, 1], w: (B,) non-negative sample weights.
        a: the negative keep rate the task's q was learnt under (None: no correction).
    """
    z, y, w = z.double(), y.double(), w.double()
    target = float((w * y).sum() / w.sum())
    lo, hi = -20.0, 20.0
    for _ in range(60):  # bisection: the weighted mean prediction rises with d
        mid = (lo + hi) / 2
        p = torch.sigmoid(z + mid)
        mean = float((w * (p if a is None else calibrate(p, a))).sum() / w.sum())
        lo, hi = (mid, hi) if mean < target else (lo, mid)
    return (lo + hi) / 2


class OffsetTracker:
    """Per-task logit offsets refit on the newest `window` predictions made before learning.

    Online, the ranker's forward pass on a batch, before its step, is a prediction on samples
    it has not learnt from; `observe` keeps the newest `window` of them per task (logit, label,
    1 / keep_rate) in a ring and refits each task's offset on the ring once it holds
    `window // 4`.
    """

    def __init__(self, calibrated: dict[str, bool], window: int) -> None:
        """Args:
        calibrated: task -> whether its prediction is corrected for down-sampling
            (`calibrate`; the others are importance weighted in the loss).
        window: samples per task the offsets are fitted on.
        """
        self.calibrated = calibrated
        self.window = window
        self._rings = {t: np.zeros((3, window)) for t in calibrated}  # (logit, label, weight)
        self._next = 0
        self._filled = 0

    def observe(
        self,
        logits: dict[str, torch.Tensor],
        labels: dict[str, np.ndarray],
        keep_rate: np.ndarray,
        a: float = 1.0,
    ) -> dict[str, float]:
        """Add one batch's raw logits (before the step) and labels; the refit offsets of every
        task, or {} while the ring holds fewer than `window // 4` samples.

        Args:
            a: the negative keep rate the calibrated tasks are corrected with.
        """
        n = min(len(keep_rate), self.window)
        slots = (self._next + np.arange(n)) % self.window
        inverse = 1.0 / np.maximum(keep_rate[-n:], 1e-6)  # (n,)
        for t, ring in self._rings.items():
            ring[0, slots] = logits[t].detach().double().numpy()[-n:]
            ring[1, slots] = labels[t][-n:]
            ring[2, slots] = inverse
        self._next = (self._next + n) % self.window
        self._filled = min(self.window, self._filled + n)
        if self._filled < self.window // 4:
            return {}
        return {
            t: fit_offset(
                *(torch.from_numpy(r) for r in ring[:, : self._filled]),
                a if self.calibrated[t] else None,
            )
            for t, ring in self._rings.items()
        }


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of `scores` for `labels` > 0 (ties count a half); NaN without both classes."""
    pos = np.asarray(labels) > 0
    _, group = np.unique(np.asarray(scores), return_inverse=True)  # tie groups, ascending
    n = int(group.max()) + 1 if len(group) else 0
    ups = np.bincount(group, pos, n).astype(np.float64)
    downs = np.bincount(group, ~pos, n).astype(np.float64)
    if not ups.sum() or not downs.sum():
        return float("nan")
    below = np.cumsum(downs) - downs
    return float((ups * (below + 0.5 * downs)).sum() / (ups.sum() * downs.sum()))


class PrequentialAUC:
    """ROC AUC per task of the newest `window` predictions, each made before learning.

    Online, the ranker's forward pass on a batch precedes its step on that batch (test, then
    train): `observe` keeps the newest `window` logits and labels per task in a ring; `auc`
    reads it (the learner's `streamrec_learner_auc` metric, at scrape time).
    """

    def __init__(self, tasks: tuple[str, ...], window: int) -> None:
        self.window = window
        self._rings = {t: np.zeros((2, window)) for t in tasks}  # (logit, label)
        self._next = 0
        self._filled = 0

    def observe(self, logits: dict[str, torch.Tensor], labels: dict[str, np.ndarray]) -> None:
        """Add one batch's logits (before the step) and labels."""
        n = min(len(next(iter(labels.values()))), self.window)
        slots = (self._next + np.arange(n)) % self.window
        for t, ring in self._rings.items():
            ring[0, slots] = logits[t].detach().double().numpy()[-n:]
            ring[1, slots] = labels[t][-n:]
        self._next = (self._next + n) % self.window
        self._filled = min(self.window, self._filled + n)

    @property
    def samples(self) -> int:
        """Predictions held (at most `window`)."""
        return self._filled

    def auc(self) -> dict[str, float]:
        """Task -> AUC over the ring (NaN while it lacks a class; {} while it is empty)."""
        filled = self._filled
        if not filled:
            return {}
        rings = {t: ring[:, :filled].copy() for t, ring in self._rings.items()}
        return {t: roc_auc(ring[1], ring[0]) for t, ring in rings.items()}
