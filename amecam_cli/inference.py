"""``amecam infer``: volumes in, uint8 masks out on each input's own grid and in its format.

Inputs: one volume file or DICOM series folder (single-modality bundles), one case folder in a
BraTS layout, or a dataset folder / datalist JSON (many cases; ``-o`` is then a folder). Every check
that can fail -- bundle, modalities, existing or unwritable outputs -- runs before any inference.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from amecam_bundle.scripts.preprocess import from_canonical

from .bundle import LoadedBundle, open_bundle
from .cases import BRATS2023_NAMES, MODALITIES, Case, find_cases_as_trained, load_case, parse_modalities
from .errors import AmecamError
from .io import NIFTI_SUFFIXES, SITK_SUFFIXES, check_outputs_apart, check_writable, output_format, volume_suffix, write_volume

__all__ = ["InferenceJob", "plan_jobs", "run_inference"]

logger = logging.getLogger(__name__)


RESUME_OR_OVERWRITE = "--resume keeps the outputs that exist and --overwrite replaces them; pass one of them"


@dataclass
class InferenceJob:
    """One volume to segment: its case, where the mask (and optionally the map) goes."""

    case: Case
    mask_path: Path
    cam_path: Path | None
    #: outputs a resumed run keeps because an earlier run wrote them (``"mask"``, ``"cam"``)
    kept: tuple[str, ...] = ()


def _modality_from_name(path: Path) -> str | None:
    """The modality a BraTS-style file name announces (``..._t1.nii.gz``, ``...-t2f.nii.gz``), if any."""
    stem = path.name
    for suffix in NIFTI_SUFFIXES + (".nrrd", ".mha", ".mhd"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    match = re.search(r"[_-]([A-Za-z0-9]+)$", stem)
    if not match:
        return None
    token = match.group(1).lower()
    if token in MODALITIES:
        return token
    mapped = BRATS2023_NAMES.get(token)
    return mapped if mapped in MODALITIES else None


def _single_volume(path: Path) -> bool:
    if path.is_file():
        return True
    if path.is_dir():  # a DICOM series folder has files and no case sub-folders
        return any(p.is_file() and p.suffix.lower() in (".dcm", "") for p in path.iterdir()) and not any(p.is_dir() for p in path.iterdir())
    return False


def _is_folder(path: str | Path) -> bool:
    """An output the user means as a folder: an existing one, or a name ending in a slash."""
    return Path(path).is_dir() or str(path).endswith(("/", os.sep))


def plan_jobs(
    source: Path,
    output: str | Path,
    bundle: LoadedBundle,
    *,
    modality: str | None = None,
    save_cam: str | Path | None = None,
    pattern: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    result: str = "mask",
) -> list[InferenceJob]:
    """Decide what to segment and where each result goes; fail before any work if something is off.

    ``output`` (and ``save_cam``) name a file, or a folder (existing, or ending in a slash) that gets
    ``<case>_<result><suffix>`` (``<case>_cam<suffix>``) per case, the suffix of the input. With
    ``resume``, outputs that exist are kept (every output is written whole or not at all, so an existing
    one is finished): cases with all their outputs are left out, the others write only what is missing.
    """
    if resume and overwrite:
        raise AmecamError(RESUME_OR_OVERWRITE)
    output_folder = _is_folder(output)
    cam_folder = save_cam is not None and _is_folder(save_cam)
    output, save_cam = Path(output), (Path(save_cam) if save_cam is not None else None)
    expected = bundle.modalities
    if modality is not None:
        requested = parse_modalities(modality)
        unknown = [m for m in requested if m not in expected]
        if unknown:
            raise AmecamError(f"the bundle was trained on {','.join(expected)}; it cannot segment {','.join(unknown)} images")
        if set(requested) != set(expected):
            raise AmecamError(f"the bundle needs {','.join(expected)} together; --modality names {','.join(requested)}")
    if not source.exists():
        raise AmecamError(f"{source}: no such file or folder")
    if source.suffix.lower() != ".json" and _single_volume(source):
        if len(expected) > 1:
            raise AmecamError(f"{source}: the bundle needs {','.join(expected)} together; give a case folder or a datalist, not one volume")
        named = _modality_from_name(source) if source.is_file() else None
        if named is not None and named not in expected and modality is None:
            raise AmecamError(
                f"{source}: looks like a {named} volume (by its name) but the bundle was trained on {expected[0]}; "
                f"pass --modality {expected[0]} if it really is {expected[0]}"
            )
        case = Case(case_id=source.name.split(".")[0], images={expected[0]: source})
        suffix = volume_suffix(source) if source.is_file() else ""  # a DICOM series gives series folders
        output = output / f"{case.case_id}_{result}{suffix}" if output_folder else output
        save_cam = save_cam / f"{case.case_id}_cam{suffix}" if cam_folder else save_cam
        jobs = [InferenceJob(case, output, save_cam)]
    else:
        cases = find_cases_as_trained(source, expected, pattern=pattern, trained_pattern=bundle.data_pattern, require_label=False)
        one_file = len(cases) == 1 and not output_folder and volume_suffix(output) in NIFTI_SUFFIXES + SITK_SUFFIXES
        if not one_file and output.exists() and not output.is_dir():
            if len(cases) == 1:
                raise AmecamError(f"{output}: a file whose name is no volume format; -o must end in one of "
                                  f"{', '.join(NIFTI_SUFFIXES + SITK_SUFFIXES)} or name a folder")
            raise AmecamError(f"{output}: {source} holds {len(cases)} cases, so -o must be a folder, not a file")
        jobs = []
        for case in cases:
            first = case.images[expected[0]]
            suffix = volume_suffix(first) if first.is_file() else ""  # a DICOM series gives series folders, as above
            cam_path = save_cam
            if save_cam is not None and (cam_folder or not one_file):
                cam_path = save_cam / f"{case.case_id}_cam{suffix}"
            jobs.append(InferenceJob(case, output if one_file else output / f"{case.case_id}_{result}{suffix}", cam_path))
        # -o inside the data folder: the masks (and maps) an earlier run wrote there are not cases of their own
        written = {path.absolute() for job in jobs for path in (job.mask_path, job.cam_path) if path is not None}
        ours = [job for job in jobs if any(path.absolute() in written for path in job.case.images.values())]
        if ours:
            logger.info("%d file(s) in %s are this command's own outputs (e.g. %s), not cases; left out",
                        len(ours), source, next(iter(ours[0].case.images.values())).name)
            jobs = [job for job in jobs if job not in ours]
    for job in jobs:  # a name that cannot be written fails now, not after the mask is written
        dicom = job.case.images[expected[0]].is_dir()
        for path in (job.mask_path, job.cam_path):
            if path is not None:
                output_format(path, dicom_input=dicom)
    inputs = [path for job in jobs for path in (*job.case.images.values(), job.case.label, job.case.brainmask)]
    check_outputs_apart([path for job in jobs for path in (job.mask_path, job.cam_path)], inputs)
    if resume:
        for job in jobs:
            job.kept = tuple(kind for kind, path in (("mask", job.mask_path), ("cam", job.cam_path)) if path is not None and path.exists())
        done = [job for job in jobs if job.kept == (("mask", "cam") if job.cam_path is not None else ("mask",))]
        if done:
            logger.info("--resume: %d of %d case(s) already have every output; skipping them", len(done), len(jobs))
        jobs = [job for job in jobs if job not in done]
    outputs = [path for job in jobs for path in (job.mask_path, job.cam_path) if path is not None]
    existing = [path for path in outputs if path.exists()] if len(jobs) > 1 and not (overwrite or resume) else []
    if existing:  # an earlier (perhaps interrupted) run over the same cases: say both ways on
        verb = "exists" if len(existing) == 1 else "exist"
        raise AmecamError(f"{existing[0]}: output already exists ({len(existing)} of the {len(outputs)} outputs {verb}): "
                          "--resume segments only the rest, --overwrite replaces them")
    for job in jobs:
        if "mask" not in job.kept:
            check_writable(job.mask_path, overwrite=overwrite)
        if job.cam_path is not None and "cam" not in job.kept:
            check_writable(job.cam_path, overwrite=overwrite)
    return jobs


def _count_brain_slices(prediction, bundle: LoadedBundle) -> int:
    """Slices the bundle segmented: its own count, or (bundles before 0.5.1, whose predictions do not
    carry it) the same rule applied by that bundle's own preprocessing constant."""
    slices = getattr(prediction, "brain_slices", None)
    if slices is not None:
        return len(slices)
    fraction = importlib.import_module(f"{bundle.scripts.__name__}.preprocess").MIN_BRAIN_FRACTION
    brain = prediction.brain
    return int((brain.sum(axis=(0, 1)) >= fraction * brain[:, :, 0].size).sum())


def run_inference(
    source: str | Path,
    output: str | Path,
    bundle_path: str | Path,
    *,
    modality: str | None = None,
    threshold: float = 0.5,
    crf: bool = False,
    tta: str | None = None,
    save_cam: str | Path | None = None,
    device: str = "auto",
    min_size: int = 0,
    batch_size: int | None = None,
    pattern: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> list[dict]:
    """Segment every planned volume; returns per-volume paths, tumour volume and timings.

    ``resume``: keep the outputs an interrupted run finished and segment only the rest (see :func:`plan_jobs`).
    ``tta``: the network's test-time augmentation (``none``, ``flip``; ``None``: the bundle's own; see ``open_bundle``).
    """
    from tqdm.auto import tqdm

    if not 0.0 <= float(threshold) <= 1.0:
        raise AmecamError(f"--threshold must be in [0, 1], got {threshold}")
    if resume and overwrite:
        raise AmecamError(RESUME_OR_OVERWRITE)
    started = time.perf_counter()
    bundle = open_bundle(bundle_path, device=device, torchscript=True, tta=tta)
    seconds_open = time.perf_counter() - started
    jobs = plan_jobs(Path(source), output, bundle, modality=modality,
                     save_cam=save_cam or None, pattern=pattern, overwrite=overwrite, resume=resume)
    options = {"batch_size": batch_size} if batch_size else {}  # unset: the bundle's own default for the device
    predictor = bundle.predictor(device=device, threshold=float(threshold), crf=bool(crf), min_component_voxels=int(min_size), **options)
    results, failed = [], []
    for job in tqdm(jobs, desc="infer", unit="volume", disable=None if progress and len(jobs) > 1 else True):
        t0 = time.perf_counter()
        try:  # one unreadable volume of many must not cost the others their masks
            loaded = load_case(job.case, with_label=False)
            t_read = time.perf_counter() - t0
            prediction = predictor.predict_canonical(loaded.channels, brain=loaded.brain, all_maps=job.cam_path is not None)
        except AmecamError as error:
            if len(jobs) == 1:
                raise
            logger.error("%s: %s; no mask, going on with the other volumes", job.case.case_id, error)
            failed.append(job.case.case_id)
            continue
        t1 = time.perf_counter()
        props = loaded.props
        mask = from_canonical(prediction.mask, loaded.orientation)
        if "mask" not in job.kept:
            write_volume(job.mask_path, mask, props, overwrite=overwrite)
        if job.cam_path is not None and "cam" not in job.kept:
            write_volume(job.cam_path, from_canonical(prediction.cam, loaded.orientation).astype(np.float32), props, overwrite=overwrite)
        t_write = time.perf_counter() - t1
        voxel_ml = float(np.prod(props.spacing)) / 1000.0
        result = {
            "case": job.case.case_id, "mask": str(job.mask_path), "cam": str(job.cam_path) if job.cam_path else None, "kept": list(job.kept),
            "tumour_ml": float(mask.sum()) * voxel_ml, "tumour_slices": int(prediction.mask.any(axis=(0, 1)).sum()),
            "seconds": {"open_bundle": seconds_open, "read": t_read, **prediction.seconds, "write": t_write},
        }
        result["brain_slices"] = _count_brain_slices(prediction, bundle)
        if result["brain_slices"] == 0:
            logger.warning("%s: no slice has enough brain to segment (is the volume blank or constant?); its mask is empty",
                           job.case.case_id)
        unit_note = "" if props.spacing_unit == "mm" else " (if its voxel sizes are mm: the file states no unit)"
        logger.info("%s -> %s: %.1f ml%s over %d slices", job.case.case_id, job.mask_path, result["tumour_ml"], unit_note,
                    result["tumour_slices"])
        logger.info("timings: %s", json.dumps({k: round(v, 3) for k, v in result["seconds"].items()}))
        results.append(result)
    if failed:
        raise AmecamError(
            f"{len(failed)} of {len(jobs)} volume(s) could not be segmented ({', '.join(failed)}; each is named above); "
            + (f"the other {len(jobs) - len(failed)} mask(s) were written. " if len(failed) < len(jobs) else "no mask was written. ")
            + "Fix or remove those volumes, then run the same "
            "command with --resume to segment only what is missing")
    return results
