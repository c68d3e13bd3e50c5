"""Which validation score keeps the best checkpoint: Dice, or V_rand for membrane EM.

Thresholded Dice barely moves when a one-pixel gap opens in a membrane, but the
gap merges two cells, which is what a connectomics user is judged on (V_rand,
ISBI 2012).  ``select_by="auto"`` picks V_rand when the training labels look
like many cells separated by thin boundaries, and Dice otherwise (organs,
lesions, anything with a few foreground objects).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from .config import metric_name  # noqa: F401 - its home is config (no scipy import)
from .metrics import DEFAULT_THRESHOLDS, dice, isbi_scores

log = logging.getLogger(__name__)

#: Median number of foreground components per annotated slice from which "auto" means V_rand.
MIN_CELLS_FOR_V_RAND = 20
#: Foreground fraction range of cell-interior labels in membrane EM.
CELL_FRACTION = (0.4, 0.97)
#: Thresholds scanned for the validation V_rand (a subset of the ISBI ones, for speed).
VALIDATION_THRESHOLDS: tuple[float, ...] = tuple(DEFAULT_THRESHOLDS[1:-1:2])  # 0.1,0.3,..,0.9


def resolve_selection(
    select_by: str, target: np.ndarray, mask: np.ndarray, annotated: Sequence[int]
) -> tuple[str, str]:
    """The metric ``select_by`` stands for on these labels, and why (for the log)."""
    if select_by != "auto":
        return select_by, "set in the config"
    counts, fractions = [], []
    for z in annotated:
        m = mask[z]
        if m.mean() < 0.5:  # sparsely painted slices say little about the structure
            continue
        fg = (target[z] > 0.5) & m
        counts.append(ndi.label(fg)[1])
        fractions.append(fg.sum() / max(m.sum(), 1))
    if not counts:
        return "dice", "labels are sparse scribbles"
    cells, frac = float(np.median(counts)), float(np.median(fractions))
    if cells >= MIN_CELLS_FOR_V_RAND and CELL_FRACTION[0] <= frac <= CELL_FRACTION[1]:
        return "v_rand", (f"labels look like cells separated by boundaries "
                          f"(median {cells:.0f} cells per slice, {frac:.0%} foreground)")
    return "dice", f"median {cells:.0f} foreground objects per slice, {frac:.0%} foreground"


def validation_scores(
    probs: np.ndarray, target: np.ndarray, mask: np.ndarray, metric: str
) -> dict[str, float]:
    """Dice at 0.5 always; V_rand (best over :data:`VALIDATION_THRESHOLDS`) when selecting by it."""
    scores = {"dice": dice(probs > 0.5, target > 0.5, mask=mask)}
    if metric == "v_rand":
        fg = (target > 0.5).astype(np.uint8)
        s = isbi_scores(probs, fg, VALIDATION_THRESHOLDS, foreground_value=1, ignore_mask=~mask)
        scores["v_rand"] = float(s["v_rand"]) if np.isfinite(s["v_rand"]) else 0.0
    return scores


#: A model must beat the best trivial prediction by this much to count as having learned.
TRIVIAL_MARGIN = 0.01


def trivial_scores(target: np.ndarray, mask: np.ndarray, metric: str) -> dict[str, float]:
    """Scores of predicting every pixel foreground, or every pixel background."""
    out = {}
    for name, value in (("all foreground", 1.0), ("all background", 0.0)):
        probs = np.full(target.shape, value, dtype=np.float32)
        out[name] = validation_scores(probs, target, mask, metric)[metric]
    return out


def learned_nothing_message(best: float, metric: str, trivial: dict[str, float]) -> str | None:
    """A plain warning when ``best`` does not beat the trivial predictions, else None."""
    name, score = max(trivial.items(), key=lambda kv: kv[1])
    if best > score + TRIVIAL_MARGIN:
        return None
    return (f"the model did not learn: its best validation {metric_name(metric)} {best:.3f} "
            f"is no better than predicting '{name}' ({score:.3f}). Train longer, annotate "
            "more slices, or check which label value is foreground and which is background")
