"""Volume-level maps: ``amecam cam`` (CAM export), ``amecam crf`` (DenseCRF on a map), PNG overlays.

A map is always float32 in ``[0, 1]`` with 1 = most tumour-like (or most influential), on the input's
own voxel grid and in its file format; masks are uint8.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .errors import AmecamError

__all__ = ["export_cam", "overlay_montage", "refine_with_crf"]

logger = logging.getLogger(__name__)


def montage_path(png_dir: str | Path | None, case_id: str, method: str, *, overwrite: bool) -> Path | None:
    """Where ``--png_dir`` puts a case's montage, checked before any work: an earlier run's is kept without ``--overwrite``."""
    from .io import check_writable

    if not png_dir:
        return None
    path = Path(png_dir) / f"{case_id}_{method}.png"
    check_writable(path, overwrite=overwrite)
    return path


def overlay_montage(image: np.ndarray, heat: np.ndarray, path: Path, *, title: str, mask: np.ndarray | None = None,
                    point: tuple[int, int, int] | None = None, max_slices: int = 16) -> Path:
    """PNG montage of the slices where ``heat`` is highest: the image with the map in colour on top.

    Args:
        image: ``(x, y, z)`` grey image in [0, 1] (canonical orientation).
        heat: ``(x, y, z)`` map in [0, 1].
        mask: optional ``(x, y, z)`` mask drawn as a contour (e.g. tumour slices of a prediction); the
            montage shows the slices it covers.
        point: optional ``(x, y, z)`` voxel (canonical) marked with a cross; the montage is its slice alone.
    """
    import matplotlib

    from .io import atomic_path

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if point is not None:
        chosen = np.array([int(point[2])])
    elif mask is not None and mask.any():
        chosen = np.flatnonzero(mask.any(axis=(0, 1)))
    else:
        chosen = np.argsort(heat.max(axis=(0, 1)))[::-1]
    if len(chosen) > max_slices:
        chosen = chosen[np.linspace(0, len(chosen) - 1, max_slices).round().astype(int)]
    chosen = sorted(int(z) for z in chosen[:max_slices])
    columns = min(4, len(chosen)) or 1
    rows = int(np.ceil(len(chosen) / columns)) or 1
    width = max(2.4 * columns, 4.0)  # one panel still leaves room for the title
    fig, axes = plt.subplots(rows, columns, figsize=(width, 2.5 * rows + 0.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, z in zip(axes.ravel(), chosen):
        ax.imshow(image[:, :, z].T, cmap="gray", origin="lower")
        ax.imshow(np.ma.masked_less(heat[:, :, z].T, 0.02), cmap="jet", alpha=0.45, origin="lower", vmin=0, vmax=1)
        if mask is not None and mask[:, :, z].any():
            ax.contour(mask[:, :, z].T, levels=[0.5], colors="white", linewidths=0.7, origin="lower")
        if point is not None:
            ax.plot(point[0], point[1], marker="+", color="white", markersize=9, markeredgewidth=1.5)
        ax.set_title(f"z={z}", fontsize=7)
    import textwrap

    fig.suptitle(textwrap.fill(title, width=int(width * 12)), fontsize=9)  # a one-panel montage cut a long title
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as staging:  # never a half-written PNG under the final name
            fig.savefig(staging, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


def export_cam(
    volume: str | Path,
    output: str | Path,
    bundle_path: str | Path,
    *,
    method: str = "amecam",
    png_dir: str | Path | None = None,
    modality: str | None = None,
    stage: int = 4,
    budget: int = 64,
    batch_size: int = 32,
    device: str = "auto",
    overwrite: bool = False,
) -> dict:
    """Write one method's map for a volume (float32, input geometry), and optionally a PNG montage."""
    from amecam_bundle.scripts.preprocess import extract_slices, from_canonical, paste_slices, prepare_volume

    from .bundle import open_bundle
    from .cams import compute_maps, validate_methods
    from .cases import load_case
    from .inference import plan_jobs
    from .io import write_volume

    names = validate_methods(method)
    if len(names) != 1:
        raise AmecamError(f"--method takes one method, got {method!r}")
    method = names[0]
    bundle = open_bundle(bundle_path, device=device)
    if bundle.kind != "amecam":
        raise AmecamError(f"{bundle_path}: amecam cam needs an AME-CAM bundle; for a segmentation bundle use amecam explain")
    jobs = plan_jobs(Path(volume), output, bundle, modality=modality, overwrite=overwrite, result=method)
    if len(jobs) != 1:
        raise AmecamError(f"{volume}: amecam cam takes one volume (or one case folder), found {len(jobs)} cases")
    job = jobs[0]
    png_path = montage_path(png_dir, job.case.case_id, method, overwrite=overwrite)
    loaded = load_case(job.case, with_label=False)
    prepared = prepare_volume(loaded.channels, brain=loaded.brain, strip_skull=bundle.strip_skull)
    slices = extract_slices(prepared.image, prepared.box, prepared.brain_slices, bundle.image_size)
    started = time.perf_counter()
    maps = compute_maps(bundle.network, slices, (method,), batch_size=batch_size, stage=stage, budget=budget,
                        device=bundle.module("train").resolve_device(device))
    seconds = time.perf_counter() - started
    shape = prepared.brain.shape
    heat = np.zeros(shape, dtype=np.float32)
    zs = prepared.brain_slices
    if len(zs):
        heat[:, :, zs] = np.moveaxis(paste_slices(maps[method], prepared.box, shape[:2]).clamp(0, 1).numpy(), 0, -1)
    heat *= prepared.brain
    write_volume(job.mask_path, from_canonical(heat, loaded.orientation), loaded.props, overwrite=overwrite)
    result = {"map": str(job.mask_path), "method": method, "seconds_maps": seconds, "slices": int(len(zs))}
    if png_dir:
        result["png"] = str(overlay_montage(prepared.image.mean(axis=0), heat, png_path,
                                            title=f"{job.case.case_id}: {method}"))
    logger.info("%s map of %s -> %s (%d slices, %.1f s)", method, job.case.case_id, job.mask_path, len(zs), seconds)
    return result


def refine_with_crf(
    image: str | Path,
    cam: str | Path,
    output: str | Path,
    *,
    threshold: float = 0.5,
    gaussian_sxy: float = 3.0,
    gaussian_compat: float = 3.0,
    bilateral_sxy: float = 10.0,
    bilateral_srgb: float = 13.0,
    bilateral_compat: float = 10.0,
    iterations: int = 10,
    margin: int = 16,
    full_slices: bool = False,
    strip_skull: bool = False,
    overwrite: bool = False,
) -> dict:
    """DenseCRF on the slices and the region where ``cam >= threshold``; writes a uint8 mask on the image's grid."""
    from amecam_bundle.scripts.postprocess import CRFParams, crf_refine_volume
    from amecam_bundle.scripts.preprocess import from_canonical, prepare_volume, to_canonical

    from .io import check_outputs_apart, check_writable, read_volume, write_volume

    if not 0.0 <= float(threshold) <= 1.0:
        raise AmecamError(f"--threshold must be in [0, 1], got {threshold}")
    try:
        params = CRFParams(gaussian_sxy=float(gaussian_sxy), gaussian_compat=float(gaussian_compat), bilateral_sxy=float(bilateral_sxy),
                           bilateral_srgb=float(bilateral_srgb), bilateral_compat=float(bilateral_compat), iterations=int(iterations),
                           margin=int(margin))
    except ValueError as exc:
        raise AmecamError(f"--{exc}") from exc
    check_outputs_apart([output], [image, cam])
    check_writable(output, overwrite=overwrite)
    array, props = read_volume(image)
    heat, heat_props = read_volume(cam)
    if heat.shape != array.shape:
        raise AmecamError(f"{cam}: map has shape {'x'.join(map(str, heat.shape))} but the image has {'x'.join(map(str, array.shape))}")
    if not np.allclose(props.affine, heat_props.affine, atol=1e-3):
        raise AmecamError(f"{cam}: map is not on the image's voxel grid (affines differ)")
    if heat.min() < -1e-6 or heat.max() > 1 + 1e-6:
        raise AmecamError(f"{cam}: map values must lie in [0, 1], got {heat.min():.3g}..{heat.max():.3g}")
    image_c, orientation = to_canonical(array, props.affine)  # slice axially whatever the file's axis order
    heat_c, _ = to_canonical(heat, props.affine)
    prepared = prepare_volume(np.asarray(image_c)[None], strip_skull=strip_skull)
    candidate = (heat_c >= float(threshold)) & prepared.brain
    started = time.perf_counter()
    mask = crf_refine_volume(prepared.image[0], np.clip(heat_c, 0, 1), candidate, params, restrict=not full_slices)
    seconds = time.perf_counter() - started
    mask &= prepared.brain
    write_volume(output, from_canonical(mask.astype(np.uint8), orientation), props, overwrite=overwrite)
    n = int(candidate.any(axis=(0, 1)).sum())
    logger.info("DenseCRF on %d slices in %.2f s -> %s (%d voxels)", n, seconds, output, int(mask.sum()))
    return {"mask": str(output), "slices": n, "seconds": seconds, "voxels": int(mask.sum())}
