"""The bundle's own evaluation: masks for every case of a datalist, Dice against the labels (nibabel only).

This is the minimal evaluation a bundle can run by itself with ``python -m monai.bundle run --config_file
configs/evaluate.yaml``; the amecam toolkit's ``amecam evaluate`` adds the slice-level protocol, HD95,
every baseline and the report.

Datalist: ``{"testing": [{"flair": "a_flair.nii.gz", "label": "a_seg.nii.gz"}, ...]}``, read by
:mod:`.datalist`, the reader ``amecam evaluate`` uses too; entries without a label are skipped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .datalist import read_datalist
from .inference import VolumePredictor, check_writable, read_nifti_channels
from .options import switch
from .preprocess import to_canonical

__all__ = ["evaluate_datalist"]

logger = logging.getLogger("amecam.evaluate")


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def _read_mask(path: Path, reference, what: str) -> np.ndarray:
    import nibabel as nib

    image = nib.load(str(path))
    if image.shape[:3] != reference.shape[:3]:
        msg = f"{path}: {what} has shape {image.shape} but the image has {reference.shape}"
        raise ValueError(msg)
    if not np.allclose(image.affine, reference.affine, atol=1e-3, rtol=1e-4):
        msg = f"{path}: {what} is not on the image's voxel grid (affine)"
        raise ValueError(msg)
    mask = np.asanyarray(image.dataobj) > 0
    while mask.ndim > 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 3:
        msg = f"{path}: {what} has shape {image.shape}; expected one 3-D mask"
        raise ValueError(msg)
    return to_canonical(mask, reference.affine)[0]


def evaluate_datalist(predictor: VolumePredictor, datalist: str, modalities: list[str], output: str, *,
                      overwrite: bool = False) -> dict:
    """Predict every labelled case of ``datalist`` and write per-case and mean volume Dice to ``output`` (JSON).

    Every entry is checked (keys, files) before the first prediction, so a mistake in the last entry
    costs no wasted work; an existing ``output`` is kept unless ``overwrite``.
    """
    overwrite = switch(overwrite, "overwrite")
    cases = [c for c in read_datalist(datalist, modalities) if c["label"] is not None]
    if not cases:
        msg = f"{datalist}: no entry has a label ('label' or 'seg'); there is nothing to score"
        raise ValueError(msg)
    if Path(output).exists() and not overwrite:
        msg = f"{output}: output already exists (--overwrite true replaces it)"
        raise FileExistsError(msg)
    check_writable(output)  # before every case is predicted, not after
    rows = []
    for case in cases:
        channels, _, reference = read_nifti_channels([case["images"][m] for m in modalities])
        label = _read_mask(case["label"], reference, "label")
        brain = _read_mask(case["brainmask"], reference, "brain mask") if case["brainmask"] is not None else None
        prediction = predictor.predict_canonical(channels, brain=brain, all_maps=False)
        rows.append({"case": case["case"], "dice": _dice(prediction.mask > 0, label)})
        logger.info("%s: Dice %.3f", rows[-1]["case"], rows[-1]["dice"])
    summary = {"mean_dice": float(np.mean([r["dice"] for r in rows])), "cases": rows}
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    logger.info("mean volume Dice %.3f over %d cases -> %s", summary["mean_dice"], len(rows), output)
    return summary
