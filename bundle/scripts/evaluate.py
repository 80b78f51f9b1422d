"""The bundle's own evaluation: masks for every case of a datalist, Dice against the labels (nibabel only).

This is the minimal evaluation a bundle can run by itself with ``python -m monai.bundle run --config_file
configs/evaluate.yaml``; the amecam toolkit's ``amecam evaluate`` adds the slice-level protocol, HD95,
every baseline and the report.

Datalist: ``{"testing": [{"flair": "a_flair.nii.gz", "label": "a_seg.nii.gz"}, ...]}`` (paths relative to the
JSON; one key per modality of the bundle, in ``channel_def`` order; labels > 0 are tumour).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .inference import VolumePredictor
from .preprocess import to_canonical

__all__ = ["evaluate_datalist"]

logger = logging.getLogger("amecam.evaluate")


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def evaluate_datalist(predictor: VolumePredictor, datalist: str, modalities: list[str], output: str) -> dict:
    """Predict every labelled case of ``datalist`` and write per-case and mean Dice to ``output`` (JSON)."""
    import nibabel as nib

    path = Path(datalist)
    data = json.loads(path.read_text(encoding="utf-8"))
    entries = data if isinstance(data, list) else [e for v in data.values() if isinstance(v, list) for e in v]
    rows = []
    for index, entry in enumerate(entries):
        if "label" not in entry:
            continue
        files = [path.parent / entry[m] for m in modalities]
        reference = nib.load(str(files[0]))
        arrays = [np.asanyarray(nib.load(str(f)).dataobj).astype(np.float32) for f in files]
        channels, _ = to_canonical(np.stack(arrays, axis=-1), reference.affine)
        label = np.asanyarray(nib.load(str(path.parent / entry["label"])).dataobj) > 0
        label, _ = to_canonical(label, reference.affine)
        prediction = predictor.predict_canonical(np.moveaxis(channels, -1, 0), all_maps=False)
        dice = _dice(prediction.mask > 0, label)
        rows.append({"case": entry.get("case", str(index)), "dice": dice})
        logger.info("%s: Dice %.3f", rows[-1]["case"], dice)
    summary = {"mean_dice": float(np.mean([r["dice"] for r in rows])) if rows else None, "cases": rows}
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    logger.info("mean volume Dice %.3f over %d cases -> %s", summary["mean_dice"] or float("nan"), len(rows), output)
    return summary
