"""How fast the controller is moving flows now: the pace ρ of its recent batches (measured over predicted
duration), which scales the per-move part a + b·n of the calibrated twin's next move durations by ρ^β.

The per-move work (control-channel requests and an OpenFlow bundle per move) is CPU-bound in the controller,
the NFs and OVS, so on a shared machine the same batch takes longer in one run than in another (docs/twin.md,
"Move durations"). A move's measured duration is known when its period ends, so at decision time t the twin
may read the batches of periods before t: ρ is the geometric mean, over the last `window` batches that waited for
no queued packet (drain wait w = 0: their duration is the per-move work alone), of each batch's median ratio of
measured duration to a + b·n; β is fitted on the training moves and the window chosen on the validation ones
(`twin.calibration.choose_moves`). Without such a batch ρ = 1. The drain wait c·w is not scaled: it is the
source's service, not the controller's work.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PACE_WINDOWS = (0, 1, 3, 5, 10)
"""Candidate windows, in batches; 0 turns the pace off (ρ = 1)."""
MIN_GAIN = 0.005
"""A pace window is chosen over none only when it lowers the validation MAPE by at least this much (0.5 points):
a tie keeps the simpler model."""
PACE_EXPONENTS = np.round(np.arange(0.0, 1.501, 0.05), 2)
"""The grid β is fitted on."""
LOOKBACK_PERIODS = 30
"""Only batches of the last 30 periods count (older ones say little about the machine's load now)."""
RATIO_LIMITS = (0.1, 10.0)
"""A batch's ratio is clipped to this range, so that one wild batch cannot scale the next ones by more."""


def batch_log_ratio(measured: np.ndarray, predicted: np.ndarray) -> float:
    """log of one batch's median measured/predicted duration (its moves run together and take about as long)."""
    ratio = np.median(measured / np.maximum(predicted, 1e-9))
    return float(np.log(np.clip(ratio, *RATIO_LIMITS)))


def pace(log_ratios: Sequence[float], window: int, exponent: float) -> float:
    """ρ^β: ρ the geometric mean of the last `window` batches' ratios (`log_ratios` oldest first); 1 when the
    window is 0, the exponent 0 or no batch is known."""
    recent = list(log_ratios)[-window:] if window > 0 else []
    if not recent or exponent == 0.0:
        return 1.0
    return float(np.exp(exponent * np.mean(recent)))


def history_log_ratios(batch_keys: np.ndarray, batch_order: np.ndarray, batch_log: dict, window: int) -> np.ndarray:
    """[rows] the mean log ratio of the last `window` batches of the `LOOKBACK_PERIODS` periods before each row's
    own batch in the same episode (NaN when there is none). `batch_keys[i]` is row i's episode, `batch_order[i]` its period; `batch_log`
    maps (episode, period) to that batch's log ratio."""
    by_episode: dict = {}
    for (episode, period), value in batch_log.items():
        by_episode.setdefault(episode, []).append((period, value))
    for values in by_episode.values():
        values.sort()
    out = np.full(batch_keys.size, np.nan)
    if window <= 0:
        return out
    for i, (episode, period) in enumerate(zip(batch_keys, batch_order)):
        known = by_episode.get(episode, [])
        before = [v for p, v in known if period - LOOKBACK_PERIODS <= p < period][-window:]
        if before:
            out[i] = float(np.mean(before))
    return out


def fit_exponent(per_move: np.ndarray, drain: np.ndarray, measured: np.ndarray, history: np.ndarray) -> float:
    """β of per_move·ρ^β + drain of least relative absolute error on the moves with a known history (0 without
    any)."""
    known = np.isfinite(history)
    if not known.any():
        return 0.0
    scaled = per_move[known, None] * np.exp(history[known, None] * PACE_EXPONENTS[None, :]) + drain[known, None]
    errors = (np.abs(scaled - measured[known, None]) / measured[known, None]).sum(axis=0)
    return float(PACE_EXPONENTS[int(np.argmin(errors))])


def apply(per_move: np.ndarray, history: np.ndarray, exponent: float) -> np.ndarray:
    """per_move·ρ^β per row (the a + b·n part), ρ = 1 where the history is unknown (NaN)."""
    return per_move * np.exp(exponent * np.nan_to_num(history))
