"""From a volume on disk to network input, and back: orientation, brain mask, intensity, 2-D slices.

This module is the single definition of the preprocessing. The toolkit's slicer (training data) and the
bundle's inference both call it, so a trained bundle always sees its input prepared the way its
training data was.

Conventions:
    * Arrays are indexed ``(x, y, z)`` in the file's voxel order, as nibabel returns them. Before slicing
      they are reoriented to the closest canonical RAS orientation, so axis 2 is axial (inferior to
      superior) whatever the file's orientation; masks are mapped back with :func:`from_canonical`.
    * Multi-modality volumes are stacked channels-first: ``(C, x, y, z)``.
    * Intensities are normalised per volume inside the brain mask to ``[0, 1]`` between two
      percentiles, so uint8, int16 and z-scored float inputs come out comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from scipy import ndimage

__all__ = [
    "PreparedVolume",
    "as_file_shape",
    "brain_mask",
    "crop_box",
    "extract_slices",
    "from_canonical",
    "normalize_intensity",
    "paste_slices",
    "prepare_volume",
    "resize_masks",
    "skull_strip",
    "to_canonical",
]

_RAS = axcodes2ornt(("R", "A", "S"))

#: percentiles of the in-brain intensities that map to 0 and 1
LOWER_PERCENTILE = 0.5
UPPER_PERCENTILE = 99.5
#: a voxel belongs to the head if it is brighter than background + this fraction of the robust range
FOREGROUND_FRACTION = 0.05
#: a slice counts as containing brain if at least this fraction of its pixels is brain
MIN_BRAIN_FRACTION = 0.01
#: pixels of margin kept around the brain's bounding box when cropping slices
CROP_MARGIN = 4
#: skull stripping: the erosion radius as a share of the head's width (about 5 pixels on a 256-pixel slice)
STRIP_RADIUS_FRACTION = 0.03
#: skull stripping: head voxels darker than this percentile (skull, CSF, air gaps) are not tissue
STRIP_TISSUE_PERCENTILE = 20.0


def to_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient ``array`` (x, y, z[, ...]) to the closest canonical RAS orientation.

    Args:
        array: voxel data whose first three axes are the spatial axes described by ``affine``.
        affine: 4x4 voxel-to-world (RAS+ mm) matrix of ``array``.

    Returns:
        The reoriented array (a view where possible) and the file's orientation, which
        :func:`from_canonical` needs to map a result back.
    """
    orientation = io_orientation(affine)
    return apply_orientation(array, ornt_transform(orientation, _RAS)), orientation


def from_canonical(array: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """Undo :func:`to_canonical`: return ``array`` in the voxel order of the original file."""
    return np.ascontiguousarray(apply_orientation(array, ornt_transform(_RAS, orientation)))


def as_file_shape(array: np.ndarray, file_shape: tuple[int, ...]) -> np.ndarray:
    """Give a 3-D result the shape of the file it belongs to when that file is x*y*z*1 (as some converters write).

    Other shapes are returned unchanged, so a caller can apply it to every result.
    """
    file_shape = tuple(int(s) for s in file_shape)
    if len(file_shape) > 3 and file_shape[:3] == array.shape and set(file_shape[3:]) == {1}:
        return array.reshape(file_shape)
    return array


def brain_mask(channels: np.ndarray, *, fraction: float = FOREGROUND_FRACTION) -> np.ndarray:
    """Estimate the brain (head) mask of a skull-stripped volume.

    Background may be zero, noisy and dark (converted 8-bit images), or a non-zero constant (z-scored
    volumes). A voxel is foreground in one modality when it exceeds ``min + fraction * (p99.5 - min)``;
    the mask is the union over modalities, with holes filled slice by slice and only the largest 3-D
    connected component kept.

    Args:
        channels: ``(C, x, y, z)`` intensities.
        fraction: share of the robust intensity range that separates background from tissue.

    Returns:
        Boolean ``(x, y, z)`` mask.
    """
    channels = np.asarray(channels)
    mask = np.zeros(channels.shape[1:], dtype=bool)
    for channel in channels:
        low = float(channel.min())
        high = float(np.percentile(channel, 99.5))
        if high <= low:
            continue
        mask |= channel > low + fraction * (high - low)
    if not mask.any():
        return mask
    square = np.ones((3, 3), dtype=bool)
    for z in range(mask.shape[2]):
        if mask[:, :, z].any():  # drop background noise specks, then fill dark structures inside
            plane = ndimage.binary_opening(mask[:, :, z], structure=square)
            mask[:, :, z] = ndimage.binary_fill_holes(plane)
    return _largest_component(mask)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component (face connectivity) of a boolean mask; the mask if it has at most one."""
    labels, n_labels = ndimage.label(mask)
    if n_labels <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Dilation of a 2-D mask by a disk of ``radius`` pixels (a distance transform: fast for any radius)."""
    return ndimage.distance_transform_edt(~mask) <= radius


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    """Erosion of a 2-D mask by a disk of ``radius`` pixels; outside the array counts as background."""
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1] > radius


def skull_strip(
    channels: np.ndarray,
    head: np.ndarray,
    *,
    radius_fraction: float = STRIP_RADIUS_FRACTION,
    tissue_percentile: float = STRIP_TISSUE_PERCENTILE,
) -> np.ndarray:
    """Remove scalp and skull from a head mask (for volumes that are not skull-stripped).

    Morphological brain extraction, no trained model: the dark ring of skull and CSF separates the
    brain from the scalp, so after dropping dark voxels and eroding each axial slice by a few pixels
    the brain is the largest 3-D connected component. It is dilated back by one pixel more than the
    erosion, dents that the erosion opened at its edge (a dark cyst next to the skull) are closed,
    holes are filled, and the result is kept inside the head. Meant for FLAIR-like contrasts where the
    scalp is bright and the skull dark. On the 80 LGG FLAIR volumes of ``../shared/data`` it keeps 99.9%
    of the tumour voxels (at least 97.8% per patient; ``benchmarks/skull_strip.py``); slices at the skull
    base keep bits of scalp or lose bits of brain. Do not use it on skull-stripped volumes: on the
    BraTS 2021 and BRATS 2013 FLAIR volumes it removes 11-18% of the brain and, in one case, 16% of
    the tumour.

    Args:
        channels: ``(C, x, y, z)`` intensities.
        head: boolean head mask (:func:`brain_mask`).
        radius_fraction: erosion radius as a share of the widest head extent in a slice.
        tissue_percentile: head voxels below this percentile of the mean normalised intensity are dropped.

    Returns:
        Boolean ``(x, y, z)`` brain mask inside ``head``; ``head`` itself when nothing survives the erosion.
    """
    head = np.asarray(head, dtype=bool)
    if not head.any():
        return head
    grey = np.mean([normalize_intensity(c, head) for c in np.asarray(channels)], axis=0)
    tissue = head & (grey > np.percentile(grey[head], tissue_percentile))
    extent = max(int(np.ptp(np.flatnonzero(head.any(axis=(1, 2))))), int(np.ptp(np.flatnonzero(head.any(axis=(0, 2))))))
    radius = max(2, round(radius_fraction * (extent + 1)))
    core = np.zeros_like(head)
    for z in np.flatnonzero(tissue.any(axis=(0, 1))):
        core[:, :, z] = _erode(tissue[:, :, z], radius)
    if not core.any():
        return head
    core = _largest_component(core)
    brain = np.zeros_like(head)
    for z in np.flatnonzero(core.any(axis=(0, 1))):
        grown = _dilate(core[:, :, z], radius + 1)
        # close dents the erosion opened (a dark cyst or cavity at the brain's edge), then fill holes
        grown |= _erode(_dilate(grown, 3 * radius), 3 * radius)
        brain[:, :, z] = ndimage.binary_fill_holes(grown) & head[:, :, z]
    return brain


def normalize_intensity(
    volume: np.ndarray,
    mask: np.ndarray,
    *,
    lower: float = LOWER_PERCENTILE,
    upper: float = UPPER_PERCENTILE,
) -> np.ndarray:
    """Map in-mask intensities between two percentiles to ``[0, 1]``; zero outside the mask.

    Args:
        volume: ``(x, y, z)`` intensities of one modality.
        mask: boolean brain mask of the same shape.
        lower: percentile mapped to 0.
        upper: percentile mapped to 1.

    Returns:
        float32 volume in ``[0, 1]``.
    """
    out = np.zeros(volume.shape, dtype=np.float32)
    if not mask.any():
        return out
    inside = volume[mask].astype(np.float32)
    low, high = np.percentile(inside, [lower, upper])
    scale = float(high - low) if high > low else 1.0
    out[mask] = np.clip((inside - low) / scale, 0.0, 1.0)
    return out


def crop_box(mask: np.ndarray, *, margin: int = CROP_MARGIN) -> tuple[int, int, int, int]:
    """Square in-plane box ``(x0, x1, y0, y1)`` around the brain of every slice, with a margin.

    The box is the union of all slices' brain extents (so one case keeps one scale), grown to a
    square. It may reach outside the image; :func:`extract_slices` pads with zeros there.
    """
    if not mask.any():
        return 0, mask.shape[0], 0, mask.shape[1]
    xs = np.flatnonzero(mask.any(axis=(1, 2)))
    ys = np.flatnonzero(mask.any(axis=(0, 2)))
    x0, x1 = int(xs[0]) - margin, int(xs[-1]) + 1 + margin
    y0, y1 = int(ys[0]) - margin, int(ys[-1]) + 1 + margin
    side = max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    x0, y0 = cx - side // 2, cy - side // 2
    return x0, x0 + side, y0, y0 + side


def _crop_pad(planes: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Cut ``box`` out of ``(..., x, y)`` planes, zero-padding where the box leaves the image."""
    x0, x1, y0, y1 = box
    nx, ny = planes.shape[-2:]
    out = np.zeros((*planes.shape[:-2], x1 - x0, y1 - y0), dtype=planes.dtype)
    sx0, sx1, sy0, sy1 = max(x0, 0), min(x1, nx), max(y0, 0), min(y1, ny)
    if sx1 > sx0 and sy1 > sy0:
        out[..., sx0 - x0 : sx1 - x0, sy0 - y0 : sy1 - y0] = planes[..., sx0:sx1, sy0:sy1]
    return out


def extract_slices(
    volume: np.ndarray, box: tuple[int, int, int, int], zs: np.ndarray | list[int], size: int
) -> torch.Tensor:
    """Axial slices ``zs`` of a ``(C, x, y, z)`` volume, cropped to ``box`` and resized to ``size``.

    Returns:
        float32 tensor ``(len(zs), C, size, size)``.
    """
    planes = np.moveaxis(volume[..., list(zs)], -1, 0)  # (n, C, x, y)
    crop = torch.from_numpy(np.ascontiguousarray(_crop_pad(planes, box), dtype=np.float32))
    if crop.shape[0] == 0:
        return crop.new_zeros((0, volume.shape[0], size, size))
    if crop.shape[-1] == size:
        return crop
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def resize_masks(masks: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop and resize binary ``(n, x, y)`` masks the way :func:`extract_slices` treats images."""
    crop = torch.from_numpy(_crop_pad(masks.astype(np.float32), box))[:, None]
    if crop.shape[0] == 0:
        return np.zeros((0, size, size), dtype=np.uint8)
    resized = F.interpolate(crop, size=(size, size), mode="area")
    return (resized[:, 0] >= 0.5).numpy().astype(np.uint8)


def paste_slices(
    maps: torch.Tensor, box: tuple[int, int, int, int], plane_shape: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`extract_slices` for ``(n, S, S)`` maps: resize to the box, place in the plane.

    Returns:
        ``(n, x, y)`` tensor of the original in-plane size; zero outside the box.
    """
    x0, x1, y0, y1 = box
    resized = F.interpolate(maps[:, None].float(), size=(x1 - x0, y1 - y0), mode="bilinear", align_corners=False)[:, 0]
    nx, ny = plane_shape
    out = maps.new_zeros((maps.shape[0], nx, ny), dtype=torch.float32)
    sx0, sx1, sy0, sy1 = max(x0, 0), min(x1, nx), max(y0, 0), min(y1, ny)
    if sx1 > sx0 and sy1 > sy0:
        out[:, sx0:sx1, sy0:sy1] = resized[:, sx0 - x0 : sx1 - x0, sy0 - y0 : sy1 - y0]
    return out


@dataclass
class PreparedVolume:
    """A canonical, normalised volume ready to be sliced.

    Attributes:
        image: ``(C, x, y, z)`` float32 in ``[0, 1]``, RAS orientation.
        brain: ``(x, y, z)`` boolean brain mask.
        box: in-plane crop box, see :func:`crop_box`.
        brain_slices: axial indices whose brain area is at least ``MIN_BRAIN_FRACTION`` of the slice.
    """

    image: np.ndarray
    brain: np.ndarray
    box: tuple[int, int, int, int]
    brain_slices: np.ndarray


def prepare_volume(
    channels: np.ndarray,
    *,
    brain: np.ndarray | None = None,
    min_brain_fraction: float = MIN_BRAIN_FRACTION,
    strip_skull: bool = False,
) -> PreparedVolume:
    """Brain mask, per-modality normalisation and crop box for a canonical ``(C, x, y, z)`` volume.

    Args:
        channels: raw intensities, already in canonical orientation.
        brain: a brain mask to use instead of estimating one (e.g. BRATS 2013 ``brainmask``).
        min_brain_fraction: slices with less brain than this share of their pixels are skipped.
        strip_skull: the volume is not skull-stripped: remove scalp and skull from the estimated mask
            (:func:`skull_strip`). Ignored when ``brain`` is given.
    """
    channels = np.asarray(channels)
    if brain is None:
        brain = brain_mask(channels)
        if strip_skull:
            brain = skull_strip(channels, brain)
    else:
        brain = np.asarray(brain) > 0
    image = np.stack([normalize_intensity(c, brain) for c in channels])
    area = brain.shape[0] * brain.shape[1]
    brain_slices = np.flatnonzero(brain.sum(axis=(0, 1)) >= min_brain_fraction * area)
    return PreparedVolume(image=image, brain=brain, box=crop_box(brain), brain_slices=brain_slices)
