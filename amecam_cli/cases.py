"""Finding cases on disk and loading one case as canonical arrays.

Four ways to describe a dataset, because real users' files differ:

(a) BraTS 2021 layout: ``<root>/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz`` (any subset of modalities);
(b) BraTS 2023 layout: ``<root>/<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz``;
(c) a MONAI/Decathlon-style datalist JSON, one entry per case naming the file of each modality, the
    ``label`` and optionally a ``brainmask``; paths relative to the JSON's folder;
(d) a naming pattern: ``"{case}/{case}_{modality}.nii.gz"`` (``{modality}`` is each modality name and
    ``seg`` for the label), or per-key templates ``"flair={case}/Flair.nii.gz;label={case}/OT.nii.gz"``.

Nothing is guessed from file contents: which file is which modality always comes from the layout, the
datalist or the pattern.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from amecam_bundle.scripts.datalist import BRAIN_KEYS, BRATS2023_NAMES, read_datalist

from .errors import AmecamError
from .io import NIFTI_SUFFIXES, SITK_SUFFIXES, VolumeProperties, read_volume, volume_suffix

__all__ = [
    "case_fingerprint",
    "MODALITIES",
    "Case",
    "LoadedCase",
    "find_cases",
    "find_cases_as_trained",
    "NoCasesFound",
    "load_case",
    "describe",
    "is_volume_path",
    "parse_modalities",
]

logger = logging.getLogger(__name__)

#: modality names amecam knows, in BraTS 2021 spelling
MODALITIES = ("flair", "t1", "t1ce", "t2")


@dataclass
class Case:
    """Files of one patient.

    Attributes:
        case_id: identifier (folder name in the BraTS layouts).
        images: modality name -> file (or DICOM folder).
        label: segmentation file whose labels > 0 are whole tumour, if any.
        brainmask: brain mask file, if the dataset provides one.
    """

    case_id: str
    images: dict[str, Path]
    label: Path | None = None
    brainmask: Path | None = None


@dataclass
class LoadedCase:
    """One case in canonical RAS orientation, see ``scripts.preprocess.to_canonical``.

    Attributes:
        case: the files it came from.
        channels: ``(C, x, y, z)`` raw intensities in the order of the requested modalities.
        label: ``(x, y, z)`` uint8 whole-tumour mask (0/1), or None.
        brain: ``(x, y, z)`` bool brain mask from the dataset, or None (then it is estimated).
        props: geometry of the first modality's file.
        orientation: what ``from_canonical`` needs to map results back to the file's voxel order.
    """

    case: Case
    channels: np.ndarray
    label: np.ndarray | None
    brain: np.ndarray | None
    props: VolumeProperties
    orientation: np.ndarray = field(repr=False, default=None)


def parse_modalities(value: str | Iterable[str]) -> tuple[str, ...]:
    """``"flair"``, ``"flair,t1ce"`` or ``("flair", "t1ce")`` -> validated tuple of modality names.

    Raises:
        AmecamError: empty, repeated or unknown names (the message lists the valid ones).
    """
    if isinstance(value, str):
        names = [v.strip().lower() for v in value.split(",")]
    elif isinstance(value, Iterable):
        names = [str(v).strip().lower() for v in value]
    else:
        names = [str(value).strip().lower()]
    names = [n for n in names if n]
    if not names:
        raise AmecamError(f"--modality must name at least one of {', '.join(MODALITIES)}, got {value!r}")
    unknown = [n for n in names if n not in MODALITIES]
    if unknown:
        raise AmecamError(f"--modality must be one or more of {', '.join(MODALITIES)} (comma-separated), got {', '.join(unknown)!r}")
    if len(set(names)) != len(names):
        raise AmecamError(f"--modality lists a modality twice: {','.join(names)}")
    return tuple(names)


class NoCasesFound(AmecamError):
    """:func:`find_cases` found no case at all (as opposed to a case with a file missing)."""


def find_cases(
    source: str | Path,
    modalities: Iterable[str],
    *,
    pattern: str | Mapping[str, str] | None = None,
    require_label: bool = True,
) -> list[Case]:
    """Find every case under ``source`` that has the requested modalities.

    Args:
        source: a dataset folder (BraTS 2021 / 2023 layout, or the root of ``pattern``), a datalist JSON,
            or one case folder.
        modalities: modality names, see :func:`parse_modalities`.
        pattern: naming pattern for layout (d).
        require_label: fail on a case without a segmentation.

    Returns:
        Cases sorted by id.

    Raises:
        AmecamError: nothing found, a case lacks a requested file, or duplicate case ids.
    """
    modalities = parse_modalities(modalities)
    source = Path(source)
    if not source.exists():
        raise AmecamError(f"{source}: no such file or folder")
    if source.is_file():
        if source.suffix.lower() != ".json":
            raise AmecamError(f"{source}: expected a dataset folder or a datalist .json, got a file")
        cases = _from_datalist(source, modalities)
    elif pattern:
        cases = _from_pattern(source, modalities, pattern)
    else:
        cases = _from_brats_layout(source, modalities)
    if not cases:
        raise NoCasesFound(
            f"{source}: found no cases with {','.join(modalities)} (expected <case>/<case>_{modalities[0]}.nii.gz, "
            f"<case>/<case>-{_brats23_name(modalities[0])}.nii.gz, a datalist .json, or --pattern)" + ("" if pattern else _loose_files_hint(source, modalities))
        )
    ids = [c.case_id for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise AmecamError(f"{source}: case ids must be unique, these repeat: {', '.join(dupes[:5])}")
    if require_label:
        missing = [c.case_id for c in cases if c.label is None]
        if missing:
            raise AmecamError(f"{source}: {len(missing)} case(s) have no segmentation (label), e.g. {missing[0]}")
    return sorted(cases, key=lambda c: c.case_id)


def find_cases_as_trained(
    source: str | Path,
    modalities: Iterable[str],
    *,
    pattern: str | None,
    trained_pattern: str | None,
    require_label: bool = True,
) -> list[Case]:
    """:func:`find_cases` for a bundle's command: without ``pattern``, a folder is first read the way the
    bundle's training data was named (``trained_pattern``, kept in its metadata), then, when that finds
    nothing there, in the standard layouts. A given ``pattern``, a datalist or a volume is read as it is.
    """
    source = Path(source)
    if pattern or not trained_pattern or not source.is_dir():
        return find_cases(source, modalities, pattern=pattern, require_label=require_label)
    try:
        cases = find_cases(source, modalities, pattern=trained_pattern, require_label=require_label)
    except NoCasesFound:
        try:
            return find_cases(source, modalities, require_label=require_label)
        except NoCasesFound as exc:
            raise NoCasesFound(f"{exc}; the bundle's training data was named {trained_pattern!r}, which finds none here either") from None
    except AmecamError as exc:  # a case the pattern finds lacks a file: say which pattern read it
        raise AmecamError(f"{exc} (read as the bundle's training data was named, {trained_pattern!r}; give --pattern for how this data is named)") from None
    logger.info("naming pattern %r (as the bundle's training data was named; --pattern gives another)", trained_pattern)
    return cases


def _loose_files_hint(source: Path, modalities: tuple[str, ...]) -> str:
    """For a folder of volumes without case folders: the --pattern that reads them."""
    if not source.is_dir():
        return ""
    loose = sorted(p.name for p in source.iterdir() if p.is_file() and volume_suffix(p) in NIFTI_SUFFIXES + SITK_SUFFIXES)
    if not loose:
        return ""
    suffix = volume_suffix(loose[0])
    held = f"; it holds {len(loose)} volume file(s) directly, e.g. {loose[0]}: "
    named_by_modality = any(name.endswith(f"_{m}{volume_suffix(name)}") for name in loose for m in modalities)
    if len(modalities) == 1 and not named_by_modality:  # one volume per patient, the file name is the case
        segs = f";label={{case}}_seg{suffix}" if any(name.endswith(f"_seg{suffix}") for name in loose) else ""
        return held + f"for one {modalities[0]} volume per file, named by its case, pass --pattern \"{modalities[0]}={{case}}{suffix}{segs}\""
    named = ", ".join(f"<case>_{m}{suffix}" for m in (*modalities, "seg"))
    return held + f"for files named {named} pass --pattern \"{{case}}_{{modality}}{suffix}\""


def _brats23_name(modality: str) -> str:
    return {v: k for k, v in BRATS2023_NAMES.items()}[modality]


def _find_file(folder: Path, stem: str) -> Path | None:
    for suffix in NIFTI_SUFFIXES + SITK_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _case_from_folder(folder: Path, modalities: tuple[str, ...]) -> Case | None:
    """A BraTS 2021 or 2023 case folder, or None if ``folder`` is neither."""
    name = folder.name
    for sep, names in (("_", {m: m for m in MODALITIES} | {"seg": "seg"}), ("-", {v: k for k, v in BRATS2023_NAMES.items()})):
        found = {m: _find_file(folder, f"{name}{sep}{names[m]}") for m in (*MODALITIES, "seg")}
        if not any(found[m] for m in MODALITIES):
            continue
        missing = [m for m in modalities if found[m] is None]
        if missing:
            have = [m for m in MODALITIES if found[m]]
            raise AmecamError(
                f"{folder}: case {name} has no {missing[0]} file "
                f"(expected {name}{sep}{names[missing[0]]}.nii.gz; it has {', '.join(have)})"
            )
        return Case(case_id=name, images={m: found[m] for m in modalities}, label=found["seg"])
    return None


def _from_brats_layout(root: Path, modalities: tuple[str, ...]) -> list[Case]:
    single = _case_from_folder(root, modalities)
    if single is not None:
        return [single]
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        case = _case_from_folder(folder, modalities)
        if case is not None:
            cases.append(case)
    return cases


def _from_datalist(path: Path, modalities: tuple[str, ...]) -> list[Case]:
    try:  # the bundle's reader, so that amecam and configs/evaluate.yaml read a datalist alike
        entries = read_datalist(path, modalities)
    except (OSError, ValueError) as exc:
        raise AmecamError(str(exc)) from exc
    return [Case(case_id=e["case"], images=e["images"], label=e["label"], brainmask=e["brainmask"]) for e in entries]


def _parse_pattern(pattern: str | Mapping[str, str], modalities: tuple[str, ...]) -> dict[str, str]:
    if isinstance(pattern, Mapping):
        templates = {str(k).lower(): str(v) for k, v in pattern.items()}
    elif "=" in pattern:
        templates = {}
        for part in pattern.split(";"):
            if not part.strip():
                continue
            key, sep, template = part.partition("=")
            if not sep:
                raise AmecamError(f"--pattern parts must look like key=template, got {part!r}")
            templates[key.strip().lower()] = template.strip()
    else:
        if "{modality}" not in pattern:
            raise AmecamError(f"--pattern must contain {{modality}} or be key=template pairs, got {pattern!r}")
        templates = {m: pattern.replace("{modality}", m) for m in modalities}
        templates["label"] = pattern.replace("{modality}", "seg")
    if "seg" in templates and "label" not in templates:
        templates["label"] = templates.pop("seg")
    for key, template in templates.items():
        if "{case}" not in template:
            raise AmecamError(f"--pattern template for {key!r} must contain {{case}}, got {template!r}")
    missing = [m for m in modalities if m not in templates]
    if missing:
        raise AmecamError(f"--pattern has no template for {missing[0]!r} (it has {', '.join(templates)})")
    return templates


def _from_pattern(root: Path, modalities: tuple[str, ...], pattern: str | Mapping[str, str]) -> list[Case]:
    templates = _parse_pattern(pattern, modalities)
    first = templates[modalities[0]]
    parts = re.escape(first).split(re.escape("{case}"))  # the first {case} captures, later ones must repeat it
    regex = re.compile("^" + parts[0] + "(?P<case>[^/]+)" + parts[1] + "".join("(?P=case)" + p for p in parts[2:]) + "$")
    ids = set()
    for match in root.glob(first.replace("{case}", "*")):
        found = regex.match(match.relative_to(root).as_posix())
        if found:
            ids.add(found.group("case"))
    # a file the pattern names as another case's label, brain mask or modality is not a case of its own
    # ("flair={case}.nii.gz;label={case}_seg.nii.gz" finds p1_seg.nii.gz, p1's label, as an image too)
    claimed = {t.replace("{case}", c) for c in ids for key, t in templates.items() if t != first}
    ids = {c for c in ids if first.replace("{case}", c) not in claimed}
    cases = []
    for case_id in sorted(ids):
        files = {key: root / t.replace("{case}", case_id) for key, t in templates.items()}
        missing = [m for m in modalities if not files[m].exists()]
        if missing:
            raise AmecamError(f"{files[missing[0]]}: no such file (case {case_id}, modality {missing[0]})")
        label = files.get("label")
        brain = next((files[k] for k in BRAIN_KEYS if k in files), None)
        cases.append(
            Case(
                case_id=case_id,
                images={m: files[m] for m in modalities},
                label=label if label is not None and label.exists() else None,
                brainmask=brain if brain is not None and brain.exists() else None,
            )
        )
    return cases


def load_case(case: Case, *, with_label: bool = True) -> LoadedCase:
    """Read a case's volumes, check they agree, and reorient everything to canonical RAS.

    Raises:
        AmecamError: unreadable file, NaN values, or volumes whose shapes or geometry disagree.
    """
    from amecam_bundle.scripts.preprocess import to_canonical

    arrays, props = [], None
    for modality, path in case.images.items():
        array, p = read_volume(path)
        if props is None:
            props = p
        else:
            _check_same_grid(props, p, what=f"modality {modality}")
        arrays.append(array)
    assert props is not None  # find_cases guarantees at least one modality
    channels, orientation = to_canonical(np.stack(arrays, axis=-1), props.affine)
    channels = np.ascontiguousarray(np.moveaxis(channels, -1, 0))
    label = None
    if with_label and case.label is not None:
        seg, p = read_volume(case.label)
        _check_same_grid(props, p, what="segmentation")
        label = (to_canonical(seg, props.affine)[0] > 0).astype(np.uint8)
    brain = None
    if case.brainmask is not None:
        mask, p = read_volume(case.brainmask)
        _check_same_grid(props, p, what="brain mask")
        brain = to_canonical(mask, props.affine)[0] > 0
    return LoadedCase(case=case, channels=channels, label=label, brain=brain, props=props, orientation=orientation)


def _check_same_grid(reference: VolumeProperties, other: VolumeProperties, *, what: str) -> None:
    if tuple(reference.shape) != tuple(other.shape):
        raise AmecamError(
            f"{other.path}: {what} has shape {'x'.join(map(str, other.shape))} but "
            f"{reference.path.name} has {'x'.join(map(str, reference.shape))}"
        )
    if not np.allclose(reference.affine, other.affine, atol=1e-3, rtol=1e-4):
        raise AmecamError(f"{other.path}: {what} is not on the same voxel grid (affine) as {reference.path.name}")


def case_fingerprint(case: Case) -> str:
    """A digest of a case's image files (their bytes, modality by modality; a DICOM folder's files in name order).

    ``amecam train`` keeps each training case's digest in the bundle's metadata so that ``amecam evaluate``
    can tell when a case it scores is one of them under another id (a copied or renamed folder). The
    same scan saved again (recompressed, converted) has other bytes and is not recognised.
    """
    import hashlib

    digest = hashlib.sha256()
    for modality in sorted(case.images):
        path = case.images[modality]
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        digest.update(modality.encode())
        for file in files:
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:20]


def describe(cases: list[Case]) -> str:
    """One line summarising what was found, for logs."""
    n_label = sum(c.label is not None for c in cases)
    return f"{len(cases)} case(s), {n_label} with segmentation"


def is_volume_path(path: Path) -> bool:
    """Whether ``path`` looks like a single volume (file with a known suffix)."""
    return path.is_file() and volume_suffix(path) in NIFTI_SUFFIXES + SITK_SUFFIXES
