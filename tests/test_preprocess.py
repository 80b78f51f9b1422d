"""The bundle's preprocessing (bundle/scripts/preprocess.py), shared by slicing and inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amecam_bundle.scripts.preprocess import (
    brain_mask,
    crop_box,
    extract_slices,
    from_canonical,
    normalize_intensity,
    paste_slices,
    prepare_volume,
    resize_masks,
    to_canonical,
)

from .conftest import LPS, planted_case


def test_canonical_orientation_round_trip_and_axes():
    array = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    canonical, orientation = to_canonical(array, LPS)
    # LPS -> RAS flips the first two axes and keeps the third
    np.testing.assert_array_equal(canonical, array[::-1, ::-1, :])
    np.testing.assert_array_equal(from_canonical(canonical, orientation), array)
    # a sagittal-first file (axes S, R, A) is reordered so that axis 2 is axial
    affine = np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    canonical, orientation = to_canonical(array, affine)
    assert canonical.shape == (5, 6, 4)
    np.testing.assert_array_equal(canonical, array.transpose(1, 2, 0))
    np.testing.assert_array_equal(from_canonical(canonical, orientation), array)


@pytest.mark.parametrize(
    ("scale", "offset", "dtype"),
    [(255.0, 0.0, np.uint8), (3000.0, 0.0, np.int16), (4.0, -3.6, np.float32)],
)
def test_normalisation_makes_uint8_int16_and_zscored_inputs_comparable(scale, offset, dtype):
    image, _ = planted_case(scale=1.0, background=0.0)
    reference = prepare_volume(image[None])
    converted = (image * scale / 1.0 + offset).astype(dtype)  # background stays a constant (0 or -3.6)
    prepared = prepare_volume(converted[None])
    np.testing.assert_array_equal(prepared.brain, reference.brain)
    np.testing.assert_allclose(prepared.image, reference.image, atol=0.02)
    assert prepared.image.min() == 0.0 and prepared.image.max() == 1.0


def test_brain_mask_ignores_noisy_dark_background_and_fills_holes():
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 8, size=(40, 40, 6)).astype(np.float32)  # noisy 8-bit background
    volume[10:30, 10:30, :] = 120.0
    volume[18:22, 18:22, :] = 2.0  # a dark "ventricle" inside the head
    mask = brain_mask(volume[None])
    head = np.zeros_like(mask)
    head[10:30, 10:30, :] = True
    assert mask[head].all()  # the dark structure inside is filled
    near_head = np.zeros_like(mask)
    near_head[9:31, 9:31, :] = True
    assert not (mask & ~near_head).any()  # no background speck further than one pixel from the head
    assert (mask & ~head).sum() < 0.01 * head.sum()


def test_normalize_uses_percentiles_inside_mask_only():
    volume = np.zeros((10, 10, 10), np.float32)
    mask = np.zeros_like(volume, dtype=bool)
    mask[2:8, 2:8, 2:8] = True
    volume[mask] = np.linspace(100, 200, mask.sum())
    volume[0, 0, 0] = 1e6  # outside the mask: must not affect the scaling
    out = normalize_intensity(volume, mask, lower=0.0, upper=100.0)
    assert out[~mask].max() == 0.0
    assert out[mask].min() == 0.0 and out[mask].max() == pytest.approx(1.0)
    assert np.median(out[mask]) == pytest.approx(0.5, abs=0.01)


def test_crop_box_is_square_with_margin_and_extract_paste_round_trip():
    mask = np.zeros((50, 40, 3), bool)
    mask[10:30, 5:15, 1] = True
    box = crop_box(mask, margin=2)
    x0, x1, y0, y1 = box
    assert x1 - x0 == y1 - y0 == 24  # 20 wide + 2*2 margin, square
    assert (x0, x1) == (8, 32) and (y0, y1) == (-2, 22)  # may reach outside: zero padding
    volume = np.zeros((1, 50, 40, 3), np.float32)
    volume[0, 12:20, 6:10, 1] = 1.0
    slices = extract_slices(volume, box, [1], 48)
    assert slices.shape == (1, 1, 48, 48)
    back = paste_slices(slices[:, 0], box, (50, 40))
    assert back.shape == (1, 50, 40)
    np.testing.assert_allclose(back[0].numpy() > 0.5, volume[0, :, :, 1] > 0.5)
    masks = resize_masks(np.moveaxis(volume[0][..., [1]], -1, 0) > 0, box, 48)
    assert masks.dtype == np.uint8 and masks.sum() == pytest.approx(8 * 4 * 4, rel=0.1)


def test_prepare_volume_skips_slices_without_brain():
    image, _ = planted_case(shape=(32, 32, 12))
    image[:, :, :2] = 0
    prepared = prepare_volume(image[None])
    assert 0 not in prepared.brain_slices and 1 not in prepared.brain_slices
    assert prepared.image.shape == (1, 32, 32, 12) and prepared.image.dtype == np.float32
    with torch.no_grad():
        slices = extract_slices(prepared.image, prepared.box, prepared.brain_slices, 16)
    assert slices.shape == (len(prepared.brain_slices), 1, 16, 16)


def _head_with_scalp(shape=(96, 96, 10), seed=0):
    """A brain disk, a dark skull ring and a bright scalp ring (a volume that is not skull-stripped).

    The brain holds a lesion at its edge: a bright rim around a dark cyst that opens onto the skull.
    Returns ``(volume, brain, scalp, lesion)``.
    """
    rng = np.random.default_rng(seed)
    x, y = np.ogrid[: shape[0], : shape[1]]
    r = np.hypot(x - shape[0] / 2, y - shape[1] / 2)
    plane = np.where(r < 30, 100.0, np.where(r < 36, 8.0, np.where(r < 42, 170.0, 0.0)))
    lesion = np.hypot(x - shape[0] / 2 - 22, y - shape[1] / 2) < 8
    lesion &= r < 30
    cyst = lesion & (np.hypot(x - shape[0] / 2 - 25, y - shape[1] / 2) < 4)
    plane = np.where(lesion, 190.0, plane)
    plane = np.where(cyst, 10.0, plane)
    volume = np.repeat(plane[:, :, None], shape[2], axis=2) + rng.normal(0, 3, shape)
    volume = np.clip(volume, 0, None).astype(np.float32)
    brain = np.repeat((r < 30)[:, :, None], shape[2], axis=2)
    scalp = np.repeat(((r >= 37) & (r < 42))[:, :, None], shape[2], axis=2)
    return volume, brain, scalp, np.repeat(lesion[:, :, None], shape[2], axis=2)


def test_skull_strip_removes_the_scalp_and_keeps_a_lesion_with_a_cyst_at_the_brain_edge():
    from amecam_bundle.scripts.preprocess import skull_strip

    volume, brain, scalp, lesion = _head_with_scalp()
    head = brain_mask(volume[None])
    assert head[scalp].mean() > 0.95  # without stripping the scalp counts as brain
    stripped = skull_strip(volume[None], head)
    assert stripped[scalp].mean() < 0.01
    assert stripped[brain].mean() > 0.97
    # the dark cyst opens onto the skull and is still kept, up to a few pixels on the outline
    assert stripped[lesion].mean() > 0.97
    assert stripped[~head].sum() == 0


def test_prepare_volume_strips_only_when_asked_and_never_overrides_a_given_mask():
    from amecam_bundle.scripts.preprocess import skull_strip

    volume, brain, scalp, _ = _head_with_scalp()
    plain = prepare_volume(volume[None])
    stripped = prepare_volume(volume[None], strip_skull=True)
    np.testing.assert_array_equal(stripped.brain, skull_strip(volume[None], plain.brain))
    assert plain.brain[scalp].all() and not stripped.brain[scalp].any()
    assert stripped.image[0][scalp].max() == 0.0  # normalised inside the brain only
    given = prepare_volume(volume[None], brain=brain | scalp, strip_skull=True)
    np.testing.assert_array_equal(given.brain, brain | scalp)


def test_skull_strip_of_an_empty_head_is_empty():
    from amecam_bundle.scripts.preprocess import skull_strip

    volume = np.zeros((1, 20, 20, 4), dtype=np.float32)
    assert not skull_strip(volume, np.zeros((20, 20, 4), dtype=bool)).any()
