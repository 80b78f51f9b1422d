"""A synthetic BraTS-2021-layout cohort: brain phantoms with glioma-like tumours, no download needed.

Each case is a 240x240x155, 1 mm, LPS volume per modality (flair, t1, t1ce, t2; int16) and a
segmentation with BraTS labels (1 necrosis / non-enhancing core, 2 edema, 4 enhancing). The anatomy
is a deformed ellipsoid with cortex, sulci, ventricles and deep grey matter; the tumour has a
deformed core, an enhancing rim in high-grade-like cases, and edema that spreads further in white
matter. To keep the task from being trivial every case also carries look-alikes that are *not*
tumour: small FLAIR/T2-bright white-matter lesions, periventricular caps, an occasional larger
gliosis-like region, and enhancing vessels on T1ce. Then partial-volume blur, texture, a smooth bias
field, Rician noise and a per-case intensity scale.

These are phantoms, not patient data: good for exercising the pipeline and for relative comparisons
between methods, not for clinical claims.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from . import __version__
from .errors import AmecamError
from .workers import check_workers, ordered_map

__all__ = ["SHAPE", "synthesize_case", "synthesize_cohort", "case_id"]

logger = logging.getLogger(__name__)

SHAPE = (240, 240, 155)
#: BraTS 2021 files are LPS with this affine
AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
MODALITY_ORDER = ("flair", "t1", "t1ce", "t2")

# tissue classes of the label map used to compose intensities
BG, CSF, GM, WM, NECROSIS, EDEMA, ENHANCING, CORE_LGG, LESION, VESSEL, CAP = range(11)
#: mean intensity per tissue (rows: flair, t1, t1ce, t2), before texture, bias, noise and scaling
_CONTRAST = np.array(
    [
        # bg   CSF   GM    WM    necr  edema enh   coreL lesion vessel cap
        [0.0, 0.10, 0.50, 0.40, 0.58, 0.90, 0.74, 0.84, 0.86, 0.42, 0.72],  # flair
        [0.0, 0.20, 0.52, 0.72, 0.26, 0.44, 0.55, 0.36, 0.50, 0.50, 0.55],  # t1
        [0.0, 0.20, 0.52, 0.72, 0.24, 0.44, 1.00, 0.36, 0.50, 0.95, 0.55],  # t1ce
        [0.0, 1.00, 0.62, 0.45, 0.95, 0.86, 0.62, 0.88, 0.82, 0.40, 0.75],  # t2
    ],
    dtype=np.float32,
)
_SEG_OF_TISSUE = np.zeros(11, dtype=np.uint8)
_SEG_OF_TISSUE[[NECROSIS, CORE_LGG]] = 1
_SEG_OF_TISSUE[EDEMA] = 2
_SEG_OF_TISSUE[ENHANCING] = 4


def case_id(index: int) -> str:
    """Name of the ``index``-th synthetic case."""
    return f"SYN_{index:03d}"


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cells: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-variance random field that varies over about ``shape / cells`` voxels."""
    coarse = rng.standard_normal(cells).astype(np.float32)
    field = ndimage.zoom(coarse, [s / c for s, c in zip(shape, cells)], order=1, mode="nearest", grid_mode=True)
    field = field[tuple(slice(0, s) for s in shape)]
    return (field - field.mean()) / (field.std() + 1e-6)


def _ellipsoid_distance(grids, center, radii) -> np.ndarray:
    return np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii)))


@dataclass
class _Phantom:
    tissue: np.ndarray  # uint8 tissue classes
    brain: np.ndarray  # bool


def _anatomy(rng: np.random.Generator) -> tuple[_Phantom, tuple[np.ndarray, ...], np.ndarray]:
    grids = np.ogrid[0 : SHAPE[0], 0 : SHAPE[1], 0 : SHAPE[2]]
    grids = tuple(g.astype(np.float32) for g in grids)
    center = (120 + rng.uniform(-4, 4), 122 + rng.uniform(-6, 6), 70 + rng.uniform(-4, 4))
    radii = (rng.uniform(60, 68), rng.uniform(78, 88), rng.uniform(54, 62))
    distance = _ellipsoid_distance(grids, center, radii) * (1 + 0.05 * _smooth_noise(rng, SHAPE, (5, 6, 4)))
    brain = distance < 1.0
    tissue = np.zeros(SHAPE, dtype=np.uint8)
    tissue[brain] = WM
    cortex = distance > 0.86 + 0.06 * _smooth_noise(rng, SHAPE, (32, 32, 20))
    tissue[brain & cortex] = GM
    sulci = (distance > 0.90) & (_smooth_noise(rng, SHAPE, (36, 36, 24)) > 1.0)
    tissue[brain & (sulci | (distance > 0.975))] = CSF
    for side in (-1, 1):  # deep grey matter, then the lateral ventricles
        deep = _ellipsoid_distance(grids, (center[0] + side * 20, center[1] + 4, center[2] - 2), (6, 10, 7)) < 1
        tissue[deep & brain] = GM
    ventricles = np.zeros(SHAPE, dtype=bool)
    for side in (-1, 1):
        v_center = (center[0] + side * rng.uniform(7, 10), center[1] + rng.uniform(0, 8), center[2] + rng.uniform(2, 8))
        v_radii = (rng.uniform(5, 8), rng.uniform(20, 28), rng.uniform(8, 12))
        ventricles |= _ellipsoid_distance(grids, v_center, v_radii) < 1
    tissue[ventricles & brain] = CSF
    return _Phantom(tissue=tissue, brain=brain), grids, ventricles


def _local_box(center, reach: float):
    return tuple(slice(max(int(c - reach), 0), min(int(c + reach) + 1, s)) for c, s in zip(center, SHAPE))


def _box_grids(box: tuple[slice, ...]) -> list[np.ndarray]:
    """Open coordinate grids (like ``np.ogrid``) over a sub-box of the volume."""
    return [g.astype(np.float32) for g in np.ogrid[box]]


def _add_tumour(rng: np.random.Generator, phantom: _Phantom, grids, ventricles: np.ndarray) -> None:
    tissue, brain = phantom.tissue, phantom.brain
    inner = ndimage.binary_erosion(brain, iterations=14) & ~ndimage.binary_dilation(ventricles, iterations=4)
    candidates = np.argwhere(inner[::4, ::4, ::4]) * 4
    center = candidates[rng.integers(len(candidates))].astype(np.float32)
    r_core = rng.uniform(5, 20)
    edema_scale = rng.uniform(1.3, 2.6) if rng.random() > 0.15 else rng.uniform(1.05, 1.2)
    high_grade = rng.random() < 0.65
    reach = r_core * edema_scale * 1.6 + 4
    box = _local_box(center, reach)
    local_shape = tuple(s.stop - s.start for s in box)
    local = _box_grids(box)
    stretch = rng.uniform(0.8, 1.25, size=3)
    dist = np.sqrt(sum(((lg - c) / (s)) ** 2 for lg, c, s in zip(local, center, stretch)))
    core_d = dist / r_core * (1 + 0.22 * _smooth_noise(rng, local_shape, (4, 4, 4)))
    edema_d = dist / (r_core * edema_scale) * (1 + 0.30 * _smooth_noise(rng, local_shape, (6, 6, 5)))
    region = tissue[box]
    in_brain = brain[box] & ~ventricles[box]
    white = region == WM
    edema = in_brain & (((edema_d < 1.0) & white) | ((edema_d < 0.72) & (region == GM)) | (edema_d < 0.5))
    core = in_brain & (core_d < 1.0)
    region[edema] = EDEMA
    if high_grade:
        rim = rng.uniform(0.45, 0.7)
        region[core & (core_d >= rim)] = ENHANCING
        region[core & (core_d < rim)] = NECROSIS
    else:
        region[core] = CORE_LGG
    tissue[box] = region


def _add_lookalikes(rng: np.random.Generator, phantom: _Phantom, grids, ventricles: np.ndarray) -> None:
    tissue = phantom.tissue
    white = np.argwhere((tissue == WM)[::3, ::3, ::3]) * 3
    for _ in range(int(rng.integers(3, 11))):  # small FLAIR/T2-bright white-matter lesions
        center = white[rng.integers(len(white))]
        radius = rng.uniform(1.5, 5.0)
        box = _local_box(center, radius + 1)
        dist = _ellipsoid_distance(_box_grids(box), center, (radius,) * 3)
        sub = tissue[box]
        sub[(dist < 1) & (sub == WM)] = LESION
    if rng.random() < 0.4:  # a larger gliosis-like region, bright on FLAIR but not tumour
        center = white[rng.integers(len(white))]
        radius = rng.uniform(5, 9)
        box = _local_box(center, radius + 1)
        dist = _ellipsoid_distance(_box_grids(box), center, (radius,) * 3)
        sub = tissue[box]
        sub[(dist < 1) & np.isin(sub, (WM, GM))] = LESION
    caps = ndimage.binary_dilation(ventricles, iterations=int(rng.integers(1, 4))) & ~ventricles & (tissue == WM)
    tissue[caps] = CAP
    for _ in range(int(rng.integers(4, 10))):  # enhancing vessels: short bright tubes on T1ce
        start = white[rng.integers(len(white))].astype(float)
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        for step in range(int(rng.integers(8, 25))):
            point = np.round(start + step * direction).astype(int)
            if np.any(point < 1) or np.any(point >= np.array(SHAPE) - 1):
                break
            voxel = tuple(slice(p - 1, p + 1) for p in point)
            sub = tissue[voxel]
            sub[np.isin(sub, (WM, GM))] = VESSEL


def synthesize_case(seed: int, index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Generate case ``index`` of the cohort with ``seed``; the same pair always gives the same case.

    Returns:
        ``({modality: int16 volume}, uint8 segmentation)`` on the 240x240x155 grid.
    """
    rng = np.random.default_rng([int(seed), int(index)])
    phantom, grids, ventricles = _anatomy(rng)
    _add_tumour(rng, phantom, grids, ventricles)
    _add_lookalikes(rng, phantom, grids, ventricles)
    tissue, brain = phantom.tissue, phantom.brain
    seg = _SEG_OF_TISSUE[tissue]
    tumour = seg > 0
    texture = _smooth_noise(rng, SHAPE, (40, 40, 26))
    volumes = {}
    for m, modality in enumerate(MODALITY_ORDER):
        contrast = _CONTRAST[m] * rng.uniform(0.93, 1.07, size=_CONTRAST.shape[1]).astype(np.float32)
        image = contrast[tissue]
        image *= 1 + np.where(tumour, 0.10, 0.03).astype(np.float32) * texture
        image = ndimage.gaussian_filter(image, sigma=0.7, truncate=2.5)
        bias = np.exp(0.12 * _smooth_noise(rng, SHAPE, (3, 3, 3)))
        image *= bias
        sigma = 0.025
        image = np.sqrt((image + sigma * rng.standard_normal(SHAPE, dtype=np.float32)) ** 2 + (sigma * rng.standard_normal(SHAPE, dtype=np.float32)) ** 2)
        image[~brain] = 0
        scale = rng.uniform(500, 1500)
        volumes[modality] = np.clip(np.round(image * scale), 0, 32767).astype(np.int16)
    return volumes, seg


def synthesize_cohort(
    out_dir: str | Path,
    *,
    n_cases: int = 8,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    workers: int = 1,
) -> list[Path]:
    """Write ``n_cases`` synthetic cases in the BraTS 2021 layout under ``out_dir``.

    Cases already complete from an earlier run with the same seed are kept (the generator is
    deterministic), so an interrupted run resumes. Each case folder appears atomically. With
    ``workers`` > 1, cases are made by that many processes at once (each case depends only on
    ``seed`` and its index, so the cohort is the same).

    Returns:
        The case folders, in order.

    Raises:
        AmecamError: bad counts, an output folder holding another cohort, or an unwritable folder.
    """
    from tqdm.auto import tqdm

    if not isinstance(n_cases, int) or isinstance(n_cases, bool) or n_cases < 1:
        raise AmecamError(f"--n_cases must be a whole number >= 1, got {n_cases!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise AmecamError(f"--seed must be a whole number >= 0, got {seed!r}")
    check_workers(workers)
    out_dir = Path(out_dir)
    info_path = out_dir / "cohort.json"
    info = {
        "generator": "amecam synth",
        "amecam_version": __version__,
        "seed": seed,
        "n_cases": n_cases,
        "shape": list(SHAPE),
        "modalities": list(MODALITY_ORDER),
        "labels": {"1": "necrosis / non-enhancing core", "2": "edema", "4": "enhancing"},
        "note": "Synthetic phantoms, not patient data. Not for clinical use.",
    }
    if out_dir.exists() and not out_dir.is_dir():
        raise AmecamError(f"{out_dir}: output exists and is not a folder")
    if info_path.exists():
        try:
            previous = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise AmecamError(f"{info_path}: cannot read ({exc}); pass --overwrite to regenerate") from exc
        if previous.get("seed") != seed and not overwrite:
            raise AmecamError(f"{out_dir}: holds a cohort made with seed {previous.get('seed')}; pass --overwrite or another folder")
    elif out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise AmecamError(f"{out_dir}: folder is not empty and holds no synthetic cohort; pass --overwrite or another folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{uuid.uuid4().hex[:6]}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise AmecamError(f"{out_dir}: cannot write there ({exc.strerror or exc})") from exc
    if overwrite:  # cases of an earlier, larger cohort must not mix with the new one
        keep = {case_id(i) for i in range(n_cases)}
        for stale in out_dir.glob("SYN_*"):
            if stale.is_dir() and stale.name not in keep:
                shutil.rmtree(stale)
    todo = [i for i in range(n_cases) if overwrite or not _complete(out_dir, i)]
    with tqdm(total=n_cases, initial=n_cases - len(todo), desc="synth", unit="case", disable=None if progress else True) as bar:
        for _ in ordered_map(_write_case, ([out_dir] * len(todo), [seed] * len(todo), todo), workers):
            bar.update(1)
    folders = [out_dir / case_id(i) for i in range(n_cases)]
    info_path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return folders


def _case_files(out_dir: Path, index: int) -> list[Path]:
    name = case_id(index)
    return [out_dir / name / f"{name}_{m}.nii.gz" for m in (*MODALITY_ORDER, "seg")]


def _complete(out_dir: Path, index: int) -> bool:
    return all(f.is_file() for f in _case_files(out_dir, index))


def _write_case(out_dir: Path, seed: int, index: int) -> Path:
    """Synthesise case ``index`` and move it into ``out_dir`` in one step (a partial case never shows)."""
    name = case_id(index)
    folder = out_dir / name
    volumes, seg = synthesize_case(seed, index)
    partial = out_dir / f".{name}.partial-{uuid.uuid4().hex[:6]}"
    try:
        partial.mkdir()
        for modality, volume in volumes.items():
            _save(volume, partial / f"{name}_{modality}.nii.gz")
        _save(seg, partial / f"{name}_seg.nii.gz")
        if folder.exists():
            shutil.rmtree(folder)
        partial.rename(folder)
    except OSError as exc:
        raise AmecamError(f"{folder}: cannot write case ({exc.strerror or exc})") from exc
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return folder


def _save(array: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, AFFINE)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(AFFINE, code=1)
    image.set_sform(AFFINE, code=1)
    nib.save(image, str(path))
