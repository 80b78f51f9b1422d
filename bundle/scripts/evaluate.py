"""The bundle's own evaluation: masks for every case of a datalist, Dice against the labels (nibabel only).

This is the minimal evaluation a bundle can run by itself with ``python -m monai.bundle run --config_file
configs/evaluate.yaml``; the amecam toolkit's ``amecam evaluate`` adds the slice-level protocol, HD95,
every baseline and the report.

Datalist: ``{"testing": [{"flair": "a_flair.nii.gz", "label": "a_seg.nii.gz"}, ...]}``, read as ``amecam
evaluate`` reads it: a list of cases or a dict of lists (every list is read), paths relative to the JSON
or to its ``dataroot``; one key per modality of the bundle (or its BraTS 2023 name, ``t2f`` for FLAIR;
``image`` for a one-modality bundle), ``label`` or ``seg`` (labels > 0 are tumour), optionally
``brainmask`` and ``case``; keys in any case. Entries without a label are skipped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .inference import VolumePredictor, read_nifti_channels
from .options import switch
from .preprocess import to_canonical

__all__ = ["BRAIN_KEYS", "BRATS2023_NAMES", "ID_KEYS", "LABEL_KEYS", "evaluate_datalist", "read_datalist"]

logger = logging.getLogger("amecam.evaluate")

#: datalist keys, the same as ``amecam_cli.cases`` reads (a test compares the two; the bundle cannot import amecam)
LABEL_KEYS = ("label", "seg")
BRAIN_KEYS = ("brainmask", "brain_mask", "mask")
ID_KEYS = ("case", "id", "case_id", "name")
#: BraTS 2023 file suffixes and the modality each one is
BRATS2023_NAMES = {"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2", "seg": "seg"}


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def _entry(entry: Mapping[str, Any], modalities: Sequence[str], root: Path, where: str) -> dict:
    keys = {str(k).lower(): v for k, v in entry.items()}
    brats2023 = {modality: name for name, modality in BRATS2023_NAMES.items()}
    images = []
    for modality in modalities:
        value = keys.get(modality, keys.get(brats2023.get(modality, modality)))
        if value is None and len(modalities) == 1:
            value = keys.get("image")
        if value is None:
            multi = f"; a {'+'.join(modalities)} bundle reads one key per modality, not 'image'" if "image" in keys else ""
            msg = f"{where} has no {modality!r} file (keys: {', '.join(map(str, entry))}){multi}"
            raise ValueError(msg)
        if not isinstance(value, str):
            msg = f"{where}: {modality!r} must be one file name, got {type(value).__name__}"
            raise ValueError(msg)
        images.append(root / value)
    label = next((keys[k] for k in LABEL_KEYS if keys.get(k)), None)
    brain = next((keys[k] for k in BRAIN_KEYS if keys.get(k)), None)
    case = next((str(keys[k]) for k in ID_KEYS if keys.get(k)), "")
    return {"case": case, "images": images, "label": root / label if label else None, "brainmask": root / brain if brain else None}


def read_datalist(datalist: str | Path, modalities: Sequence[str]) -> list[dict]:
    """The cases of a datalist JSON: ``case``, ``images`` (one path per modality), ``label``, ``brainmask``."""
    path = Path(datalist)
    if not str(datalist) or not path.is_file():
        msg = f"{datalist}: no such datalist (--datalist test.json)"
        raise FileNotFoundError(msg)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"{path}: cannot read datalist JSON ({exc})"
        raise ValueError(msg) from exc
    if isinstance(data, list):
        root, entries = path.parent, data
    elif isinstance(data, dict):
        root = path.parent / str(data.get("dataroot", data.get("root", ".")))
        entries = [e for value in data.values() if isinstance(value, list) for e in value]
    else:
        msg = f"{path}: datalist must be a list of cases or a dict of lists (e.g. 'testing'), got {type(data).__name__}"
        raise ValueError(msg)
    cases = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            msg = f"{path}: datalist entry {index} must be an object, got {type(entry).__name__}"
            raise ValueError(msg)
        cases.append(_entry(entry, modalities, root, f"{path}: datalist entry {index}"))
    # entries without an id are named after their first file, or its folder when file names repeat
    unnamed = [c for c in cases if not c["case"]]
    stems = [c["images"][0].name.split(".")[0] for c in unnamed]
    use_folder = len(set(stems)) < len(stems)
    for case, stem in zip(unnamed, stems):
        case["case"] = case["images"][0].parent.name if use_folder else stem
    ids = [c["case"] for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        msg = f"{path}: case ids must be unique, these repeat: {', '.join(dupes[:5])}"
        raise ValueError(msg)
    return cases


def _read_mask(path: Path, reference, what: str) -> np.ndarray:
    import nibabel as nib

    if not path.is_file():
        msg = f"{path}: no such file ({what})"
        raise FileNotFoundError(msg)
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
    for case in cases:
        for file in [*case["images"], case["label"], case["brainmask"]]:
            if file is not None and not file.is_file():
                msg = f"{file}: no such file (datalist entry {case['case']})"
                raise FileNotFoundError(msg)
    if Path(output).exists() and not overwrite:
        msg = f"{output}: output already exists (--overwrite true replaces it)"
        raise FileExistsError(msg)
    rows = []
    for case in cases:
        channels, _, reference = read_nifti_channels(case["images"])
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
