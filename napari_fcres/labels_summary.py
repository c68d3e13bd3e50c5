"""What each label value means for training, counted before a run starts.

Three ways to read a labels array (``LABEL_MODES``):

* ``"full"``: every pixel of every slice is labelled; at most two values, the larger is
  foreground (ISBI 2012: 0 = membrane = background, 255 = cell = foreground).
* ``"slices"``: as ``"full"``, but only slices holding a non-zero value count (e.g. 3 of 30
  slices labelled, the others left at 0).
* ``"partial"``: napari painting; 0 = not annotated (ignored), 1 = background, 2 or more =
  foreground (:func:`napari_fcres.label_rules.partial_masks`, the rule
  :func:`napari_fcres.label_rules.as_binary_labels` trains with ``partial=True``).

:func:`summarize_labels` counts the unlabelled, background and foreground pixels on the slices
that count, lists the slices without background or foreground, and says what would make a run
useless (``problems``: refuse to start) or suspicious (``warnings``).  :func:`detect_label_mode`
only picks ``"partial"`` for labels that look painted (values 0, 1 and 2, nothing else): an
automatic choice never turns a class (e.g. membranes labelled 0) into "not annotated".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .label_rules import (
    BACKGROUND,
    FOREGROUND,
    UNLABELED,
    full_foreground_value,
    painted_slices,
    partial_masks,
    partial_role,
)

__all__ = ["LABEL_MODES", "LabelSummary", "detect_label_mode", "summarize_labels"]

log = logging.getLogger(__name__)

#: mode -> short description (the Train widget's choices)
LABEL_MODES: dict[str, str] = {
    "full": "full labels: two values, the larger is foreground; every slice counts",
    "slices": "full labels on the labelled slices only: slices that are all 0 are left out",
    "partial": "partial annotation: 0 = not annotated (ignored), 1 = background, "
               "2+ = foreground",
}
ROLES = ("unlabeled", "background", "foreground")
#: Elements counted at a time by :func:`_distinct`.
_CHUNK = 1 << 20


@dataclass
class LabelSummary:
    """Pixel counts per role on the slices that count for training."""

    mode: str
    n_slices: int  # along the first axis (1 for a 2-D image)
    annotated: list[int]  # slices that count for training
    counts: dict[str, int]  # role -> pixels on the annotated slices
    values: dict[str, list[int]]  # role -> label values with that role (a few)
    no_background: list[int] = field(default_factory=list)  # annotated slices
    no_foreground: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # training cannot learn: refuse
    warnings: list[str] = field(default_factory=list)  # training may run: check first

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts_text(self) -> str:
        """``"on 3 of 30 slices: unlabeled (0) 12% · background (1) 20% · ..."``."""
        total = sum(self.counts.values())
        parts = []
        for role in ROLES:
            if role == "unlabeled" and self.mode != "partial":
                continue
            n = self.counts.get(role, 0)
            vals = self.values.get(role, [])
            shown = _values_text(vals, partial=self.mode == "partial", role=role)
            pct = 100.0 * n / total if total else 0.0
            parts.append(f"{role} ({shown}) {_percent(pct)}")
        where = (
            "the image" if self.n_slices == 1 and self.annotated == [0]
            else f"{len(self.annotated)} of {self.n_slices} slices"
        )
        return f"on {where}: " + " · ".join(parts)


def _percent(p: float) -> str:
    if p == 0:
        return "0%"
    if p < 0.1:
        return "<0.1%"
    return f"{p:.1f}%" if p < 10 else f"{p:.0f}%"


def _values_text(values: Sequence[int], *, partial: bool, role: str) -> str:
    if partial:
        return {"unlabeled": "0", "background": "1", "foreground": "2+"}[role]
    if not values:
        return "-"
    shown = ", ".join(str(v) for v in values[:3])
    return shown + (", ..." if len(values) > 3 else "")


def _slices_text(slices: Sequence[int]) -> str:
    shown = ", ".join(str(s) for s in slices[:8])
    return shown + (", ..." if len(slices) > 8 else "")


def _as_stack(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise ValueError(f"labels must be 2-D or 3-D, got shape {arr.shape}")
    return arr


def _distinct(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their counts (bincount for small non-negative integers)."""
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi < 1 << 20:
            # by chunks: one int64 copy of a whole stack cost more than the counting
            flat = arr.reshape(-1)
            counts = np.zeros(hi + 1, dtype=np.int64)
            for start in range(0, flat.size, _CHUNK):
                counts += np.bincount(flat[start:start + _CHUNK].astype(np.intp, copy=False),
                                      minlength=hi + 1)
            values = np.flatnonzero(counts)
            return values, counts[values]
    values, counts = np.unique(arr, return_counts=True)
    return values, counts


def detect_label_mode(labels: np.ndarray) -> str:
    """``"partial"`` for painted labels (exactly the values 0, 1 and 2), else ``"full"``.

    Never picks a mode that discards a class: any other combination (e.g. ISBI's 0 / 255, a
    0 / 1 mask, instance ids) is read as full labels, where 0 is background.
    """
    arr = np.asarray(labels)
    if arr.size == 0 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        return "full"
    values, _ = _distinct(arr)
    painted = {UNLABELED, BACKGROUND, FOREGROUND}  # as napari paints partial labels
    return "partial" if {int(v) for v in values} == painted else "full"


def summarize_labels(labels: np.ndarray, mode: str) -> LabelSummary:
    """Count what each label value means in ``mode`` (see the module docstring)."""
    if mode not in LABEL_MODES:
        raise ValueError(f"unknown label mode {mode!r}; choose one of {', '.join(LABEL_MODES)}")
    stack = _as_stack(labels)
    n = stack.shape[0]
    flat = stack.reshape(n, -1)
    if not (np.issubdtype(stack.dtype, np.integer) or stack.dtype == bool):
        if not (np.isfinite(stack).all() and np.array_equal(stack, np.round(stack))):
            return LabelSummary(mode, n, [], {}, {}, problems=[
                "labels must hold whole numbers; these hold fractions or NaN"])
        flat = flat.astype(np.int64)
    painted = painted_slices(stack)  # the same slices as label_rules.annotated_slices
    if mode == "full":
        annotated = list(range(n))
    else:
        annotated = [int(i) for i in np.flatnonzero(painted)]
    summary = LabelSummary(mode, n, annotated, dict.fromkeys(ROLES, 0),
                           {r: [] for r in ROLES})
    if not painted.any():
        summary.problems.append(
            "the labels are all 0: nothing is annotated; paint background and foreground "
            "first" + (" (1 = background, 2 = foreground)" if mode == "partial" else ""))
        return summary
    sub = flat[annotated]
    values, counts = _distinct(sub)
    values = [int(v) for v in values]
    if mode == "partial":
        annotated_px, fg_mask = partial_masks(sub)
        bg_mask = annotated_px & ~fg_mask
        for v, c in zip(values, counts, strict=True):
            role = partial_role(v)
            summary.counts[role] += int(c)
            summary.values[role].append(v)
    else:
        if len(values) > 2:
            summary.problems.append(
                f"full labels need two values (background and foreground) but these hold "
                f"{len(values)} ({_slices_text(values)}); for painted labels choose partial "
                "annotation (0 = not annotated, 1 = background, 2+ = foreground)")
            summary.counts["foreground"] = int(sum(counts))
            summary.values["foreground"] = values
            return summary
        fg_value = full_foreground_value(values)
        bg_value = values[0] if len(values) == 2 else None
        if fg_value is None:  # only 0: all background
            bg_value = 0
        bg_mask = sub == bg_value if bg_value is not None else np.zeros_like(sub, bool)
        fg_mask = sub == fg_value if fg_value is not None else np.zeros_like(sub, bool)
        for v, c in zip(values, counts, strict=True):
            role = "foreground" if v == fg_value else "background"
            summary.counts[role] += int(c)
            summary.values[role].append(v)
    has_bg, has_fg = bg_mask.any(axis=1), fg_mask.any(axis=1)
    summary.no_background = [annotated[i] for i in np.flatnonzero(~has_bg)]
    summary.no_foreground = [annotated[i] for i in np.flatnonzero(~has_fg)]
    _judge(summary, painted)
    return summary


def _judge(s: LabelSummary, painted: np.ndarray) -> None:
    """Fill ``problems`` and ``warnings``."""
    stack = s.n_slices > 1
    if s.counts["foreground"] == 0:
        hint = (" (paint it with label 2)" if s.mode == "partial"
                else "; with full labels the larger value is foreground")
        s.problems.append(f"no pixel is foreground{hint}: there is nothing to learn")
    if s.counts["background"] == 0:
        if s.mode == "partial":
            zeros = s.counts["unlabeled"]
            s.problems.append(
                "no pixel is background: in partial annotation 0 means 'not annotated' and "
                "1 is background"
                + (f", so the {zeros} pixels labelled 0 are ignored. If 0 is your background "
                   "(e.g. membranes), choose full labels"
                   + (" on the labelled slices only" if stack and not painted.all() else "")
                   if zeros else "")
                + "; a model that sees no background learns to call everything foreground")
        else:
            s.problems.append(
                "no pixel is background: every counted pixel is foreground, so a model "
                "learns nothing but 'everything is foreground'")
    elif s.no_background and stack:
        what = "1" if s.mode == "partial" else "the background value"
        k = len(s.no_background)
        s.warnings.append(
            f"{k} annotated slice{'s' if k > 1 else ''} ({_slices_text(s.no_background)}) "
            f"hold{'' if k > 1 else 's'} no background ({what}); "
            + ("in partial annotation 0 is 'not annotated', not background"
               if s.mode == "partial" else "check that they are labelled as you mean"))
    if s.mode == "full" and stack and not s.problems:
        empty = [int(i) for i in np.flatnonzero(~painted)]
        if empty and len(empty) < s.n_slices:
            s.warnings.append(
                f"{len(empty)} of {s.n_slices} slices hold only 0, which counts as "
                "background on every one of them; if those slices are simply not labelled, "
                "choose full labels on the labelled slices only")
