"""Bundles on disk: the packaged template, opening a trained bundle (folder or zip), export, verify.

A trained bundle carries its own code (``scripts/``), so it is always run with that code, never with
the toolkit's newer template: :func:`open_bundle` imports the bundle's ``scripts`` package under a
name unique to that folder, which also lets one process hold several bundles (AME-CAM and its
pseudo-label U-Net) side by side. Zips are unpacked into a cache folder keyed by their hash, and
every entry is checked first: absolute paths, ``..`` components and links are refused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import stat
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any, Sequence

from .errors import AmecamError, one_line_reason

__all__ = [
    "LoadedBundle",
    "REQUIRED_METADATA",
    "TTA_CHOICES",
    "bundle_template",
    "copy_template",
    "export_bundle",
    "instantiate_network",
    "open_bundle",
    "read_metadata",
    "verify_bundle",
    "write_metadata",
]

logger = logging.getLogger(__name__)

#: fields a Model Zoo metadata.json must have (meta_schema_20240725)
REQUIRED_METADATA = (
    "schema", "version", "changelog", "monai_version", "pytorch_version", "numpy_version",
    "required_packages_version", "name", "task", "description", "authors", "copyright", "data_source",
    "data_type", "image_classes", "label_classes", "pred_classes", "eval_metrics", "intended_use",
    "references", "network_data_format",
)
#: test-time augmentations of ``open_bundle(tta=...)``: the bundle's ``scripts.networks.TTA_CHOICES``, kept here
#: so that a TorchScript inference never imports MONAI (tests/test_tta.py checks the two agree)
TTA_CHOICES = ("none", "flip")
#: what a bundle folder holds that is shared (checkpoints, slices and logs stay out of exports)
EXPORTED = ("configs", "scripts", "docs", "LICENSE", "models/model.pt", "models/model.ts")


def bundle_template() -> Path:
    """Folder of the bundle template installed with the toolkit (``amecam_bundle``)."""
    import amecam_bundle

    return Path(amecam_bundle.__file__).resolve().parent


def copy_template(destination: Path) -> None:
    """Copy the template's configs, scripts, docs and LICENSE into ``destination``."""
    source = bundle_template()
    destination.mkdir(parents=True, exist_ok=True)
    for name in ("configs", "scripts", "docs"):
        target = destination / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(source / "LICENSE", destination / "LICENSE")


def monai_run_command(modalities: Sequence[str]) -> str:
    """The ``python -m monai.bundle run`` line of a model card, one ``--image`` file per modality, in order."""
    from amecam_bundle.scripts.inference import image_argument

    return (f"python -m monai.bundle run --config_file configs/inference.yaml --bundle_root . --image {image_argument(modalities)} "
            "--output patient_mask.nii.gz")


def read_metadata(root: Path) -> dict:
    path = root / "configs" / "metadata.json"
    if not path.is_file():
        raise AmecamError(f"{root}: not a bundle (no configs/metadata.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AmecamError(f"{path}: cannot read ({exc})") from exc


def write_metadata(root: Path, metadata: dict) -> None:
    from .io import atomic_path

    with atomic_path(root / "configs" / "metadata.json") as tmp:
        tmp.write_text(json.dumps(metadata, indent=4) + "\n", encoding="utf-8")


def _cache_root() -> Path:
    return Path(os.environ.get("AMECAM_CACHE", Path.home() / ".cache" / "amecam"))


def _safe_extract(archive: Path, target: Path) -> None:
    """Unpack ``archive`` into ``target``, refusing any entry that would land outside it."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                name = PurePosixPath(info.filename)
                mode = info.external_attr >> 16
                if name.is_absolute() or ".." in name.parts or info.filename.startswith(("/", "\\")) or ":" in name.parts[0]:
                    raise AmecamError(f"{archive}: refusing entry {info.filename!r} (it points outside the bundle)")
                if stat.S_ISLNK(mode):
                    raise AmecamError(f"{archive}: refusing entry {info.filename!r} (symbolic link)")
            partial = _partial_folder(target)  # one per process: parallel jobs may unpack the same zip
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            for info in members:
                destination = (partial / info.filename).resolve()
                if not str(destination).startswith(str(partial.resolve()) + os.sep) and destination != partial.resolve():
                    raise AmecamError(f"{archive}: refusing entry {info.filename!r} (it points outside the bundle)")
                zf.extract(info, partial)
    except zipfile.BadZipFile as exc:
        raise AmecamError(f"{archive}: not a valid zip file ({exc})") from exc
    entries = [p for p in partial.iterdir()]
    root = entries[0] if len(entries) == 1 and entries[0].is_dir() and not (partial / "configs").exists() else partial
    try:
        root.rename(target)  # zip holds one top folder: use it as the bundle root
    except OSError:
        if not target.is_dir():
            raise
        # another process unpacked the same zip first: its copy is the same, keep it
    shutil.rmtree(partial, ignore_errors=True)


def _partial_folder(target: Path) -> Path:
    return target.with_name(f"{target.name}.partial-{os.getpid()}")


def _unpack(archive: Path) -> Path:
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
    target = _cache_root() / "bundles" / f"{archive.stem}-{digest}"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _safe_extract(archive, target)
        except AmecamError:
            shutil.rmtree(_partial_folder(target), ignore_errors=True)
            raise
        except OSError as exc:
            shutil.rmtree(_partial_folder(target), ignore_errors=True)
            raise AmecamError(f"{archive}: cannot unpack into {target.parent} ({exc.strerror or exc}); set AMECAM_CACHE to a "
                              "writable folder, or unzip the bundle and give its folder") from exc
    return target


def _import_scripts(root: Path) -> ModuleType:
    """Import ``root/scripts`` as a package private to this bundle folder."""
    init = root / "scripts" / "__init__.py"
    if not init.is_file():
        raise AmecamError(f"{root}: bundle has no scripts/__init__.py")
    name = "amecam_bundle_" + hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _submodule(package: ModuleType, name: str) -> ModuleType:
    return importlib.import_module(f"{package.__name__}.{name}")


@dataclass
class LoadedBundle:
    """A trained bundle ready to run.

    Attributes:
        root: bundle folder (the unpacked cache folder for a zip).
        metadata: ``configs/metadata.json``.
        scripts: the bundle's own ``scripts`` package.
        network: the inference network with weights loaded, in eval mode, on ``device``.
        modalities: input channels, in order.
        image_size: slice side the network expects.
        kind: ``amecam`` or ``segmentation`` (a pseudo-label U-Net bundle).
        strip_skull: the bundle removes scalp and skull from the brain mask of every volume it
            prepares, as it did in training (metadata ``preprocessing.skull_strip``; False before 0.4.0).
        tta: the network's test-time augmentation, ``none`` or ``flip`` (metadata ``network_args.tta``,
            or :func:`open_bundle`'s override).
    """

    root: Path
    metadata: dict
    scripts: ModuleType
    network: Any
    modalities: tuple[str, ...]
    image_size: int
    kind: str
    strip_skull: bool = False
    tta: str = "none"

    @property
    def data_pattern(self) -> str | None:
        """The naming pattern (``--pattern``) of the data the bundle was trained on, if it had one."""
        pattern = self.metadata.get("amecam_training", {}).get("settings", {}).get("pattern")
        return pattern if isinstance(pattern, str) and pattern.strip() else None

    def module(self, name: str) -> ModuleType:
        """A module of the bundle's own scripts, e.g. ``bundle.module("inference")``."""
        return _submodule(self.scripts, name)

    def predictor(self, **kwargs) -> Any:
        """A ``VolumePredictor`` of this bundle's own code around its network."""
        if self.strip_skull:  # bundles before 0.4.0 neither strip nor accept the argument
            kwargs.setdefault("strip_skull", True)
        return self.module("inference").VolumePredictor(self.network, image_size=self.image_size, **kwargs)


def instantiate_network(root: Path, config: str = "inference.yaml", net_id: str = "network_def") -> Any:
    """Build ``net_id`` of a bundle config with MONAI's ConfigParser, with the bundle's own scripts."""
    from monai.bundle import ConfigParser

    config_path = root / "configs" / config
    if not config_path.is_file():
        raise AmecamError(f"{root}: bundle has no configs/{config}")
    parser = ConfigParser()
    try:
        parser.read_config(str(config_path))
    except Exception as exc:  # a hand-edited config: YAML's message spans lines
        raise AmecamError(f"{config_path}: cannot read ({one_line_reason(exc)})") from exc
    parser.read_meta(str(root / "configs" / "metadata.json"))
    _purge_scripts_modules()
    sys.path.insert(0, str(root))
    try:
        return parser.get_parsed_content(net_id)
    except Exception as exc:
        raise AmecamError(f"{config_path}: cannot build {net_id} ({one_line_reason(exc)})") from exc
    finally:
        sys.path.remove(str(root))
        _purge_scripts_modules()


def resolve_bundle_path(path: str | os.PathLike) -> Path:
    """Folder of a bundle given as a folder or a ``.zip``."""
    path = Path(path)
    if not path.exists():
        raise AmecamError(f"{path}: no such bundle folder or zip")
    if path.is_file():
        if path.suffix.lower() != ".zip":
            raise AmecamError(f"{path}: a bundle is a folder or a .zip, got a {path.suffix or 'plain'} file")
        return _unpack(path)
    return path


def _traced_network(root: Path, device: Any) -> Any | None:
    """``models/model.ts`` when it can stand in for the eager network at inference, else ``None``.

    It must load, carry the ``score`` and ``maps_from_raw`` methods that the one-pass gating needs
    (bundles from 0.3.0 on), and not be older than ``models/model.pt`` (weights replaced after tracing).
    """
    import torch

    path, weights = root / "models" / "model.ts", root / "models" / "model.pt"
    if not path.is_file() or weights.stat().st_mtime > path.stat().st_mtime:
        return None
    try:
        traced = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # a corrupt trace: the eager network still works
        logger.warning("%s: cannot load (%s); using the eager network", path, one_line_reason(exc))
        return None
    return traced.eval() if hasattr(traced, "score") and hasattr(traced, "maps_from_raw") else None


def open_bundle(path: str | os.PathLike, *, device: str = "auto", torchscript: bool = False, tta: str | None = None) -> LoadedBundle:
    """Open a trained bundle (folder or zip) and load its network.

    Args:
        torchscript: on a CPU, run the traced ``models/model.ts`` of an AME-CAM bundle instead of
            building the network from its configs: same output, and MONAI is never imported (about
            2 s of start-up). Falls back to the eager network when the trace cannot serve
            (see :func:`_traced_network`). Gradient-based commands need the eager network.
        tta: the test-time augmentation of an AME-CAM bundle's network, ``none`` or ``flip``
            (``AMECAMNet.tta``); ``None`` keeps the bundle's own (metadata ``network_args.tta``, ``none``
            before 0.5.21). The eager network runs unless both are ``none``, as the trace holds no choice.

    Raises:
        AmecamError: not a bundle, no weights (``models/model.pt``), or weights that do not fit.
    """
    from amecam_bundle.scripts.device import resolve_device
    from amecam_bundle.scripts.weights import load_weights

    root = resolve_bundle_path(path)
    metadata = read_metadata(root)
    weights = root / "models" / "model.pt"
    if not weights.is_file():
        command = "amecam train" if (root / "configs" / "train_stage1.yaml").is_file() else "amecam train-seg"
        raise AmecamError(f"{path}: bundle has no weights (models/model.pt), so its training never finished; "
                          f"train it with {command} (after an interruption: the same command with --resume)")
    scripts = _import_scripts(root)
    fmt = metadata["network_data_format"]["inputs"]["image"]
    channel_def = fmt.get("channel_def", {})
    modalities = tuple(channel_def[str(i)] for i in range(int(fmt["num_channels"])))
    image_size = int(fmt["spatial_shape"][0])
    training = metadata.get("amecam_training", {})
    kind = training.get("kind", "amecam")
    strip_skull = bool(metadata.get("preprocessing", {}).get("skull_strip", False))
    recorded_tta = str(metadata.get("network_args", {}).get("tta", "none"))
    if tta is not None and tta not in TTA_CHOICES:
        raise AmecamError(f"--augment must be one of {', '.join(TTA_CHOICES)}, got {tta!r}")
    if tta not in (None, "none") and kind != "amecam":
        raise AmecamError(f"{path}: --augment {tta} is for AME-CAM bundles; this is a U-Net bundle (amecam train-seg)")
    override = tta is not None and tta != recorded_tta
    try:
        torch_device = resolve_device(device)
    except ValueError as exc:
        raise AmecamError(f"--device: {exc}") from exc
    # the trace holds whatever augmentation the network had when it was traced; a network_args.tta edited in later
    # would not be in it. So the trace serves only where neither the bundle nor the call asks for one
    if torchscript and kind == "amecam" and torch_device.type == "cpu" and tta in (None, "none") and recorded_tta == "none":
        traced = _traced_network(root, torch_device)
        if traced is not None:
            logger.info("running %s (TorchScript)", root / "models" / "model.ts")
            return LoadedBundle(root=root, metadata=metadata, scripts=scripts, network=traced, modalities=modalities,
                                image_size=image_size, kind=kind, strip_skull=strip_skull, tta=recorded_tta)
    network = instantiate_network(root)
    if override:
        if not hasattr(network, "set_tta"):
            raise AmecamError(f"{path}: this bundle's code predates --augment (bundle 0.5.21), so its maps cannot be "
                              "averaged over flips; drop --augment, or train a new bundle")
        network.set_tta(tta)
    try:
        load_weights(network, weights, torch_device)  # the toolkit's own loader: bundles from before 0.5.8 lack it
    except ValueError as exc:  # corrupt file or another architecture
        raise AmecamError(str(exc)) from exc
    network.to(torch_device).eval()
    return LoadedBundle(root=root, metadata=metadata, scripts=scripts, network=network, modalities=modalities,
                        image_size=image_size, kind=kind, strip_skull=strip_skull, tta=tta or recorded_tta)


def export_bundle(run: str | os.PathLike, output: str | os.PathLike | None = None, *, overwrite: bool = False) -> Path:
    """Zip the shareable part of a trained bundle (configs, scripts, docs, weights, TorchScript, LICENSE).

    The default name is ``<name>_v<version>.zip`` beside the bundle folder. The network is built from the
    configs and its weights loaded first, so a bundle that cannot run is not packed.
    """
    root = resolve_bundle_path(run)
    metadata = read_metadata(root)
    if not (root / "models" / "model.pt").is_file():
        raise AmecamError(f"{run}: bundle has no weights (models/model.pt); nothing to export")
    try:  # a zip is for sharing: weights that do not fit the configs would fail on every receiver's machine
        open_bundle(root, device="cpu")
    except AmecamError as exc:
        raise AmecamError(f"{exc}; not exported") from exc
    slug = "".join(c if c.isalnum() else "_" for c in str(metadata.get("bundle_name", root.name))).strip("_") or "amecam"
    output = Path(output) if output else Path(run).resolve().parent / f"{slug}_v{metadata['version']}.zip"
    if output.suffix.lower() != ".zip":
        raise AmecamError(f"{output}: the export must be a .zip file")
    named = re.search(r"_v(\d+(?:\.\d+)*)$", output.stem)  # the Model Zoo's <name>_v<version>.zip
    if named and named.group(1) != str(metadata["version"]):
        logger.warning("%s: the name says version %s but the bundle is version %s (configs/metadata.json), "
                       "the one receivers will see", output.name, named.group(1), metadata["version"])
    if output.exists() and not overwrite:
        raise AmecamError(f"{output}: already exists (pass --overwrite to replace it)")
    packed = [root / name for name in EXPORTED if (root / name).is_dir()]
    inside = next((folder for folder in packed if output.resolve().is_relative_to(folder.resolve())), None)
    if inside is not None:
        raise AmecamError(f"{output}: inside the bundle's {inside.name}/ folder, which the export packs; write the zip elsewhere")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AmecamError(f"{output}: cannot create folder ({exc.strerror})") from exc
    from .io import atomic_path

    top = output.stem
    try:
        with atomic_path(output) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in EXPORTED:
                source = root / name
                if source.is_dir():
                    for file in sorted(source.rglob("*")):
                        hidden = any(part.startswith(".") for part in file.relative_to(root).parts)
                        if file.is_file() and "__pycache__" not in file.parts and not hidden:
                            zf.write(file, f"{top}/{file.relative_to(root).as_posix()}")
                elif source.is_file():
                    zf.write(source, f"{top}/{name}")
    except OSError as exc:
        raise AmecamError(f"{output}: cannot write ({exc.strerror or exc})") from exc
    return output


def verify_bundle(path: str | os.PathLike, *, device: str = "cpu") -> list[tuple[str, bool, str]]:
    """Check a bundle offline; returns ``(check, passed, detail)`` rows.

    Checks: required metadata fields; ``verify_net_in_out`` of the inference config against
    ``network_data_format``; the weights load; ``models/model.ts`` loads and matches the eager network.
    """
    import torch

    root = resolve_bundle_path(path)
    rows: list[tuple[str, bool, str]] = []
    metadata = read_metadata(root)
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    rows.append(("metadata fields", not missing, "all present" if not missing else f"missing: {', '.join(missing)}"))
    version_ok = str(metadata.get("version", "")) in metadata.get("changelog", {})
    rows.append(("changelog has the version", version_ok, str(metadata.get("version"))))
    try:
        bundle = open_bundle(root, device=device)
        rows.append(("network builds, weights load", True, str(root / "models" / "model.pt")))
    except AmecamError as exc:
        rows.append(("network builds, weights load", False, str(exc)))
        return rows
    try:
        from monai.bundle import verify_net_in_out

        inference = root / "configs" / "inference.yaml"
        sys.path.insert(0, str(root))
        _purge_scripts_modules()
        # MONAI logs its arguments to stdout at INFO (11 lines among our PASS rows); its result is our row
        monai_log = logging.getLogger("monai.bundle.scripts")
        level = monai_log.level
        monai_log.setLevel(max(level, logging.WARNING))
        try:
            verify_net_in_out(net_id="network_def", meta_file=str(root / "configs" / "metadata.json"),
                              config_file=str(inference), device=device, n=1, any=1)
        finally:
            monai_log.setLevel(level)
            sys.path.remove(str(root))
            _purge_scripts_modules()
        rows.append(("network input/output vs network_data_format", True, "verify_net_in_out passed"))
    except Exception as exc:
        rows.append(("network input/output vs network_data_format", False, one_line_reason(exc)))
    ts_path = root / "models" / "model.ts"
    if not ts_path.is_file():
        rows.append(("TorchScript model", False, f"{ts_path} missing"))
        return rows
    try:
        scripted = torch.jit.load(str(ts_path), map_location=device)
        x = torch.rand(2, len(bundle.modalities), bundle.image_size, bundle.image_size, generator=torch.Generator().manual_seed(0))
        x = x.to(device)
        network = bundle.network.to(device)
        note = ""
        if bundle.tta != "none" and hasattr(network, "set_tta"):
            # amecam train traces the network without augmentation, and a bundle whose metadata asks for it runs the
            # eager network (open_bundle); the trace is checked against what it was traced from
            network.set_tta("none")
            note = f"; the trace is the network without augmentation (network_args.tta {bundle.tta} runs eagerly)"
        with torch.no_grad():
            diff = float((network(x) - scripted(x)).abs().max())
            if hasattr(scripted, "score"):  # the methods amecam infer's one-pass gating calls
                gated = bundle.module("inference").gated_output
                diff = max(diff, float((gated(network, x, 0.0) - gated(scripted, x, 0.0)).abs().max()))
        rows.append(("TorchScript matches eager", diff < 1e-4, f"max abs difference {diff:.2e}{note}"))
    except Exception as exc:
        rows.append(("TorchScript matches eager", False, one_line_reason(exc)))
    return rows


def _purge_scripts_modules() -> None:
    """Forget any ``scripts`` package imported through ``sys.path``, so the next import is fresh."""
    for name in [n for n in sys.modules if n == "scripts" or n.startswith("scripts.")]:
        del sys.modules[name]
