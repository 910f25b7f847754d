"""The Pareto front: the one dominance rule the console and the report share."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pareto_mask(*columns: Sequence[float], maximize: Sequence[bool] | None = None) -> np.ndarray:
    """Which points no other point dominates, over the given objective columns (each minimised
    unless `maximize` says otherwise): dominated means another point is at least as good on
    every objective and better on one. Exact duplicates of a front point stay on it."""
    if not columns:
        return np.zeros(0, dtype=bool)
    values = np.column_stack([np.asarray(c, float) for c in columns])
    if maximize is not None:
        values = values * np.where(np.asarray(maximize, bool), -1.0, 1.0)
    mask = np.ones(len(values), dtype=bool)
    for i, point in enumerate(values):
        no_worse = (values <= point).all(axis=1)
        better = (values < point).any(axis=1)
        mask[i] = not (no_worse & better).any()
    return mask
