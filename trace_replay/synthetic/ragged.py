"""Groups of consecutive elements in flat arrays (the packets of a flow, the rounds of a flow, ...)."""

from __future__ import annotations

import numpy as np


def group_starts(lengths: np.ndarray) -> np.ndarray:
    """Index of the first element of each group of `lengths` consecutive elements."""
    return np.cumsum(lengths) - lengths


def exclusive_cumsum_by_group(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Running sums that restart at every group of `lengths` consecutive elements."""
    running = np.cumsum(values) - values
    return running - np.repeat(running[group_starts(lengths)[lengths > 0]], lengths[lengths > 0])


def occurrence_index(keys: np.ndarray) -> np.ndarray:
    """For each element, how many earlier elements share its key."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    new_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(keys)), 0))
    index = np.empty(len(keys), dtype=np.int64)
    index[order] = np.arange(len(keys)) - group_start
    return index
