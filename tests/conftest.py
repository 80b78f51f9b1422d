"""Shared fixtures: tiny volumes written in tmp_path, the real data folder, a small synthetic cohort."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AMECAM_SHARED_DATA", REPO.parent / "shared" / "data"))

LPS = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 31.0], [0, 0, 2.0, 0], [0, 0, 0, 1.0]])


def shared_data(*parts: str) -> Path:
    """Path inside ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing (tests expect ../shared/data beside the repo)")
    return path


def bundle_torchrun(root: Path, config: str, *args: str, nproc: int = 2, device: str = "cpu", timeout: float = 300):
    """The bundle's multi-process command: ``torchrun ... -m monai.bundle run`` with ``configs/multi_gpu_train.yaml``
    after ``config``, in the bundle folder ``root``, one thread per process, batch 4 and no progress bars."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "monai.bundle", "run", "--config_file", str([f"configs/{config}", "configs/multi_gpu_train.yaml"]),
           "--bundle_root", ".", "--device", device, "--batch_size", "4", "--progress", "false", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env, timeout=timeout)


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray = LPS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def planted_case(shape=(32, 32, 12), *, tumour=((10, 18), (12, 20), (4, 8)), seed=0, background=0.0, scale=1000.0):
    """A bright ellipsoid "brain" with a brighter box "tumour"; returns (image, seg)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    brain = ((x - shape[0] / 2) / (shape[0] * 0.42)) ** 2 + ((y - shape[1] / 2) / (shape[1] * 0.42)) ** 2 + ((z - shape[2] / 2) / (shape[2] * 0.6)) ** 2 < 1
    image = np.where(brain, 0.4 + 0.05 * rng.standard_normal(shape), 0.0)
    seg = np.zeros(shape, dtype=np.uint8)
    (x0, x1), (y0, y1), (z0, z1) = tumour
    seg[x0:x1, y0:y1, z0:z1] = 2
    seg &= brain.astype(np.uint8) * 255
    image = np.where(seg > 0, 0.9, image)
    image = (image * scale + background).astype(np.float32)
    image[~brain] = background
    return image, seg


def write_brats_case(root: Path, case: str, modalities=("flair",), sep="_", names=None, **kwargs) -> Path:
    image, seg = planted_case(**kwargs)
    folder = root / case
    names = names or {}
    for m in modalities:
        save_nifti(folder / f"{case}{sep}{names.get(m, m)}.nii.gz", image.astype(np.int16))
    save_nifti(folder / f"{case}{sep}seg.nii.gz", seg)
    return folder


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Six tiny BraTS-2021-layout cases with flair and t1ce."""
    root = tmp_path / "data"
    for i in range(6):
        write_brats_case(root, f"CASE_{i:02d}", modalities=("flair", "t1ce"), seed=i)
    return root


@pytest.fixture(scope="session")
def synth_cohort(tmp_path_factory) -> Path:
    """Two full-size synthetic cases (written once per test session)."""
    from amecam_cli.synth import synthesize_cohort

    out = tmp_path_factory.mktemp("cohort")
    synthesize_cohort(out, n_cases=2, seed=7, progress=False)
    return out


TINY_SETTINGS = {"epochs": 2, "attention_epochs": 1, "image_size": 64, "batch_size": 4, "device": "cpu"}


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A bundle trained briefly on six tiny flair cases (shared by the bundle, inference and CLI tests)."""
    from amecam_cli.training import train_bundle

    root = tmp_path_factory.mktemp("tiny")
    data = root / "data"
    for i in range(6):
        write_brats_case(data, f"CASE_{i:02d}", modalities=("flair",), seed=i)
    train_bundle(data, root / "run", settings=dict(TINY_SETTINGS), progress=False)
    return root / "run"
