"""The ``amecam`` command line: thin wrappers over the library, one per command.

Each command turns its arguments into typed values, logs what it resolved and calls one library
function. User mistakes raise :class:`~amecam_cli.errors.AmecamError`; :func:`main` prints them as one
line and exits 2 (``--debug`` shows the traceback instead). ``-o`` is short for ``--output``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import sys
import warnings
from pathlib import Path

import fire
from fire.decorators import SetParseFns

from . import __version__
from .errors import AmecamError

_FIRE_ARG_TYPE = getattr(fire.helptext, "_GetArgType", None)  # wrapped by _help_arg_type

__all__ = ["main"]

logger = logging.getLogger("amecam_cli")


def _path(value: object, name: str) -> Path:
    if value is None or value == "" or isinstance(value, bool):
        raise AmecamError(f"--{name} must be a path, got {value!r}")
    return Path(str(value)).expanduser()


def _output(value: object, name: str) -> str:
    """An output path as typed: a trailing slash (``-o masks/``) means a folder, so it is kept."""
    return str(_path(value, name)) + ("/" if str(value).endswith(("/", os.sep)) else "")


def _int(value: object, name: str, *, minimum: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # Fire reads 1e3 and 2.0 as floats
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise AmecamError(f"--{name} must be a whole number, got {value!r}")
    try:
        number = int(value)
    except ValueError as exc:
        raise AmecamError(f"--{name} must be a whole number, got {value!r}") from exc
    if minimum is not None and number < minimum:
        raise AmecamError(f"--{name} must be >= {minimum}, got {number}")
    return number


def _stage(value: object) -> int:
    """--stage of the gradient baselines, checked whatever the method (a typo must not pass unnoticed)."""
    number = _int(value, "stage")
    if not 1 <= number <= 4:
        raise AmecamError(f"--stage must be 1, 2, 3 or 4, got {number}")
    return number


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise AmecamError(f"--{name} is a switch (give --{name} or --no{name}), got {value!r}")
    return value


def _float(value: object, name: str) -> float:
    if isinstance(value, bool):
        raise AmecamError(f"--{name} must be a number, got {value!r}")
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        value = f"{value[0]},{value[1]}"  # Fire reads a decimal comma, "0,5", as the tuple (0, 5)
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        if isinstance(value, str) and re.fullmatch(r"\d+,\d+", value.strip()):
            raise AmecamError(f"--{name} must be a number, got {value} (write decimals with a point: {value.replace(',', '.')})") from exc
        raise AmecamError(f"--{name} must be a number, got {value!r}") from exc


@SetParseFns(output=str)
def synth(output: str, n_cases: int = 8, seed: int = 0, overwrite: bool = False, workers: int = 1) -> None:
    """Write a synthetic BraTS-2021-layout cohort: brain phantoms with tumours, not patient data.

    Example: amecam synth cohort/ --n_cases 8 --seed 0 --workers 4

    Args:
        output: folder to write the cohort into (-o, or first argument; created if missing).
        n_cases: number of cases (240x240x155, flair/t1/t1ce/t2 + seg).
        seed: random seed; the same seed always gives the same cohort.
        overwrite: replace a cohort made with another seed.
        workers: cases made at once, one process each (the cohort is the same for any number).
    """
    from .synth import synthesize_cohort

    out = _path(output, "output")
    n = _int(n_cases, "n_cases", minimum=1)
    s = _int(seed, "seed", minimum=0)
    w = _int(workers, "workers", minimum=1)
    logger.info("synth: %d case(s), seed %d -> %s", n, s, out)
    folders = synthesize_cohort(out, n_cases=n, seed=s, overwrite=bool(overwrite), workers=w)
    logger.info("wrote %d case(s) to %s", len(folders), out)


@SetParseFns(data_dir=str, output=str, modality=str, pattern=str, slice_labels=str, ambiguous=str)
def slice(  # noqa: A001 - the command is called "slice"
    data_dir: str,
    output: str | None = None,
    modality: str = "flair",
    image_size: int = 128,
    min_tumor_fraction: float = 0.01,
    ambiguous: str = "exclude",
    val_fraction: float = 0.2,
    seed: int = 0,
    pattern: str | None = None,
    slice_labels: str | None = None,
    skull_strip: bool = False,
    overwrite: bool = False,
    workers: int = 1,
) -> None:
    """Turn volumes into a 2-D training set with slice labels and a case-level train/val split.

    Example: amecam slice BraTS2021/ -o slices/ --modality flair,t1ce

    Args:
        data_dir: dataset folder (BraTS 2021/2023 layout or the root for --pattern) or a datalist .json.
        output: output folder (-o); rerunning with the same settings resumes.
        modality: one modality or several, comma-separated (flair, t1, t1ce, t2), stacked as channels.
        image_size: side of the square slices, after cropping to the brain.
        min_tumor_fraction: a slice is "tumor" when the tumour covers more than this share of it.
        ambiguous: slices with less tumour: exclude (kept as "ambiguous"), normal (official code), tumor.
        val_fraction: share of cases held out for validation (split by case, never by slice).
        seed: seed of the split.
        pattern: naming pattern, e.g. "{case}/{case}_{modality}.nii.gz" or "flair={case}/F.nii.gz;label={case}/L.nii.gz".
        slice_labels: CSV with columns case,slice,label instead of segmentations.
        skull_strip: the volumes are not skull-stripped: remove scalp and skull from the brain mask.
        overwrite: replace a slice dataset with other settings in the output folder.
        workers: cases sliced at once, one process each (the dataset is the same for any number; amecam train uses up to 4).
    """
    from .cases import describe, find_cases, parse_modalities
    from .slicing import SliceSettings, read_slice_labels, slice_dataset

    if output is None:
        raise AmecamError("slice needs an output folder: -o OUT_DIR")
    settings = SliceSettings(
        modalities=parse_modalities(modality),
        image_size=_int(image_size, "image_size"),
        min_tumor_fraction=_float(min_tumor_fraction, "min_tumor_fraction"),
        ambiguous=str(ambiguous),
        val_fraction=_float(val_fraction, "val_fraction"),
        seed=_int(seed, "seed", minimum=0),
        skull_strip=_bool(skull_strip, "skull_strip"),
    )
    labels = read_slice_labels(_path(slice_labels, "slice_labels")) if slice_labels else None
    cases = find_cases(_path(data_dir, "data_dir"), settings.modalities, pattern=pattern, require_label=False)
    logger.info("slice: %s from %s -> %s, settings %s", describe(cases), data_dir, output, settings.as_dict())
    counts = slice_dataset(cases, _path(output, "output"), settings, slice_labels=labels, overwrite=bool(overwrite),
                           workers=_int(workers, "workers", minimum=1))
    logger.info(
        "%d slices of %d cases (%d reused): %s; split %s",
        counts["slices"], counts["cases"], counts["reused_cases"], counts["labels"], counts["split"],
    )


@SetParseFns(data_dir=str, output_dir=str, modality=str, device=str, pretrain=str, fusion=str, config=str, pattern=str,
             slice_labels=str)
def train(
    data_dir: str | None = None,
    output_dir: str | None = None,
    modality: str | None = None,
    epochs: int | None = None,
    attention_epochs: int | None = None,
    image_size: int | None = None,
    stem_stride: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    nproc_per_node: int | None = None,
    seed: int | None = None,
    pretrain: str | None = None,
    pretrain_epochs: int | None = None,
    learning_rate: float | None = None,
    val_fraction: float | None = None,
    skull_strip: bool | None = None,
    fusion: str | None = None,
    slice_labels: str | None = None,
    config: str | None = None,
    pattern: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> None:
    """Train AME-CAM on slice-labelled volumes and write a complete MONAI bundle to --output_dir.

    Example: amecam train --modality flair --data_dir BraTS2021/ --output_dir runs/flair

    Slices the data if needed (into OUTPUT_DIR/slices), runs stage 1 (multi-exit classifier) and stage 2
    (attention aggregation) through the bundle's configs, and leaves configs, scripts, weights
    (models/model.pt, models/model.ts), metadata with the training metrics and the case split, a model
    card and logs/train.log. A checkpoint is written every epoch; amecam train -o RUN --resume continues after an
    interruption.
    Unset options come from --config, else the code defaults (shown by the log).

    Args:
        data_dir: dataset folder, datalist .json, or a slice dataset from amecam slice (first argument; with
            --resume, default the run's own).
        output_dir: run folder that becomes the bundle (-o).
        modality: modality or comma-separated modalities (flair, t1, t1ce, t2); default flair.
        epochs: stage-1 epochs (default 20).
        attention_epochs: stage-2 epochs (default 8).
        image_size: slice side (default 128).
        stem_stride: stride of the network's first convolution, 1 or 2 (default 1); 2 halves the
            resolution of every exit map for about 3x less compute (worse maps, see docs/benchmarks.md).
        batch_size: slices per batch (default 32).
        device: auto, cpu or cuda (default auto).
        nproc_per_node: training processes, one per GPU (default 1): more than 1 runs each stage with torchrun and
            DistributedDataParallel; --batch_size is per process, so the effective batch is N x batch_size.
        seed: seed of the split, initialisation and sampling (default 0).
        pretrain: none or simclr (stage 0, default none).
        pretrain_epochs: SimCLR epochs (default 10).
        learning_rate: stage-1 Adam learning rate (default 0.001).
        val_fraction: share of cases for validation (default 0.2).
        skull_strip: the volumes are not skull-stripped (scalp and skull visible): remove them from the
            brain mask before slicing; the bundle records it and inference does the same (default off).
        fusion: the map the bundle segments with: mean (the paper's mean of the four exit maps and the
            attention map Mf, the default) or attention (Mf alone; better in most runs of
            docs/benchmarks.md section 8). Training is the same either way, so --resume --fusion attention
            switches a finished run without retraining.
        slice_labels: CSV of slice-level labels (columns case, slice, label: tumor/normal or 1/0; slice counts along the file's axial axis) for volumes without segmentations; used instead of segmentations where given.
        config: YAML/JSON file of settings (any of the options above).
        pattern: naming pattern of the data, see amecam slice (saved with the run: --resume and train-seg reuse it).
        resume: continue the interrupted run in --output_dir with its saved settings and data.
        overwrite: start again in a non-empty --output_dir.
    """
    from .training import train_bundle

    if output_dir is None:
        raise AmecamError("train needs --output_dir RUN")
    given = {
        "modalities": modality, "epochs": epochs, "attention_epochs": attention_epochs, "image_size": image_size,
        "stem_stride": stem_stride, "batch_size": batch_size, "device": device, "nproc_per_node": nproc_per_node,
        "seed": seed, "pretrain": pretrain,
        "pretrain_epochs": pretrain_epochs,
        "learning_rate": None if learning_rate is None else _float(learning_rate, "learning_rate"),
        "val_fraction": None if val_fraction is None else _float(val_fraction, "val_fraction"),
        "skull_strip": None if skull_strip is None else _bool(skull_strip, "skull_strip"),
        "fusion": fusion,
        "slice_labels": None if slice_labels is None else str(slice_labels),
        "pattern": None if pattern is None else str(pattern),
    }
    for name in ("epochs", "attention_epochs", "image_size", "stem_stride", "batch_size", "seed", "pretrain_epochs", "nproc_per_node"):
        if given[name] is not None:
            given[name] = _int(given[name], name)
    result = train_bundle(
        _path(data_dir, "data_dir") if data_dir is not None else None, _path(output_dir, "output_dir"), settings=given,
        config=_path(config, "config") if config else None, resume=bool(resume), overwrite=bool(overwrite),
    )
    logger.info("trained bundle: %s", result["bundle"])


@SetParseFns(volume=str, output=str, bundle=str, save_cam=str, device=str, modality=str, pattern=str, augment=str)
def infer(
    volume: str,
    output: str | None = None,
    bundle: str | None = None,
    threshold: float = 0.5,
    crf: bool = False,
    augment: str | None = None,
    save_cam: str | None = None,
    modality: str | None = None,
    min_size: int = 0,
    device: str = "auto",
    batch_size: int | None = None,
    pattern: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> None:
    """Segment a volume (or many) with a trained bundle; the mask keeps the input's grid and format.

    Example: amecam infer patient_flair.nii.gz -o patient_mask.nii.gz --bundle runs/flair

    Of many volumes, one that cannot be read is named and skipped; the others are segmented, and the exit
    status is 2 (fix it, then --resume segments what is missing).

    Args:
        volume: a volume file (NIfTI, NRRD, MHA) or DICOM series folder; a case folder; or a dataset folder / datalist .json.
        output: mask file (-o), or a folder (existing, or a name ending in /) that gets <case>_mask<suffix> (a series folder <case>_mask for a DICOM series); a folder when VOLUME holds several cases.
        bundle: trained bundle folder or exported .zip.
        threshold: map value from which a pixel is tumour (default 0.5).
        crf: refine with DenseCRF around the candidate tumour.
        augment: test-time augmentation: flip averages every map over the slice and its three mirror images (4x the network's time); none turns it off (default: the bundle's own, network_args.tta, none unless edited).
        save_cam: also write the float32 tumour map here (a file, or a folder that gets <case>_cam<suffix>; a folder for several cases).
        modality: the modality of the input if its file name says otherwise; must be one the bundle was trained on.
        min_size: drop 3-D islands smaller than this many voxels (default 0: keep all).
        device: auto, cpu or cuda.
        batch_size: slices per forward pass (default 8 on a CPU, 64 on a GPU).
        pattern: naming pattern for a dataset folder, see amecam slice (default: as the bundle's training data was named, else the standard layouts).
        overwrite: replace existing outputs.
        resume: keep the outputs that exist (an interrupted run's finished masks) and segment only the rest.
    """
    from .inference import run_inference

    if output is None:
        raise AmecamError("infer needs an output: -o MASK")
    if bundle is None:
        raise AmecamError("infer needs --bundle RUN (a trained bundle folder or .zip)")
    results = run_inference(
        _path(volume, "volume"), _output(output, "output"), _path(bundle, "bundle"), modality=modality,
        threshold=_float(threshold, "threshold"), crf=bool(crf), tta=augment, save_cam=_output(save_cam, "save_cam") if save_cam else None,
        device=str(device), min_size=_int(min_size, "min_size", minimum=0), batch_size=None if batch_size is None else _int(batch_size, "batch_size", minimum=1),
        pattern=pattern, overwrite=bool(overwrite), resume=bool(resume),
    )
    written = sum("mask" not in r["kept"] for r in results)
    logger.info("wrote %d mask(s)", written)


@SetParseFns(run=str, output=str)
def export(run: str, output: str | None = None, overwrite: bool = False) -> None:
    """Package a trained bundle as a zip to share (configs, scripts, docs, weights, TorchScript, LICENSE).

    Example: amecam export runs/flair -o amecam_flair_v0.5.23.zip

    Args:
        run: trained bundle folder.
        output: zip to write (-o); default <name>_v<version>.zip beside the folder.
        overwrite: replace an existing zip.
    """
    from .bundle import export_bundle

    path = export_bundle(_path(run, "run"), _path(output, "output") if output else None, overwrite=bool(overwrite))
    logger.info("wrote %s", path)
    print(path)


@SetParseFns(bundle=str, device=str)
def verify(bundle: str, device: str = "cpu") -> None:
    """Check a bundle folder or zip offline: metadata, network in/out, weights, TorchScript.

    Example: amecam verify amecam_flair_v0.5.23.zip

    Args:
        bundle: bundle folder or zip.
        device: cpu or cuda.
    """
    from .bundle import verify_bundle

    rows = verify_bundle(_path(bundle, "bundle"), device=str(device))
    width = max(len(r[0]) for r in rows)
    for name, passed, detail in rows:
        print(f"{'PASS' if passed else 'FAIL'}  {name.ljust(width)}  {detail}")
    failed = [r[0] for r in rows if not r[1]]
    if failed:
        raise AmecamError(f"{bundle}: {len(failed)} check(s) failed: {', '.join(failed)}")


@SetParseFns(volume=str, output=str, bundle=str, method=str, png_dir=str, modality=str, device=str)
def cam(
    volume: str,
    output: str | None = None,
    bundle: str | None = None,
    method: str = "amecam",
    png_dir: str | None = None,
    modality: str | None = None,
    stage: int = 4,
    budget: int = 64,
    batch_size: int = 32,
    device: str = "auto",
    overwrite: bool = False,
) -> None:
    """Export one method's tumour map for a volume: float32 in [0, 1] (1 = most tumour-like), input geometry.

    Example: amecam cam patient_flair.nii.gz -o cam.nii.gz --bundle runs/flair --method gradcam --png_dir pngs/

    Args:
        volume: a volume file or DICOM folder, or one case folder.
        output: map file (-o), or a folder (existing, or ending in /) that gets <case>_<method><suffix>.
        bundle: trained AME-CAM bundle folder or zip.
        method: amecam, exit1..exit4, mean_exits, attention, cam, gradcam, gradcampp, layercam, scorecam, hirescam.
        png_dir: also write a PNG montage of the map over the image here.
        modality: the input's modality if its file name says otherwise.
        stage: target stage (1-4) of the gradient baselines (default 4, the last).
        budget: channels ScoreCAM scores per slice (its cost bound).
        batch_size: slices per forward pass.
        device: auto, cpu or cuda.
        overwrite: replace an existing output.
    """
    from .maps import export_cam

    if output is None or bundle is None:
        raise AmecamError("cam needs -o MAP and --bundle RUN")
    export_cam(_path(volume, "volume"), _output(output, "output"), _path(bundle, "bundle"), method=str(method),
               png_dir=_path(png_dir, "png_dir") if png_dir else None, modality=modality, stage=_stage(stage),
               budget=_int(budget, "budget", minimum=1), batch_size=_int(batch_size, "batch_size", minimum=1),
               device=str(device), overwrite=bool(overwrite))


@SetParseFns(image=str, cam=str, output=str)
def crf(
    image: str,
    cam: str,
    output: str | None = None,
    threshold: float = 0.5,
    gaussian_sxy: float = 3.0,
    gaussian_compat: float = 3.0,
    bilateral_sxy: float = 10.0,
    bilateral_srgb: float = 13.0,
    bilateral_compat: float = 10.0,
    iterations: int = 10,
    margin: int = 16,
    full_slices: bool = False,
    skull_strip: bool = False,
    overwrite: bool = False,
) -> None:
    """Refine a tumour map into a mask with DenseCRF (pydensecrf2), around the candidate tumour only.

    Example: amecam crf patient_flair.nii.gz cam.nii.gz -o mask_crf.nii.gz

    Runs on the slices where the map reaches --threshold, on a box around that candidate plus --margin
    pixels, so a whole volume takes seconds.

    Args:
        image: the image the map was computed on.
        cam: a map in [0, 1] on the image's grid (e.g. from amecam cam or amecam infer --save_cam).
        output: mask to write (-o), uint8.
        threshold: map value that makes a candidate.
        gaussian_sxy: smoothness kernel width (pixels).
        gaussian_compat: smoothness kernel weight.
        bilateral_sxy: appearance kernel width (pixels).
        bilateral_srgb: appearance kernel intensity width (0-255 scale).
        bilateral_compat: appearance kernel weight.
        iterations: mean-field iterations.
        margin: pixels around the candidate's box that the CRF may claim.
        full_slices: run on whole slices instead of the box (slower; for comparison).
        skull_strip: the image is not skull-stripped: keep the mask out of scalp and skull (as a bundle
            trained with --skull_strip does).
        overwrite: replace an existing output.
    """
    from .maps import refine_with_crf

    if output is None:
        raise AmecamError("crf needs an output: -o MASK")
    refine_with_crf(_path(image, "image"), _path(cam, "cam"), _path(output, "output"), threshold=_float(threshold, "threshold"),
                    gaussian_sxy=_float(gaussian_sxy, "gaussian_sxy"), gaussian_compat=_float(gaussian_compat, "gaussian_compat"),
                    bilateral_sxy=_float(bilateral_sxy, "bilateral_sxy"), bilateral_srgb=_float(bilateral_srgb, "bilateral_srgb"),
                    bilateral_compat=_float(bilateral_compat, "bilateral_compat"), iterations=_int(iterations, "iterations", minimum=1),
                    margin=_int(margin, "margin", minimum=0), full_slices=bool(full_slices),
                    strip_skull=_bool(skull_strip, "skull_strip"), overwrite=bool(overwrite))


@SetParseFns(data_dir=str, bundle=str, output=str, methods=str, device=str, pattern=str, extra_bundles=str, augment=str)
def evaluate(
    data_dir: str,
    bundle: str | None = None,
    output: str | None = None,
    methods: str = "all",
    extra_bundles: str | None = None,
    crf: bool = False,
    augment: str | None = None,
    threshold: float = 0.5,
    threshold_level: float = 0.5,
    stage: int = 4,
    budget: int = 64,
    batch_size: int = 32,
    device: str = "auto",
    pattern: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> None:
    """Score every method on cases with expert masks; write a Table-1 style report.

    Example: amecam evaluate --data_dir test_cases/ --bundle runs/flair -o report/ --methods all --crf

    Writes report.json, report.md, per_slice.csv, dice_boxplot.png and qualitative.png. Slice level: every
    tumour slice (> 1% of the slice), no discard list; volume level: 3-D per case with classifier gating.

    Args:
        data_dir: dataset folder or datalist .json with segmentations.
        bundle: trained AME-CAM bundle folder or zip.
        output: report folder (-o).
        methods: all, or a comma-separated list of amecam, exit1..exit4, mean_exits, attention, cam, gradcam, gradcampp, layercam, scorecam, hirescam, and the training-free threshold, otsu.
        extra_bundles: comma-separated segmentation bundles (amecam train-seg, e.g. --supervised for the upper-bound row) to score as rows of their own.
        crf: also score every method after DenseCRF.
        augment: test-time augmentation of the AME-CAM network: flip averages each of its maps (and its slice probability) over the slice and its three mirror images; none turns it off (default: the bundle's own). The gradient baselines are not augmented.
        threshold: map value from which a pixel is tumour (every method).
        threshold_level: level of the training-free threshold row on the normalised image (inverted for T1).
        stage: target stage (1-4) of the gradient baselines.
        budget: channels ScoreCAM scores per slice.
        batch_size: slices per forward pass.
        device: auto, cpu or cuda.
        pattern: naming pattern of the data, see amecam slice (default: as the bundle's training data was named, else the standard layouts).
        overwrite: replace an existing report.
        resume: continue an interrupted evaluation in the same report folder: cases it finished are kept (in REPORT/.resume), the rest are scored; the settings must be the same.
    """
    import shlex

    from .evaluation import EvaluationOptions, evaluate as run_evaluation, validate_evaluation_methods

    if bundle is None or output is None:
        raise AmecamError("evaluate needs --bundle RUN and -o REPORT_DIR")
    cams, references = validate_evaluation_methods(methods)
    options = EvaluationOptions(
        methods=cams, references=references, reference_level=_float(threshold_level, "threshold_level"),
        threshold=_float(threshold, "threshold"), crf=bool(crf), stage=_stage(stage),
        budget=_int(budget, "budget", minimum=1), batch_size=_int(batch_size, "batch_size", minimum=1), device=str(device),
        tta=augment,
    )
    extra = [_path(p.strip(), "extra_bundles") for p in str(extra_bundles).split(",") if p.strip()] if extra_bundles else []
    report = run_evaluation(_path(data_dir, "data_dir"), _path(bundle, "bundle"), _path(output, "output"), options,
                            pattern=pattern, overwrite=bool(overwrite), resume=bool(resume),
                            command="amecam " + shlex.join(sys.argv[1:]),
                            extra_bundles=extra)
    from .evaluation import table_markdown

    print(table_markdown(report))


@SetParseFns(bundle=str, data_dir=str, output_dir=str, device=str, pattern=str, slice_labels=str, augment=str)
def train_seg(
    bundle: str | None = None,
    data_dir: str | None = None,
    output_dir: str | None = None,
    epochs: int | None = None,
    image_size: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    device: str | None = None,
    nproc_per_node: int | None = None,
    seed: int | None = None,
    supervised: bool | None = None,
    crf: bool | None = None,
    uncertainty_margin: float | None = None,
    uncertainty_weight: float | None = None,
    slice_labels: str | None = None,
    pattern: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    augment: str | None = None,
) -> None:
    """Train a U-Net on AME-CAM pseudo-labels and write it as a bundle (amecam infer/evaluate take it).

    Example: amecam train-seg --bundle runs/flair --data_dir BraTS2021/ --output_dir runs/flair_unet

    Tumour slices get the AME-CAM mask as label (optionally refined by DenseCRF), normal slices an empty
    mask; pixels near the threshold are down-weighted. The case split is the AME-CAM run's. With
    --supervised the expert masks are used instead: the fully supervised upper bound (marked as such).

    Args:
        bundle: the trained AME-CAM bundle (folder or zip) that makes the pseudo-labels (with --resume, default the run's).
        data_dir: dataset folder, datalist .json or slice dataset (the AME-CAM training data; with --resume, default the run's).
        output_dir: run folder that becomes the segmentation bundle (-o).
        epochs: training epochs (default 20).
        image_size: slice side (default: the AME-CAM bundle's).
        batch_size: slices per batch (default 16).
        learning_rate: Adam learning rate (default 0.001).
        device: auto, cpu or cuda (default auto).
        nproc_per_node: training processes, one per GPU (default 1): more than 1 trains with torchrun and
            DistributedDataParallel; --batch_size is per process.
        seed: seed (default: the AME-CAM run's, which keeps its case split).
        supervised: train on the expert masks instead (fully supervised upper bound; default off).
        crf: refine the pseudo-labels with DenseCRF (default off).
        uncertainty_margin: pseudo-label pixels whose map is within this distance of 0.5 count as uncertain (default 0.1).
        uncertainty_weight: cross-entropy weight of uncertain pixels (1 = no down-weighting; default 0.2).
        slice_labels: CSV of slice labels for data without segmentations (default: the CSV the AME-CAM bundle was trained with, if any, except with --supervised), see amecam train.
        pattern: naming pattern of the data, see amecam slice (default: the AME-CAM run's, else the standard layouts).
        resume: continue an interrupted run in --output_dir with its saved settings, bundle and data
            (amecam train-seg -o SEGRUN --resume).
        overwrite: start again in a non-empty --output_dir.
        augment: test-time augmentation of the AME-CAM maps that make the pseudo-labels, none or flip (the slice
            and its three mirror images, maps averaged; 4x the work). Default the AME-CAM bundle's own (none).
    """
    from .segmentation import train_segmentation

    if output_dir is None or (not resume and (bundle is None or data_dir is None)):
        raise AmecamError("train-seg needs --bundle RUN, --data_dir DIR and --output_dir SEGRUN (with --resume, --output_dir alone)")

    def given(value, convert, *args, **kwargs):
        return None if value is None else convert(value, *args, **kwargs)

    train_segmentation(
        given(bundle, _path, "bundle"), given(data_dir, _path, "data_dir"), _path(output_dir, "output_dir"),
        epochs=given(epochs, _int, "epochs", minimum=1), image_size=given(image_size, _int, "image_size"),
        batch_size=given(batch_size, _int, "batch_size", minimum=2), learning_rate=given(learning_rate, _float, "learning_rate"),
        device=given(device, str), nproc_per_node=given(nproc_per_node, _int, "nproc_per_node", minimum=1), seed=given(seed, _int, "seed", minimum=0), supervised=given(supervised, _bool, "supervised"),
        crf=given(crf, _bool, "crf"), uncertainty_margin=given(uncertainty_margin, _float, "uncertainty_margin"),
        uncertainty_weight=given(uncertainty_weight, _float, "uncertainty_weight"), pattern=given(pattern, str),
        slice_labels=given(slice_labels, str), resume=bool(resume), overwrite=bool(overwrite), tta=given(augment, str),
    )


@SetParseFns(volume=str, output=str, bundle=str, method=str, pixels=str, layer=str, png_dir=str, modality=str, device=str)
def explain(
    volume: str,
    output: str | None = None,
    bundle: str | None = None,
    method: str = "seg-gradcam",
    pixels: str = "predicted",
    layer: str | None = None,
    class_index: int = 1,
    png_dir: str | None = None,
    modality: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    overwrite: bool = False,
) -> None:
    """Explain a segmentation bundle's output with Seg-Grad-CAM or Seg-HiRes-Grad-CAM (map in the input's geometry).

    Example: amecam explain patient_flair.nii.gz --bundle runs/flair_unet -o why.nii.gz --pixels point:120,96,70

    The sum of the class logits over the chosen pixels is back-propagated to --layer; seg-gradcam weights
    each activation channel by its mean gradient, seg-hirescam multiplies gradient and activation
    element-wise. 1 = most influential.

    Args:
        volume: a volume file or DICOM folder, or one case folder.
        output: map file (-o), float32, or a folder (existing, or ending in /) that gets <case>_explain<suffix>.
        bundle: a segmentation bundle (e.g. from amecam train-seg), folder or zip.
        method: seg-gradcam or seg-hirescam.
        pixels: predicted, image, or point:X,Y,Z (voxel indices of the input file).
        layer: target layer (default: the network's coarsest feature map; a wrong name gets the nearest names and every choice).
        class_index: output channel to explain (1 = tumour for amecam's U-Net).
        png_dir: also write a PNG montage here.
        modality: the input's modality if its file name says otherwise.
        batch_size: slices per backward pass.
        device: auto, cpu or cuda.
        overwrite: replace an existing output.
    """
    from .explain import explain_volume

    if output is None or bundle is None:
        raise AmecamError("explain needs -o MAP and --bundle SEGRUN")
    explain_volume(_path(volume, "volume"), _output(output, "output"), _path(bundle, "bundle"), method=str(method), pixels=str(pixels),
                   layer=None if layer is None else str(layer), class_index=_int(class_index, "class_index", minimum=0),
                   png_dir=_path(png_dir, "png_dir") if png_dir else None, modality=modality, batch_size=_int(batch_size, "batch_size", minimum=1),
                   device=str(device), overwrite=bool(overwrite))


@SetParseFns(output_dir=str)
def demo(output_dir: str = "demo_output", n_cases: int = 8, seed: int = 0) -> None:
    """Run the main job end to end on a synthetic cohort (no download needed).

    Example: amecam demo --output_dir demo_output

    Args:
        output_dir: folder for the cohort, slices, bundle, masks and figure (-o; reused when rerun).
        n_cases: number of synthetic cases.
        seed: seed of the cohort and the split.
    """
    from .demo import run_demo

    out = _path(output_dir, "output_dir")
    logger.info("demo: %s, %d cases, seed %s", out, _int(n_cases, "n_cases"), seed)
    run_demo(out, n_cases=_int(n_cases, "n_cases"), seed=_int(seed, "seed", minimum=0))


def _commands() -> dict:
    """The command table (explicit, so ``amecam --help`` lists exactly these)."""
    return {
        "synth": synth,
        "slice": slice,
        "train": train,
        "infer": infer,
        "export": export,
        "verify": verify,
        "cam": cam,
        "crf": crf,
        "evaluate": evaluate,
        "train-seg": train_seg,
        "explain": explain,
        "demo": demo,
    }


class _PlainFormatter(logging.Formatter):
    """``amecam: message``, with ``warning:`` or ``error:`` in front so that those stand out from progress."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.ERROR:
            return f"amecam: error: {text}"
        return f"amecam: warning: {text}" if record.levelno >= logging.WARNING else f"amecam: {text}"


def _configure_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PlainFormatter("%(message)s") if not debug else logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("matplotlib", "PIL", "monai", "fire"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not debug:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="monai")


_OUTPUT_OPTIONS = ("output", "output_dir")


def _short_flags(command) -> dict[str, str]:
    """One-letter flags of a command: ``-o`` is its output option; any other letter that starts exactly one
    option with a default stands for it (the rule the help screens show; ``-h`` stays help).
    """
    params = inspect.signature(command).parameters
    options = [name for name, p in params.items() if p.default is not inspect.Parameter.empty]
    letters = set(_help_short_flags(options))
    table = {name[0]: name for name in options if name[0] in letters}
    output = next((name for name in _OUTPUT_OPTIONS if name in params), None)
    if output is not None:
        table["o"] = output
    return table


def _without_fire_metadata(visible_members):
    """Fire's ``VisibleMembers`` without the ``FIRE_METADATA`` attribute ``SetParseFns`` puts on a command:
    Fire took it for a sub-command, so every help screen read ``amecam infer GROUP | VOLUME`` and listed a
    group ``FIRE_METADATA``."""

    def members(component, *args, **kwargs):
        return [(name, member) for name, member in visible_members(component, *args, **kwargs) if name != "FIRE_METADATA"]

    members.amecam = True
    return members


def _help_arg_type(arg: str, spec) -> str:
    """The type line of a help screen: ``str``, not Fire's ``'str'``, and ``Optional[str]``, not
    ``Optional['str | None']`` (our annotations are strings, and Fire adds ``Optional`` itself when the default is None)."""
    annotation = spec.annotations.get(arg)
    if not isinstance(annotation, str):
        return _FIRE_ARG_TYPE(arg, spec)
    return " | ".join(part.strip() for part in annotation.split("|") if part.strip() != "None")


def _help_argv(argv: list[str], commands: dict) -> list[str] | None:
    """``amecam [COMMAND] ... --help`` (or ``-h``) as the argv that shows that help without Fire's note
    "INFO: Showing help with the command 'amecam infer -- --help'"; None when no help is asked for."""
    head = argv[: argv.index("--")] if "--" in argv else argv
    if not any(token in ("--help", "-h") for token in head):
        return None
    command = [argv[0]] if argv and argv[0] in commands else []
    return command + ["--", "--help"]


def _help_short_flags(flags: list[str]) -> list[str]:
    """Replaces Fire's choice of short flags on help screens, so that they show the ones :func:`main` takes.

    Fire marks flags by letter, so ``-o`` cannot be shown on the output option alone; its description says (-o).
    """
    letters = [name[0] for name in flags]
    return [name[0] for name in flags if letters.count(name[0]) == 1 and name[0] not in "oh"]


_SWITCH_WORDS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}


def _switch_value(name: str, value: str) -> bool:
    """--overwrite=false must mean false (Fire would pass the string 'false', which is truthy)."""
    if value.lower() not in _SWITCH_WORDS:
        raise AmecamError(f"--{name} is a switch: give --{name} or --no{name} (or --{name}=true/false), got {value!r}")
    return _SWITCH_WORDS[value.lower()]


def _switches(params) -> set[str]:
    """The parameters of a command that are switches (``bool``, or ``bool | None`` for train's unset options)."""
    return {name for name, p in params.items() if isinstance(p.default, bool) or str(p.annotation).startswith("bool")}


def _translate_short_flags(argv: list[str], commands: dict) -> list[str]:
    """Expand one-letter flags (see :func:`_short_flags`) to the long options Fire knows, and bind each switch
    to its value, so that ``--crf patient.nii.gz`` never takes the volume as the switch's value.
    """
    table, switches = {"o": "output"}, set()
    if argv and argv[0] in commands:
        table = _short_flags(commands[argv[0]])
        params = inspect.signature(commands[argv[0]]).parameters
        switches = _switches(params)
    out = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--":  # the rest is Fire's own (amecam infer -- --help)
            out.extend(argv[index:])
            break
        key, equals, value = token.partition("=")
        if len(key) == 2 and key[0] == "-" and key[1] in table:
            key = f"--{table[key[1]]}"
            token = f"{key}{equals}{value}"
        name = key.lstrip("-").replace("-", "_")
        if key.startswith("--") and name in switches:
            if equals:
                token = f"{key}={_switch_value(name, value)}"
            elif index + 1 < len(argv) and argv[index + 1].lower() in _SWITCH_WORDS:  # --crf false
                token, index = f"{key}={_switch_value(name, argv[index + 1])}", index + 1
            else:
                token = f"{key}=True"
        elif key.startswith("--no") and not equals and name[2:] in switches:
            token = f"--{name[2:]}=False"
        out.append(token)
        index += 1
    return out


def _check_arguments(commands: dict, argv: list[str]) -> None:
    """Reject unknown flags and surplus positional arguments before anything runs.

    Fire would otherwise call the command with what it understood and only complain about the rest
    afterwards, when the work is done.
    """
    if not argv or argv[0].startswith("-") or argv[0] not in commands:
        return
    params = inspect.signature(commands[argv[0]]).parameters
    names = list(params)
    switches = _switches(params)
    positional = 0
    tokens = argv[1:]
    flagged = {t.lstrip("-").split("=", 1)[0].replace("-", "_") for t in tokens if t.startswith("--")}
    # the positional arguments a command still needs (a required one may also come as a flag: --data_dir D)
    required = sum(p.default is inspect.Parameter.empty and name not in flagged for name, p in params.items())
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token in ("--help", "-h", "--"):
            return
        previous = tokens[index - 1].split("=", 1)[0] if index else ""
        if positional >= required and previous.lstrip("-") in switches and not token.startswith("-"):
            # Fire would hand the word to the next optional parameter (--crf maybe: "--threshold must be a number")
            _switch_value(previous.lstrip("-"), token)
        if token.startswith("-") and not _is_number(token):
            key = token.lstrip("-").split("=", 1)[0].replace("-", "_")
            boolean = key.startswith("no") and key[2:] in params and params[key[2:]].default is False
            if key not in params and not boolean:
                valid = ", ".join(f"--{n}" for n in names)
                raise AmecamError(f"amecam {argv[0]} has no option {token.split('=', 1)[0]} (valid: {valid})")
            if "=" not in token and index + 1 < len(tokens) and not tokens[index + 1].startswith("--"):
                index += 1  # the flag's value
        else:
            positional += 1
        index += 1
    if positional > len(names):
        raise AmecamError(f"amecam {argv[0]} takes at most {len(names)} arguments, got {positional}")


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _tolerant_console() -> None:
    """Never fail on a console that cannot show a character (an ASCII locale and a report's "±")."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and (getattr(stream, "encoding", "") or "").lower().replace("-", "") != "utf8":
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # pragma: no cover - detached or closed stream
                pass


#: what to run after Ctrl-C, per command that can continue
_RESUME_HINTS = {
    "infer": "; finished outputs are kept: the same command with --resume segments the rest",
    "train": "; the same command with --resume continues where it stopped",
    "train-seg": "; the same command with --resume continues where it stopped",
    "evaluate": "; finished cases are kept: the same command with --resume scores the rest",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``amecam`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _tolerant_console()
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if argv in (["--version"], ["version"]):
        print(f"amecam {__version__}")
        return 0
    _configure_logging(debug)
    if hasattr(fire.helptext, "_GetShortFlags"):  # help screens list the short flags amecam takes, not Fire's own
        fire.helptext._GetShortFlags = _help_short_flags
    if not getattr(fire.completion.VisibleMembers, "amecam", False):
        fire.completion.VisibleMembers = _without_fire_metadata(fire.completion.VisibleMembers)
    if getattr(fire.helptext, "_GetArgType", _help_arg_type) is not _help_arg_type:
        fire.helptext._GetArgType = _help_arg_type
    commands = _commands()
    help_argv = _help_argv(argv, commands)
    if help_argv is not None:  # help goes to stdout, so that `amecam infer --help | less` shows it
        with contextlib.redirect_stderr(sys.stdout):
            try:
                fire.Fire(commands, command=help_argv, name="amecam")
            except fire.core.FireExit as exc:
                return int(exc.code or 0)
        return 0
    try:
        argv = _translate_short_flags(argv, commands)
        _check_arguments(commands, argv)
        fire.Fire(commands, command=argv, name="amecam")
    except AmecamError as exc:
        if debug:
            raise
        print(f"amecam: error: {exc}", file=sys.stderr)
        return 2
    except fire.core.FireExit as exc:
        return int(exc.code or 0)
    except KeyboardInterrupt:
        hint = _RESUME_HINTS.get(next((a for a in argv if not a.startswith("-")), ""), "")
        print(f"amecam: interrupted{hint}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
