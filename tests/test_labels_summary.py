"""What each label value means before training (napari_fcres.labels_summary)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_fcres.labels_summary import detect_label_mode, summarize_labels


def isbi_on_3_of_30() -> np.ndarray:
    lab = np.zeros((30, 32, 32), np.uint8)
    lab[:3] = 255
    lab[:3, ::8] = 0  # membranes
    return lab


def test_detect_never_discards_a_class():
    assert detect_label_mode(isbi_on_3_of_30()) == "full"  # 0 = membrane stays a class
    painted = np.zeros((4, 8, 8), np.uint8)
    painted[1, :2], painted[1, 4:] = 1, 2
    assert detect_label_mode(painted) == "partial"
    assert detect_label_mode(np.arange(16).reshape(4, 4)) == "full"  # instance ids
    assert detect_label_mode((painted > 0).astype(np.uint8)) == "full"


def test_isbi_on_some_slices_in_each_mode():
    lab = isbi_on_3_of_30()
    full = summarize_labels(lab, "full")
    assert full.ok and full.counts_text().startswith("on 30 of 30 slices: background (0)")
    assert "27 of 30 slices hold only 0" in full.warnings[0]
    slices = summarize_labels(lab, "slices")
    assert slices.ok and not slices.warnings and slices.annotated == [0, 1, 2]
    assert slices.counts["background"] == 3 * 4 * 32
    partial = summarize_labels(lab, "partial")
    assert not partial.ok and partial.counts["background"] == 0
    assert "0 means 'not annotated'" in partial.problems[0]
    assert "unlabeled (0)" in partial.counts_text()


def test_problems_and_warnings():
    painted = np.zeros((3, 8, 8), np.uint8)
    painted[0, :2], painted[0, 4:] = 1, 2
    painted[2] = 2  # a slice of foreground only
    s = summarize_labels(painted, "partial")
    assert s.ok and s.no_background == [2] and "(2) holds no background" in s.warnings[0]
    assert summarize_labels(np.zeros((2, 4, 4), np.uint8), "full").problems[0].startswith(
        "the labels are all 0")
    many = summarize_labels(np.arange(16).reshape(4, 4), "full")
    assert "need two values" in many.problems[0]
    only_fg = summarize_labels(np.full((4, 4), 3, np.uint8), "full")
    assert "no pixel is background" in only_fg.problems[0]
    assert summarize_labels(np.array([[0.5, 1.0]]), "full").problems
    with pytest.raises(ValueError):
        summarize_labels(painted, "bogus")
