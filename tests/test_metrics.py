from __future__ import annotations

import math

import numpy as np
import pytest

from amecam_cli.metrics import PAPER_HD95_EMPTY, dice, hd95, iou, mask_metrics, sensitivity, specificity, summarize


def _square(shape, x0, x1, y0, y1):
    m = np.zeros(shape, dtype=np.uint8)
    m[x0:x1, y0:y1] = 1
    return m


def test_overlap_of_two_known_squares():
    # 5x5 squares overlapping in a 5x3 strip: |P|=|T|=25, |P∩T|=15, |P∪T|=35
    a = _square((20, 20), 5, 10, 5, 10)
    b = _square((20, 20), 5, 10, 7, 12)
    assert dice(a, b) == pytest.approx(30 / 50)
    assert iou(a, b) == pytest.approx(15 / 35)
    assert sensitivity(a, b) == pytest.approx(15 / 25)
    assert specificity(a, b) == pytest.approx((400 - 35) / 375)


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [(None, 4.0), ((1.0, 1.0), 4.0), ((1.0, 2.0), 8.0), ((3.0, 0.5), 2.0)],
)
def test_hd95_2d_points_follow_spacing(spacing, expected):
    a = np.zeros((10, 10)); a[5, 5] = 1
    b = np.zeros((10, 10)); b[5, 9] = 1
    assert hd95(a, b, spacing=spacing) == pytest.approx(expected)


def test_hd95_3d_in_mm():
    a = np.zeros((5, 5, 6)); a[1, 1, 1] = 1
    b = np.zeros((5, 5, 6)); b[1, 1, 4] = 1
    assert hd95(a, b, spacing=(1.0, 1.0, 3.0)) == pytest.approx(9.0)


def test_hd95_identical_masks_is_zero():
    a = _square((16, 16), 3, 9, 4, 12)
    assert hd95(a, a.copy()) == 0.0


def test_empty_mask_conventions():
    empty = np.zeros((8, 8), dtype=np.uint8)
    full = _square((8, 8), 2, 5, 2, 5)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(full, empty) == 0.0 and iou(empty, full) == 0.0
    assert hd95(empty, empty) == 0.0 and hd95(empty, empty, convention="paper") == 0.0
    assert math.isnan(hd95(full, empty))
    assert hd95(full, empty, convention="paper") == PAPER_HD95_EMPTY
    assert hd95(empty, full, convention="paper") == PAPER_HD95_EMPTY
    assert math.isnan(sensitivity(full, empty))
    assert math.isnan(specificity(empty, np.ones((8, 8))))


def test_bad_arguments():
    with pytest.raises(ValueError, match="same shape"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="convention must be one of amecam, paper"):
        hd95(np.ones((3, 3)), np.ones((3, 3)), convention="nnunet")


def test_mask_metrics_and_summary_skip_nan():
    a = _square((12, 12), 2, 6, 2, 6)
    rows = [mask_metrics(a, a), mask_metrics(a, np.zeros_like(a)), mask_metrics(a, _square((12, 12), 2, 6, 3, 7))]
    summary = summarize(rows)
    assert summary["dice"] == pytest.approx((1.0 + 0.0 + 0.75) / 3)
    assert summary["n_hd95"] == 2  # the empty-truth row has no HD95 under the amecam convention
    assert summary["hd95"] == pytest.approx((0.0 + 1.0) / 2)
