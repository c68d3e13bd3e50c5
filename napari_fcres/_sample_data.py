"""npe2 sample data: the synthetic EM stack (offline) and ISBI 2012 (downloaded once).

Labels layers hold 1 = cell interior (foreground) and 0 = membrane, so training straight
from the layer works: full labels with two values take the larger as foreground.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .sample_data import load_isbi2012, load_sample_stack

LayerData = tuple[Any, dict[str, Any], str]


def _binary(labels: np.ndarray) -> np.ndarray:
    return (np.asarray(labels) > 0).astype(np.uint8)


def synthetic_em() -> list[LayerData]:
    """Synthetic serial-section EM stack (16 x 256 x 256) and its membrane labels."""
    image, labels = load_sample_stack()
    return [
        (image, {"name": "EM (synthetic)"}, "image"),
        (_binary(labels), {"name": "EM labels (synthetic)", "opacity": 0.4}, "labels"),
    ]


def isbi2012() -> list[LayerData]:
    """ISBI 2012 training stack (30 x 512 x 512) and its membrane labels."""
    data = load_isbi2012()
    return [
        (data["train_image"], {"name": "ISBI 2012 train"}, "image"),
        (_binary(data["train_labels"]), {"name": "ISBI 2012 train labels", "opacity": 0.4},
         "labels"),
    ]
