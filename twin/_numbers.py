"""The one check of numbers at the model's boundary: of a number type, finite, and not negative.

`ClusterState`, `CostParams` and `Thresholds` call it, each with its own error class, so a NaN, an
infinity, a None or a string is refused where it enters the model with a message naming the field (and
the instance or flow that holds it), instead of turning into a NaN cost or a numpy error later on.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def check_numbers(name: str, values, *, error: type[Exception], strict: bool = False,
                  owners: tuple[str, Sequence[str]] | None = None) -> None:
    """Raise `error` unless every entry of `values` (a scalar or an array) is a finite int or float that is
    >= 0 (> 0 with `strict`); `owners` = (kind, ids) names the holder of each entry of a 1-D array."""
    array = np.asarray(values)
    if array.dtype.kind not in "iuf":
        got = repr(values) if array.ndim == 0 else f"an array of {array.dtype}"
        raise error(f"{name} must be {'a number' if array.ndim == 0 else 'numbers'}, got {got}")
    with np.errstate(invalid="ignore"):
        below = array <= 0 if strict else array < 0
    bad = ~np.isfinite(array) | below
    if not bad.any():
        return
    requirement = f"{name} must be finite and {'>' if strict else '>='} 0"
    k = int(np.argmax(bad.ravel()))
    value = array.ravel()[k].item()
    if array.ndim == 0:
        raise error(f"{requirement}, got {value!r}")
    adjective = "non-finite" if not np.isfinite(value) else "non-positive" if strict else "negative"
    if owners is not None and array.ndim == 1:
        holder = f"{owners[0]} {owners[1][k]!r}"
    else:
        holder = f"entry {np.unravel_index(k, array.shape)}"
    raise error(f"{requirement}, but {holder} has a {adjective} {name} ({value!r})")
