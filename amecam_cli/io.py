"""Reading volumes with their geometry, and writing masks and maps back in that geometry.

Like nnU-Net's reader/writer pairs, :func:`read_volume` returns ``(array, properties)`` and
:func:`write_volume` takes the same properties back, so a mask lands on exactly the voxel grid,
orientation and file format of the image it was computed from.

Arrays are always indexed ``(x, y, z)`` (nibabel's order). NIfTI goes through nibabel; NRRD, MHA/MHD
and DICOM series folders through SimpleITK, whose LPS geometry is converted to a RAS affine so the
rest of amecam treats every format alike.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import nibabel as nib
import numpy as np

from .errors import AmecamError

__all__ = [
    "NIFTI_SUFFIXES",
    "SITK_SUFFIXES",
    "VolumeProperties",
    "atomic_path",
    "check_outputs_apart",
    "check_writable",
    "output_format",
    "read_volume",
    "volume_suffix",
    "write_volume",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class VolumeProperties:
    """Geometry and provenance of a volume, enough to write a result in the same space and format.

    Attributes:
        path: where the volume was read from.
        format: ``"nifti"``, ``"sitk"`` (NRRD/MHA/MHD) or ``"dicom"``.
        shape: spatial shape ``(x, y, z)``.
        affine: 4x4 voxel-to-world matrix in RAS+, in the file's units (millimetres unless a NIfTI header says
            metres or microns; ``spacing`` is always converted to mm).
        spacing: voxel size in mm along x, y, z (a NIfTI file in metres or microns is converted).
        spacing_unit: ``"mm"`` when the file states its unit (NIfTI ``xyzt_units``; NRRD, MHA and DICOM are
            millimetres by definition), ``"unknown"`` for a NIfTI file that does not: its voxel sizes are
            then read as millimetres, which is the usual case but not a fact.
        header: the nibabel header (NIfTI only), reused when writing.
        sitk_info: origin, spacing and direction (SimpleITK formats), reused when writing.
        dicom_tags: patient/study tags of the first DICOM file, copied into written series.
    """

    path: Path
    format: str
    shape: tuple[int, int, int]
    affine: np.ndarray
    spacing: tuple[float, float, float]
    header: Any = None
    sitk_info: dict[str, Any] = field(default_factory=dict)
    dicom_tags: dict[str, str] = field(default_factory=dict)
    spacing_unit: str = "mm"


def volume_suffix(path: str | os.PathLike) -> str:
    """The file-type suffix of ``path`` (``.nii.gz`` counts as one), lower case."""
    name = Path(path).name.lower()
    for suffix in NIFTI_SUFFIXES + SITK_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def read_volume(path: str | os.PathLike, *, dtype: Any = np.float32, check_finite: bool = True) -> tuple[np.ndarray, VolumeProperties]:
    """Read a 3-D volume and its geometry.

    Args:
        path: a NIfTI file, an NRRD/MHA/MHD file, or a folder holding one DICOM series.
        dtype: dtype of the returned array (scaling slopes are applied).
        check_finite: reject volumes with NaN or infinite values.

    Returns:
        ``(array, properties)`` with ``array`` indexed ``(x, y, z)``.

    Raises:
        AmecamError: missing, unreadable or corrupt file, not 3-D, or non-finite values.
    """
    path = Path(path)
    if not path.exists():
        raise AmecamError(f"{path}: no such file or folder")
    if path.is_dir():
        array, props = _read_dicom(path)
    else:
        suffix = volume_suffix(path)
        if suffix in NIFTI_SUFFIXES:
            array, props = _read_nifti(path)
        elif suffix in SITK_SUFFIXES:
            array, props = _read_sitk(path)
        else:
            valid = ", ".join(NIFTI_SUFFIXES + SITK_SUFFIXES)
            raise AmecamError(f"{path}: unknown volume format {suffix!r}; valid: {valid} or a DICOM folder")
    array = _as_3d(array, path)
    if check_finite and array.dtype.kind == "f" and not np.isfinite(array).all():
        n_bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise AmecamError(f"{path}: volume contains {n_bad} NaN or infinite value{'s' if n_bad != 1 else ''}")
    props.shape = tuple(int(s) for s in array.shape)
    return array.astype(dtype, copy=False), props


def _as_3d(array: np.ndarray, path: Path) -> np.ndarray:
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    shape = "x".join(str(s) for s in array.shape)
    if array.ndim < 3 or min(array.shape[:3]) < 2:
        raise AmecamError(f"{path}: volume is 2-D (shape {shape}); amecam needs a 3-D volume")
    if array.ndim > 3:
        raise AmecamError(f"{path}: volume is {array.ndim}-D (shape {shape}); give one 3-D volume per modality")
    return array


def _read_nifti(path: Path) -> tuple[np.ndarray, VolumeProperties]:
    try:
        image = nib.load(str(path))
        array = np.asanyarray(image.dataobj)
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ValueError(f"not a NIfTI image ({type(image).__name__})")
    except Exception as exc:  # nibabel raises many types for truncated or corrupt files
        raise AmecamError(f"{path}: cannot read NIfTI volume ({_reason(exc)})") from exc
    unit = image.header.get_xyzt_units()[0]
    to_mm = {"meter": 1000.0, "micron": 0.001}.get(unit, 1.0)
    zooms = tuple(float(z) * to_mm for z in image.header.get_zooms()[:3])
    props = VolumeProperties(
        path=path, format="nifti", shape=tuple(array.shape[:3]), affine=image.affine.copy(), spacing=zooms,
        header=image.header.copy(), spacing_unit="unknown" if unit == "unknown" else "mm",
    )
    return array, props


def _sitk_affine(image: Any) -> np.ndarray:
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=float)
    origin = np.array(image.GetOrigin(), dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ origin
    return affine


def _from_sitk(image: Any, path: Path, fmt: str) -> tuple[np.ndarray, VolumeProperties]:
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        size = "x".join(str(s) for s in image.GetSize())
        raise AmecamError(f"{path}: volume is {image.GetDimension()}-D (shape {size}); amecam needs a 3-D volume")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise AmecamError(f"{path}: volume has {image.GetNumberOfComponentsPerPixel()} components per voxel; give a scalar volume")
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # (z, y, x) -> (x, y, z)
    info = {"origin": image.GetOrigin(), "spacing": image.GetSpacing(), "direction": image.GetDirection()}
    props = VolumeProperties(
        path=path, format=fmt, shape=tuple(array.shape), affine=_sitk_affine(image),
        spacing=tuple(float(s) for s in image.GetSpacing()), sitk_info=info,
    )
    return array, props


def _read_sitk(path: Path) -> tuple[np.ndarray, VolumeProperties]:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except Exception as exc:
        raise AmecamError(f"{path}: cannot read volume ({_reason(exc)})") from exc
    return _from_sitk(image, path, "sitk")


_DICOM_COPIED_TAGS = (
    "0010|0010", "0010|0020", "0010|0030", "0010|0040", "0020|000d", "0008|0020", "0008|0030",
    "0008|0050", "0020|0052", "0020|0037",
)


def _read_dicom(path: Path) -> tuple[np.ndarray, VolumeProperties]:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(path))
    if not series:
        raise AmecamError(f"{path}: folder holds no DICOM series (give a volume file or a DICOM series folder)")
    if len(series) > 1:
        raise AmecamError(f"{path}: folder holds {len(series)} DICOM series; give a folder with exactly one")
    files = reader.GetGDCMSeriesFileNames(str(path), series[0])
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
        first = sitk.ReadImage(files[0])
    except Exception as exc:
        raise AmecamError(f"{path}: cannot read DICOM series ({_reason(exc)})") from exc
    array, props = _from_sitk(image, path, "dicom")
    props.dicom_tags = {k: first.GetMetaData(k) for k in _DICOM_COPIED_TAGS if first.HasMetaDataKey(k)}
    return array, props


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    text = [t.strip() for t in text if t.strip()]
    # SimpleITK messages are multi-line with the useful part last
    return (text[-1] if text else type(exc).__name__)[:200]


def output_format(path: str | os.PathLike, props: VolumeProperties | None = None, *, dicom_input: bool | None = None) -> str:
    """Format a result written to ``path`` gets: by its suffix, or a DICOM series for a folder.

    The input is DICOM when ``props`` says so (or ``dicom_input``, to check a name before reading).
    """
    suffix = volume_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if suffix in SITK_SUFFIXES:
        return "sitk"
    if suffix == "" and (dicom_input if dicom_input is not None else props is not None and props.format == "dicom"):
        return "dicom"
    valid = ", ".join(NIFTI_SUFFIXES + SITK_SUFFIXES)
    raise AmecamError(f"{path}: output must end in one of {valid} (or, for DICOM input, be a folder name), got {suffix or 'no suffix'!r}")


def check_writable(path: str | os.PathLike, *, overwrite: bool = False, create: bool = False) -> Path:
    """Fail early, before any work, if ``path`` cannot be written.

    Nothing is created unless ``create`` is true (the moment of writing): a check before a run that then
    fails must not leave empty folders behind. Folders that do not exist yet are judged by the nearest
    one that does: it must be a folder, and writable.

    Raises:
        AmecamError: the file exists (and ``overwrite`` is false) or its folder cannot be created or written.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise AmecamError(f"{path}: output already exists (pass --overwrite to replace it)")
    data = detached_data_path(path)
    if data is not None and data.exists() and not overwrite:
        raise AmecamError(f"{path}: its data file {data.name} already exists beside it (pass --overwrite to replace it)")
    parent = path.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise AmecamError(f"{path}: cannot create output folder {parent}: {existing} is a file, not a folder")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        if existing == parent:
            raise AmecamError(f"{path}: output folder {parent} is not writable")
        raise AmecamError(f"{path}: cannot create output folder {parent}: {existing} is not writable")
    if create:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AmecamError(f"{path}: cannot create output folder {parent} ({exc.strerror})") from exc
    return path


def check_outputs_apart(outputs: Iterable[str | os.PathLike | None], inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """Fail before any work if an output would land on an input or two outputs on one file.

    ``--overwrite`` allows replacing an earlier *result*; it never allows destroying the volume being
    segmented, nor writing a mask and then a map over it in the same run. Paths are compared after
    resolving links, so ``./a.nii.gz`` and ``a.nii.gz`` are the same file.

    Raises:
        AmecamError: naming the output that collides.
    """
    sources = {Path(p).resolve(): Path(p) for p in inputs if p is not None}
    written: dict[Path, Path] = {}
    for out in outputs:
        if out is None:
            continue
        key = Path(out).resolve()
        if key in sources:
            raise AmecamError(f"{out}: this is one of the inputs; writing the result there would destroy it, choose another name")
        if key in written:
            raise AmecamError(f"{out}: two results would be written to this one file; give the mask and the map different names")
        written[key] = Path(out)


#: formats whose header names a data file beside it, and the data file SimpleITK writes for each
#: (compressed, as write_volume asks)
_DETACHED_DATA_SUFFIX = {".nhdr": ".raw.gz", ".mhd": ".zraw"}
DETACHED_HEADER_SUFFIXES = tuple(_DETACHED_DATA_SUFFIX)


def detached_data_path(path: str | os.PathLike) -> Path | None:
    """The data file written beside a detached header (``mask.nhdr`` -> ``mask.raw.gz``), else ``None``."""
    path = Path(path)
    suffix = volume_suffix(path) if path.suffix else ""
    if suffix not in _DETACHED_DATA_SUFFIX:
        return None
    return path.with_name(path.name[: -len(suffix)] + _DETACHED_DATA_SUFFIX[suffix])


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only if the block succeeds.

    Nothing half-written is ever left under the final name: on error the temporary is removed. A format
    with a detached header (``.nhdr``, ``.mhd``) is written under its final name in a hidden folder, so
    that the data file it names is the final one too; the data file is moved into place before the header.
    """
    path = Path(path)
    suffix = volume_suffix(path) if path.suffix else ""
    if suffix in DETACHED_HEADER_SUFFIXES:
        staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        staging.mkdir()
        try:
            yield staging / path.name
            for part in sorted(staging.iterdir(), key=lambda p: p.name == path.name):  # the header last
                os.replace(part, path.with_name(part.name))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_volume(
    path: str | os.PathLike, array: np.ndarray, props: VolumeProperties, *, overwrite: bool = False
) -> Path:
    """Write ``array`` (x, y, z) on the grid described by ``props``.

    uint8 arrays are written as masks, floating arrays as float32 maps. The format follows the output
    suffix (see :func:`output_format`). The file appears atomically.

    Raises:
        AmecamError: shape mismatch, unwritable destination, or an existing file without ``overwrite``.
    """
    path = check_writable(path, overwrite=overwrite, create=True)
    array = np.asarray(array)
    if tuple(array.shape) != tuple(props.shape):
        raise AmecamError(f"{path}: result shape {array.shape} does not match the input's {tuple(props.shape)}")
    if array.dtype != np.uint8:
        array = array.astype(np.float32)
    fmt = output_format(path, props)
    try:
        with atomic_path(path) as tmp:
            if fmt == "nifti":
                _write_nifti(tmp, array, props)
            elif fmt == "sitk":
                _write_sitk(tmp, array, props)
            else:
                _write_dicom(tmp, array, props)
    except OSError as exc:
        raise AmecamError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    return path


def _write_nifti(path: Path, array: np.ndarray, props: VolumeProperties) -> None:
    # imported here, not at the top: preprocess imports torch, and io (like cases) stays torch-free for amecam slice
    from amecam_bundle.scripts.preprocess import as_file_shape

    if props.header is not None and isinstance(props.header, nib.Nifti1Header):
        header = props.header.copy()
    else:
        header = nib.Nifti1Header()
        header.set_qform(props.affine, code=1)
        header.set_sform(props.affine, code=1)
    header.set_data_dtype(array.dtype)
    array = as_file_shape(array, header.get_data_shape())  # an x*y*z*1 input gets an x*y*z*1 result
    image = nib.Nifti1Image(array, props.affine, header=header)
    image.header.set_slope_inter(1.0, 0.0)
    if array.dtype == np.uint8:
        image.header["cal_min"], image.header["cal_max"] = 0, max(int(array.max(initial=0)), 1)
    image.set_qform(props.affine, code=int(header["qform_code"]) or 1)
    image.set_sform(props.affine, code=int(header["sform_code"]) or 1)
    nib.save(image, str(path))


def _to_sitk(array: np.ndarray, props: VolumeProperties) -> Any:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    if props.sitk_info:
        image.SetOrigin(props.sitk_info["origin"])
        image.SetSpacing(props.sitk_info["spacing"])
        image.SetDirection(props.sitk_info["direction"])
    else:  # NIfTI geometry written as NRRD/MHA: convert the RAS affine to LPS
        linear = _LPS_TO_RAS @ props.affine[:3, :3]
        spacing = np.linalg.norm(linear, axis=0)
        image.SetSpacing(tuple(float(s) for s in spacing))
        image.SetDirection(tuple(float(d) for d in (linear / spacing).ravel()))
        image.SetOrigin(tuple(float(o) for o in _LPS_TO_RAS @ props.affine[:3, 3]))
    return image


def _write_sitk(path: Path, array: np.ndarray, props: VolumeProperties) -> None:
    import SimpleITK as sitk

    try:
        sitk.WriteImage(_to_sitk(array, props), str(path), useCompression=True)
    except RuntimeError as exc:
        raise OSError(_reason(exc)) from exc


def _write_dicom(folder: Path, array: np.ndarray, props: VolumeProperties) -> None:
    """Write a DICOM series (one file per axial slice) that shares the input's patient and study."""
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    volume = _to_sitk(array.astype(np.uint16) if array.dtype == np.uint8 else array.astype(np.float32), props)
    if array.dtype != np.uint8:  # DICOM stores integers; keep maps at 1/1000 resolution
        volume = sitk.Cast(sitk.RescaleIntensity(volume, 0, 1000), sitk.sitkUInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = f"1.2.826.0.1.3680043.10.1082.{uuid.uuid4().int % 10**30}"
    direction = volume.GetDirection()
    for k in range(volume.GetDepth()):
        plane = volume[:, :, k]
        for tag, value in props.dicom_tags.items():
            plane.SetMetaData(tag, value)
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        plane.SetMetaData("0020|000e", series_uid)
        plane.SetMetaData("0008|0060", "MR")
        plane.SetMetaData("0008|103e", "amecam result")
        plane.SetMetaData("0020|0013", str(k + 1))
        plane.SetMetaData("0020|0032", "\\".join(f"{p:.6f}" for p in position))
        plane.SetMetaData("0020|0037", "\\".join(f"{d:.6f}" for d in (*direction[0::3], *direction[1::3])))
        plane.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        writer.SetFileName(str(folder / f"slice_{k:04d}.dcm"))
        writer.Execute(plane)
