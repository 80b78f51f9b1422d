"""Turning volumes into a 2-D slice dataset with slice-level labels, split by case.

Layout of a slice dataset folder::

    dataset.json          settings, the case-level split, where the labels come from, amecam version
    manifest.csv          one row per slice: case, slice, z, row, label, tumor_fraction, brain_fraction, split, file
    images/<file>.npy     (n_slices, C, S, S) float16 per case, C = modalities in order
    masks/<file>.npy      (n_slices, S, S) uint8 whole-tumour masks (only when segmentations exist)
    cases/<file>.json     per-case rows and crop box; written last, so it marks the case as done

Slice labels come from the whole-tumour mask: ``tumor`` when the tumour covers more than
``min_tumor_fraction`` of the slice, ``normal`` when it has no tumour pixel, ``ambiguous`` in between
(kept in the files, left out of training by default; ``ambiguous="normal"`` reproduces the official
AME-CAM code, which calls them normal). Without masks, labels can come from a CSV of slice labels.

Cases are processed one at a time (bounded memory on BraTS-sized sets) and a rerun skips cases that
are already done, so an interrupted run resumes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from . import __version__
from .cases import Case, LoadedCase, case_fingerprint, load_case
from .errors import AmecamError
from .io import atomic_path
from .workers import check_workers, ordered_map

__all__ = [
    "AMBIGUOUS_CHOICES",
    "SliceSettings",
    "file_stem",
    "label_slices",
    "check_slice_labels",
    "read_fingerprints",
    "read_slice_labels",
    "slice_case",
    "slice_dataset",
    "split_cases",
]

logger = logging.getLogger(__name__)

AMBIGUOUS_CHOICES = ("exclude", "normal", "tumor")
FORMAT = "amecam-slices"
FORMAT_VERSION = 1
MANIFEST_FIELDS = ("case", "slice", "z", "row", "label", "tumor_fraction", "brain_fraction", "split", "file")


@dataclass(frozen=True)
class SliceSettings:
    """What determines the content of a slice dataset; a rerun must use the same values to resume.

    Attributes:
        modalities: channels, in order.
        image_size: side of the square slices after cropping to the brain.
        min_tumor_fraction: share of the slice the tumour must exceed for a ``tumor`` label.
        ambiguous: what slices with a smaller tumour become: exclude (label ``ambiguous``), normal, tumor.
        val_fraction: share of cases held out for validation.
        seed: seed of the case-level split.
        skull_strip: remove scalp and skull from the brain mask (volumes that are not skull-stripped).
    """

    modalities: tuple[str, ...]
    image_size: int = 128
    min_tumor_fraction: float = 0.01
    ambiguous: str = "exclude"
    val_fraction: float = 0.2
    seed: int = 0
    skull_strip: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or not 16 <= self.image_size <= 1024:
            raise AmecamError(f"--image_size must be a whole number in [16, 1024], got {self.image_size!r}")
        if not isinstance(self.min_tumor_fraction, (int, float)) or not 0 <= self.min_tumor_fraction < 1:
            raise AmecamError(f"--min_tumor_fraction must be in [0, 1), got {self.min_tumor_fraction!r}")
        if self.ambiguous not in AMBIGUOUS_CHOICES:
            raise AmecamError(f"--ambiguous must be one of {', '.join(AMBIGUOUS_CHOICES)}, got {self.ambiguous!r}")
        if not isinstance(self.val_fraction, (int, float)) or not 0 <= self.val_fraction < 1:
            raise AmecamError(f"--val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise AmecamError(f"--seed must be a whole number >= 0, got {self.seed!r}")

    def as_dict(self) -> dict:
        out = asdict(self)
        out["modalities"] = list(self.modalities)
        return out


def file_stem(case_id: str) -> str:
    """A file-name-safe version of a case id."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", case_id)


def split_cases(case_ids: Iterable[str], *, val_fraction: float, seed: int) -> dict[str, str]:
    """Assign each case to ``train`` or ``val``; deterministic in ``seed`` and the set of ids.

    At least one case goes to validation when ``val_fraction > 0`` and there are two or more cases.
    """
    ids = sorted(case_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = int(round(len(ids) * val_fraction))
    if val_fraction > 0 and len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    val = {ids[i] for i in order[:n_val]}
    return {case_id: ("val" if case_id in val else "train") for case_id in ids}


def label_slices(
    label: np.ndarray, zs: Iterable[int], *, min_tumor_fraction: float, ambiguous: str = "exclude"
) -> tuple[list[str], list[float]]:
    """Slice labels from a ``(x, y, z)`` whole-tumour mask.

    Returns:
        Labels (``tumor`` / ``normal`` / ``ambiguous``, or as mapped by ``ambiguous``) and tumour fractions.
    """
    area = label.shape[0] * label.shape[1]
    labels, fractions = [], []
    for z in zs:
        pixels = int(np.count_nonzero(label[:, :, z]))
        fraction = pixels / area
        if pixels == 0:
            name = "normal"
        elif fraction > min_tumor_fraction:
            name = "tumor"
        else:
            name = "ambiguous" if ambiguous == "exclude" else ambiguous
        labels.append(name)
        fractions.append(fraction)
    return labels, fractions


def tumour_slice_indices(label: np.ndarray, zs: Iterable[int], *, min_tumor_fraction: float = 0.01) -> list[int]:
    """The slices of ``zs`` that the slice-level protocol scores: those ``label_slices`` calls ``tumor``."""
    zs = [int(z) for z in zs]
    labels, _ = label_slices(label, zs, min_tumor_fraction=min_tumor_fraction)
    return [z for z, name in zip(zs, labels) if name == "tumor"]


def read_slice_labels(path: str | Path) -> dict[str, dict[int, str]]:
    """Read a CSV of slice-level labels: columns ``case``, ``slice``, ``label`` (tumor/normal or 1/0).

    ``slice`` counts along the file's axial voxel axis, as a viewer shows it. The file may be saved the way
    spreadsheets save CSV: a UTF-8 byte-order mark, capitalised headers, ``;`` or tab between columns,
    spaces around values, blank lines. A slice labelled twice must get the same label both times.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AmecamError(f"{path}: not UTF-8 text (save the slice labels as CSV UTF-8)") from exc
    except OSError as exc:
        raise AmecamError(f"{path}: cannot read slice labels ({exc.strerror})") from exc
    try:
        dialect = csv.Sniffer().sniff("\n".join(text.splitlines()[:50]), delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    header = [cell.strip().lower() for cell in next(reader, [])]
    if not {"case", "slice", "label"} <= set(header):
        found = ", ".join(h for h in header if h) or "nothing"
        raise AmecamError(f"{path}: slice-label CSV needs the columns case, slice, label (found {found})")
    column = {name: header.index(name) for name in ("case", "slice", "label")}
    names = {"tumor": "tumor", "tumour": "tumor", "1": "tumor", "normal": "normal", "0": "normal"}
    out: dict[str, dict[int, str]] = {}
    line_of: dict[tuple[str, int], int] = {}
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        cells = {name: (row[i].strip() if i < len(row) else "") for name, i in column.items()}
        if not cells["case"]:
            raise AmecamError(f"{path}: line {number}: no case id")
        value = cells["label"].lower()
        if value not in names:
            raise AmecamError(f"{path}: line {number}: label must be tumor/normal or 1/0, got {cells['label']!r}")
        try:  # a spreadsheet may write a whole number as 5.0
            number_value = float(cells["slice"])
            index = int(number_value) if number_value.is_integer() else -1
        except (ValueError, OverflowError):
            index = -1
        if index < 0:
            raise AmecamError(f"{path}: line {number}: slice must be a whole number >= 0, got {cells['slice']!r}")
        labels = out.setdefault(cells["case"], {})
        if labels.get(index, names[value]) != names[value]:
            raise AmecamError(f"{path}: line {number}: slice {index} of case {cells['case']} is labelled {names[value]} here "
                              f"and {labels[index]} on line {line_of[cells['case'], index]}")
        labels[index] = names[value]
        line_of.setdefault((cells["case"], index), number)
    if not out:
        raise AmecamError(f"{path}: holds no slice labels, only its header")
    return out


def check_slice_labels(cases: list[Case], slice_labels: dict[str, dict[int, str]] | None, *, warn: bool = True) -> None:
    """Refuse cases that have no labels at all, and slice labels for cases the data does not have.

    Without ``slice_labels`` every case needs a segmentation; with them, a case they do not mention is
    only warned about (it adds nothing to training), unless ``warn`` is false (a caller that checks early
    and slices later, which warns then).
    """
    if slice_labels is None:
        unlabelled = [c.case_id for c in cases if c.label is None]
        if unlabelled:
            raise AmecamError(f"{len(unlabelled)} case(s) have no segmentation to derive slice labels from, e.g. "
                              f"{unlabelled[0]} (give --slice_labels CSV with columns case, slice, label)")
        return
    ids = [c.case_id for c in cases]
    unknown = sorted(set(slice_labels) - set(ids))
    if unknown:
        shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
        raise AmecamError(f"slice labels name case(s) not in the data: {', '.join(unknown[:5])}"
                          f"{', ...' if len(unknown) > 5 else ''} (the data's cases: {shown})")
    missing = [i for i in ids if not slice_labels.get(i)]
    if missing and warn:
        logger.warning("%d case(s) have no slice labels and add nothing to training: %s%s", len(missing),
                       ", ".join(missing[:5]), ", ..." if len(missing) > 5 else "")


def _axial_file_index(orientation: np.ndarray, n_slices: int) -> np.ndarray:
    """Map canonical axial index z -> index along the file's own axial axis."""
    axis = int(np.flatnonzero(orientation[:, 0] == 2)[0])
    flipped = orientation[axis, 1] < 0
    z = np.arange(n_slices)
    return (n_slices - 1 - z) if flipped else z


def slice_case(
    loaded: LoadedCase, settings: SliceSettings, *, slice_labels: dict[int, str] | None = None
) -> tuple[np.ndarray, np.ndarray | None, list[dict], tuple[int, int, int, int]]:
    """Slice one loaded case.

    Returns:
        ``(images, masks, rows, box)``: float16 ``(n, C, S, S)``, uint8 ``(n, S, S)`` or None, manifest
        rows (without ``split`` and ``file``), and the in-plane crop box.
    """
    from amecam_bundle.scripts.preprocess import extract_slices, prepare_volume, resize_masks

    file_index = _axial_file_index(loaded.orientation, loaded.channels.shape[-1])
    if slice_labels is not None:  # given labels come before a segmentation's
        outside = sorted(i for i in slice_labels if not 0 <= i < len(file_index))
        if outside:
            raise AmecamError(f"case {loaded.case.case_id}: slice {outside[0]} is labelled, but the volume has "
                              f"{len(file_index)} slices (0 to {len(file_index) - 1} along its axial axis)")
    prepared = prepare_volume(loaded.channels, brain=loaded.brain, strip_skull=settings.skull_strip)
    zs = prepared.brain_slices
    area = prepared.brain.shape[0] * prepared.brain.shape[1]
    brain_fractions = prepared.brain.sum(axis=(0, 1)) / area
    if slice_labels is None and loaded.label is not None:
        labels, fractions = label_slices(
            loaded.label, zs, min_tumor_fraction=settings.min_tumor_fraction, ambiguous=settings.ambiguous
        )
    else:
        labels, fractions = [], []
        for z in zs:
            labels.append((slice_labels or {}).get(int(file_index[z]), "unlabelled"))
            fractions.append(math.nan)
    images = extract_slices(prepared.image, prepared.box, zs, settings.image_size).numpy().astype(np.float16)
    masks = None
    if loaded.label is not None:
        masks = resize_masks(np.moveaxis(loaded.label[:, :, zs], -1, 0), prepared.box, settings.image_size)
    rows = [
        {
            "case": loaded.case.case_id,
            "slice": int(file_index[z]),
            "z": int(z),
            "row": row,
            "label": labels[row],
            "tumor_fraction": round(fractions[row], 6) if not math.isnan(fractions[row]) else "",
            "brain_fraction": round(float(brain_fractions[z]), 6),
        }
        for row, z in enumerate(zs)
    ]
    return images, masks, rows, prepared.box


def _labels_source(slice_labels: dict[str, dict[int, str]] | None) -> dict:
    """Where a slice dataset's labels come from, as ``dataset.json`` records it (a CSV's labels by their digest)."""
    if slice_labels is None:
        return {"from": "segmentations"}
    canonical = json.dumps({case: sorted(labels.items()) for case, labels in sorted(slice_labels.items())})
    return {"from": "slice label CSV", "sha256": hashlib.sha256(canonical.encode("utf-8")).hexdigest()}


def _describe_labels(source: dict) -> str:
    if source.get("from") == "segmentations":
        return "segmentations"
    return f"slice labels with digest {str(source.get('sha256', '?'))[:12]}"


def _prepare_output(out_dir: Path, settings: SliceSettings, split: dict[str, str], overwrite: bool, labels: dict) -> None:
    info_path = out_dir / "dataset.json"
    if out_dir.exists() and not out_dir.is_dir():
        raise AmecamError(f"{out_dir}: output exists and is not a folder")
    if info_path.exists() and not overwrite:
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise AmecamError(f"{info_path}: cannot read ({exc}); pass --overwrite to start again") from exc
        saved = {"skull_strip": False, **info.get("settings", {})}  # datasets before 0.4.0 did not record it
        if saved != settings.as_dict():
            changed = [k for k, v in settings.as_dict().items() if saved.get(k) != v]
            raise AmecamError(
                f"{out_dir}: holds slices made with other settings ({', '.join(changed)}); "
                "use another folder or pass --overwrite"
            )
        if info.get("split") != split:
            raise AmecamError(f"{out_dir}: holds slices of another set of cases; use another folder or pass --overwrite")
        saved_labels = info.get("labels", {"from": "segmentations"})  # datasets before 0.5.5 did not record it
        if saved_labels != labels:
            raise AmecamError(f"{out_dir}: holds slices labelled from {_describe_labels(saved_labels)}, not from "
                              f"{_describe_labels(labels)}; use another folder or pass --overwrite")
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise AmecamError(f"{out_dir}: folder is not empty and holds no slice dataset; pass --overwrite or another folder")
        for name in ("images", "masks", "cases", "manifest.csv", "dataset.json"):
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    try:
        for sub in ("images", "masks", "cases"):
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AmecamError(f"{out_dir}: cannot create output folder ({exc.strerror or exc})") from exc
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "amecam_version": __version__,
        "settings": settings.as_dict(),
        "split": split,
        "labels": labels,
    }
    _write_text(info_path, json.dumps(info, indent=2) + "\n")


def _write_text(path: Path, text: str) -> None:
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise AmecamError(f"{path}: cannot write ({exc.strerror or exc})") from exc


def _save_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)


def slice_dataset(
    cases: list[Case],
    out_dir: str | Path,
    settings: SliceSettings,
    *,
    slice_labels: dict[str, dict[int, str]] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    workers: int = 1,
) -> dict:
    """Write the slice dataset of ``cases`` to ``out_dir`` (see the module docstring for the layout).

    ``workers`` > 1 slices that many cases at once, one process each; the dataset is the same.

    Returns:
        Counts: cases, slices per label and per split, and how many cases were reused from an earlier run.

    Raises:
        AmecamError: bad settings, unreadable or inconsistent volumes, or an output folder that holds
            something else.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    check_workers(workers)
    check_slice_labels(cases, slice_labels)
    split = split_cases([c.case_id for c in cases], val_fraction=settings.val_fraction, seed=settings.seed)
    _prepare_output(out_dir, settings, split, overwrite, _labels_source(slice_labels))
    stems = [file_stem(c.case_id) for c in cases]
    if len(set(stems)) != len(stems):
        raise AmecamError(f"{out_dir}: two case ids map to the same file name; rename them")
    rows_of: dict[str, list[dict]] = {}
    todo = []
    for case, stem in zip(cases, stems):
        done_path = out_dir / "cases" / f"{stem}.json"
        if done_path.exists():
            try:
                rows_of[stem] = json.loads(done_path.read_text(encoding="utf-8"))["rows"]
                continue
            except (OSError, json.JSONDecodeError, KeyError):
                logger.warning("%s: unreadable, slicing case %s again", done_path, case.case_id)
        labels_of_case = None if slice_labels is None else slice_labels.get(case.case_id, {})
        todo.append((case, stem, split[case.case_id], labels_of_case))
    reused = len(cases) - len(todo)
    columns = ([list(column) for column in zip(*todo)] + [[out_dir] * len(todo), [settings] * len(todo)]) if todo else []
    with tqdm(total=len(cases), initial=reused, desc="slice", unit="case", disable=None if progress else True) as bar:
        for (_, stem, _, _), rows in zip(todo, ordered_map(_slice_one, columns, workers)):
            rows_of[stem] = rows
            bar.update(1)
    all_rows = [row for stem in stems for row in rows_of[stem]]  # in case order, however many workers
    _write_manifest(out_dir / "manifest.csv", all_rows)
    counts = {
        "cases": len(cases),
        "reused_cases": reused,
        "slices": len(all_rows),
        "labels": {k: sum(r["label"] == k for r in all_rows) for k in ("tumor", "normal", "ambiguous", "unlabelled")},
        "split": {k: sum(v == k for v in split.values()) for k in ("train", "val")},
    }
    logger.info("slice dataset %s: %s", out_dir, counts)
    return counts


def _slice_one(case: Case, stem: str, split_name: str, labels_of_case: dict[int, str] | None, out_dir: Path,
               settings: SliceSettings) -> list[dict]:
    """Slice one case into ``out_dir`` (arrays, then its ``cases/<stem>.json`` record); returns its manifest rows."""
    loaded = load_case(case, with_label=labels_of_case is None)
    images, masks, rows, box = slice_case(loaded, settings, slice_labels=labels_of_case)
    for row in rows:
        row["split"] = split_name
        row["file"] = stem
    _save_array(out_dir / "images" / f"{stem}.npy", images)
    if masks is not None:
        _save_array(out_dir / "masks" / f"{stem}.npy", masks)
    record = {"case": case.case_id, "box": [int(b) for b in box], "rows": rows, "fingerprint": case_fingerprint(case)}
    _write_text(out_dir / "cases" / f"{stem}.json", json.dumps(record) + "\n")
    return rows


def read_fingerprints(out_dir: str | Path) -> dict[str, str]:
    """Case id -> :func:`~amecam_cli.cases.case_fingerprint` of a slice dataset's cases (those sliced since 0.5.9)."""
    found = {}
    for path in sorted((Path(out_dir) / "cases").glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and record.get("fingerprint") and record.get("case"):
            found[str(record["case"])] = str(record["fingerprint"])
    return found


def _write_manifest(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
