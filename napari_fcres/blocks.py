"""Block planning for volumes larger than memory: blocks, halos, chunk alignment.

The models are 2D and work slice by slice along ``axis``, so along that axis a
block is a group of whole slices and needs no halo.  Across the slices (Y/X) a
block that does not span the whole slice is read with a ``halo`` of context on
each side (clipped at the volume border); the read region starts on a multiple
of the models' size divisor, so the pooling grid matches the whole-volume one.

Nothing here imports torch (nor zarr): only numpy and shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError

__all__ = [
    "DEFAULT_BLOCK_VOXELS",
    "Block",
    "plan_blocks",
    "chunks_of",
    "default_chunks",
    "default_block_shape",
    "check_aligned",
    "read_region",
]

#: Default upper bound of a block's voxels (about 16 M).
DEFAULT_BLOCK_VOXELS = 2**24


@dataclass(frozen=True)
class Block:
    """One block: ``inner`` is written, ``outer`` (inner plus halo) is read."""

    inner: tuple[slice, ...]
    outer: tuple[slice, ...]

    @property
    def crop(self) -> tuple[slice, ...]:
        """``inner`` relative to ``outer``."""
        return tuple(
            slice(i.start - o.start, i.stop - o.start)
            for i, o in zip(self.inner, self.outer, strict=True)
        )


def plan_blocks(
    shape: Sequence[int],
    block_shape: Sequence[int],
    *,
    axis: int = 0,
    halo: int = 0,
    divisor: int = 1,
) -> list[Block]:
    """Blocks tiling ``shape``; Y/X blocks get ``halo`` (slicing ``axis`` of a 3D volume none).

    The read region of a block starts on a multiple of ``divisor`` (the models'
    pooling grid) and is clipped at the borders.
    """
    shape = tuple(int(n) for n in shape)
    block_shape = tuple(int(b) for b in block_shape)
    if len(block_shape) != len(shape):
        raise InputError(f"block shape {block_shape} does not match the volume shape {shape}")
    if any(b < 1 for b in block_shape):
        raise InputError(f"block shape must be positive, got {block_shape}")
    if halo < 0:
        raise InputError(f"halo must be non-negative, got {halo}")
    no_halo = axis % len(shape) if len(shape) == 3 else None
    per_axis: list[list[tuple[slice, slice]]] = []
    for ax, (n, b) in enumerate(zip(shape, block_shape, strict=True)):
        spans = []
        for start in range(0, n, b):
            stop = min(n, start + b)
            if ax == no_halo or (start == 0 and stop == n):
                spans.append((slice(start, stop), slice(start, stop)))
                continue
            lo = max(0, start - halo) // divisor * divisor
            hi = min(n, stop + halo)
            spans.append((slice(start, stop), slice(lo, hi)))
        per_axis.append(spans)
    blocks = []
    for combo in np.ndindex(*(len(s) for s in per_axis)):
        parts = [per_axis[ax][i] for ax, i in enumerate(combo)]
        blocks.append(Block(tuple(p[0] for p in parts), tuple(p[1] for p in parts)))
    return blocks


def chunks_of(array: Any) -> tuple[int, ...] | None:
    """Write granularity of a zarr array (shards where sharded) or a dask array's chunks."""
    shards = getattr(array, "shards", None)
    if shards:
        return tuple(int(c) for c in shards)
    chunks = getattr(array, "chunks", None)
    if chunks is None:
        return None
    if chunks and isinstance(chunks[0], tuple):  # dask: per-axis tuples of chunk sizes
        return tuple(int(max(c)) for c in chunks)
    return tuple(int(c) for c in chunks)


def default_chunks(shape: Sequence[int], axis: int = 0) -> tuple[int, ...]:
    """Chunks for a new output: one slice along ``axis``, up to 1024 pixels in Y/X."""
    shape = tuple(int(n) for n in shape)
    slicing = axis % 3 if len(shape) == 3 else None
    return tuple(1 if ax == slicing else min(n, 1024) for ax, n in enumerate(shape))


def default_block_shape(
    shape: Sequence[int], chunks: Sequence[int], axis: int = 0,
    max_voxels: int = DEFAULT_BLOCK_VOXELS,
) -> tuple[int, ...]:
    """One chunk along ``axis``; whole chunks in Y/X, grown while under ``max_voxels``."""
    shape = tuple(int(n) for n in shape)
    block = [min(int(c), n) for c, n in zip(chunks, shape, strict=True)]
    slicing = axis % 3 if len(shape) == 3 else None
    spatial = [ax for ax in range(len(shape)) if ax != slicing]
    while True:
        grown = False
        for ax in spatial:
            if block[ax] >= shape[ax]:
                continue
            trial = list(block)
            trial[ax] = min(shape[ax], block[ax] + int(chunks[ax]))
            if math.prod(trial) <= max_voxels:
                block, grown = trial, True
        if not grown:
            return tuple(block)


def check_aligned(block_shape: Sequence[int], target: Any, shape: Sequence[int]) -> None:
    """Raise :class:`InputError` unless every block is a whole number of ``target``'s chunks."""
    chunks = chunks_of(target)
    if chunks is None:
        return
    for b, c, n in zip(block_shape, chunks, shape, strict=True):
        if b % c and b < n:
            raise InputError(
                f"block shape {tuple(block_shape)} is not a whole number of the output's "
                f"chunks {chunks}; pick a multiple so that blocks never share a chunk"
            )


def read_region(source: Any, region: tuple[slice, ...]) -> np.ndarray:
    """``source[region]`` as a numpy array (a dask slice is computed)."""
    block = source[region]
    if hasattr(block, "compute"):
        block = block.compute()
    return np.asarray(block)
