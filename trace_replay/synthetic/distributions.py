"""The random draws of the traffic model, vectorised over numpy arrays of parameters."""

from __future__ import annotations

import numpy as np


def discrete_lomax(rng: np.random.Generator, scale: np.ndarray, alpha: float, cap: int) -> np.ndarray:
    """Counts >= 1 with P(K > k) = (1 + k/scale)^-alpha: a heavy tail that starts at one."""
    u = 1.0 - rng.random(len(scale))
    counts = 1 + np.floor(scale * (u ** (-1.0 / alpha) - 1.0))
    return np.minimum(counts, cap).astype(np.int64)


def discrete_lomax_mean(scale: float, alpha: float, cap: int) -> float:
    """Mean of `discrete_lomax` with these parameters."""
    if scale == 0:
        return 1.0
    k = np.arange(1, cap)
    return float(1.0 + np.sum((1.0 + k / scale) ** -alpha))


def pareto(rng: np.random.Generator, scale: np.ndarray, alpha: float, cap: float) -> np.ndarray:
    """One draw per element of `scale` (the minimum): P(X > x) = (x/scale)^-alpha, capped at `cap`, same units."""
    return np.minimum(scale * (1.0 - rng.random(len(scale))) ** (-1.0 / alpha), cap)


def bounded_pareto(rng: np.random.Generator, low: np.ndarray, alpha: np.ndarray, high: float) -> np.ndarray:
    """One draw per element of `low`: a Pareto of shape `alpha` (elementwise) truncated to [low, high]."""
    u = rng.random(len(low))
    return low * (1.0 - u * (1.0 - (low / high) ** alpha)) ** (-1.0 / alpha)


def lognormal(rng: np.random.Generator, median: np.ndarray | float, sigma: np.ndarray | float,
              size: int) -> np.ndarray:
    """`size` draws with this median and `sigma` the standard deviation of their log (scalars or [size] arrays)."""
    return median * np.exp(sigma * rng.standard_normal(size))


def normalised_cdf(weights: np.ndarray) -> np.ndarray:
    """Cumulative shares that end at exactly 1."""
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def zipf_cdf(n: int, exponent: float) -> np.ndarray:
    """[n] cumulative shares, for `pick`, of ranks 1..n weighted rank^-exponent (rank 1 the most likely)."""
    return normalised_cdf(np.arange(1, n + 1, dtype=np.float64) ** -exponent)


def pick(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    """`size` indices drawn with the probabilities of `cdf`."""
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(cdf) - 1)
