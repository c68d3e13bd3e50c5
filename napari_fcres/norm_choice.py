"""Which slices of a stack may be normalized by their own statistics (``norm_stats: auto``).

Per-slice batch-norm statistics (``"image"``) correct what changes from slice to slice in
an EM stack: brightness and contrast of the acquisition, while the content (cells and
membranes) stays the same.  In a CT or MRI scan the acquisition is constant and the
content changes along the volume (the end of an organ, slices of air); standardizing
such a slice by its own statistics makes it look like tissue.  The two cases differ in
the raw intensities, before any network:

* the *shape* of a slice's intensity distribution after its own standardization is the
  same for every slice of an EM stack (Kolmogorov-Smirnov distance to the stack's pooled
  standardized distribution at most 0.02 on all 60 ISBI 2012 slices), and differs for a
  scan (0.07-0.42 on every slice of the synthetic scans of
  :mod:`napari_fcres.synthetic_scan`);
* a blank or nearly blank slice has a far smaller spread than the stack's typical slice.

:func:`own_statistics_slices` marks a slice for its own statistics only when the stack as
a whole has one distribution shape, the slice has it too, and its spread is within a
factor of the typical slice's.  :func:`statistics_plan` then says what every slice uses:

* an EM-like stack (one distribution shape): ``"image"`` for those slices, ``"volume"``
  (the statistics of the stack's typical slices, shared) for the atypical ones, such as
  a blank slice;
* a scan (content changes along the volume): ``"running"``, the averages learned in
  training.  A scan's acquisition is calibrated (HU) or constant over the volume, so the
  training statistics hold for every slice, whatever share of it is air; statistics of
  the predicted volume would depend on how much air its field of view holds (on the
  synthetic MRI scan, trained on its middle slices: Dice 0.55 with the whole volume's
  statistics, 0.99 with the running averages, BENCHMARKS.md).

Only numpy is needed: it reads raw intensities.
"""

from __future__ import annotations

import numpy as np

#: standardized values are binned over [-6, 6] in this many bins for the distances
_EDGES = np.linspace(-6.0, 6.0, 241)
#: at most this many pixels of a slice are read for its distribution (evenly strided)
_MAX_PIXELS = 65_536
#: a stack whose median slice lies further than this from the pooled shape is a scan
STACK_SHAPE_LIMIT = 0.05
#: a slice further than this from the pooled shape takes the volume's statistics
SLICE_SHAPE_LIMIT = 0.05
#: a slice whose standard deviation differs from the typical slice's by more than this
#: factor (either way) takes the volume's statistics
SPREAD_FACTOR = 2.0


def _sample(slice2d: np.ndarray) -> np.ndarray:
    flat = np.asarray(slice2d).ravel()
    step = max(1, flat.size // _MAX_PIXELS)
    return flat[::step].astype(np.float64)


def _standardized_cdf(values: np.ndarray) -> np.ndarray | None:
    """The empirical CDF of ``(v - mean) / std`` on :data:`_EDGES`; None for a constant slice."""
    std = values.std()
    if not np.isfinite(std) or std <= 0:
        return None
    hist, _ = np.histogram((values - values.mean()) / std, _EDGES)
    total = hist.sum()
    return np.cumsum(hist) / total if total else None


def is_scan_like(reference: np.ndarray) -> bool:
    """True when the slices' standardized intensity distributions differ in shape (a scan
    whose content changes along the volume), False for an EM-like stack."""
    ref = np.asarray(reference)
    ref = ref[None] if ref.ndim == 2 else ref
    cdfs = [c for c in (_standardized_cdf(_sample(z)) for z in ref) if c is not None]
    if not cdfs:
        return True
    pooled = np.mean(cdfs, axis=0)
    return float(np.median([np.abs(c - pooled).max() for c in cdfs])) > STACK_SHAPE_LIMIT


def statistics_plan(stack: np.ndarray, reference: np.ndarray | None = None) -> list[str]:
    """Per slice of ``stack``: ``"image"``, ``"volume"`` or ``"running"`` (module docstring)."""
    ref = stack if reference is None else reference
    if is_scan_like(ref):
        return ["running"] * (1 if np.asarray(stack).ndim == 2 else len(stack))
    own = own_statistics_slices(stack, ref)
    return ["image" if o else "volume" for o in own]


def own_statistics_slices(stack: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """A bool per slice of ``stack`` (Z, H, W): True where the slice's own batch-norm
    statistics may be used, False where the whole volume's should.

    ``reference`` (slices ``(M, H', W')``, default ``stack``) stands for the volume: its
    pooled standardized distribution and median slice spread are the yardsticks.
    """
    stack = np.asarray(stack)
    ref = stack if reference is None else np.asarray(reference)
    if stack.ndim == 2:
        stack = stack[None]
    if ref.ndim == 2:
        ref = ref[None]
    ref_samples = [_sample(z) for z in ref]
    ref_cdfs = [c for c in (_standardized_cdf(v) for v in ref_samples) if c is not None]
    if not ref_cdfs:  # every reference slice is constant: nothing to standardize
        return np.zeros(stack.shape[0], dtype=bool)
    pooled = np.mean(ref_cdfs, axis=0)
    ref_dist = [float(np.abs(c - pooled).max()) for c in ref_cdfs]
    if float(np.median(ref_dist)) > STACK_SHAPE_LIMIT:
        return np.zeros(stack.shape[0], dtype=bool)  # a scan: content changes along it
    typical_std = float(np.median([v.std() for v in ref_samples]))
    out = np.zeros(stack.shape[0], dtype=bool)
    for i, z in enumerate(stack):
        values = _sample(z)
        cdf = _standardized_cdf(values)
        if cdf is None or typical_std <= 0:
            continue
        ratio = float(values.std()) / typical_std
        out[i] = (float(np.abs(cdf - pooled).max()) <= SLICE_SHAPE_LIMIT
                  and 1.0 / SPREAD_FACTOR <= ratio <= SPREAD_FACTOR)
    return out
