"""``amecam evaluate``: every method side by side on cases with expert masks, the way the papers report it.

Protocols (all on the original voxel grid of each case, distances in mm from its spacing):

* **slice level** (the AME-CAM paper's Table 1): every axial slice of every evaluated case whose whole
  tumour covers more than 1% of the slice; the method's map thresholded inside the brain; no discard
  list, no classifier gating (the question is how good the map is where there is a tumour).
* **volume level**: per case, the 3-D mask the method's own pipeline writes (``volume``): for the maps of the
  AME-CAM classifier (its CAM rows and baselines), slices the classifier calls normal are empty, as in
  ``amecam infer``; a segmentation bundle's mask and the training-free rows as they are (before 0.5.10 these
  were gated by the AME-CAM classifier too). Also every row without gating (``volume_ungated``).
* the classifier's slice AUC over all labelled brain slices (tumour vs normal; ambiguous ones left out).

HD95 uses the amecam empty-mask convention (nan, counted in ``n_hd95``) and, as ``hd95_paper``, the
paper's 373.12866 penalty. The report is ``report.json``, ``report.md`` (Table-1 layout), per-slice
rows in ``per_slice.csv``, a box plot of per-slice Dice and a qualitative grid.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import logging
import math
import platform
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import __version__
from .errors import AmecamError
from .io import atomic_path

__all__ = ["EvaluationOptions", "evaluate", "canonical_spacing"]

logger = logging.getLogger(__name__)

METHOD_LABELS = {
    "amecam": "AME-CAM (mean of M1-M4 and Mf)",
    "attention": "AME-CAM attention map Mf alone",
    "mean_exits": "Mean of exits M1-M4 (no attention)",
    "exit1": "Exit 1 (M1)", "exit2": "Exit 2 (M2)", "exit3": "Exit 3 (M3)", "exit4": "Exit 4 (M4)",
    "cam": "CAM", "gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "layercam": "LayerCAM",
    "scorecam": "ScoreCAM", "hirescam": "HiResCAM",
    "unet_pseudo": "U-Net on AME-CAM pseudo-labels",
    "supervised": "Supervised U-Net (trained on expert masks; upper bound)",
    "threshold": "Brightness threshold (no training)",
    "otsu": "Otsu threshold per volume (no training)",
}
#: the ``amecam`` row of a bundle trained with ``--fusion attention`` (its final map is Mf)
ATTENTION_FUSION_LABEL = "AME-CAM final map, fusion attention (Mf alone)"


#: report.md's line for ``--augment flip``
TTA_TEXT = ("flip: every map of the AME-CAM network and its slice probability averaged over the slice and its three "
            "mirror images (the gradient baselines are not)")


def method_label(name: str, *, fusion: str | None = "mean") -> str:
    """The row label of a report's method (``name`` may end in ``+crf``); ``fusion`` is the bundle's."""
    base, _, suffix = name.partition("+")
    label = ATTENTION_FUSION_LABEL if base == "amecam" and fusion == "attention" else METHOD_LABELS.get(base, base)
    return label + (" + DenseCRF" if suffix == "crf" else "")


def validate_evaluation_methods(methods: str | list | tuple) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``all`` or a list of CAM rows and reference rows -> ``(cam_methods, reference_methods)``."""
    from .cams import METHODS, validate_methods
    from .references import REFERENCE_METHODS

    names = [m.strip().lower() for m in methods.split(",")] if isinstance(methods, str) else [str(m).lower() for m in methods]
    if names == ["all"]:
        return METHODS, REFERENCE_METHODS
    references = tuple(m for m in names if m in REFERENCE_METHODS)
    rest = [m for m in names if m not in REFERENCE_METHODS]
    try:
        cams = validate_methods(rest, option="methods") if rest else ()
    except AmecamError as exc:
        raise AmecamError(f"{exc} (rows without training: {', '.join(REFERENCE_METHODS)})") from exc
    if not cams and not references:
        raise AmecamError(f"--methods must name at least one of {', '.join(METHODS + REFERENCE_METHODS)} (or all)")
    return cams, references


def segmentation_row_name(bundle) -> str:
    """Row name of a segmentation bundle: ``unet_pseudo`` (AME-CAM pseudo-labels) or ``supervised`` (masks)."""
    labels = bundle.metadata.get("amecam_training", {}).get("labels", "pseudo")
    return "supervised" if labels == "masks" else "unet_pseudo"


def segmentation_rows(bundles: list, device: str) -> dict[str, Callable]:
    """Row providers for segmentation bundles: their tumour probability map on the case's canonical grid."""
    rows: dict[str, Callable] = {}
    for seg in bundles:
        name = segmentation_row_name(seg)
        while name in rows:
            name += "_2"
        predictor = seg.predictor(device=device, gate=False)

        def provide(loaded, prepared, predictor=predictor):
            return predictor.predict_canonical(loaded.channels, brain=loaded.brain, all_maps=True).cam

        rows[name] = provide
    return rows


def canonical_spacing(spacing, orientation: np.ndarray) -> tuple[float, float, float]:
    """Voxel size along the canonical (RAS) axes, from the file's spacing and its orientation."""
    out = [0.0, 0.0, 0.0]
    for file_axis in range(3):
        out[int(orientation[file_axis, 0])] = float(spacing[file_axis])
    return tuple(out)


@dataclass
class EvaluationOptions:
    """What ``amecam evaluate`` does.

    Attributes:
        methods: method names (see ``amecam_cli.cams.METHODS``).
        threshold: map value from which a pixel is tumour, for every method.
        crf: also report every method after DenseCRF refinement (rows ``<method>+crf``).
        min_tumor_fraction: slice-level protocol's tumour share of a slice.
        batch_size: slices per forward pass.
        stage: target stage of the gradient baselines.
        budget: ScoreCAM channels per image.
        device: ``auto``, ``cpu`` or ``cuda``.
        qualitative_slices: slices shown in the qualitative grid.
        references: training-free rows (``threshold``, ``otsu``; see ``amecam_cli.references``).
        reference_level: level of the ``threshold`` row on the normalised image.
        tta: test-time augmentation of the AME-CAM network (``none`` or ``flip``; ``None``: the bundle's own).
            It applies to every map of the network (final, Mf, exits, mean of exits) and to its slice
            probability, not to the gradient baselines.
    """

    methods: tuple[str, ...]
    threshold: float = 0.5
    crf: bool = False
    min_tumor_fraction: float = 0.01
    batch_size: int = 32
    stage: int = 4
    budget: int = 64
    device: str = "auto"
    qualitative_slices: int = 6
    references: tuple[str, ...] = ()
    reference_level: float = 0.5
    tta: str | None = None


def _slice_metrics(pred: np.ndarray, truth: np.ndarray, spacing) -> dict:
    from .metrics import dice, hd95, iou

    return {
        "dice": dice(pred, truth), "iou": iou(pred, truth), "hd95": hd95(pred, truth, spacing=spacing),
        "hd95_paper": hd95(pred, truth, spacing=spacing, convention="paper"),
    }


def _summary(rows: list[dict]) -> dict:
    from .metrics import summarize

    out = summarize(rows, keys=("dice", "iou", "hd95", "hd95_paper"))
    out["n"] = len(rows)
    return out


#: the folder inside a report folder that keeps each finished case's results, for ``--resume``
STATE_FOLDER = ".resume"
#: options that do not change any number of the report (a resumed run may change them)
_SETTINGS_THAT_DO_NOT_COUNT = ("batch_size", "device")
#: the amecam version whose scoring an evaluation's kept cases must share (0.5.10: each row's own volume mask)
SCORING_VERSION = "0.5.10"


def _resume_settings(data, pattern, cases, bundle_path, extra_bundles, methods, options: EvaluationOptions) -> dict:
    """What the numbers of an evaluation depend on; a resumed run must match it."""

    def stamp(path) -> dict:
        path = Path(path).resolve()
        weights = path / "models" / "model.pt" if path.is_dir() else path
        stat = weights.stat() if weights.is_file() else None
        return {"path": str(path), "weights_bytes": stat.st_size if stat else None,
                "weights_modified_ns": stat.st_mtime_ns if stat else None}

    settings = {
        # how rows are scored: cases kept by an older amecam (every volume row gated, before 0.5.10) do not count
        "scoring": SCORING_VERSION,
        "data": str(Path(data).resolve()), "pattern": pattern, "cases": [c.case_id for c in cases],
        "bundle": stamp(bundle_path), "extra_bundles": [stamp(p) for p in extra_bundles or []], "methods": list(methods),
        **{k: v for k, v in dataclasses.asdict(options).items() if k not in _SETTINGS_THAT_DO_NOT_COUNT},
    }
    if settings["tta"] is None:  # the bundle's own, as before --augment existed: an older interrupted run still resumes
        del settings["tta"]
    return _json_round_trip(settings)


def _holds_work(output: Path) -> bool:
    """Whether a report folder holds anything but an evaluation that stopped before finishing a case."""
    if not output.is_dir():
        return False
    for entry in output.iterdir():
        if entry.name != STATE_FOLDER or any(entry.glob("case_*.json")):
            return True
    return False


def _resumed_cases(state: Path, settings: dict, output: Path) -> dict[int, dict]:
    """The results of the cases an interrupted evaluation finished, by case index (none when there is no state)."""
    try:
        saved = json.loads((state / "settings.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise AmecamError(f"{state / 'settings.json'}: unreadable ({exc}); pass --overwrite to start again") from exc
    changed = [key for key in settings if saved.get(key) != settings[key]]
    if changed:
        def shown(value):
            text = json.dumps(value)
            return text if len(text) <= 60 else text[:57] + "..."

        differences = "; ".join(f"{key} {shown(saved.get(key))}, now {shown(settings[key])}" for key in changed)
        raise AmecamError(f"{output}: the interrupted evaluation had other settings ({differences}); "
                          "run it as before, or pass --overwrite to start again")
    finished = {}
    for index, case_id in enumerate(settings["cases"]):
        path = state / f"case_{index:05d}.json"
        if not path.is_file():
            continue
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
            if result.get("qualitative") is not None:
                with np.load(state / f"case_{index:05d}_qualitative.npz") as arrays:
                    q = result["qualitative"]
                    q.update(image=arrays["image"], truth=arrays["truth"],
                             maps={m: arrays[f"map_{i}"] for i, m in enumerate(q.pop("methods"))})
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise AmecamError(f"{path}: unreadable ({exc}); pass --overwrite to start again") from exc
        if result.get("case") != case_id:
            raise AmecamError(f"{path}: holds case {result.get('case')}, not {case_id}; pass --overwrite to start again")
        finished[index] = result
    return finished


def _save_case(state: Path, index: int, result: dict) -> None:
    """Keep one finished case (its arrays first, then the JSON that marks it finished, each written whole)."""
    result = dict(result)
    q = result.get("qualitative")
    if q is not None:
        methods = list(q["maps"])
        arrays = {"image": q["image"], "truth": q["truth"], **{f"map_{i}": q["maps"][m] for i, m in enumerate(methods)}}
        with atomic_path(state / f"case_{index:05d}_qualitative.npz") as temporary, open(temporary, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        result["qualitative"] = {"case": q["case"], "z": q["z"], "methods": methods}
    _write_atomically(state / f"case_{index:05d}.json", json.dumps(result, default=_json_default))


def _write_atomically(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def _json_round_trip(value):
    """``value`` as JSON gives it back (numpy numbers become Python ones; arrays are left alone)."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, dict):
        return {k: _json_round_trip(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_round_trip(v) for v in value]
    return json.loads(json.dumps(value, default=_json_default))


@dataclass
class _CaseContext:
    """What scoring one case needs besides the case (see :func:`evaluate`)."""

    bundle: object
    reference: object
    methods: list
    methods_from_cams: tuple
    row_providers: dict
    options: EvaluationOptions
    device: object


def _evaluate_case(case, context: _CaseContext, *, with_qualitative: bool) -> dict:
    """Every method's rows for one case; plain data (and the qualitative slice's arrays) so it can be kept."""
    from amecam_bundle.scripts.postprocess import crf_refine_slice
    from amecam_bundle.scripts.preprocess import extract_slices, paste_slices, prepare_volume

    from .cams import compute_maps
    from .cases import load_case
    from .slicing import tumour_slice_indices

    bundle, reference, options, methods = context.bundle, context.reference, context.options, context.methods
    started = time.perf_counter()
    result = {"case": case.case_id, "slice_rows": {}, "volume_rows": {}, "ungated_rows": {}, "per_slice": [],
              "scores": [], "labels": [], "seconds": {}, "scorecam_passes": 0, "unitless": False, "qualitative": None}
    seconds = result["seconds"]
    loaded = load_case(case)
    prepared = prepare_volume(loaded.channels, brain=loaded.brain, strip_skull=reference.strip_skull)
    zs = prepared.brain_slices
    spacing = canonical_spacing(loaded.props.spacing, loaded.orientation)
    result["unitless"] = loaded.props.spacing_unit != "mm"
    shape = loaded.label.shape
    area = shape[0] * shape[1]
    fractions = loaded.label.sum(axis=(0, 1)) / area
    slices = extract_slices(prepared.image, prepared.box, zs, reference.image_size)
    t0 = time.perf_counter()
    probability = np.zeros(shape[2], dtype=np.float32)
    if bundle is not None:
        maps = compute_maps(bundle.network, slices, context.methods_from_cams, batch_size=options.batch_size,
                            stage=options.stage, budget=options.budget, device=context.device)
        result["scorecam_passes"] = int(maps.pop("scorecam_forward_passes", 0))
        probability[zs] = maps.pop("probability").numpy()
    else:
        maps = {}
        probability[zs] = reference.predictor(device=options.device).network_output(slices)[:, 1].flatten(1).amax(dim=1).numpy()
    seconds["maps"] = time.perf_counter() - t0
    for z in zs:
        if fractions[z] > options.min_tumor_fraction:
            result["scores"].append(float(probability[z])), result["labels"].append(1)
        elif fractions[z] == 0:
            result["scores"].append(float(probability[z])), result["labels"].append(0)
    gate = probability >= 0.5
    grey = prepared.image.mean(axis=0)
    # every tumour slice of the volume, also one the brain mask misses (its maps are empty there)
    tumour_slices = tumour_slice_indices(loaded.label, range(shape[2]), min_tumor_fraction=options.min_tumor_fraction)
    full_maps = {}
    for method in methods:
        if method in context.row_providers:
            t0 = time.perf_counter()
            volume_map = np.asarray(context.row_providers[method](loaded, prepared), dtype=np.float32)
            seconds[method] = seconds.get(method, 0.0) + time.perf_counter() - t0
        else:
            volume_map = np.zeros(shape, dtype=np.float32)
            volume_map[:, :, zs] = np.moveaxis(paste_slices(maps[method], prepared.box, shape[:2]).clamp(0, 1).numpy(), 0, -1)
        volume_map *= prepared.brain
        full_maps[method] = volume_map
        raw_mask = (volume_map >= options.threshold) & prepared.brain
        variants_of_method = [(method, raw_mask)]
        if options.crf:
            t0 = time.perf_counter()
            refined = np.zeros(shape, dtype=bool)
            for z in zs:
                if raw_mask[:, :, z].any():
                    refined[:, :, z] = crf_refine_slice(grey[:, :, z], volume_map[:, :, z]).astype(bool) & prepared.brain[:, :, z]
            seconds["crf"] = seconds.get("crf", 0.0) + time.perf_counter() - t0
            variants_of_method.append((f"{method}+crf", refined))
        for name, mask in variants_of_method:
            result["slice_rows"][name] = []
            for z in tumour_slices:
                row = _slice_metrics(mask[:, :, z], loaded.label[:, :, z], spacing[:2])
                result["slice_rows"][name].append(row)
                result["per_slice"].append({"method": name, "case": case.case_id, "z": z, **{k: row[k] for k in ("dice", "iou", "hd95")}})
            # the mask the method's own pipeline writes: maps of the AME-CAM classifier are gated by it, as amecam
            # infer gates them; a segmentation bundle's mask and a training-free row are not (nothing of AME-CAM's there)
            gated = mask & gate[None, None, :] if method in context.methods_from_cams else mask
            result["volume_rows"][name] = {"case": case.case_id, **_slice_metrics(gated, loaded.label, spacing)}
            result["ungated_rows"][name] = {"case": case.case_id, **_slice_metrics(mask, loaded.label, spacing)}
    if tumour_slices and with_qualitative:
        z = tumour_slices[len(tumour_slices) // 2]
        result["qualitative"] = {"case": case.case_id, "z": z, "image": grey[:, :, z], "truth": loaded.label[:, :, z],
                                 "maps": {m: full_maps[m][:, :, z] for m in methods}}
    seconds["total"] = time.perf_counter() - started
    return result


def evaluate(
    data: str | Path,
    bundle_path: str | Path,
    output: str | Path,
    options: EvaluationOptions,
    *,
    pattern: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    command: str = "",
    progress: bool = True,
    row_providers: dict[str, Callable] | None = None,
    extra_bundles: list | None = None,
) -> dict:
    """Evaluate every method of ``options`` on the labelled cases in ``data``; write the report to ``output``.

    Args:
        row_providers: extra rows computed per case, ``name -> fn(loaded_case, prepared) -> (x, y, z) map``
            (used by the reference rows); their maps are thresholded and scored like the CAM rows.
        extra_bundles: segmentation bundles (U-Nets) to score as rows of their own.
        resume: keep the cases an interrupted evaluation into ``output`` finished (each case's results are
            saved in ``output/.resume`` as it ends) and score only the rest; the settings must be the same.

    Returns:
        The report (also written as ``report.json``).
    """
    from tqdm.auto import tqdm

    from .bundle import open_bundle
    from .cases import find_cases_as_trained

    output = Path(output)
    if resume and overwrite:
        raise AmecamError("--resume keeps the finished cases and --overwrite replaces them: give one of the two")
    state = output / STATE_FOLDER
    if output.exists() and not output.is_dir():
        raise AmecamError(f"{output}: is a file; -o takes the report folder")
    if _holds_work(output) and not (overwrite or resume):
        raise AmecamError(f"{output}: report folder is not empty (pass --resume to continue an interrupted evaluation "
                          "there, or --overwrite to replace the report)")
    if resume and _holds_work(output) and not (state / "settings.json").is_file():
        raise AmecamError(f"{output}: no interrupted evaluation to resume there (pass --overwrite to replace what it holds)")
    if not 0.0 <= options.threshold <= 1.0:
        raise AmecamError(f"--threshold must be in [0, 1], got {options.threshold}")
    bundle = open_bundle(bundle_path, device=options.device, tta=options.tta)
    segmentation = [open_bundle(p, device=options.device) for p in extra_bundles or []]
    if bundle.kind == "segmentation":  # its AME-CAM source, when still there, gives the CAM rows (gated by its classifier)
        segmentation.insert(0, bundle)
        source = bundle.metadata.get("amecam_training", {}).get("source_bundle")
        bundle, why = None, "not recorded"
        if source and Path(source).exists():  # a folder or an exported zip
            try:
                bundle = open_bundle(source, device=options.device, tta=options.tta)
            except AmecamError as exc:
                why = str(exc)
        elif source:
            why = "no such file or folder"
        if bundle is None:
            logger.warning("the AME-CAM bundle this U-Net came from (%s) is not available (%s): no %s rows",
                           source, why, ", ".join(options.methods) or "CAM")
    methods_from_cams = tuple(options.methods) if bundle is not None else ()
    reference = bundle if bundle is not None else segmentation[0]
    for other in segmentation:
        if other.modalities != reference.modalities:
            raise AmecamError(f"bundles disagree on modalities: {','.join(reference.modalities)} vs {','.join(other.modalities)}")
    cases = find_cases_as_trained(data, reference.modalities, pattern=pattern, trained_pattern=reference.data_pattern, require_label=True)
    seen = cases_seen_in_training(cases, [b for b in (bundle, *segmentation) if b is not None])
    if seen["train"] or seen["val"]:
        logger.warning("%s: their scores are not held-out results", seen_note(seen, len(cases)))
    device = reference.module("train").resolve_device(options.device)
    from .references import reference_rows

    row_providers = {
        **reference_rows(reference.modalities, options.references, level=options.reference_level),
        **segmentation_rows(segmentation, options.device),
        **(row_providers or {}),
    }
    methods = list(methods_from_cams) + list(row_providers)
    variants = methods + ([f"{m}+crf" for m in methods] if options.crf else [])
    settings = _resume_settings(data, pattern, cases, bundle_path, extra_bundles, methods, options)
    finished = _resumed_cases(state, settings, output) if resume else {}
    try:
        if overwrite and state.exists():
            shutil.rmtree(state)
        state.mkdir(parents=True, exist_ok=True)
        _write_atomically(state / "settings.json", json.dumps(settings, indent=1))
    except OSError as exc:
        raise AmecamError(f"{output}: cannot create the report folder ({exc.strerror})") from exc
    if finished:
        logger.info("%s: %d of %d case(s) kept from the interrupted evaluation", output, len(finished), len(cases))
    context = _CaseContext(bundle=bundle, reference=reference, methods=methods, methods_from_cams=methods_from_cams,
                           row_providers=row_providers, options=options, device=device)
    slice_rows: dict[str, list[dict]] = {m: [] for m in variants}
    volume_rows: dict[str, list[dict]] = {m: [] for m in variants}
    ungated_rows: dict[str, list[dict]] = {m: [] for m in variants}
    per_slice_csv: list[dict] = []
    scores, labels = [], []
    seconds: dict[str, float] = {}
    qualitative: list[dict] = []
    scorecam_passes = 0
    unitless: list[str] = []  # cases whose files do not say their voxel sizes are mm
    for index, case in enumerate(tqdm(cases, desc="evaluate", unit="case", disable=None if progress else True)):
        if index in finished:
            result = finished[index]
        else:
            try:
                result = _evaluate_case(case, context, with_qualitative=len(qualitative) < options.qualitative_slices)
            except AmecamError as exc:  # a bad file in case k: the k cases before it are kept
                if index == 0:
                    raise
                raise AmecamError(f"{exc}; the {index} case(s) before it are kept: once it is fixed, the same command "
                                  "with --resume scores the rest") from exc
            try:
                _save_case(state, index, result)
            except OSError as exc:
                raise AmecamError(f"{state}: cannot keep the results of case {case.case_id} ({exc.strerror or exc})") from exc
            result = _json_round_trip(result)  # the numbers a resumed run reads back, so both give the same report
        for name in variants:
            slice_rows[name] += result["slice_rows"][name]
            volume_rows[name].append(result["volume_rows"][name])
            ungated_rows[name].append(result["ungated_rows"][name])
        per_slice_csv += result["per_slice"]
        scores += result["scores"]
        labels += result["labels"]
        for key, value in result["seconds"].items():
            seconds[key] = seconds.get(key, 0.0) + value
        scorecam_passes += result["scorecam_passes"]
        if result["unitless"]:
            unitless.append(case.case_id)
        if result.get("qualitative") is not None:
            qualitative.append(result["qualitative"])
    from amecam_bundle.scripts.train import roc_auc

    report = {
        "modality": ",".join(reference.modalities),
        "n_cases": len(cases),
        "n_slices": len(slice_rows[methods[0]]) if methods else 0,
        "threshold": options.threshold,
        "classifier_slice_auc": roc_auc(np.array(scores), np.array(labels)),
        "methods": {
            name: {"slice": _summary(slice_rows[name]), "volume": _summary(volume_rows[name]),
                   "volume_ungated": _summary(ungated_rows[name])}
            for name in variants
        },
        "per_case": {name: [{k: r[k] for k in ("case", "dice", "iou", "hd95")} for r in volume_rows[name]] for name in variants},
        "distance_unit": distance_unit(len(unitless), len(cases)),
        "cases_without_spacing_unit": unitless,
        "scorecam": {"budget_channels": options.budget, "forward_passes": scorecam_passes} if "scorecam" in methods else None,
        "seconds": seconds,
        "data": str(data),
        "cases": [c.case_id for c in cases],
        "cases_seen_in_training": seen,
        "bundle": str(bundle.root if bundle is not None else bundle_path),
        "extra_bundles": {segmentation_row_name(b): str(b.root) for b in segmentation},
        "bundle_training": reference.metadata.get("amecam_training", {}).get("settings", {}),
        "fusion": bundle.metadata.get("network_args", {}).get("fusion", "mean") if bundle is not None else None,
        "tta": bundle.tta if bundle is not None else None,
        # volume level: which rows are gated by the AME-CAM classifier, and which score their own mask as it is
        "gating": {"by": "AME-CAM classifier (deepest exit)" if bundle is not None else None, "gated": [m for m in variants if m.split("+")[0] in methods_from_cams],
                   "own": [m for m in variants if m.split("+")[0] not in methods_from_cams]},
        "command": command,
        "versions": _versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_report(output, report, per_slice_csv, slice_rows, qualitative, options)
    logger.info("report written to %s", output)
    return report


def cases_seen_in_training(cases: list, bundles: list) -> dict[str, list[str]]:
    """The evaluated cases that were a bundle's own training or validation cases, by role (``train``, ``val``):
    by id (the case-level split in its metadata), or, under another id, by identical image files (the
    ``fingerprints`` kept since 0.5.9), listed as ``"ID (same files as TRAINING_ID)"``."""
    from .cases import case_fingerprint

    roles: dict[str, str] = {}
    by_content: dict[str, str] = {}
    for loaded in bundles:
        training = loaded.metadata.get("amecam_training", {})
        for case_id, role in training.get("split", {}).items():
            if role == "train" or roles.get(case_id) is None:
                roles[case_id] = role
        for case_id, digest in (training.get("fingerprints") or {}).items():
            by_content.setdefault(digest, case_id)
    seen: dict[str, list[str]] = {"train": [], "val": []}
    for case in cases:
        if case.case_id in roles:
            seen[roles[case.case_id]].append(case.case_id)
        elif by_content:
            twin = by_content.get(case_fingerprint(case))
            if twin is not None and twin in roles:
                seen[roles[twin]].append(f"{case.case_id} (same files as {twin})")
    return {role: sorted(ids) for role, ids in seen.items()}


def seen_note(seen: dict[str, list[str]], n_cases: int) -> str:
    """One line on the evaluated cases that were the bundle's own training or validation cases."""
    n_train, n_val = len(seen["train"]), len(seen["val"])
    ids = seen["train"] + seen["val"]
    shown = ", ".join(ids[:6]) + (f" and {len(ids) - 6} more, listed in report.json" if len(ids) > 6 else "")
    return (f"{n_train + n_val} of {n_cases} cases are the bundle's own cases, by id or by identical files "
            f"({n_train} training, {n_val} validation: {shown})")


def _versions() -> dict:
    import monai

    return {"amecam": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "monai": monai.__version__, "numpy": np.__version__}


def _fmt(mean: float | None, std: float | None, digits: int = 3) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.{digits}f} ± {std or 0:.{digits}f}"


def distance_unit(unitless: int, total: int) -> str:
    """What the HD95 columns are in: mm only when every case's file says its voxel sizes are mm."""
    if unitless == 0:
        return "mm"
    if unitless == total:
        return "voxel-size units, unit not stated"
    return "mm; some files state no unit"


def table_markdown(report: dict, rows: list[str] | None = None) -> str:
    """The Table-1 layout: methods as rows; slice-level and volume-level Dice, IoU, HD95 as columns.

    ``rows`` picks and orders the methods (default: all, in the report's order).
    """
    unit = report.get("distance_unit", "mm")  # reports written before it was recorded
    lines = [
        f"| Method | Slice Dice | Slice IoU | Slice HD95 ({unit}) | Volume Dice | Volume IoU | Volume HD95 ({unit}) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in rows or list(report["methods"]):
        if name not in report["methods"]:
            continue
        row = report["methods"][name]
        label = method_label(name, fusion=report.get("fusion"))
        s, v = row["slice"], row["volume"]
        lines.append(
            f"| {label} | {_fmt(s['dice'], s.get('dice_std'))} | {_fmt(s['iou'], s.get('iou_std'))} | {_fmt(s['hd95'], s.get('hd95_std'), 1)} "
            f"| {_fmt(v['dice'], v.get('dice_std'))} | {_fmt(v['iou'], v.get('iou_std'))} | {_fmt(v['hd95'], v.get('hd95_std'), 1)} |"
        )
    return "\n".join(lines)


def _write_report(output: Path, report: dict, per_slice: list[dict], slice_rows: dict, qualitative: list[dict], options: EvaluationOptions) -> None:
    (output / "report.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n", encoding="utf-8")
    with open(output / "per_slice.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["method", "case", "z", "dice", "iou", "hd95"])
        writer.writeheader()
        writer.writerows(per_slice)
    md = [
        f"# amecam evaluation: {report['modality']}",
        "",
        f"{report['n_cases']} cases, {report['n_slices']} tumour slices (whole tumour > 1% of the slice), "
        f"threshold {report['threshold']}. Classifier slice AUC {report['classifier_slice_auc']:.3f}.",
        "",
        "Slice level: every tumour slice, no classifier gating. Volume level: 3-D per case, the mask each "
        "method's own pipeline writes: for the maps of the AME-CAM classifier, slices it calls normal are empty "
        "(as in amecam infer); segmentation bundles and the rows without training are not gated. Mean ± standard "
        "deviation; HD95 over the predictions that are not empty (see `report.json` for counts and the paper's "
        "373.13 convention).",
        *_unit_note(report),
        *_seen_note(report),
        "",
        table_markdown(report),
        "",
        f"- Command: `{report['command']}`",
        f"- Data: `{report['data']}` ({', '.join(report['cases'])})",
        f"- Bundle: `{report['bundle']}`; training settings {json.dumps(report['bundle_training'])}",
        *([f"- Test-time augmentation: {TTA_TEXT}"] if report.get("tta") == "flip" else []),
        f"- Versions: {json.dumps(report['versions'])}; {report['date']}",
    ]
    if report.get("scorecam"):
        md.append(f"- ScoreCAM: {report['scorecam']['budget_channels']} channels per image, {report['scorecam']['forward_passes']} forward passes.")
    md.append(f"- Time: {json.dumps({k: round(v, 1) for k, v in report['seconds'].items()})} seconds.")
    (output / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    _boxplot(output / "dice_boxplot.png", slice_rows)
    _qualitative(output / "qualitative.png", qualitative, options.threshold)


def _seen_note(report: dict) -> list[str]:
    seen = report.get("cases_seen_in_training") or {"train": [], "val": []}
    if not (seen["train"] or seen["val"]):
        return []
    return [f"**Not held out:** {seen_note(seen, report['n_cases'])}; their scores are not held-out results."]


def _unit_note(report: dict) -> list[str]:
    unitless = report.get("cases_without_spacing_unit") or []
    if not unitless:
        return []
    return [f"HD95 is in the files' voxel-size units: {len(unitless)} of {report['n_cases']} cases have NIfTI headers "
            "that state no spatial unit (xyzt_units 'unknown'), so their distances are millimetres only if the "
            "voxel sizes are."]


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(type(value))


def _boxplot(path: Path, slice_rows: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, rows in slice_rows.items() if rows]
    if not names:
        return
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names)), 4))
    ax.boxplot([[r["dice"] for r in slice_rows[n]] for n in names], showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("slice-level Dice")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _qualitative(path: Path, rows: list[dict], threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    methods = list(rows[0]["maps"])
    fig, axes = plt.subplots(len(rows), len(methods) + 2, figsize=(1.6 * (len(methods) + 2), 1.7 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        axes[r, 0].imshow(row["image"].T, cmap="gray", origin="lower")
        axes[r, 0].set_title(f"{row['case']} z={row['z']}", fontsize=6)
        axes[r, 1].imshow(row["truth"].T, cmap="gray", origin="lower")
        axes[r, 1].set_title("ground truth", fontsize=6)
        for c, method in enumerate(methods, start=2):
            axes[r, c].imshow(row["image"].T, cmap="gray", origin="lower")
            axes[r, c].imshow(row["maps"][method].T, cmap="jet", alpha=0.45, origin="lower", vmin=0, vmax=1)
            if (row["maps"][method] >= threshold).any():
                axes[r, c].contour((row["maps"][method] >= threshold).T, levels=[0.5], colors="white", linewidths=0.6, origin="lower")
            axes[r, c].set_title(method, fontsize=6)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
