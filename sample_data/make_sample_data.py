"""Regenerate the shipped synthetic sample stack.

Run from the repository root::

    python sample_data/make_sample_data.py

It writes ``synthetic_em_image.tif`` and ``synthetic_em_labels.tif`` (16 x 256 x 256, uint8,
zlib-compressed) next to this script, made by
:func:`napari_fcres.sample_data.synthetic_em_stack` with seed 0.  Labels: 255 = cell
interior, 0 = membrane.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from napari_fcres.io import write_image, write_labels  # noqa: E402
from napari_fcres.sample_data import (  # noqa: E402
    SAMPLE_IMAGE_NAME,
    SAMPLE_LABELS_NAME,
    SAMPLE_SEED,
    SAMPLE_SHAPE,
    synthetic_em_stack,
)

logger = logging.getLogger("make_sample_data")


def main() -> None:
    """Generate the sample stack and write both TIFFs beside this script."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    image, labels = synthetic_em_stack(shape=SAMPLE_SHAPE, seed=SAMPLE_SEED)
    write_image(HERE / SAMPLE_IMAGE_NAME, image)
    write_labels(HERE / SAMPLE_LABELS_NAME, labels)
    for name in (SAMPLE_IMAGE_NAME, SAMPLE_LABELS_NAME):
        logger.info("%s: %.0f kB", name, (HERE / name).stat().st_size / 1024)


if __name__ == "__main__":
    main()
