"""Overlap and distance metrics for binary masks, 2-D slices and 3-D volumes.

Empty-mask conventions (``convention="amecam"``, the default):

===========================  ======  ======  ===========================  =====  =====
case                         Dice    IoU     HD95                         Sens.  Spec.
===========================  ======  ======  ===========================  =====  =====
both empty                   1       1       0                            nan    1
exactly one empty            0       0       nan (left out of means)      0/nan  ...
===========================  ======  ======  ===========================  =====  =====

``convention="paper"`` follows the AME-CAM evaluation code: HD95 is ``373.12866`` (the diagonal of a
240x240 slice plus a margin, a fixed penalty) when exactly one of prediction and ground truth is empty,
and 0 when both are. Sensitivity is nan when the ground truth is empty; specificity is nan when the
ground truth covers everything.

HD95 is the symmetric 95th-percentile Hausdorff distance between the masks' boundaries (MONAI's
``compute_hausdorff_distance``), in the units of ``spacing`` (mm when the spacing comes from the file;
pixels when it is omitted).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "CONVENTIONS",
    "PAPER_HD95_EMPTY",
    "dice",
    "hd95",
    "iou",
    "mask_metrics",
    "sensitivity",
    "specificity",
    "summarize",
]

PAPER_HD95_EMPTY = 373.12866
CONVENTIONS = ("amecam", "paper")


def _binary(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred) > 0, np.asarray(truth) > 0
    if pred.shape != truth.shape:
        msg = f"prediction and ground truth must have the same shape, got {pred.shape} and {truth.shape}"
        raise ValueError(msg)
    return pred, truth


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient ``2|P∩T| / (|P|+|T|)``; 1 when both masks are empty."""
    pred, truth = _binary(pred, truth)
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union (Jaccard); 1 when both masks are empty."""
    pred, truth = _binary(pred, truth)
    union = int((pred | truth).sum())
    return 1.0 if union == 0 else int((pred & truth).sum()) / union


def sensitivity(pred: np.ndarray, truth: np.ndarray) -> float:
    """True-positive rate; nan when the ground truth is empty."""
    pred, truth = _binary(pred, truth)
    positives = int(truth.sum())
    return math.nan if positives == 0 else int((pred & truth).sum()) / positives


def specificity(pred: np.ndarray, truth: np.ndarray) -> float:
    """True-negative rate; nan when the ground truth has no negative voxel."""
    pred, truth = _binary(pred, truth)
    negatives = int((~truth).sum())
    return math.nan if negatives == 0 else int((~pred & ~truth).sum()) / negatives


def hd95(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    convention: str = "amecam",
) -> float:
    """Symmetric 95th-percentile Hausdorff distance between two binary masks (2-D or 3-D).

    Args:
        pred: predicted mask.
        truth: ground-truth mask of the same shape.
        spacing: voxel size per axis; distances are in these units (pixels if omitted).
        convention: ``"amecam"`` (nan when exactly one mask is empty) or ``"paper"`` (373.12866).

    Example:
        >>> a = np.zeros((10, 10)); a[5, 5] = 1
        >>> b = np.zeros((10, 10)); b[5, 9] = 1
        >>> hd95(a, b, spacing=(1.0, 2.0))
        8.0
    """
    from monai.metrics import compute_hausdorff_distance

    if convention not in CONVENTIONS:
        msg = f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}"
        raise ValueError(msg)
    pred, truth = _binary(pred, truth)
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return 0.0
    if has_pred != has_truth:
        return PAPER_HD95_EMPTY if convention == "paper" else math.nan
    as_tensor = lambda m: torch.from_numpy(m[None, None].astype(np.float32))  # noqa: E731
    value = compute_hausdorff_distance(
        as_tensor(pred), as_tensor(truth), include_background=True, percentile=95,
        spacing=None if spacing is None else [float(s) for s in spacing],
    )
    return float(value.reshape(-1)[0])


def mask_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    convention: str = "amecam",
) -> dict[str, float]:
    """Dice, IoU, HD95, sensitivity and specificity of one prediction, see the module conventions."""
    return {
        "dice": dice(pred, truth),
        "iou": iou(pred, truth),
        "hd95": hd95(pred, truth, spacing=spacing, convention=convention),
        "sensitivity": sensitivity(pred, truth),
        "specificity": specificity(pred, truth),
    }


def summarize(rows: Sequence[dict[str, float]], keys: Sequence[str] = ("dice", "iou", "hd95")) -> dict[str, float]:
    """Mean and standard deviation of each metric over ``rows``, ignoring nan; ``n_<key>`` counts the values used."""
    out: dict[str, float] = {}
    for key in keys:
        values = np.array([r[key] for r in rows if key in r], dtype=float)
        values = values[~np.isnan(values)]
        out[key] = float(values.mean()) if values.size else math.nan
        out[f"{key}_std"] = float(values.std()) if values.size else math.nan
        out[f"n_{key}"] = int(values.size)
    return out
