from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from amecam_cli.errors import AmecamError
from amecam_cli.io import detached_data_path, read_volume, write_volume

from .conftest import LPS, save_nifti


def _volume(shape=(12, 10, 8)):
    return np.arange(np.prod(shape), dtype=np.int16).reshape(shape)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_mask_round_trip_keeps_affine_and_header(tmp_path, suffix):
    src = save_nifti(tmp_path / f"img{suffix}", _volume(), LPS)
    array, props = read_volume(src)
    assert array.shape == (12, 10, 8) and array[3, 2, 1] == _volume()[3, 2, 1]
    np.testing.assert_allclose(props.affine, LPS)
    assert props.spacing == (1.0, 1.0, 2.0)
    mask = (array > 400).astype(np.uint8)
    out = write_volume(tmp_path / f"mask{suffix}", mask, props)
    written = nib.load(str(out))
    np.testing.assert_allclose(written.affine, LPS)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), mask)
    assert nib.aff2axcodes(written.affine) == ("L", "P", "S")


def test_nifti_with_a_trailing_singleton_axis_gets_a_result_of_its_exact_shape(tmp_path):
    """Some tools save a 3-D scan as x*y*z*1; it is read as 3-D, and the result keeps the file's shape."""
    image = nib.Nifti1Image(_volume()[..., None], LPS)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(tmp_path / "img.nii.gz"))
    array, props = read_volume(tmp_path / "img.nii.gz")
    assert array.shape == props.shape == (12, 10, 8)
    mask = (array > 400).astype(np.uint8)
    for name, result in (("mask.nii.gz", mask), ("map.nii", array / array.max())):
        written = nib.load(str(write_volume(tmp_path / name, result, props)))
        assert written.shape == (12, 10, 8, 1)
        np.testing.assert_allclose(written.affine, LPS)
        np.testing.assert_allclose(np.asanyarray(written.dataobj)[..., 0], result, rtol=1e-6)
        assert read_volume(written.get_filename())[0].shape == (12, 10, 8)
    # written as NRRD it is 3-D, the only shape that format gives a scalar volume here
    assert sitk.ReadImage(str(write_volume(tmp_path / "mask.nrrd", mask, props))).GetDimension() == 3


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nhdr", ".mhd"])
def test_sitk_formats_round_trip_geometry(tmp_path, suffix):
    image = sitk.GetImageFromArray(_volume().transpose(2, 1, 0))
    image.SetSpacing((0.8, 0.9, 3.0))
    image.SetOrigin((10.0, -20.0, 5.0))
    image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    sitk.WriteImage(image, str(tmp_path / f"img{suffix}"))
    array, props = read_volume(tmp_path / f"img{suffix}")
    np.testing.assert_array_equal(array, _volume())
    # LPS direction/origin become a RAS affine: x and y rows change sign
    expected = np.array([[0, -0.9, 0, -10.0], [-0.8, 0, 0, 20.0], [0, 0, -3.0, 5.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(props.affine, expected)
    write_volume(tmp_path / f"mask{suffix}", (array > 100).astype(np.uint8), props)
    mask = sitk.ReadImage(str(tmp_path / f"mask{suffix}"))
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetSpacing() == pytest.approx(image.GetSpacing())
    assert mask.GetOrigin() == pytest.approx(image.GetOrigin())
    assert mask.GetDirection() == pytest.approx(image.GetDirection())
    # a detached header names the data file written beside it under its final name, and no temporary is left
    written = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("mask", ".")))
    data_files = {".nhdr": ["mask.nhdr", "mask.raw.gz"], ".mhd": ["mask.mhd", "mask.zraw"]}
    assert written == data_files.get(suffix, [f"mask{suffix}"])
    if suffix in data_files:
        header = (tmp_path / f"mask{suffix}").read_bytes()
        assert data_files[suffix][1].encode() in header and b".tmp" not in header
        assert detached_data_path(tmp_path / f"mask{suffix}") == tmp_path / data_files[suffix][1]
        # someone else's data file of that name is never replaced silently, even without a header beside it
        other = tmp_path / f"other{data_files[suffix][1][4:]}"
        other.write_bytes(b"not ours")
        with pytest.raises(AmecamError, match=f"other{suffix}: its data file {other.name} already exists beside it"):
            write_volume(tmp_path / f"other{suffix}", (array > 100).astype(np.uint8), props)
        assert other.read_bytes() == b"not ours" and not (tmp_path / f"other{suffix}").exists()
        write_volume(tmp_path / f"other{suffix}", (array > 100).astype(np.uint8), props, overwrite=True)
        assert sitk.ReadImage(str(tmp_path / f"other{suffix}")).GetSize() == mask.GetSize()


def _dicom_series(folder: Path, array: np.ndarray) -> None:
    folder.mkdir()
    volume = sitk.GetImageFromArray(array.transpose(2, 1, 0).astype(np.int16))
    volume.SetSpacing((1.0, 1.0, 2.5))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetDepth()):
        plane = volume[:, :, k]
        plane.SetMetaData("0010|0010", "PHANTOM^TEST")
        plane.SetMetaData("0020|000d", "1.2.3.4")
        plane.SetMetaData("0020|000e", "1.2.3.4.5")
        plane.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        plane.SetMetaData("0020|0032", f"0\\0\\{2.5 * k}")
        plane.SetMetaData("0020|0013", str(k + 1))
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(plane)


def test_dicom_folder_in_dicom_series_out(tmp_path):
    _dicom_series(tmp_path / "dicom", _volume((16, 14, 5)))
    array, props = read_volume(tmp_path / "dicom")
    assert props.format == "dicom" and array.shape == (16, 14, 5)
    assert props.spacing[2] == pytest.approx(2.5)
    np.testing.assert_array_equal(array, _volume((16, 14, 5)))
    mask = (array % 2).astype(np.uint8)
    write_volume(tmp_path / "mask_series", mask, props)
    back, back_props = read_volume(tmp_path / "mask_series")
    np.testing.assert_array_equal(back, mask)
    np.testing.assert_allclose(back_props.affine, props.affine, atol=1e-4)
    # and the same DICOM input can be written as NIfTI on its grid
    write_volume(tmp_path / "mask.nii.gz", mask, props)
    np.testing.assert_allclose(nib.load(str(tmp_path / "mask.nii.gz")).affine, props.affine, atol=1e-4)


@pytest.mark.parametrize(("unit", "spacing", "stated"), [("mm", 2.0, "mm"), ("meter", 2000.0, "mm"), ("micron", 0.002, "mm"), (None, 2.0, "unknown")])
def test_voxel_sizes_are_read_in_mm_and_an_unstated_unit_is_recorded(tmp_path, unit, spacing, stated):
    image = nib.Nifti1Image(_volume(), np.diag([2.0, 2.0, 2.0, 1.0]))
    if unit:
        image.header.set_xyzt_units(unit)
    nib.save(image, str(tmp_path / "img.nii.gz"))
    _, props = read_volume(tmp_path / "img.nii.gz")
    assert props.spacing == pytest.approx((spacing,) * 3) and props.spacing_unit == stated


def test_write_refuses_existing_output_and_mismatched_shape(tmp_path):
    src = save_nifti(tmp_path / "img.nii.gz", _volume())
    array, props = read_volume(src)
    mask = np.zeros(array.shape, np.uint8)
    write_volume(tmp_path / "m.nii.gz", mask, props)
    before = (tmp_path / "m.nii.gz").read_bytes()
    with pytest.raises(AmecamError, match="already exists .*--overwrite"):
        write_volume(tmp_path / "m.nii.gz", mask + 1, props)
    assert (tmp_path / "m.nii.gz").read_bytes() == before
    write_volume(tmp_path / "m.nii.gz", mask + 1, props, overwrite=True)
    assert np.asanyarray(nib.load(str(tmp_path / "m.nii.gz")).dataobj).max() == 1
    with pytest.raises(AmecamError, match="does not match the input"):
        write_volume(tmp_path / "other.nii.gz", mask[:-1], props)


def test_write_to_unwritable_place(tmp_path):
    src = save_nifti(tmp_path / "img.nii.gz", _volume())
    array, props = read_volume(src)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder", encoding="utf-8")
    with pytest.raises(AmecamError, match="cannot create output folder .*a_file is a file, not a folder"):
        write_volume(blocker / "mask.nii.gz", np.zeros(array.shape, np.uint8), props)
    with pytest.raises(AmecamError, match="a_file is a file, not a folder"):
        write_volume(blocker / "deeper" / "mask.nii.gz", np.zeros(array.shape, np.uint8), props)
    with pytest.raises(AmecamError, match="output must end in one of"):
        write_volume(tmp_path / "mask.png", np.zeros(array.shape, np.uint8), props)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "img.nii.gz"]


def test_bad_inputs_give_one_clear_error(tmp_path):
    with pytest.raises(AmecamError, match="missing.nii.gz: no such file"):
        read_volume(tmp_path / "missing.nii.gz")
    good = save_nifti(tmp_path / "good.nii.gz", _volume((40, 40, 20)))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(AmecamError, match="truncated.nii.gz: cannot read NIfTI volume"):
        read_volume(truncated)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"this is not a nifti file" * 20))
    with pytest.raises(AmecamError, match="garbage.nii.gz: cannot read"):
        read_volume(garbage)
    flat = save_nifti(tmp_path / "flat.nii.gz", np.zeros((30, 30), np.int16))
    with pytest.raises(AmecamError, match="flat.nii.gz: volume is 2-D .*needs a 3-D volume"):
        read_volume(flat)
    single = save_nifti(tmp_path / "single.nii.gz", np.zeros((30, 30, 1), np.int16))
    with pytest.raises(AmecamError, match="is 2-D"):
        read_volume(single)
    nan = np.ones((8, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    with pytest.raises(AmecamError, match="nan.nii.gz: volume contains 1 NaN or infinite value$"):
        read_volume(save_nifti(tmp_path / "nan.nii.gz", nan))
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(AmecamError, match="unknown volume format '.txt'"):
        read_volume(tmp_path / "notes.txt")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(AmecamError, match="holds no DICOM series"):
        read_volume(tmp_path / "empty_dir")
