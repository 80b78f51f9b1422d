"""Reading a datalist JSON: the one reader of ``amecam`` (``amecam_cli.cases``) and of the bundle's own
evaluation (``configs/evaluate.yaml``). Standard library only, so either can import it cheaply.

A datalist is a list of cases or a dict of lists (every list is read, e.g. ``training`` and ``testing``),
with paths relative to the JSON or to its ``dataroot`` (or ``root``). Per case: one key per modality (or
its BraTS 2023 name, ``t2f`` for FLAIR; ``image`` when one modality is wanted), ``label`` or ``seg``
(labels > 0 are tumour), optionally ``brainmask`` and an id (``case``, ``id``, ...); keys in any case.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["BRAIN_KEYS", "BRATS2023_NAMES", "ID_KEYS", "LABEL_KEYS", "read_datalist"]

LABEL_KEYS = ("label", "seg")
BRAIN_KEYS = ("brainmask", "brain_mask", "mask")
ID_KEYS = ("case", "id", "case_id", "name")
#: BraTS 2023 file suffixes and the modality each one is
BRATS2023_NAMES = {"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2", "seg": "seg"}


def _resolve(root: Path, value: Any, where: str) -> Path:
    path = Path(str(value))
    path = path if path.is_absolute() else root / path
    if not path.exists():
        msg = f"{where}: {path}: no such file"
        raise FileNotFoundError(msg)
    return path


def _entry(entry: Mapping[str, Any], modalities: Sequence[str], root: Path, where: str) -> dict:
    keys = {str(k).lower(): v for k, v in entry.items()}
    brats2023 = {modality: name for name, modality in BRATS2023_NAMES.items()}
    images = {}
    for modality in modalities:
        value = keys.get(modality, keys.get(brats2023.get(modality, modality)))
        if value is None and len(modalities) == 1:
            value = keys.get("image")
        if isinstance(value, list):
            msg = f"{where}: give one file per modality key (flair, t1, ...), not a list under {modality!r}"
            raise ValueError(msg)
        if value is None:
            multi = f"; a {'+'.join(modalities)} bundle reads one key per modality, not 'image'" if "image" in keys else ""
            msg = f"{where}: no {modality!r} file (keys: {', '.join(map(str, entry))}){multi}"
            raise ValueError(msg)
        images[modality] = _resolve(root, value, where)
    label = next((keys[k] for k in LABEL_KEYS if keys.get(k)), None)
    brain = next((keys[k] for k in BRAIN_KEYS if keys.get(k)), None)
    return {"case": next((str(keys[k]) for k in ID_KEYS if keys.get(k)), ""), "images": images,
            "label": _resolve(root, label, where) if label else None,
            "brainmask": _resolve(root, brain, where) if brain else None}


def read_datalist(datalist: str | Path, modalities: Sequence[str]) -> list[dict]:
    """The cases of a datalist: dicts of ``case`` (id), ``images`` (modality -> path), ``label``, ``brainmask``.

    Entries without an id are named after their first file, or its folder when file names repeat.

    Raises:
        FileNotFoundError: the datalist or a file it names is missing.
        ValueError: not JSON, not a list or dict of lists, an entry that is no object or lacks a
            modality, or repeated case ids; the message names the file and the entry.
    """
    path = Path(datalist)
    if not str(datalist) or not path.is_file():
        msg = f"{datalist}: no such datalist"
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
        # objects only: a Decathlon dataset.json also lists its unlabelled test images as bare strings
        entries = [e for value in data.values() if isinstance(value, list) for e in value if isinstance(e, dict)]
    else:
        msg = f"{path}: datalist must be a list of cases or a dict of lists (e.g. 'training'), got {type(data).__name__}"
        raise ValueError(msg)
    cases = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            msg = f"{path}: datalist entry {index} must be an object, got {type(entry).__name__}"
            raise ValueError(msg)
        cases.append(_entry(entry, modalities, root, f"{path} entry {index}"))
    unnamed = [c for c in cases if not c["case"]]
    first = [next(iter(c["images"].values())) for c in unnamed]
    stems = [f.name.split(".")[0] for f in first]
    use_folder = len(set(stems)) < len(stems)
    for case, file, stem in zip(unnamed, first, stems):
        case["case"] = file.parent.name if use_folder else stem
    ids = [c["case"] for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        msg = f"{path}: case ids must be unique, these repeat: {', '.join(dupes[:5])}"
        raise ValueError(msg)
    return cases
