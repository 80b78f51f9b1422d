"""From a tumour map to a mask: 3-D clean-up and DenseCRF refinement.

DenseCRF (Krähenbühl & Koltun, NeurIPS 2011) uses ``pydensecrf2``, which provides the ``pydensecrf``
module. It runs only on the slices that hold a candidate tumour, and only on a box around the
candidate (plus a margin), so a whole volume takes seconds rather than minutes. Defaults follow the
usual weakly supervised segmentation settings: Gaussian kernel sxy 3, compat 3; bilateral kernel
sxy 10, srgb 13, compat 10; 10 mean-field iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["CRFParams", "crf_refine_slice", "crf_refine_volume", "remove_small_components"]


def remove_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """Drop 3-D connected components (26-connectivity) smaller than ``min_voxels``."""
    if min_voxels <= 0 or not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels].astype(mask.dtype)


@dataclass(frozen=True)
class CRFParams:
    """DenseCRF parameters (pixel units)."""

    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 10.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0
    iterations: int = 10
    margin: int = 16

    def __post_init__(self) -> None:
        # a zero kernel width divides by zero inside pydensecrf and kills the process (SIGSEGV), so check here
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                msg = f"{name} must be a number > 0, got {value}"
                raise ValueError(msg)
        for name in ("gaussian_compat", "bilateral_compat"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                msg = f"{name} must be a number >= 0, got {value}"
                raise ValueError(msg)
        if self.iterations < 1 or self.margin < 0:
            msg = f"iterations must be >= 1 and margin >= 0, got {self.iterations} and {self.margin}"
            raise ValueError(msg)


def _dcrf():
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as exc:  # pragma: no cover - depends on the environment
        msg = "DenseCRF needs the pydensecrf module: pip install pydensecrf2"
        raise ImportError(msg) from exc
    return dcrf, unary_from_softmax


def crf_refine_slice(image: np.ndarray, prob: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """Refine one 2-D tumour probability map with a dense CRF.

    Args:
        image: ``(H, W)`` intensities in ``[0, 1]``.
        prob: ``(H, W)`` tumour probability in ``[0, 1]``.

    Returns:
        uint8 ``(H, W)`` mask.
    """
    dcrf, unary_from_softmax = _dcrf()
    h, w = prob.shape
    p = np.clip(prob.astype(np.float32), 1e-5, 1 - 1e-5)
    softmax = np.stack([1 - p, p])
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(softmax)))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    rgb = np.ascontiguousarray(np.repeat((np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2))
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=rgb, compat=params.bilateral_compat)
    q = np.array(crf.inference(params.iterations)).reshape(2, h, w)
    return (q[1] > q[0]).astype(np.uint8)


def crf_refine_volume(
    image: np.ndarray,
    prob: np.ndarray,
    candidate: np.ndarray,
    params: CRFParams = CRFParams(),
    *,
    restrict: bool = True,
) -> np.ndarray:
    """DenseCRF on every axial slice ``z`` of ``(x, y, z)`` arrays where ``candidate`` has a pixel.

    Args:
        image: grey image in ``[0, 1]``.
        prob: tumour probability map in ``[0, 1]``.
        candidate: binary mask deciding which slices (and, with ``restrict``, which box) to refine.
        restrict: run the CRF only on the candidate's bounding box grown by ``params.margin``
            (otherwise on the whole slice; slower, for comparison).

    Returns:
        uint8 mask; slices without a candidate stay empty.
    """
    out = np.zeros(candidate.shape, dtype=np.uint8)
    for z in np.flatnonzero(candidate.any(axis=(0, 1))):
        plane = candidate[:, :, z]
        if restrict:
            xs, ys = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
            x0, x1 = max(xs[0] - params.margin, 0), min(xs[-1] + 1 + params.margin, plane.shape[0])
            y0, y1 = max(ys[0] - params.margin, 0), min(ys[-1] + 1 + params.margin, plane.shape[1])
        else:
            x0, x1, y0, y1 = 0, plane.shape[0], 0, plane.shape[1]
        out[x0:x1, y0:y1, z] = crf_refine_slice(image[x0:x1, y0:y1, z], prob[x0:x1, y0:y1, z], params)
    return out
