"""``amecam train-seg``: a U-Net bundle trained on AME-CAM pseudo-labels (or, as an upper bound, on masks).

The data is sliced with the AME-CAM run's own slice settings and seed, so the case-level split is the
same one the AME-CAM bundle was trained with. Pseudo-labels: every tumour slice gets the AME-CAM final
map (thresholded at 0.5 by the trainer; optionally replaced by its DenseCRF mask), normal slices an
empty mask, ambiguous slices are left out. The result is a bundle like the AME-CAM one (configs,
scripts, weights, TorchScript, metadata, model card), so ``amecam infer`` and ``amecam evaluate`` take it.
"""

from __future__ import annotations

import datetime
import logging
import math
import shutil
from pathlib import Path

import numpy as np

from . import __version__
from .bundle import instantiate_network, monai_run_command, open_bundle, read_metadata, write_metadata
from .errors import AmecamError
from .io import atomic_path
from .training import (
    _DATA_KEY, TrainSettings, _check_slice_dataset, _is_slice_dataset, _labelled_cases, _prepare_run_folder, _saved_settings, _slice_if_needed,
    attach_run_log, detach_run_log, export_torchscript, save_run_settings, saved_data,
)
from .workflow import check_nproc_per_node, run_config

__all__ = ["write_pseudo_labels", "train_segmentation"]

logger = logging.getLogger(__name__)


def write_pseudo_labels(slices: Path, bundle, *, crf: bool = False, batch_size: int = 32, device: str = "auto", progress: bool = True) -> dict:
    """Write ``slices/pseudo/<file>.npy``: the AME-CAM map on tumour slices, zeros elsewhere.

    With ``crf`` the map is replaced by its DenseCRF mask (crisp labels: no uncertainty weighting).
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from amecam_bundle.scripts.postprocess import crf_refine_slice

    from .cams import compute_maps

    rows = [r for r in _read_manifest(slices)]
    by_file: dict[str, list[dict]] = {}
    for row in rows:
        by_file.setdefault(row["file"], []).append(row)
    (slices / "pseudo").mkdir(exist_ok=True)
    counts = {"tumour_slices": 0, "mean_fraction": []}
    device = bundle.module("train").resolve_device(device)
    for name, file_rows in tqdm(sorted(by_file.items()), desc="pseudo-labels", unit="case", disable=None if progress else True):
        target = slices / "pseudo" / f"{name}.npy"
        if target.exists():
            continue
        images = torch.from_numpy(np.load(slices / "images" / f"{name}.npy").astype(np.float32))
        size = images.shape[-1]
        maps = np.zeros((images.shape[0], size, size), dtype=np.float16)
        tumour_rows = [int(r["row"]) for r in file_rows if r["label"] == "tumor"]
        if tumour_rows:
            x = images[tumour_rows]
            if size != bundle.image_size:
                x = F.interpolate(x, size=(bundle.image_size,) * 2, mode="bilinear", align_corners=False)
            final = compute_maps(bundle.network, x, ("amecam",), batch_size=batch_size, device=device)["amecam"]
            if size != bundle.image_size:
                final = F.interpolate(final[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
            final = final.numpy()
            if crf:
                grey = images[tumour_rows].mean(dim=1).numpy()
                final = np.stack([crf_refine_slice(g, m) for g, m in zip(grey, final)]).astype(np.float32)
            maps[tumour_rows] = final.astype(np.float16)
            counts["tumour_slices"] += len(tumour_rows)
            counts["mean_fraction"].append(float((final >= 0.5).mean()))
        with atomic_path(target) as tmp, open(tmp, "wb") as handle:
            np.save(handle, maps)
    counts["mean_fraction"] = float(np.mean(counts["mean_fraction"])) if counts["mean_fraction"] else 0.0
    return counts


def _read_manifest(slices: Path) -> list[dict]:
    import csv

    with open(slices / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _resume_inputs(output: Path, saved: dict, bundle_path, data) -> tuple:
    """The AME-CAM bundle and data of the train-seg run being resumed: the saved ones, or the same ones given again."""
    source = saved.get("source_bundle")
    if bundle_path is None:
        if not source:
            raise AmecamError(f"{output}: this run did not record its AME-CAM bundle; give --bundle with --resume")
        bundle_path = source
    elif source and str(Path(bundle_path).resolve()) != source:
        raise AmecamError(f"--bundle {bundle_path} is not the AME-CAM bundle of the run being resumed ({source})")
    if data is None:
        data = saved_data(output, saved, option="--data_dir")
    return bundle_path, data


#: train-seg's option defaults (None in the signature means "not given", so --resume can tell a contradiction)
SEG_DEFAULTS = {"epochs": 20, "batch_size": 16, "learning_rate": 1e-3, "device": "auto", "nproc_per_node": 1, "supervised": False,
                "crf": False, "uncertainty_margin": 0.1, "uncertainty_weight": 0.2}
#: options that may change when resuming (where and how fast, not what is trained)
_RESUMABLE = ("device", "nproc_per_node")


def train_segmentation(
    bundle_path: str | Path | None,
    data: str | Path | None,
    output: str | Path,
    *,
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
    pattern: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    slice_labels: str | None = None,
    tta: str | None = None,
) -> dict:
    """Train the segmentation bundle in ``output`` from the AME-CAM bundle ``bundle_path``; see the module docs.

    Options left None take :data:`SEG_DEFAULTS` (or the AME-CAM run's); with ``resume`` they take the
    interrupted run's, ``bundle_path`` and ``data`` may be None (the run's own), and a given value that
    contradicts the run is refused (``device`` and ``nproc_per_node`` may change). ``tta`` is the source network's
    test-time augmentation for the pseudo-labels (``none`` or ``flip``; None: the AME-CAM bundle's own).
    """
    import torch

    output = Path(output)
    given = {"epochs": epochs, "image_size": image_size, "batch_size": batch_size, "learning_rate": learning_rate,
             "device": device, "nproc_per_node": nproc_per_node, "seed": seed, "supervised": supervised, "crf": crf, "uncertainty_margin": uncertainty_margin,
             "uncertainty_weight": uncertainty_weight, "pattern": pattern,
             "slice_labels": None if slice_labels is None else str(Path(slice_labels).expanduser().resolve()), "tta": tta}
    saved = _saved_settings(output) if resume else None
    if saved is not None:
        bundle_path, data = _resume_inputs(output, saved, bundle_path, data)
    elif bundle_path is None or data is None:
        raise AmecamError("train-seg needs --bundle RUN, --data_dir DIR and --output_dir SEGRUN")
    options = {**SEG_DEFAULTS, **(saved or {}), **{k: v for k, v in given.items() if v is not None}}
    if options.get("tta") not in (None, "none") and options["supervised"]:
        raise AmecamError(f"--augment {options['tta']} makes pseudo-labels; --supervised trains on the expert masks instead")
    source = open_bundle(bundle_path, device=options["device"], tta=options.get("tta"))
    if source.kind != "amecam":
        raise AmecamError(f"{bundle_path}: train-seg needs an AME-CAM bundle to make pseudo-labels from (this is a {source.kind} bundle)")
    if options["epochs"] < 1:
        raise AmecamError(f"--epochs must be >= 1, got {options['epochs']}")
    if not 0 <= options["uncertainty_margin"] < 0.5:
        raise AmecamError(f"--uncertainty_margin must be in [0, 0.5), got {options['uncertainty_margin']}")
    if not 0 <= options["uncertainty_weight"] <= 1:
        raise AmecamError(f"--uncertainty_weight must be in [0, 1], got {options['uncertainty_weight']}")
    if not math.isfinite(options["learning_rate"]) or options["learning_rate"] <= 0:
        raise AmecamError(f"--learning_rate must be a number > 0, got {options['learning_rate']}")
    if seed is not None and seed < 0:
        raise AmecamError(f"--seed must be >= 0, got {seed}")
    from amecam_bundle.scripts.device import resolve_device

    check_nproc_per_node(options["nproc_per_node"], resolve_device(options["device"]))  # the device open_bundle accepted
    data = Path(data)
    if not data.exists():
        raise AmecamError(f"{data}: no such file or folder")
    training = source.metadata.get("amecam_training", {})
    base = dict(training.get("settings", {}))
    if saved is None:
        settings = {
            "modalities": list(source.modalities), "image_size": int(image_size or source.image_size), "epochs": int(options["epochs"]),
            "batch_size": int(options["batch_size"]), "learning_rate": float(options["learning_rate"]), "device": str(options["device"]),
            "nproc_per_node": int(options["nproc_per_node"]),
            "seed": int(seed if seed is not None else base.get("seed", 0)), "supervised": bool(options["supervised"]),
            "crf": bool(options["crf"]), "uncertainty_margin": float(options["uncertainty_margin"]),
            "uncertainty_weight": float(options["uncertainty_weight"]),
            "val_fraction": float(base.get("val_fraction", 0.2)), "min_tumor_fraction": float(base.get("min_tumor_fraction", 0.01)),
            "ambiguous": base.get("ambiguous", "exclude"), "skull_strip": bool(source.strip_skull),
            # the AME-CAM run's CSV, unless the expert masks are there to be used (--supervised)
            "slice_labels": given["slice_labels"] or (None if options["supervised"] else base.get("slice_labels")),
            "pattern": pattern if pattern is not None else base.get("pattern"),
            "source_bundle": str(Path(bundle_path).resolve()), "tta": source.tta,
        }
    else:
        for key, value in given.items():
            before = saved.get(key, "none" if key == "tta" else None)  # runs before 0.5.22 labelled without augmentation
            if value is not None and key not in _RESUMABLE and value != before:
                raise AmecamError(f"--{'augment' if key == 'tta' else key} {value!r} differs from the run being resumed ({before!r}); "
                                  "resume with the same settings or start a new run")
        settings = {**saved, **{key: options[key] for key in _RESUMABLE}}
        settings.pop(_DATA_KEY, None)
    for name in ("image_size",):
        if settings[name] % 16 or settings[name] < 32:
            raise AmecamError(f"--image_size must be a multiple of 16 and >= 32 for the U-Net, got {settings[name]}")
    slice_settings = TrainSettings(modalities=tuple(settings["modalities"]), image_size=settings["image_size"], seed=settings["seed"],
                                   val_fraction=settings["val_fraction"], min_tumor_fraction=settings["min_tumor_fraction"],
                                   ambiguous=settings["ambiguous"], skull_strip=bool(settings.get("skull_strip", False)), epochs=1)
    cases = labels = None
    if _is_slice_dataset(data):
        _check_slice_dataset(data, slice_settings)
    else:  # the data and its labels are checked before the run folder is made
        slice_settings.slice_labels = settings.get("slice_labels")
        if slice_settings.slice_labels and not Path(slice_settings.slice_labels).is_file():
            raise AmecamError(f"{slice_settings.slice_labels}: the slice labels the AME-CAM bundle was trained with are not "
                              "here; give them with --slice_labels CSV")
        # without --pattern, the files are first read as they were named for the AME-CAM run
        cases, labels = _labelled_cases(data, slice_settings, pattern, trained_pattern=settings.get("pattern"))
    if saved is None:
        _prepare_run_folder(output, keep=[data, Path(bundle_path)], overwrite=overwrite)
        configs = output / "configs"
        shutil.move(str(configs / "inference_seg.yaml"), configs / "inference.yaml")
        for name in configs.glob("train_stage*.yaml"):
            name.unlink()
        save_run_settings(output, settings, None)
    (output / "logs").mkdir(exist_ok=True)
    log_state = attach_run_log(output)
    try:
        slices, dataset_info = _slice_if_needed(data, output, slice_settings, cases, labels)
        # the data matched the run's slices: --resume alone finds it again
        save_run_settings(output, settings, str(data.resolve()))
        source_split = training.get("split", {})
        if source_split and dataset_info.get("split") and any(source_split.get(c) not in (None, s) for c, s in dataset_info["split"].items()):
            logger.warning("the case split differs from the AME-CAM bundle's: validation cases may have been seen by AME-CAM")
        if settings["supervised"]:
            if not (slices / "masks").is_dir() or not any((slices / "masks").iterdir()):
                raise AmecamError(f"{data}: --supervised needs segmentations for the training cases")
            pseudo = {"labels": "expert masks (fully supervised upper bound)"}
        else:
            pseudo = write_pseudo_labels(slices, source, crf=settings["crf"], device=settings["device"], progress=progress)
            # name the map that labelled the slices: the source bundle's final map follows its fusion
            fusion = source.metadata.get("network_args", {}).get("fusion", "mean")
            pseudo["labels"] = ("AME-CAM pseudo-labels" + (" (Mf alone, fusion attention)" if fusion == "attention" else "")
                                + (" with flip test-time augmentation" if source.tta == "flip" else "")
                                + (" refined by DenseCRF" if settings["crf"] else ""))
            pseudo["source_fusion"], pseudo["source_tta"] = fusion, source.tta
        metadata = read_metadata(output)
        # the template's network_args (stem_stride, fusion) configure AME-CAM's ResNet; a U-Net has none of them
        metadata.pop("network_args", None)
        image = dict(source.metadata["network_data_format"]["inputs"]["image"])
        image["spatial_shape"] = [settings["image_size"], settings["image_size"]]
        metadata["network_data_format"]["inputs"]["image"] = image
        pred = metadata["network_data_format"]["outputs"]["pred"]
        pred["spatial_shape"] = [settings["image_size"], settings["image_size"]]
        pred["channel_def"] = {"0": "tumour probability", "1": "slice tumour probability (maximum of channel 0)"}
        metadata["preprocessing"] = {"skull_strip": bool(settings.get("skull_strip", False))}
        write_metadata(output, metadata)
        summary = run_config(
            output, "train_seg.yaml", bundle_root=str(output), dataset_dir=str(slices), epochs=settings["epochs"],
            batch_size=settings["batch_size"], learning_rate=settings["learning_rate"], device=settings["device"],
            seed=settings["seed"], label_source="masks" if settings["supervised"] else "pseudo",
            uncertainty_margin=0.0 if settings["crf"] else settings["uncertainty_margin"],
            uncertainty_weight=settings["uncertainty_weight"], resume=resume, progress=progress,
            nproc_per_node=settings["nproc_per_node"], summary=output / "models" / "seg.json",
        )[-1]
        network = instantiate_network(output)
        network.load_state_dict(torch.load(output / "models" / "model.pt", map_location="cpu", weights_only=True))
        export_torchscript(output, network, settings["image_size"], len(settings["modalities"]))
        _finish_metadata(output, settings, data, dataset_info, summary, pseudo)
    finally:
        detach_run_log(log_state)
    logger.info("segmentation bundle ready: %s", output)
    return {"bundle": output, "summary": summary, "pseudo": pseudo}


def _finish_metadata(output: Path, settings: dict, data: Path, dataset_info: dict, summary: dict, pseudo: dict) -> None:
    import monai
    import numpy
    import torch

    metadata = read_metadata(output)
    supervised = settings["supervised"]
    kind_name = "supervised" if supervised else "pseudo"
    metadata["bundle_name"] = f"amecam_unet_{kind_name}_{'_'.join(settings['modalities'])}"
    metadata["name"] = "U-Net trained on " + ("expert masks (fully supervised upper bound)" if supervised else "AME-CAM pseudo-labels")
    metadata["task"] = "Whole-tumour segmentation of brain MRI" + (" (fully supervised)" if supervised else " from AME-CAM pseudo-labels")
    metadata["description"] = (
        "MONAI 2-D U-Net trained on " + pseudo["labels"] + " of the training cases, as a refinement of (or an upper bound for) "
        "the weakly supervised AME-CAM bundle " + settings["source_bundle"] + "."
    )
    metadata["label_classes"] = "per-pixel labels: 1 = tumour (" + pseudo["labels"] + "), 0 = everything else"
    metadata["pred_classes"] = "2 channels: channel 0 tumour probability, channel 1 the slice's maximum tumour probability"
    metadata["monai_version"], metadata["numpy_version"] = monai.__version__, numpy.__version__
    metadata["pytorch_version"] = torch.__version__.split("+")[0]
    metadata["eval_metrics"] = {"val_dice_against_training_labels": summary.get("best_val_dice")}
    metadata["amecam_training"] = {
        "kind": "segmentation", "labels": "masks" if supervised else "pseudo", "label_description": pseudo["labels"],
        "amecam_version": __version__, "trained": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": str(data), "settings": settings, "split": dataset_info.get("split", {}),
        "fingerprints": dataset_info.get("fingerprints", {}), "source_bundle": settings["source_bundle"], "best_epoch": summary.get("best_epoch"),
        "pseudo_labels": {k: v for k, v in pseudo.items() if k != "labels"},
    }
    metadata["changelog"] = {metadata["version"]: "U-Net segmentation bundle (" + pseudo["labels"] + ")"}
    write_metadata(output, metadata)
    card = output / "docs" / "README.md"
    card.write_text(
        f"# {metadata['name']} (model card)\n\n{metadata['description']}\n\n"
        "## Model\n\nMONAI `UNet` (2-D, channels 16-32-64-128-256, strides 2, two residual units, InstanceNorm), "
        "Dice + cross-entropy loss" + ("" if supervised else " with pixels near the pseudo-label threshold down-weighted") + ". "
        "Inputs and preprocessing are those of the AME-CAM bundle (see `configs/metadata.json`).\n\n"
        f"## Use\n\n```\n{monai_run_command(settings['modalities'])}\n```\n\nor `amecam infer VOLUME -o MASK --bundle <this folder>`"
        + (" (VOLUME a case folder or a datalist: the network takes " + ", ".join(settings["modalities"]) + ")" if len(settings["modalities"]) > 1 else "")
        + ".\n\n"
        "## This copy\n\n"
        f"- Labels: {pseudo['labels']}.\n- Data: `{data}`; {sum(v == 'train' for v in dataset_info.get('split', {}).values())} "
        f"training and {sum(v == 'val' for v in dataset_info.get('split', {}).values())} validation cases (split by case, seed {settings['seed']}).\n"
        f"- Best epoch {summary.get('best_epoch')}, validation Dice against the training labels {summary.get('best_val_dice')}.\n\n"
        "## Intended use\n\nResearch only; not for clinical or diagnostic use.\n"
    , encoding="utf-8")
