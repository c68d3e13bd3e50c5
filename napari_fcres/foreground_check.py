"""Does a prediction call far more (or far less) foreground than the model saw in training?

Training records the foreground share of every annotated training slice (annotated pixels
only); a trained checkpoint stores their range (``train_foreground``: min, median, max).
After a prediction, slices whose predicted share lies far outside that range are named in
a warning, so a volume far from what validation promised (a scan's blank end slices
called tissue, say) is never handed over silently.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: a slice is flagged above ``max * HIGH_FACTOR + MARGIN`` or below ``min / LOW_FACTOR - MARGIN``
HIGH_FACTOR = 1.5
LOW_FACTOR = 2.0
MARGIN = 0.05


def training_foreground(target: np.ndarray, mask: np.ndarray) -> list[float]:
    """``[min, median, max]`` foreground share over the slices of ``target`` (Z, H, W),
    counted on the annotated pixels of ``mask``; slices with no annotated pixel skipped."""
    shares = [float(t[m].mean()) for t, m in zip(target, mask, strict=True) if m.any()]
    if not shares:
        return []
    return [float(np.min(shares)), float(np.median(shares)), float(np.max(shares))]


def foreground_outliers(
    probabilities: np.ndarray, expected: Sequence[float], slices: Sequence[int] | None = None,
    threshold: float = 0.5,
) -> tuple[list[int], list[int]]:
    """Slices (indices along axis 0) predicted with far more / far less foreground than the
    training range ``expected`` ([min, median, max]) allows."""
    if len(expected) != 3:
        return [], []
    lo, _, hi = expected
    probs = probabilities[None] if probabilities.ndim == 2 else probabilities
    idx = list(range(probs.shape[0])) if slices is None else list(slices)
    high, low = [], []
    for z in idx:
        share = float((probs[z] > threshold).mean())
        if share > hi * HIGH_FACTOR + MARGIN:
            high.append(int(z))
        elif share < lo / LOW_FACTOR - MARGIN:
            low.append(int(z))
    return high, low


def _ranges(values: list[int]) -> str:
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out)


def outlier_message(high: list[int], low: list[int], expected: Sequence[float]) -> str:
    """One warning naming the slices, or "" when there are none."""
    if not high and not low:
        return ""
    lo, _, hi = expected
    parts = []
    if high:
        parts.append(f"slice(s) {_ranges(high)} far more foreground")
    if low:
        parts.append(f"slice(s) {_ranges(low)} far less foreground")
    return (" and ".join(parts) + f" than any training slice held ({lo:.0%}-{hi:.0%}): check "
            "them before using the result (content the model never saw, such as slices "
            "outside the organ, or another acquisition); paint one and fine-tune")
