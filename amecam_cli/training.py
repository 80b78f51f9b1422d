"""``amecam train``: from volumes (or a slice dataset) to a complete, self-contained AME-CAM bundle.

The run folder starts as a copy of the packaged bundle template, so it carries the code and configs
it was trained with. Each stage runs through MONAI's ``ConfigWorkflow`` on the run's own
``configs/train_stage*.yaml`` with the resolved settings as overrides -- the same thing
``python -m monai.bundle run`` does; with ``--nproc_per_node N`` it runs ``torchrun`` instead, one
process per GPU with DistributedDataParallel (the bundle's ``configs/multi_gpu_train.yaml``). Settings are merged in one place (:func:`resolve_settings`):
code defaults, then an optional YAML/JSON settings file, then the command line; the result is logged
and saved in ``configs/amecam_train.json``, and ``--resume`` reuses it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

from . import __version__
from .bundle import copy_template, monai_run_command, read_metadata, write_metadata
from .errors import AmecamError, one_line_reason
from .io import atomic_path
from .workflow import check_nproc_per_node, run_config

__all__ = ["TrainSettings", "resolve_settings", "train_bundle"]

logger = logging.getLogger(__name__)

PRETRAIN_CHOICES = ("none", "simclr")
#: loggers whose records go to the run's logs/train.log (toolkit and bundle scripts)
_LOG_NAMESPACES = ("amecam_cli", "amecam")


def attach_run_log(output: Path) -> tuple:
    """Send amecam's INFO messages to ``output/logs/train.log`` (whatever the console shows); undo with :func:`detach_run_log`."""
    (output / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(output / "logs" / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger(name) for name in _LOG_NAMESPACES]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    return handler, loggers, levels


def detach_run_log(state: tuple) -> None:
    handler, loggers, levels = state
    for lg, level in zip(loggers, levels):
        lg.removeHandler(handler)
        lg.setLevel(level)
    handler.close()
SETTINGS_FILE = "amecam_train.json"
#: key of the run's data folder in SETTINGS_FILE (not a setting: it may be given again, and is checked by the slices)
_DATA_KEY = "data_dir"


@dataclass
class TrainSettings:
    """Everything that determines a training run (the defaults are the code defaults)."""

    modalities: tuple[str, ...] = ("flair",)
    epochs: int = 20
    attention_epochs: int = 8
    pretrain: str = "none"
    pretrain_epochs: int = 10
    image_size: int = 128
    stem_stride: int = 1
    batch_size: int = 32
    learning_rate: float = 1e-3
    attention_learning_rate: float = 1e-3
    seed: int = 0
    val_fraction: float = 0.2
    min_tumor_fraction: float = 0.01
    ambiguous: str = "exclude"
    skull_strip: bool = False
    fusion: str = "mean"
    device: str = "auto"
    #: training processes (one per GPU) started with torchrun; 1 = train in this process
    nproc_per_node: int = 1
    slice_labels: str | None = None
    #: naming pattern of the data (see amecam_cli.cases), kept so that --resume and train-seg find the same files
    pattern: str | None = None

    def validate(self) -> None:
        from .cases import parse_modalities

        self.modalities = parse_modalities(self.modalities)
        for name in ("epochs", "attention_epochs", "pretrain_epochs", "image_size", "stem_stride", "batch_size", "seed", "nproc_per_node"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise AmecamError(f"--{name} must be a whole number, got {value!r}")
        if self.epochs < 1:
            raise AmecamError(f"--epochs must be >= 1, got {self.epochs}")
        if self.attention_epochs < 0:
            raise AmecamError(f"--attention_epochs must be >= 0, got {self.attention_epochs}")
        if self.image_size < 64 or self.image_size % 32:
            raise AmecamError(
                f"--image_size must be a multiple of 32 and >= 64 (the last stage is image_size/32 pixels wide at --stem_stride 2), got {self.image_size}"
            )
        if self.stem_stride not in (1, 2):
            raise AmecamError(
                f"--stem_stride must be 1 (full-resolution exit maps) or 2 (about 3x faster, coarser maps), got {self.stem_stride}"
            )
        if self.batch_size < 2:
            raise AmecamError(f"--batch_size must be >= 2, got {self.batch_size}")
        if not isinstance(self.skull_strip, bool):
            raise AmecamError(f"--skull_strip must be true or false, got {self.skull_strip!r}")
        if self.seed < 0:
            raise AmecamError(f"--seed must be >= 0, got {self.seed}")
        for name in ("learning_rate", "attention_learning_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise AmecamError(f"--{name} must be a number > 0, got {value!r}")
        if self.pretrain == "simclr" and self.pretrain_epochs < 1:
            raise AmecamError(f"--pretrain_epochs must be >= 1 with --pretrain simclr, got {self.pretrain_epochs}")
        from .slicing import SliceSettings  # the slicing options, checked now rather than after the run folder is made

        SliceSettings(modalities=self.modalities, image_size=self.image_size, min_tumor_fraction=self.min_tumor_fraction,
                      ambiguous=self.ambiguous, val_fraction=self.val_fraction, seed=self.seed, skull_strip=self.skull_strip)
        from amecam_bundle.scripts.networks import FUSION_CHOICES

        if self.fusion not in FUSION_CHOICES:
            raise AmecamError(f"--fusion must be one of {', '.join(FUSION_CHOICES)}, got {self.fusion!r}")
        if self.pretrain not in PRETRAIN_CHOICES:
            raise AmecamError(f"--pretrain must be one of {', '.join(PRETRAIN_CHOICES)}, got {self.pretrain!r}")
        if str(self.device).lower() not in ("auto", "cpu", "cuda") and not str(self.device).lower().startswith("cuda:"):
            raise AmecamError(f"--device must be one of auto, cpu, cuda, got {self.device!r}")
        from amecam_bundle.scripts.device import resolve_device

        try:  # a GPU this machine lacks fails now, not after the data is sliced
            device = resolve_device(self.device)
        except ValueError as exc:
            raise AmecamError(f"--device: {exc}") from exc
        check_nproc_per_node(self.nproc_per_node, device)
        if self.slice_labels is not None:
            if not isinstance(self.slice_labels, (str, os.PathLike)) or not str(self.slice_labels).strip():
                raise AmecamError(f"--slice_labels must be the path of a CSV file, got {self.slice_labels!r}")
            self.slice_labels = str(Path(self.slice_labels).expanduser().resolve())  # a resumed run finds it from anywhere
        if self.pattern is not None and (not isinstance(self.pattern, str) or not self.pattern.strip()):
            raise AmecamError(f"--pattern must be a naming pattern such as \"{{case}}_{{modality}}.nii.gz\", got {self.pattern!r}")

    def as_dict(self) -> dict:
        out = asdict(self)
        out["modalities"] = list(self.modalities)
        return out


#: settings that may differ when resuming (they do not change what is trained, only where and how fast)
RESUMABLE_CHANGES = ("device", "fusion", "nproc_per_node")
def _read_settings_file(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise AmecamError(f"{path}: cannot read settings ({one_line_reason(exc)})") from exc
    if not isinstance(data, dict):
        raise AmecamError(f"{path}: settings must be a mapping of option: value")
    if isinstance(data.get("slice_labels"), str):  # a file named in the settings file is found beside it
        data["slice_labels"] = str(path.parent / Path(data["slice_labels"]).expanduser())
    return data


def resolve_settings(*, config: Path | None = None, saved: dict | None = None, **given: Any) -> TrainSettings:
    """Merge code defaults, a settings file and the command line (``given``; None = not given).

    With ``saved`` (a resumed run), those settings replace the defaults and the file, and an explicit
    command-line value that contradicts them is an error.
    """
    valid = {f.name for f in fields(TrainSettings)}
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if saved is not None:
        merged.update({k: v for k, v in saved.items() if k in valid})
        sources.update({k: "saved run" for k in merged})
        if "stem_stride" not in merged:  # runs started before 0.2.0 trained the stride-2 network
            merged["stem_stride"], sources["stem_stride"] = 2, "saved run (before 0.2.0)"
    elif config is not None:
        data = _read_settings_file(config)
        unknown = sorted(set(data) - valid)
        if unknown:
            raise AmecamError(f"{config}: unknown settings {', '.join(unknown)} (valid: {', '.join(sorted(valid))})")
        merged.update(data)
        sources.update({k: str(config) for k in data})
    for key, value in given.items():
        if value is None:
            continue
        if key not in valid:
            raise AmecamError(f"unknown training setting {key!r}")
        if saved is not None and key not in RESUMABLE_CHANGES and not (key == "pattern" and key not in saved):  # runs before 0.5.6 kept no pattern
            current = TrainSettings(**{key: merged.get(key, getattr(TrainSettings(), key))})
            candidate = TrainSettings(**{key: value})
            if key in ("modalities", "slice_labels"):
                current.validate()
                candidate.validate()
            if getattr(current, key) != getattr(candidate, key):
                raise AmecamError(
                    f"--{key} {value!r} differs from the run being resumed ({merged.get(key)!r}); "
                    "resume with the same settings or start a new run"
                )
        merged[key] = value
        sources[key] = "command line"
    settings = TrainSettings(**merged)
    settings.validate()
    for key, value in settings.as_dict().items():
        logger.info("setting %s = %r (%s)", key, value, sources.get(key, "default"))
    return settings


def _is_slice_dataset(path: Path) -> bool:
    info = path / "dataset.json"
    if not (path.is_dir() and info.is_file()):
        return False
    try:
        return json.loads(info.read_text(encoding="utf-8")).get("format") == "amecam-slices"
    except (OSError, json.JSONDecodeError):
        return False


def save_run_settings(output: Path, settings: dict, data: str | None) -> None:
    """Write ``configs/amecam_train.json``: the run's settings and, once known to match its slices, its data."""
    record = dict(settings)
    if data:
        record[_DATA_KEY] = data
    (output / "configs" / SETTINGS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def saved_data(output: Path, saved: dict, *, option: str) -> str:
    """The data folder a resumed run was started on (``option`` names how to give it instead)."""
    data = saved.get(_DATA_KEY)
    if not data:
        raise AmecamError(f"{output}: this run (started before amecam 0.5.10) did not record its data; "
                          f"give {option} with --resume")
    if not Path(data).exists():
        raise AmecamError(f"{data}: the data this run was started on is not there any more; give {option} with --resume")
    logger.info("data: %s (saved run)", data)
    return data


def _saved_settings(output: Path) -> dict:
    """The settings of the interrupted run in ``output`` (for --resume)."""
    settings_path = output / "configs" / SETTINGS_FILE
    if not settings_path.is_file():
        raise AmecamError(f"{output}: nothing to resume (no configs/{SETTINGS_FILE}); start a run without --resume")
    return json.loads(settings_path.read_text(encoding="utf-8"))


# what --overwrite removes from a used run folder before a new run (anything else there is left alone)
_RUN_ENTRIES = ("configs", "scripts", "docs", "models", "slices", "logs", "LICENSE")


def _prepare_run_folder(output: Path, *, keep: Sequence[Path] = (), overwrite: bool) -> None:
    """Check that a new run may use ``output`` and copy the bundle template into it.

    ``keep``: the run's inputs (its data, the bundle it starts from); ``--overwrite`` is refused when one
    of them is ``output`` itself or lies in an entry it would clear (:data:`_RUN_ENTRIES`).
    """
    if output.exists() and not output.is_dir():
        raise AmecamError(f"{output}: exists and is not a folder")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise AmecamError(f"{output}: folder is not empty; pass --resume to continue that run or --overwrite to start again")
        cleared = [(output / name).resolve() for name in _RUN_ENTRIES]
        for path in keep:
            where = Path(path).resolve()
            if where == output.resolve() or any(where == c or c in where.parents for c in cleared):
                raise AmecamError(f"{path}: this input lies inside {output}, which --overwrite would clear; write the run to another folder")
        for name in _RUN_ENTRIES:
            target = output / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    try:
        copy_template(output)
    except OSError as exc:
        raise AmecamError(f"{output}: cannot write the bundle there ({exc.strerror or exc})") from exc


def _check_slice_dataset(data: Path, settings: TrainSettings) -> None:
    """Refuse a slice dataset (``amecam slice`` output) made with settings other than the run's."""
    if settings.slice_labels:
        raise AmecamError(f"{data}: a slice dataset already holds its slice labels; --slice_labels is for volumes "
                          "(or give it to amecam slice)")
    info = json.loads((data / "dataset.json").read_text(encoding="utf-8"))["settings"]
    if list(info["modalities"]) != list(settings.modalities):
        raise AmecamError(f"{data}: slice dataset has modalities {','.join(info['modalities'])}, not {','.join(settings.modalities)}")
    if int(info["image_size"]) != settings.image_size:
        raise AmecamError(f"{data}: slice dataset has image size {info['image_size']}, not {settings.image_size}")
    if bool(info.get("skull_strip", False)) != settings.skull_strip:
        made = "with" if info.get("skull_strip", False) else "without"
        raise AmecamError(f"{data}: slice dataset was made {made} skull stripping; pass the same --skull_strip to train")


def _check_configs_take_fusion(output: Path, fusion: str) -> None:
    """Refuse ``--fusion`` on a run whose configs (copied when it started) do not pass it to the network."""
    import yaml

    config = output / "configs" / "inference.yaml"
    try:
        network_def = yaml.safe_load(config.read_text(encoding="utf-8")).get("network_def", {})
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise AmecamError(f"{config}: cannot read the run's inference config ({one_line_reason(exc)})") from exc
    if "fusion" not in network_def:
        raise AmecamError(f"{output}: this run's configs predate --fusion (bundle 0.5.0); train a new run to use --fusion {fusion}")


def _labelled_cases(data: Path, settings: TrainSettings, pattern: str | None, *,
                    trained_pattern: str | None = None) -> tuple[list, dict | None]:
    """The cases of a dataset and the slice labels from ``settings.slice_labels`` (None: from segmentations).

    ``trained_pattern``: how a source bundle's training data was named (see ``find_cases_as_trained``).
    """
    from .cases import find_cases_as_trained
    from .slicing import check_slice_labels, read_slice_labels

    labels = read_slice_labels(settings.slice_labels) if settings.slice_labels else None
    cases = find_cases_as_trained(data, settings.modalities, pattern=pattern, trained_pattern=trained_pattern, require_label=False)
    check_slice_labels(cases, labels, warn=False)  # slice_dataset warns when it slices
    if labels is not None:  # a classifier needs both kinds (the training split is checked again after slicing)
        given = [label for case in cases for label in labels.get(case.case_id, {}).values()]
        if "tumor" not in given or "normal" not in given:
            raise AmecamError(f"{settings.slice_labels}: labels {given.count('tumor')} tumour and {given.count('normal')} "
                              "normal slices of the data's cases; training needs both")
    return cases, labels


def _slice_if_needed(data: Path, output: Path, settings: TrainSettings, cases: list | None, labels: dict | None) -> tuple[Path, dict]:
    from .slicing import SliceSettings, read_fingerprints, slice_dataset

    if cases is None:
        logger.info("using the slice dataset %s as it is", data)
        return data, {**json.loads((data / "dataset.json").read_text(encoding="utf-8")), "fingerprints": read_fingerprints(data)}
    slices = output / "slices"
    slice_settings = SliceSettings(
        modalities=settings.modalities, image_size=settings.image_size, min_tumor_fraction=settings.min_tumor_fraction,
        ambiguous=settings.ambiguous, val_fraction=settings.val_fraction, seed=settings.seed, skull_strip=settings.skull_strip,
    )
    # the same slices, made faster; a few cases are not worth starting processes for
    slice_dataset(cases, slices, slice_settings, slice_labels=labels,
                  workers=max(1, min(4, os.cpu_count() or 1, len(cases) // 8)))
    return slices, {**json.loads((slices / "dataset.json").read_text(encoding="utf-8")), "fingerprints": read_fingerprints(slices)}


def _update_metadata(root: Path, settings: TrainSettings, data: Path, dataset_info: dict, summaries: dict) -> dict:
    import monai
    import numpy
    import torch

    metadata = read_metadata(root)
    image = metadata["network_data_format"]["inputs"]["image"]
    image["num_channels"] = len(settings.modalities)
    image["spatial_shape"] = [settings.image_size, settings.image_size]
    image["channel_def"] = {str(i): m for i, m in enumerate(settings.modalities)}
    metadata["network_data_format"]["outputs"]["pred"]["spatial_shape"] = [settings.image_size, settings.image_size]
    metadata["monai_version"] = monai.__version__
    metadata["pytorch_version"] = torch.__version__.split("+")[0]
    metadata["numpy_version"] = numpy.__version__
    stage1 = summaries.get("stage1", {})
    metadata["eval_metrics"] = {"val_slice_auc": stage1.get("best_val_auc")}
    metadata["bundle_name"] = f"amecam_{'_'.join(settings.modalities)}"
    metadata["amecam_training"] = {
        "kind": "amecam",
        "amecam_version": __version__,
        "trained": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": str(data),
        "settings": settings.as_dict(),
        "split": dataset_info.get("split", {}),
        "fingerprints": dataset_info.get("fingerprints", {}),
        "slice_settings": dataset_info.get("settings", {}),
        "slice_labels": dataset_info.get("labels", {"from": "segmentations"}),
        "stage1": {k: stage1.get(k) for k in ("best_epoch", "best_val_auc", "n_train", "n_val")},
        "stage2": {k: summaries.get("stage2", {}).get(k) for k in ("best_epoch", "polarity", "n_train", "n_val")},
        "pretrain": settings.pretrain,
    }
    write_metadata(root, metadata)
    return metadata


def export_torchscript(root: Path, network: Any, image_size: int, in_channels: int) -> Path:
    """Trace the inference network to ``models/model.ts`` and check it reproduces the eager output.

    An AME-CAM network is traced with ``score`` and ``maps_from_raw`` beside ``forward``: ``amecam
    infer`` runs this file on a CPU, gating included, without importing MONAI (seconds of start-up).
    """
    import torch
    from amecam_bundle.scripts.inference import gated_output

    network = network.cpu().eval()
    example = torch.rand(2, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    other = torch.rand(3, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), _quiet_tracer_warnings():
        methods: dict[str, Any] = {"forward": example}
        if hasattr(network, "score"):
            methods.update(score=example, maps_from_raw=(example, *network.score(example)[1:]))
        traced = torch.jit.trace_module(network, methods, check_trace=False)
        # another batch size than the trace's, so a shape baked in by the tracer shows here
        difference = float((traced(other) - network(other)).abs().max())
        if hasattr(network, "score"):  # the gated path amecam infer takes, every slice kept
            difference = max(difference, float((gated_output(traced, other, 0.0) - gated_output(network, other, 0.0)).abs().max()))
    if difference > 1e-4:
        raise RuntimeError(f"TorchScript trace differs from the eager network by {difference:.2e}")
    path = root / "models" / "model.ts"
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp))
    return path


@contextlib.contextmanager
def _quiet_tracer_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


FUSION_TEXT = {
    "mean": "the paper's final map, the mean of the four exit maps and the attention map Mf (fusion mean)",
    "attention": "the attention map Mf alone (fusion attention)",
}


def _auc_text(auc: float | None, *, why: bool = True) -> str:
    """The stage-1 validation AUC for people; ``None`` (or the -1 of bundles before 0.5.2): not measured."""
    if auc is None or auc < 0:
        reason = ": the validation split lacked tumour or normal slices, so the last epoch was kept"
        return "no validation slice AUC" + (reason if why else "")
    return f"validation slice AUC {auc:.3f}"


def _labels_text(training: dict) -> str:
    source = training.get("slice_labels", {"from": "segmentations"})
    if source.get("from") == "segmentations":
        share = training.get("slice_settings", {}).get("min_tumor_fraction", 0.01)
        return f"from whole-tumour masks (tumour when it covers more than {share:.0%} of the slice)"
    csv_file = training.get("settings", {}).get("slice_labels")
    return f"from a CSV of slice labels{f' (`{Path(csv_file).name}`)' if csv_file else ''}, no masks"


def _write_model_card(root: Path, metadata: dict) -> None:
    card = root / "docs" / "README.md"
    training = metadata["amecam_training"]
    split = training.get("split", {})
    modalities, size = training["settings"]["modalities"], training["settings"]["image_size"]
    lines = [
        "",
        "## This copy",
        "",
        f"- Trained {training['trained']} with amecam {training['amecam_version']} on `{training['data']}`.",
        f"- Modalities: {', '.join(training['settings']['modalities'])}; slice size {training['settings']['image_size']}; "
        f"stem stride {training['settings'].get('stem_stride', 1)}; seed {training['settings']['seed']}; "
        f"skull stripping {'on (scalp and skull removed from the brain mask, also at inference)' if training['settings'].get('skull_strip') else 'off'}.",
        f"- Masks are made from {FUSION_TEXT[training['settings'].get('fusion', 'mean')]}.",
        f"- Slice labels: {_labels_text(training)}.",
        f"- Case-level split: {sum(v == 'train' for v in split.values())} training and {sum(v == 'val' for v in split.values())} validation cases (listed in `configs/metadata.json`).",
        f"- Stage 1 best epoch {training['stage1']['best_epoch']}, {_auc_text(training['stage1']['best_val_auc'])}.",
        f"- Stage 2 polarity {training['stage2']['polarity']}, best epoch {training['stage2']['best_epoch']}; SimCLR pretraining: {training['pretrain']}.",
        "- With MONAI alone, one NIfTI file per modality in this order:" if len(modalities) > 1 else "- With MONAI alone:",
        "",
        "```",
        monai_run_command(modalities),
        "```",
        "",
        "- TorchScript with MONAI's export (traced; the `models/model.ts` that `amecam train` wrote also has `score` and `maps_from_raw`):",
        "",
        "```",
        "python -m monai.bundle ckpt_export network_def --filepath model.ts --ckpt_file models/model.pt --meta_file configs/metadata.json "
        f"--config_file configs/inference.yaml --use_trace True --input_shape \"[1, {len(modalities)}, {size}, {size}]\"",
        "```",
        "",
    ]
    text = card.read_text(encoding="utf-8").split("\n## This copy")[0].rstrip("\n")
    card.write_text(text + "\n" + "\n".join(lines), encoding="utf-8")


def train_bundle(
    data: str | os.PathLike | None,
    output: str | os.PathLike,
    *,
    settings: dict | None = None,
    config: str | os.PathLike | None = None,
    pattern: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train AME-CAM on ``data`` and leave a complete bundle in ``output``.

    Args:
        data: dataset folder, datalist JSON or slice dataset (from ``amecam slice``); None with
            ``resume``: the data the run was started on.
        output: run folder; becomes the bundle.
        settings: command-line settings (None values = not given), see :class:`TrainSettings`.
        config: optional YAML/JSON settings file.
        pattern: naming pattern for the data (see ``amecam_cli.cases``).
        resume: continue an interrupted run in ``output`` with its saved settings.
        overwrite: start again in a non-empty ``output``.

    Returns:
        Paths and the stage summaries.
    """
    import torch

    output = Path(output)
    saved = _saved_settings(output) if resume else None
    if data is None:  # --resume finds the data the run was started on
        if saved is None:
            raise AmecamError("train needs DATA_DIR (a dataset folder, datalist .json or slice dataset)")
        data = saved_data(output, saved, option="DATA_DIR")
    data = Path(data)
    if not data.exists():
        raise AmecamError(f"{data}: no such file or folder")
    if pattern is not None:
        settings = {**(settings or {}), "pattern": pattern}
    # every setting is checked before anything is written, so a typo leaves no half-made bundle behind
    resolved = resolve_settings(config=Path(config) if config else None, saved=saved, **(settings or {}))
    cases = labels = None
    if _is_slice_dataset(data):
        _check_slice_dataset(data, resolved)
    else:  # the data is found and its labels checked before the run folder is made
        cases, labels = _labelled_cases(data, resolved, resolved.pattern)
    if resume and resolved.fusion != "mean":
        _check_configs_take_fusion(output, resolved.fusion)
    if not resume:
        _prepare_run_folder(output, keep=[data], overwrite=overwrite)
    save_run_settings(output, resolved.as_dict(), (saved or {}).get(_DATA_KEY))
    (output / "logs").mkdir(exist_ok=True)
    log_state = attach_run_log(output)
    try:
        slices, dataset_info = _slice_if_needed(data, output, resolved, cases, labels)
        save_run_settings(output, resolved.as_dict(), str(data.resolve()))  # the data matched the run's slices: --resume alone finds it
        metadata = read_metadata(output)
        metadata["network_data_format"]["inputs"]["image"]["num_channels"] = len(resolved.modalities)
        metadata["network_data_format"]["inputs"]["image"]["channel_def"] = {str(i): m for i, m in enumerate(resolved.modalities)}
        metadata.setdefault("network_args", {})["stem_stride"] = resolved.stem_stride
        metadata["network_args"]["fusion"] = resolved.fusion
        metadata.setdefault("preprocessing", {})["skull_strip"] = resolved.skull_strip
        write_metadata(output, metadata)
        common = dict(bundle_root=str(output), dataset_dir=str(slices), device=resolved.device, seed=resolved.seed,
                      batch_size=resolved.batch_size, progress=progress, nproc_per_node=resolved.nproc_per_node)
        models = output / "models"
        summaries: dict[str, dict] = {}
        if resolved.pretrain == "simclr":
            summaries["stage0"] = _run_stage(output, "train_stage0.yaml", models / "stage0.json", models / "simclr_encoder.pt",
                                             resume=resume, epochs=resolved.pretrain_epochs, **common)
        summaries["stage1"] = _run_stage(output, "train_stage1.yaml", models / "stage1.json", models / "classifier.pt",
                                         resume=resume, epochs=resolved.epochs, learning_rate=resolved.learning_rate, **common)
        summaries["stage2"] = _run_stage(output, "train_stage2.yaml", models / "stage2.json", models / "model.pt",
                                         resume=resume, epochs=resolved.attention_epochs,
                                         learning_rate=resolved.attention_learning_rate, **common)
        metadata = _update_metadata(output, resolved, data, dataset_info, summaries)
        from .bundle import instantiate_network

        network = instantiate_network(output)
        network.load_state_dict(torch.load(models / "model.pt", map_location="cpu", weights_only=True))
        export_torchscript(output, network, resolved.image_size, len(resolved.modalities))
        _write_model_card(output, metadata)
    except ValueError as exc:  # the trainers report data problems as ValueError
        raise AmecamError(str(exc)) from exc
    finally:
        detach_run_log(log_state)
    logger.info("bundle ready: %s (%s)", output, _auc_text(summaries["stage1"].get("best_val_auc"), why=False))
    return {"bundle": output, "slices": slices, "summaries": summaries}


def _run_stage(root: Path, config: str, summary: Path, product: Path, *, resume: bool, **overrides: Any) -> dict:
    if resume and summary.is_file() and product.is_file():
        logger.info("%s: already complete, skipped", config)
        return json.loads(summary.read_text(encoding="utf-8"))
    if overrides.get("nproc_per_node", 1) == 1:  # else run_config_torchrun says it, with the command
        logger.info("running %s", config)
    result = run_config(root, config, resume=resume, summary=summary, **overrides)
    return result[-1] if result else {}
