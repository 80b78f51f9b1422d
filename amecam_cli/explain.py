"""``amecam explain``: Seg-Grad-CAM and Seg-HiRes-Grad-CAM for a segmentation network.

Vinogradova et al. (Seg-Grad-CAM, AAAI 2020 student abstract) explain a segmentation network by
back-propagating the *sum of one class's logits over a set of pixels* to a target layer:

* ``seg-gradcam``: channel weights = the spatial mean of that gradient; map = ReLU(sum_c w_c A_c);
* ``seg-hirescam`` (Seg-HiRes-Grad-CAM, after Draelos & Carin's HiResCAM): map = ReLU(sum_c dS/dA ⊙ A),
  element-wise, so the map shows where the activations that the chosen pixels' logits actually used lie.

Pixel sets: ``predicted`` (the pixels the network assigns to the class on that slice), ``image``
(every pixel) or ``point:X,Y,Z`` (one voxel, in the input file's voxel indices). Works on any module
that maps ``(B, C, H, W)`` to ``(B, K, H, W)`` logits -- a bundle's ``network_def`` (its ``logits``
method when it has one, e.g. amecam's U-Net wrapper) or a plain MONAI 2-D ``UNet``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import AmecamError

__all__ = ["EXPLAIN_METHODS", "SegCAM", "candidate_layers", "default_layer", "explain_volume", "parse_pixels"]

logger = logging.getLogger(__name__)

EXPLAIN_METHODS = ("seg-gradcam", "seg-hirescam")


def _logits_function(network: nn.Module):
    return network.logits if hasattr(network, "logits") else network


def candidate_layers(network: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Named sub-modules whose output is a ``(B, C, h, w)`` map with ``h, w > 1``, in forward order."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in network.named_modules():
        if not name or isinstance(module, (nn.ReLU, nn.PReLU, nn.Dropout)) or "norm" in type(module).__name__.lower():
            continue

        def hook(_m, _i, output, name=name):
            if isinstance(output, torch.Tensor) and output.dim() == 4 and min(output.shape[-2:]) > 1 and name not in shapes:
                shapes[name] = tuple(output.shape[1:])

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            _logits_function(network)(example)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def default_layer(shapes: dict[str, tuple[int, ...]]) -> str:
    """The coarsest map (the bottleneck of an encoder-decoder); the last such layer in forward order."""
    if not shapes:
        raise AmecamError("the network has no layer with a 2-D feature map to explain")
    smallest = min(h * w for _, h, w in shapes.values())
    return [name for name, (_, h, w) in shapes.items() if h * w == smallest][-1]


def unknown_layer_message(layer: str, shapes: dict[str, tuple[int, ...]]) -> str:
    """One line for a wrong ``--layer``: the nearest names first, then the default, then every choice."""
    import difflib

    def named(name: str) -> str:
        return f"{name} ({'x'.join(map(str, shapes[name]))})"

    nearest = difflib.get_close_matches(layer, list(shapes), n=3, cutoff=0.6)
    if not nearest:  # a prefix of real names, e.g. 'model.1' for 'unet.model.1...', is what a user most often types
        nearest = [name for name in shapes if layer in name][:3]
    hint = f"; nearest: {', '.join(map(named, nearest))}" if nearest else ""
    return (f"--layer {layer!r} is not one of the network's {len(shapes)} layers with a 2-D feature map{hint}; "
            f"the default is {named(default_layer(shapes))}; all of them: {', '.join(shapes)}")


class SegCAM:
    """Seg-Grad-CAM (``hires=False``) or Seg-HiRes-Grad-CAM (``hires=True``) for one target layer.

    Args:
        network: segmentation network (its ``logits`` method is used when present).
        target_layer: module whose activations are explained.
        class_index: logit channel to explain (amecam's U-Net: 1 = tumour).
        hires: element-wise gradient x activation instead of channel-mean gradient weights.
    """

    def __init__(self, network: nn.Module, target_layer: nn.Module, *, class_index: int = 1, hires: bool = False) -> None:
        self.network = network
        self.logits = _logits_function(network)
        self.target_layer = target_layer
        self.class_index = int(class_index)
        self.hires = bool(hires)

    def __call__(self, x: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Maps ``(B, H, W)`` in [0, 1] (1 = most influential) for the pixel sets ``pixels`` ``(B, H, W)`` bool.

        An image whose pixel set is empty gets an all-zero map.
        """
        stored: dict[str, torch.Tensor] = {}

        def forward_hook(_module, _inputs, output):
            stored["activations"] = output
            output.register_hook(lambda grad: stored.__setitem__("gradients", grad))

        handle = self.target_layer.register_forward_hook(forward_hook)
        self.network.eval()
        try:
            with torch.enable_grad():
                x = x.detach().clone().requires_grad_(True)
                logits = self.logits(x)
                if logits.dim() != 4 or not 0 <= self.class_index < logits.shape[1]:
                    raise AmecamError(f"--class_index must select one of the {logits.shape[1]} output channels, got {self.class_index}")
                score = (logits[:, self.class_index] * pixels.to(logits.dtype)).sum()
                self.network.zero_grad(set_to_none=True)
                score.backward()
        finally:
            handle.remove()
        activations, gradients = stored["activations"].detach(), stored["gradients"].detach()
        if self.hires:
            raw = F.relu((gradients * activations).sum(dim=1))
        else:
            raw = F.relu((gradients.mean(dim=(2, 3), keepdim=True) * activations).sum(dim=1))
        up = F.interpolate(raw[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        flat = up.flatten(1)
        high = flat.amax(dim=1).view(-1, 1, 1)
        maps = torch.where(high > 0, up / high.clamp_min(1e-12), torch.zeros_like(up))
        empty = ~pixels.flatten(1).any(dim=1)
        maps[empty] = 0
        return maps


def parse_pixels(value: str) -> tuple[str, tuple[int, int, int] | None]:
    """``predicted``, ``image`` or ``point:X,Y,Z`` -> (kind, voxel)."""
    text = str(value).strip().lower()
    if text in ("predicted", "image"):
        return text, None
    match = re.fullmatch(r"point:\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)", text)
    if match:
        return "point", tuple(int(v) for v in match.groups())
    raise AmecamError(f"--pixels must be predicted, image or point:X,Y,Z (voxel indices), got {value!r}")


def _canonical_index(voxel: tuple[int, int, int], orientation: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """A file voxel index -> the same voxel's index in the canonical (RAS) array of ``shape``."""
    out = [0, 0, 0]
    for file_axis in range(3):
        axis, flip = int(orientation[file_axis, 0]), orientation[file_axis, 1] < 0
        out[axis] = shape[axis] - 1 - voxel[file_axis] if flip else voxel[file_axis]
    return tuple(out)


def explain_volume(
    volume: str | Path,
    output: str | Path,
    bundle_path: str | Path,
    *,
    method: str = "seg-gradcam",
    pixels: str = "predicted",
    layer: str | None = None,
    class_index: int = 1,
    png_dir: str | Path | None = None,
    modality: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    overwrite: bool = False,
) -> dict:
    """Explain a segmentation bundle's output on one volume; the map is written on the input's grid.

    An AME-CAM bundle is refused: its network's two channels are the map and the slice's tumour
    probability, not class logits, so no pixel set of theirs has a meaningful "class logit" to explain.
    """
    from amecam_bundle.scripts.preprocess import extract_slices, from_canonical, paste_slices, prepare_volume

    from .bundle import open_bundle
    from .cases import load_case
    from .inference import plan_jobs
    from .io import write_volume
    from .maps import montage_path, overlay_montage

    if method not in EXPLAIN_METHODS:
        raise AmecamError(f"--method must be one of {', '.join(EXPLAIN_METHODS)}, got {method!r}")
    kind, voxel = parse_pixels(pixels)
    bundle = open_bundle(bundle_path, device=device)
    if bundle.kind != "segmentation":  # an AME-CAM network outputs (map, slice probability), not class logits
        raise AmecamError(f"{bundle_path}: amecam explain needs a segmentation bundle (from amecam train-seg); "
                          "for an AME-CAM bundle's maps use amecam cam")
    torch_device = bundle.module("train").resolve_device(device)
    network = bundle.network.to(torch_device)
    example = torch.zeros(1, len(bundle.modalities), bundle.image_size, bundle.image_size, device=torch_device)
    shapes = candidate_layers(network, example)
    if not shapes:
        raise AmecamError(f"{bundle_path}: the bundle's network has no 2-D feature map to explain")
    layer = layer or default_layer(shapes)
    if layer not in shapes:
        raise AmecamError(unknown_layer_message(layer, shapes))
    jobs = plan_jobs(Path(volume), output, bundle, modality=modality, overwrite=overwrite, result="explain")
    if len(jobs) != 1:
        raise AmecamError(f"{volume}: amecam explain takes one volume (or one case folder), found {len(jobs)} cases")
    job = jobs[0]
    png_path = montage_path(png_dir, job.case.case_id, method, overwrite=overwrite)
    loaded = load_case(job.case, with_label=False)
    prepared = prepare_volume(loaded.channels, brain=loaded.brain, strip_skull=bundle.strip_skull)
    shape = prepared.brain.shape
    zs = list(prepared.brain_slices)
    point = None
    if kind == "point":
        if any(v < 0 or v >= s for v, s in zip(voxel, loaded.props.shape)):
            raise AmecamError(f"--pixels point {voxel} lies outside the volume (shape {'x'.join(map(str, loaded.props.shape))})")
        point = _canonical_index(voxel, loaded.orientation, shape)
        if point[2] not in zs:
            raise AmecamError(f"--pixels point {voxel} lies on a slice without brain; nothing to explain")
        zs = [point[2]]
    slices = extract_slices(prepared.image, prepared.box, zs, bundle.image_size)
    explainer = SegCAM(network, dict(network.named_modules())[layer], class_index=class_index, hires=method == "seg-hirescam")
    size = bundle.image_size
    x0, x1, y0, y1 = prepared.box
    maps, explained, n_pixels = [], [], 0
    for start in range(0, len(zs), batch_size):
        x = slices[start : start + batch_size].to(torch_device)
        if kind == "image":
            chosen = torch.ones(x.shape[0], size, size, dtype=torch.bool, device=torch_device)
        elif kind == "predicted":
            with torch.no_grad():
                chosen = _logits_function(network)(x).argmax(dim=1) == class_index
        else:
            u = int(np.clip((point[0] - x0) * size / (x1 - x0), 0, size - 1))
            v = int(np.clip((point[1] - y0) * size / (y1 - y0), 0, size - 1))
            chosen = torch.zeros(x.shape[0], size, size, dtype=torch.bool, device=torch_device)
            chosen[:, u, v] = True
        n_pixels += int(chosen.sum())
        explained.append(chosen.float().cpu())
        maps.append(explainer(x, chosen).cpu())
    heat = np.zeros(shape, dtype=np.float32)
    if zs:
        heat[:, :, zs] = np.moveaxis(paste_slices(torch.cat(maps), prepared.box, shape[:2]).clamp(0, 1).numpy(), 0, -1)
    heat *= prepared.brain
    write_volume(job.mask_path, from_canonical(heat, loaded.orientation), loaded.props, overwrite=overwrite)
    result = {"map": str(job.mask_path), "method": method, "layer": layer, "pixels": pixels, "explained_pixels": n_pixels,
              "slices": len(zs)}
    if png_dir:  # the explained pixels are drawn: the point's cross, or the predicted tumour's contour
        pixel_set = None
        if kind == "predicted" and zs:
            pixel_set = np.zeros(shape, dtype=bool)
            pasted = paste_slices(torch.cat(explained), prepared.box, shape[:2])
            pixel_set[:, :, zs] = np.moveaxis(pasted.numpy() >= 0.5, 0, -1) & prepared.brain[:, :, zs]
        result["png"] = str(overlay_montage(prepared.image.mean(axis=0), heat, png_path, mask=pixel_set, point=point,
                                            title=f"{job.case.case_id}: {method} ({pixels}, layer {layer})"))
    logger.info("%s of %s (%s, layer %s, %d pixel%s) -> %s", method, job.case.case_id, pixels, layer, n_pixels,
                "" if n_pixels == 1 else "s", job.mask_path)
    return result
