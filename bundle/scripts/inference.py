"""Volume in, mask out: the bundle's inference.

:class:`VolumePredictor` runs any network that returns ``(B, 2, S, S)`` -- channel 0 a tumour map in
``[0, 1]``, channel 1 the slice's tumour probability (see ``networks.AMECAMNet``) -- over the axial
slices of a volume in batches: the brain is cropped and resized exactly as for training, slices
without brain are skipped, slices the network calls normal get an empty mask (gating), the map is
thresholded, optionally cleaned in 3-D and refined with DenseCRF, and everything is mapped back to
the input's voxel grid.

:meth:`VolumePredictor.predict_files` needs only nibabel (NIfTI in, NIfTI out), so a bundle runs
with ``python -m monai.bundle run --config_file configs/inference.yaml`` and no amecam installed.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .postprocess import CRFParams, crf_refine_volume, remove_small_components
from .preprocess import as_file_shape, extract_slices, from_canonical, paste_slices, prepare_volume, to_canonical
from .device import resolve_device
from .files import written_whole
from .options import number, switch, whole
from .weights import load_weights

__all__ = ["DEFAULT_BATCH_SIZE", "Prediction", "VolumePredictor", "gated_output", "image_argument", "read_nifti_channels"]

logger = logging.getLogger("amecam.inference")

#: slices per forward pass when none is given: small batches keep a stride-1 ResNet's activations in the
#: CPU's caches (docs/benchmarks.md section 7: 28-43% less network time than 64 on a 2-core CPU);
#: a GPU wants large ones
DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 64}


def gated_output(network, x: torch.Tensor, probability_threshold: float) -> torch.Tensor:
    """The network's ``(B, 2, H, W)`` output with maps computed only where the slice is called tumour.

    ``network`` has ``score`` and ``maps_from_raw`` (``networks.AMECAMNet``, or its trace in
    ``models/model.ts``): one pass of the classifier scores every slice and keeps its small raw exit
    maps; upsampling, normalisation and the aggregator then run on the kept slices only. Their map
    equals the full forward's; the others get map 0 (gating empties their mask anyway).
    """
    probability, *raw = network.score(x)
    output = torch.zeros(x.shape[0], 2, *x.shape[-2:], dtype=x.dtype, device=x.device)
    output[:, 1] = probability.view(-1, 1, 1).to(x.dtype)
    keep = torch.nonzero(probability >= probability_threshold).flatten()
    if len(keep):
        output[keep, 0] = network.maps_from_raw(x[keep], *[m[keep] for m in raw])[:, 0].to(x.dtype)
    return output


@dataclass
class Prediction:
    """Results on the canonical grid (see ``preprocess.to_canonical``).

    Attributes:
        cam: ``(x, y, z)`` float32 tumour map in ``[0, 1]`` (zero outside the brain and on skipped slices).
        mask: ``(x, y, z)`` uint8 mask after gating, threshold, clean-up and CRF.
        slice_probability: ``(z,)`` tumour probability per slice (0 where no brain).
        image: ``(C, x, y, z)`` the normalised input.
        brain: ``(x, y, z)`` brain mask.
        seconds: time spent per step.
        brain_slices: the axial indices with enough brain to be segmented (empty for a blank volume).
    """

    cam: np.ndarray
    mask: np.ndarray
    slice_probability: np.ndarray
    image: np.ndarray
    brain: np.ndarray
    seconds: dict = field(default_factory=dict)
    brain_slices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def read_nifti_channels(files: Sequence[str | os.PathLike]) -> tuple[np.ndarray, np.ndarray, object]:
    """Read one NIfTI volume per modality as canonical ``(C, x, y, z)`` float32 channels (nibabel only).

    Returns:
        The channels, the first file's orientation (for :func:`~.preprocess.from_canonical`) and its
        nibabel image (the reference whose grid and header a result is written with).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a volume is not 3-D (``(x, y, z, 1)`` counts as 3-D; a single slice does not), has another
            shape than the first, or holds NaN or infinite values (which would otherwise give an empty mask
            without a word).
    """
    import nibabel as nib

    arrays, reference = [], None
    for name in files:
        if not Path(name).is_file():
            msg = f"{name}: no such file"
            raise FileNotFoundError(msg)
        image = nib.load(str(name))
        data = np.asanyarray(image.dataobj).astype(np.float32)
        while data.ndim > 3 and data.shape[-1] == 1:  # (x, y, z, 1), as some converters write, is one volume
            data = data[..., 0]
        if data.ndim != 3 or min(data.shape) < 2:
            msg = f"{name}: expected a 3-D volume, got shape {tuple(image.shape)}"
            raise ValueError(msg)
        if reference is None:
            reference = image
        elif data.shape != arrays[0].shape:
            msg = f"{name}: shape {data.shape} differs from {files[0]} {arrays[0].shape}"
            raise ValueError(msg)
        elif not np.allclose(image.affine, reference.affine, atol=1e-3, rtol=1e-4):
            msg = f"{name}: not on the same voxel grid (affine) as {files[0]}"
            raise ValueError(msg)
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            msg = f"{name}: volume contains {bad} NaN or infinite value{'s' if bad != 1 else ''}"
            raise ValueError(msg)
        arrays.append(data)
    if reference is None:
        msg = "no image given"
        raise ValueError(msg)
    stacked, orientation = to_canonical(np.stack(arrays, axis=-1), reference.affine)
    return np.moveaxis(stacked, -1, 0), orientation, reference


def image_argument(channels: Sequence[str]) -> str:
    """An example ``--image`` value for ``python -m monai.bundle run``: one NIfTI file per modality, in order."""
    names = [f"patient_{name}.nii.gz" for name in channels]
    return names[0] if len(names) == 1 else '"[' + ", ".join(f"'{name}'" for name in names) + ']"'


def check_writable(path: str) -> None:
    """Refuse an output whose folder cannot be made or written to (by trying, as a file there would be)."""
    import tempfile

    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".amecam-probe-"):
            pass
    except OSError as exc:
        msg = f"{path}: cannot write there ({(exc.strerror or str(exc)).lower()})"
        raise PermissionError(msg) from None


class VolumePredictor:
    """Slice-wise inference over whole volumes.

    Args:
        network: module mapping ``(B, C, S, S)`` to ``(B, 2, S, S)``.
        image_size: the side ``S`` the network was trained on.
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: slices per forward pass; ``None`` picks :data:`DEFAULT_BATCH_SIZE` for the device.
        threshold: the map value from which a pixel is tumour.
        gate: give slices with tumour probability below ``probability_threshold`` an empty mask.
        probability_threshold: the classifier's decision threshold.
        min_component_voxels: drop 3-D islands smaller than this (0 keeps everything).
        crf: refine the mask with DenseCRF around the candidate tumour.
        crf_params: DenseCRF parameters.
        strip_skull: remove scalp and skull from the estimated brain mask, as for a bundle trained on
            volumes that are not skull-stripped (metadata ``preprocessing.skull_strip``).
        channels: the modality of each input channel, in order (metadata ``channel_def``, a
            ``{"0": "flair", ...}`` mapping or a list); :meth:`predict_files` checks that it is given one
            file for each. ``None`` skips the check.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        *,
        image_size: int,
        device: str | torch.device = "auto",
        batch_size: int | None = None,
        threshold: float = 0.5,
        gate: bool = True,
        probability_threshold: float = 0.5,
        min_component_voxels: int = 0,
        crf: bool = False,
        crf_params: CRFParams | None = None,
        strip_skull: bool = False,
        channels: Mapping[str, str] | Sequence[str] | None = None,
    ) -> None:
        self.threshold = number(threshold, "threshold", 0.0, 1.0)
        self.probability_threshold = number(probability_threshold, "probability_threshold", 0.0, 1.0)
        self.image_size = whole(image_size, "image_size", 1)
        self.min_component_voxels = whole(min_component_voxels, "min_component_voxels", 0)
        if batch_size is not None:
            batch_size = whole(batch_size, "batch_size", 1, hint=" (or null for the default)")
        self.device = resolve_device(device)
        # channels-last weights keep every activation channels-last: a one-channel input alone does
        # not (its layout is ambiguous), and the stem's max pool is ~15x slower on the other layout
        self.network = network.to(self.device, memory_format=torch.channels_last).eval()
        self.batch_size = int(batch_size) if batch_size else DEFAULT_BATCH_SIZE.get(self.device.type, 64)
        self.gate = switch(gate, "gate")
        self.crf = switch(crf, "crf")
        self.crf_params = crf_params or CRFParams()
        self.strip_skull = switch(strip_skull, "strip_skull")
        if isinstance(channels, Mapping):
            channels = [channels[key] for key in sorted(channels, key=int)]
        self.channels = None if channels is None else [str(name) for name in channels]

    def load(self, weights: str | os.PathLike) -> "VolumePredictor":
        """Load a state dict (``models/model.pt``) into the network."""
        path = Path(weights)
        if not path.is_file():
            msg = f"{path}: model weights not found (a trained bundle has models/model.pt)"
            raise FileNotFoundError(msg)
        load_weights(self.network, path, self.device)
        self.network.eval()
        return self

    @torch.inference_mode()
    def _batched(self, function, slices: torch.Tensor) -> torch.Tensor:
        outputs = []
        autocast = self.device.type == "cuda"
        for start in range(0, slices.shape[0], self.batch_size):
            batch = slices[start : start + self.batch_size].to(self.device, non_blocking=True)
            batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                outputs.append(function(batch).float())
        return torch.cat(outputs).cpu()

    def network_output(self, slices: torch.Tensor, *, all_maps: bool = True) -> torch.Tensor:
        """Run the network over ``(n, C, S, S)`` slices in batches; returns ``(n, 2, S, S)`` on the CPU.

        With ``all_maps=False``, gating on and a network with ``score`` (``AMECAMNet`` or its trace), the
        maps are computed only for the slices the classifier calls tumour, in the same single pass that
        scores every slice (:func:`gated_output`): the others get an empty mask whatever their map, so
        their map is left at zero.
        """
        n, size = slices.shape[0], self.image_size
        if n == 0:
            return torch.zeros(0, 2, size, size)
        if all_maps or not self.gate or not hasattr(self.network, "score"):
            return self._batched(self.network, slices)
        threshold = self.probability_threshold
        return self._batched(lambda batch: gated_output(self.network, batch, threshold), slices)

    def predict_canonical(self, channels: np.ndarray, *, brain: np.ndarray | None = None, all_maps: bool = True) -> Prediction:
        """Predict on a canonical ``(C, x, y, z)`` volume of raw intensities.

        Args:
            all_maps: compute the map on every brain slice; ``False`` skips the slices the classifier
                calls normal (same mask, less work; their map stays zero).
        """
        seconds = {}
        started = time.perf_counter()
        prepared = prepare_volume(channels, brain=brain, strip_skull=self.strip_skull)
        zs = prepared.brain_slices
        slices = extract_slices(prepared.image, prepared.box, zs, self.image_size)
        seconds["preprocess"] = time.perf_counter() - started
        started = time.perf_counter()
        output = self.network_output(slices, all_maps=all_maps)
        seconds["network"] = time.perf_counter() - started
        started = time.perf_counter()
        shape = prepared.brain.shape
        cam = np.zeros(shape, dtype=np.float32)
        probability = np.zeros(shape[2], dtype=np.float32)
        if len(zs):
            planes = paste_slices(output[:, 0], prepared.box, shape[:2]).clamp(0, 1).numpy()
            cam[:, :, zs] = np.moveaxis(planes, 0, -1)
            probability[zs] = output[:, 1].flatten(1).mean(dim=1).numpy()
        cam *= prepared.brain
        mask = (cam >= self.threshold) & prepared.brain
        if self.gate:
            mask &= (probability >= self.probability_threshold)[None, None, :]
        mask = remove_small_components(mask.astype(np.uint8), self.min_component_voxels)
        if self.crf and mask.any():
            grey = prepared.image.mean(axis=0)
            mask = crf_refine_volume(grey, cam, mask, self.crf_params) & prepared.brain
        seconds["postprocess"] = time.perf_counter() - started
        return Prediction(cam=cam, mask=mask.astype(np.uint8), slice_probability=probability,
                          image=prepared.image, brain=prepared.brain, seconds=seconds, brain_slices=np.asarray(zs))

    def predict_files(
        self,
        images: str | Sequence[str],
        output: str,
        cam_output: str | None = None,
        *,
        overwrite: bool = False,
    ) -> dict:
        """NIfTI in (one file per modality, in the bundle's order), NIfTI mask out; nibabel only.

        Returns:
            Paths written and the time per step.
        """
        files = [images] if isinstance(images, (str, os.PathLike)) else list(images)
        if not files or not all(str(name) for name in files):
            msg = "image must name the volume to segment (--image patient_flair.nii.gz; a list, one file per modality)"
            raise ValueError(msg)
        if not output:
            msg = "output must name the mask file to write (--output mask.nii.gz)"
            raise ValueError(msg)
        if self.channels is not None and len(files) != len(self.channels):
            msg = (f"the bundle takes {len(self.channels)} image(s), one per modality in this order: {', '.join(self.channels)} "
                   f"(--image {image_argument(self.channels)}); got {len(files)}: {', '.join(str(name) for name in files)}")
            raise ValueError(msg)
        for name, what in [(name, "image") for name in files] + [(output, "output"), (cam_output, "cam_output")]:
            if name and not str(name).lower().endswith((".nii", ".nii.gz")):
                msg = (f"{name}: the bundle reads and writes NIfTI only, so --{what} must end in .nii.gz or .nii "
                       "(amecam infer also takes NRRD, MHA and DICOM)")
                raise ValueError(msg)
        sources = {Path(name).resolve() for name in files}
        for path in (output, cam_output):
            if path and Path(path).resolve() in sources:
                msg = f"{path}: this is one of the input images; writing the result there would destroy it"
                raise ValueError(msg)
        if cam_output and Path(cam_output).resolve() == Path(output).resolve():
            msg = f"{cam_output}: the mask and the map cannot be written to the same file"
            raise ValueError(msg)
        overwrite = switch(overwrite, "overwrite")
        channels, orientation, reference = read_nifti_channels(files)
        for path in (output, cam_output):
            if path and Path(path).exists() and not overwrite:
                msg = f"{path}: output already exists (--overwrite true replaces it)"
                raise FileExistsError(msg)
            if path:
                check_writable(path)  # before the work, not after it
        prediction = self.predict_canonical(channels, all_maps=cam_output is not None)
        written = {"mask": output}
        self._save_nifti(from_canonical(prediction.mask, orientation), reference, output)
        if cam_output:
            self._save_nifti(from_canonical(prediction.cam, orientation), reference, cam_output)
            written["cam"] = cam_output
        logger.info("wrote %s (%d tumour voxels)", output, int(prediction.mask.sum()))
        return {"written": written, "seconds": prediction.seconds}

    @staticmethod
    def _save_nifti(array: np.ndarray, reference, path: str) -> None:
        import nibabel as nib

        header = reference.header.copy()
        header.set_data_dtype(array.dtype)
        array = as_file_shape(array, reference.shape)  # an x*y*z*1 input gets an x*y*z*1 result
        image = nib.Nifti1Image(array, reference.affine, header=header)
        image.header.set_slope_inter(1.0, 0.0)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with written_whole(path, f".tmp-{Path(path).name}") as tmp:  # same extension: nibabel compresses by name
            nib.save(image, str(tmp))
